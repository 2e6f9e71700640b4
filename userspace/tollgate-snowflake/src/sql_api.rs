//! The SQL API (`/api/v2/statements`): the identity a request carries, and the statement
//! handles Tollgate decided.
//!
//! A SQL API request has no login: its bearer token is the credential. Until tokens are
//! verified (the identity work), a statement is decided with what the request says of itself —
//! the user and account in the token's claims (a key-pair JWT's `sub` is `ACCOUNT.USER`; an
//! OAuth JWT's `sub` and `scp` `session:role:R`), and the role, warehouse, database and schema
//! of the body. Snowflake verifies the token and refuses a role the user does not have, so a
//! request that claims someone else's identity fails there; the refusal Tollgate gives says
//! which identity it decided with and that it is unverified.
//!
//! Results are fetched later by handle (`GET /api/v2/statements/<handle>`), and any query id is
//! a handle — including one whose result Tollgate masked for a driver session. So a handle is
//! served only when Tollgate allowed its statement, for the same bearer token.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tollgate_identity::SnowflakeIdentity;
use tollgate_wire::snowflake::StatementRequest;

use crate::sync::lock;

/// How a SQL API request says who it is (`X-Snowflake-Authorization-Token-Type`).
pub const TOKEN_TYPE_HEADER: &str = "x-snowflake-authorization-token-type";

/// The identity of one SQL API request, as the request states it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SqlApiIdentity {
    /// Account, user, role, warehouse, database, schema (as far as the request names them).
    pub snowflake: SnowflakeIdentity,
    /// Where they came from, for the refusal and the audit record.
    pub source: String,
}

impl SqlApiIdentity {
    /// From the token type header, the bearer token and the body; `account_host` is the
    /// Snowflake host addressed (`acct.snowflakecomputing.com`).
    pub fn from_request(
        token_type: Option<&str>,
        bearer: Option<&str>,
        body: &StatementRequest,
        account_host: &str,
    ) -> Self {
        let token_type = token_type.map(str::to_ascii_uppercase);
        let claims = bearer.and_then(jwt_claims);
        let mut id = SnowflakeIdentity {
            role: body.role.clone(),
            warehouse: body.warehouse.clone(),
            database: body.database.clone(),
            schema: body.schema.clone(),
            authenticator: Some(format!(
                "SQL_API:{}",
                token_type.as_deref().unwrap_or("UNSPECIFIED")
            )),
            ..SnowflakeIdentity::default()
        };
        let sub = claims
            .as_ref()
            .and_then(|c| c.get("sub"))
            .and_then(Value::as_str);
        let from_token = match (token_type.as_deref(), sub) {
            (Some("KEYPAIR_JWT"), Some(sub)) => {
                // `ACCOUNT.USER`; the account may itself contain no dots (its locator).
                if let Some((account, user)) = sub.split_once('.') {
                    id.account = Some(account.to_owned());
                    id.user = Some(user.to_owned());
                }
                "key-pair JWT claims"
            }
            (_, Some(sub)) => {
                id.user = Some(sub.to_owned());
                "token claims"
            }
            _ => "no readable token claims",
        };
        if id.role.is_none() {
            id.role = claims
                .as_ref()
                .and_then(|c| c.get("scp"))
                .and_then(scope_role);
        }
        if id.account.is_none() {
            id.account = account_host
                .split('.')
                .next()
                .filter(|a| !a.is_empty())
                .map(str::to_ascii_uppercase);
        }
        let describe = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        SqlApiIdentity {
            source: format!(
                "user {} and role {} from the request's {from_token} and body, unverified",
                describe(&id.user),
                describe(&id.role)
            ),
            snowflake: id,
        }
    }
}

/// The claims of a JWT, read without verifying it (it is verified by Snowflake).
fn jwt_claims(token: &str) -> Option<serde_json::Map<String, Value>> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// `session:role:ANALYST` in an OAuth scope (a string of space-separated scopes or a list).
fn scope_role(scp: &Value) -> Option<String> {
    let scopes: Vec<&str> = match scp {
        Value::String(s) => s.split_whitespace().collect(),
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    scopes
        .iter()
        .find_map(|s| s.strip_prefix("session:role:"))
        .map(str::to_owned)
}

/// The statement handles of a SQL API response (`statementHandle`, `statementHandles`).
pub fn response_handles(body: &[u8]) -> Vec<String> {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let mut handles: Vec<String> = json
        .get("statementHandle")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .into_iter()
        .collect();
    if let Some(list) = json.get("statementHandles").and_then(Value::as_array) {
        handles.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    handles
}

/// A digest of a bearer token (the token itself is never kept).
pub fn bearer_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Handles whose statements Tollgate allowed, each bound to the bearer token that submitted it.
#[derive(Debug, Default)]
pub struct AllowedHandles {
    inner: Mutex<HandleTable>,
}

/// Handle → (bearer digest, when allowed), and the handles in the order they were allowed.
type HandleTable = (HashMap<String, ([u8; 32], Instant)>, VecDeque<String>);

/// How long a handle stays fetchable (the SQL API keeps results for a day).
const HANDLE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Handles remembered at most (oldest forgotten first).
const MAX_HANDLES: usize = 65_536;

impl AllowedHandles {
    /// Remembers `handle` as allowed for `bearer`.
    pub fn allow(&self, handle: String, bearer: [u8; 32]) {
        let mut guard = lock(&self.inner);
        let (map, order) = &mut *guard;
        while order.len() >= MAX_HANDLES {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
        if map
            .insert(handle.clone(), (bearer, Instant::now()))
            .is_none()
        {
            order.push_back(handle);
        }
    }

    /// Whether `handle` was allowed for `bearer` and is still within its lifetime.
    pub fn is_allowed(&self, handle: &str, bearer: &[u8; 32]) -> bool {
        let guard = lock(&self.inner);
        guard
            .0
            .get(handle)
            .is_some_and(|(b, at)| b == bearer && at.elapsed() < HANDLE_LIFETIME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(claims))
    }

    fn body(json: &str) -> StatementRequest {
        StatementRequest::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn key_pair_claims_and_body() {
        let token = jwt(r#"{"iss":"DEMO.AGENT1.SHA256:x","sub":"DEMO.AGENT1","exp":1}"#);
        let id = SqlApiIdentity::from_request(
            Some("KEYPAIR_JWT"),
            Some(&token),
            &body(r#"{"statement":"select 1","role":"ANALYST","database":"CLINICAL"}"#),
            "demo-acct.snowflakecomputing.com",
        );
        assert_eq!(id.snowflake.account.as_deref(), Some("DEMO"));
        assert_eq!(id.snowflake.user.as_deref(), Some("AGENT1"));
        assert_eq!(id.snowflake.role.as_deref(), Some("ANALYST"));
        assert_eq!(id.snowflake.database.as_deref(), Some("CLINICAL"));
        assert!(id.source.contains("unverified"), "{}", id.source);
    }

    #[test]
    fn oauth_scope_role_and_opaque_tokens() {
        let token = jwt(r#"{"sub":"agent1","scp":"refresh_token session:role:AGENT_ETL"}"#);
        let id = SqlApiIdentity::from_request(
            Some("OAUTH"),
            Some(&token),
            &body(r#"{"statement":"select 1"}"#),
            "demo-acct.snowflakecomputing.com",
        );
        assert_eq!(id.snowflake.user.as_deref(), Some("agent1"));
        assert_eq!(id.snowflake.role.as_deref(), Some("AGENT_ETL"));
        assert_eq!(id.snowflake.account.as_deref(), Some("DEMO-ACCT"));
        let id = SqlApiIdentity::from_request(
            Some("PROGRAMMATIC_ACCESS_TOKEN"),
            Some("opaque-token"),
            &body(r#"{"statement":"select 1","role":"R"}"#),
            "demo-acct.snowflakecomputing.com",
        );
        assert_eq!(id.snowflake.user, None);
        assert_eq!(id.snowflake.role.as_deref(), Some("R"));
        assert!(id.source.contains("no readable token claims"));
    }

    #[test]
    fn handles_are_bound_to_the_bearer() {
        let handles = AllowedHandles::default();
        let a = bearer_digest("token-a");
        handles.allow("01b2-h".into(), a);
        assert!(handles.is_allowed("01b2-h", &a));
        assert!(!handles.is_allowed("01b2-h", &bearer_digest("token-b")));
        assert!(!handles.is_allowed("other", &a));
        assert_eq!(
            response_handles(br#"{"statementHandle":"h1","statementHandles":["h2","h3"]}"#),
            ["h1", "h2", "h3"]
        );
        assert!(response_handles(b"not json").is_empty());
    }
}
