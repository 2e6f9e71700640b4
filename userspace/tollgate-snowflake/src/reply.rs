//! The answers Tollgate gives in Snowflake's own shape when it does not forward a request
//! ([`Refusal`]) or does not hand out a result ([`Withheld`]), typed by what failed and on which
//! side, so that the driver raises its usual error and the audit trail names the cause.
//!
//! A leaf module: it knows the wire replies and nothing of the phases.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tollgate_proxy::ProxyBody;
use tollgate_wire::snowflake::{error_response, sql_api_error_response, ErrorReply};

/// Error code of every statement Tollgate refuses (Snowflake-shaped replies).
pub const TOLLGATE_DENIED_CODE: &str = "390901";

/// Which side of the exchange a failure belongs to (as in pingora's `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Side {
    /// The agent sent something Tollgate will not or cannot pass (a denied statement, an
    /// ambiguous path, a body over its cap).
    Agent,
    /// Snowflake or cloud storage answered something Tollgate cannot hand out as it is.
    Upstream,
    /// Tollgate itself cannot proceed (its audit spool cannot be written, no storage client).
    Tollgate,
}

impl Side {
    /// The name used in logs and audit attributes.
    pub fn name(self) -> &'static str {
        match self {
            Side::Agent => "agent",
            Side::Upstream => "upstream",
            Side::Tollgate => "tollgate",
        }
    }
}

/// Why a request was answered by Tollgate instead of being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalKind {
    /// The policy denies the statement.
    Denied,
    /// The policy requires a human approval, and none was given.
    ApprovalRequired,
    /// The request body is over its cap or cannot be decoded.
    BodyRejected,
    /// The login request cannot be read.
    MalformedLogin,
    /// The query or statement request cannot be read.
    MalformedStatement,
    /// The path has more than one reading (encoded separators, dot segments, …).
    AmbiguousPath,
    /// The request target cannot be re-encoded after normalisation.
    UnencodableTarget,
    /// The endpoint is not in the wire model and unknown endpoints are denied.
    UnknownEndpoint,
    /// A known endpoint this version does not serve.
    NotHandled,
    /// A SQL API statement handle Tollgate did not allow for the presented token.
    ForeignStatementHandle,
    /// A pre-signed result-chunk download on the Snowflake host.
    PresignedDownload,
    /// A SQL API statement whose result would have to be masked or capped.
    UnsupportedRewrite,
    /// The audit spool cannot be written: no access without audit.
    Unauditable,
}

impl RefusalKind {
    /// The side whose failure this is.
    pub fn side(self) -> Side {
        match self {
            RefusalKind::Unauditable => Side::Tollgate,
            _ => Side::Agent,
        }
    }

    /// The SQLSTATE of the Snowflake-shaped reply.
    pub fn sql_state(self) -> &'static str {
        match self {
            RefusalKind::Denied
            | RefusalKind::ApprovalRequired
            | RefusalKind::ForeignStatementHandle
            | RefusalKind::PresignedDownload => "42501",
            RefusalKind::BodyRejected => "54000",
            RefusalKind::MalformedLogin => "08004",
            RefusalKind::MalformedStatement => "42601",
            RefusalKind::AmbiguousPath
            | RefusalKind::UnencodableTarget
            | RefusalKind::UnknownEndpoint
            | RefusalKind::NotHandled
            | RefusalKind::UnsupportedRewrite => "0A000",
            RefusalKind::Unauditable => "58030",
        }
    }

    /// The name used in logs.
    pub fn name(self) -> &'static str {
        match self {
            RefusalKind::Denied => "denied",
            RefusalKind::ApprovalRequired => "approval_required",
            RefusalKind::BodyRejected => "body_rejected",
            RefusalKind::MalformedLogin => "malformed_login",
            RefusalKind::MalformedStatement => "malformed_statement",
            RefusalKind::AmbiguousPath => "ambiguous_path",
            RefusalKind::UnencodableTarget => "unencodable_target",
            RefusalKind::UnknownEndpoint => "unknown_endpoint",
            RefusalKind::NotHandled => "not_handled",
            RefusalKind::ForeignStatementHandle => "foreign_statement_handle",
            RefusalKind::PresignedDownload => "presigned_download",
            RefusalKind::UnsupportedRewrite => "unsupported_rewrite",
            RefusalKind::Unauditable => "unauditable",
        }
    }
}

/// Which of Snowflake's APIs the reply must speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// The drivers' REST API (`/session/…`, `/queries/…`): HTTP 200 with `success: false`.
    Driver,
    /// The SQL API (`/api/v2/…`): HTTP 422 with its own error body.
    SqlApi,
}

impl Api {
    /// The API a path belongs to.
    pub fn of_path(path: &str) -> Api {
        if path.starts_with("/api/") {
            Api::SqlApi
        } else {
            Api::Driver
        }
    }
}

/// A request Tollgate answers itself, with the reason the agent will read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusal {
    /// What failed.
    pub kind: RefusalKind,
    /// The API to answer in.
    pub api: Api,
    /// The message the driver raises (it names the rule, never SQL literals).
    pub message: String,
    /// The request body was not read to its end: the connection must close after the reply,
    /// or a client still uploading would wait for its own timeout.
    pub close: bool,
}

impl Refusal {
    /// A refusal of `kind`, answered in `api`.
    pub fn new(kind: RefusalKind, api: Api, message: impl Into<String>) -> Self {
        Refusal {
            kind,
            api,
            message: message.into(),
            close: false,
        }
    }

    /// The same refusal, closing the connection after the reply.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The Snowflake-shaped reply.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let reply = ErrorReply {
            code: TOLLGATE_DENIED_CODE,
            sql_state: self.kind.sql_state(),
            message: &self.message,
            query_id: None,
        };
        let (status, body) = match self.api {
            Api::SqlApi => (
                StatusCode::UNPROCESSABLE_ENTITY,
                sql_api_error_response(reply),
            ),
            // Drivers turn HTTP 200 + success:false into ProgrammingError; a 4xx/5xx would be
            // retried or reported as a network failure.
            Api::Driver => (StatusCode::OK, error_response(reply)),
        };
        let mut resp = json_response(status, body);
        resp.headers_mut()
            .insert("x-tollgate-decision", HeaderValue::from_static("refused"));
        if self.close && self.api == Api::Driver {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Why a result was not handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WithheldReason {
    /// Larger than Tollgate inspects, and the decision asks for a rewrite.
    TooLarge,
    /// The response cannot be read, and the decision masks.
    Unreadable,
    /// No decision is known for the query id.
    NoDecision,
    /// Chunked, and no storage client is configured.
    NoStorage,
    /// Masking or capping failed (fail closed).
    RewriteFailed,
}

impl WithheldReason {
    /// The side whose failure this is.
    pub fn side(self) -> Side {
        match self {
            WithheldReason::TooLarge | WithheldReason::Unreadable => Side::Upstream,
            WithheldReason::NoDecision => Side::Agent,
            WithheldReason::NoStorage | WithheldReason::RewriteFailed => Side::Tollgate,
        }
    }
}

/// A result Tollgate may not hand out: the agent gets a Snowflake error instead.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Withheld {
    /// Why.
    pub reason: WithheldReason,
    /// What the audit record says (short).
    pub recorded: String,
    /// What the agent reads.
    pub message: String,
    /// The query the result belongs to, when known.
    pub query_id: Option<String>,
}

impl Withheld {
    /// A withheld result.
    pub fn new(
        reason: WithheldReason,
        recorded: impl Into<String>,
        message: impl Into<String>,
        query_id: Option<String>,
    ) -> Self {
        Withheld {
            reason,
            recorded: recorded.into(),
            message: message.into(),
            query_id,
        }
    }

    /// The Snowflake error envelope sent in the result's place.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let message = format!("Tollgate withheld this result: {}", self.message);
        let reply = ErrorReply {
            code: TOLLGATE_DENIED_CODE,
            sql_state: "22000",
            message: &message,
            query_id: self.query_id.as_deref(),
        };
        let mut resp = json_response(StatusCode::OK, error_response(reply));
        resp.headers_mut()
            .insert("x-tollgate-decision", HeaderValue::from_static("withheld"));
        resp
    }
}

/// A JSON response.
fn json_response(status: StatusCode, body: Vec<u8>) -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A plain-text reply for a chunk fetch (drivers report the status).
pub fn text_reply(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::from(format!("{message}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert("x-tollgate-decision", HeaderValue::from_static("refused"));
    resp
}

/// A body of `bytes`.
pub fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(resp: Response<ProxyBody>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn driver_refusals_are_http_200_with_the_kind_sql_state() {
        let r = Refusal::new(RefusalKind::Denied, Api::Driver, "no");
        let resp = r.to_response();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().get(http::header::CONNECTION).is_none());
        let v = body_of(resp).await;
        assert_eq!(v["success"], false);
        assert_eq!(v["code"], TOLLGATE_DENIED_CODE);
        assert_eq!(v["data"]["sqlState"], "42501");
    }

    #[tokio::test]
    async fn sql_api_refusals_are_422_and_closing_only_applies_to_drivers() {
        let r = Refusal::new(RefusalKind::BodyRejected, Api::SqlApi, "big").closing();
        let resp = r.to_response();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(resp.headers().get(http::header::CONNECTION).is_none());
        let r = Refusal::new(RefusalKind::BodyRejected, Api::Driver, "big").closing();
        assert_eq!(r.to_response().headers()[http::header::CONNECTION], "close");
    }

    #[test]
    fn only_the_spool_is_tollgate_s_fault() {
        assert_eq!(RefusalKind::Unauditable.side(), Side::Tollgate);
        assert_eq!(RefusalKind::Denied.side(), Side::Agent);
        assert_eq!(WithheldReason::TooLarge.side(), Side::Upstream);
    }

    #[tokio::test]
    async fn withheld_results_name_the_query() {
        let w = Withheld::new(WithheldReason::NoDecision, "x", "why", Some("q1".into()));
        let v = body_of(w.to_response()).await;
        assert_eq!(v["success"], false);
        assert!(v["message"]
            .as_str()
            .unwrap()
            .starts_with("Tollgate withheld this result: why"));
    }
}
