//! Snowflake-shaped error replies that Tollgate sends instead of forwarding a request.
//!
//! The drivers read, on `success: false` (HTTP 200): `code` (Python does `int(code)`, so it
//! must be all digits), `message` (plus `data.errorMessage` if present — we send none),
//! `data.sqlState` and `data.queryId` (the error's sfqid). `data` must be an object: Python
//! calls `ret["data"].get(...)`. The remaining fields mirror what Snowflake itself sends.

use super::codes;

/// What to tell the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorReply<'a> {
    /// Six-digit error code, e.g. [`codes::TOLLGATE_DENIED`].
    pub code: &'a str,
    /// SQLSTATE, e.g. [`codes::SQL_STATE_DENIED`].
    pub sql_state: &'a str,
    /// Human-readable reason (the driver shows it as the exception message).
    pub message: &'a str,
    /// The query id to report, if one exists (`null` otherwise).
    pub query_id: Option<&'a str>,
}

impl Default for ErrorReply<'_> {
    /// A policy denial with a generic message.
    fn default() -> Self {
        Self {
            code: codes::TOLLGATE_DENIED,
            sql_state: codes::SQL_STATE_DENIED,
            message: "Statement denied by Tollgate policy.",
            query_id: None,
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// The body of a driver-API error reply, to send with HTTP 200 and
/// `Content-Type: application/json`:
///
/// ```text
/// {"data":{"internalError":false,"errorCode":"390901","age":0,"sqlState":"42501",
///  "queryId":null,"line":-1,"pos":-1,"type":"COMPILATION"},"code":"390901",
///  "message":"…","success":false,"headers":null}
/// ```
pub fn error_response(reply: ErrorReply<'_>) -> Vec<u8> {
    let query_id = reply.query_id.map_or_else(|| "null".to_owned(), json_str);
    format!(
        concat!(
            r#"{{"data":{{"internalError":false,"errorCode":{code},"age":0,"sqlState":{state},"#,
            r#""queryId":{qid},"line":-1,"pos":-1,"type":"COMPILATION"}},"code":{code},"#,
            r#""message":{message},"success":false,"headers":null}}"#
        ),
        code = json_str(reply.code),
        state = json_str(reply.sql_state),
        qid = query_id,
        message = json_str(reply.message),
    )
    .into_bytes()
}

/// HTTP status for a SQL API statement refusal (Snowflake answers statement errors with 422).
pub const SQL_API_ERROR_STATUS: u16 = 422;
/// HTTP status for a SQL API request Tollgate cannot parse.
pub const SQL_API_BAD_REQUEST_STATUS: u16 = 400;

/// The body of a SQL API error reply (send with [`SQL_API_ERROR_STATUS`], or
/// [`SQL_API_BAD_REQUEST_STATUS`] for malformed requests):
/// `{"code":"…","message":"…","sqlState":"…","statementHandle":"…"}`.
pub fn sql_api_error_response(reply: ErrorReply<'_>) -> Vec<u8> {
    let handle = reply.query_id.map_or_else(|| "null".to_owned(), json_str);
    format!(
        r#"{{"code":{},"message":{},"sqlState":{},"statementHandle":{}}}"#,
        json_str(reply.code),
        json_str(reply.message),
        json_str(reply.sql_state),
        handle,
    )
    .into_bytes()
}
