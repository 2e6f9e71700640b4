//! A sans-IO model of Snowflake's REST protocol, as the drivers speak it.
//!
//! Everything here is a function of bytes (or strings) to values and back: which endpoint a
//! request targets ([`classify_target`] on the [`NormalizedPath`] of its target), its query string ([`QueryParams`]), its body's transfer shape
//! ([`decode_body`] / [`encode_body`] — Python gzips every request body), its credentials
//! ([`parse_authorization`], [`LoginRequest`]), its statement ([`QueryRequest`],
//! [`StatementRequest`]) and the server's answers ([`LoginResponse`], [`QueryResponse`], …), plus
//! the Snowflake-shaped error replies Tollgate sends when it refuses something
//! ([`error_response`], [`sql_api_error_response`]).
//!
//! What it does not do: no I/O, no HTTP framing (the caller hands over method, target, header
//! values and the body bytes), no token or signature verification (JWT claims are decoded
//! *unverified*, as identity hints only), no Arrow decoding (`rowsetBase64` is exposed as the
//! string it is), no SQL parsing.
//!
//! Secrets never leak through formatting: passwords, tokens, master tokens, proof keys, `qrmk`,
//! chunk headers and pre-signed chunk URLs are [`Secret`]s whose `Debug`/`Display` print
//! `<redacted>`; SQL text, bind values and server messages (which can echo literals) are left
//! out of `Debug` output too. Parsed messages keep their `serde_json::Value`, so a caller can
//! change one field and re-serialise the rest untouched (`to_json_bytes()`; JSON objects are
//! unordered and come back with their keys sorted).
//!
//! Facts the model relies on come from the drivers' sources and from real captures of
//! snowflake-connector-python 4.8 and snowflake-sdk 3.3 (see the crate's
//! `tests/fixtures/snowflake/`).

mod auth;
mod body;
pub mod codes;
mod endpoint;
mod error;
mod json;
mod login;
mod path;
mod query;
mod reply;
mod secret;
mod sql_api;

pub use auth::{parse_authorization, AuthToken};
pub use body::{decode_body, decoded_size_hint, encode_body, BodyError, BodyLimits, DecodedBody};
pub use endpoint::{classify, classify_target, split_target, Classified, Endpoint, QueryParams};
pub use error::WireError;
pub use login::{
    Authenticator, AuthenticatorRequest, AuthenticatorResponse, JwtClaims, LoginRequest,
    LoginResponse, SessionInfo, SessionParameter, TokenRequest, TokenResponse,
};
pub use path::{normalize_path, NormalizedPath, PathError};
pub use query::{
    AbortRequest, Binding, BindingValue, Chunk, Envelope, HandedOutChunk, MonitoringQuery,
    MonitoringResponse, QueryRequest, QueryResponse, ResultFormat, RowType,
};
pub use reply::{
    error_response, sql_api_error_response, ErrorReply, SQL_API_BAD_REQUEST_STATUS,
    SQL_API_ERROR_STATUS,
};
pub use secret::Secret;
pub use sql_api::{StatementRequest, StatementResponse};
