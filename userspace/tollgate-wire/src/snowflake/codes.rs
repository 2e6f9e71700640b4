//! Response codes (`code` / `data.errorCode`) with a meaning for the data path.
//!
//! Snowflake sends codes as six-digit strings. The 3909xx block is Tollgate's own: Snowflake
//! does not use it and no driver special-cases it, so a driver turns it into an ordinary
//! `ProgrammingError` (Python calls `int(code)`, so codes must stay all-digit).

/// The statement is still running; poll `data.getResultUrl`.
pub const QUERY_IN_PROGRESS: &str = "333333";
/// Asynchronous execution accepted (`asyncExec`); poll `data.getResultUrl` or monitoring.
pub const QUERY_IN_PROGRESS_ASYNC: &str = "333334";
/// The session token expired: the driver renews it (`/session/token-request`) and re-sends
/// the statement with the same `requestId`.
pub const SESSION_EXPIRED: &str = "390112";
/// The session no longer exists.
pub const SESSION_GONE: &str = "390111";
/// The master token was not found.
pub const MASTER_TOKEN_NOT_FOUND: &str = "390113";
/// The master token expired: the driver must log in again.
pub const MASTER_TOKEN_EXPIRED: &str = "390114";
/// The master token is invalid.
pub const MASTER_TOKEN_INVALID: &str = "390115";
/// Incorrect user name or password.
pub const INCORRECT_CREDENTIALS: &str = "390100";
/// Invalid or expired id token on login (SSO cache).
pub const ID_TOKEN_INVALID: &str = "390195";
/// Object does not exist or not authorised (e.g. unknown table).
pub const OBJECT_NOT_FOUND: &str = "002003";
/// SQL compilation error: syntax error.
pub const SYNTAX_ERROR: &str = "001003";
/// NULL result in a non-nullable column (Python raises `IntegrityError` for it).
pub const NULL_IN_NON_NULLABLE: &str = "100072";

/// Tollgate denied the request by policy (rule id in the message).
pub const TOLLGATE_DENIED: &str = "390901";
/// A statement held for approval was rejected by an approver.
pub const TOLLGATE_APPROVAL_DENIED: &str = "390902";
/// A statement held for approval expired without a decision.
pub const TOLLGATE_APPROVAL_EXPIRED: &str = "390903";
/// Tollgate could not understand the request (malformed, too large, unknown shape) and
/// failed closed.
pub const TOLLGATE_UNPARSEABLE: &str = "390904";

/// SQLSTATE for Tollgate denials: insufficient privilege.
pub const SQL_STATE_DENIED: &str = "42501";
/// SQLSTATE for Tollgate refusing a request it cannot parse: syntax error or access rule
/// violation.
pub const SQL_STATE_UNPARSEABLE: &str = "42000";
/// SQLSTATE for an expired approval: query canceled.
pub const SQL_STATE_CANCELED: &str = "57014";

/// Whether `code` asks the driver to poll `getResultUrl`.
pub fn is_in_progress(code: &str) -> bool {
    code == QUERY_IN_PROGRESS || code == QUERY_IN_PROGRESS_ASYNC
}
