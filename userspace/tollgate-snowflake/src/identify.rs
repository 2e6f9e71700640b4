//! Phase 3 — identify: who is asking. The Snowflake session comes from the token the request
//! presents (looked up by digest), the process from the redirect record of the connection;
//! together they form the [`Identity`] (`tollgate-identity`) the policy decides on and the
//! audit events record. (Verified OIDC claims join here.)

use std::sync::Arc;

use http::Request;
use tollgate_identity::{Claims, Identity, ProcessIdentity, SnowflakeIdentity};
use tollgate_proxy::{ConnectionContext, ProxyBody};
use tollgate_wire::snowflake::{parse_authorization, AuthToken, LoginRequest, Secret};

use crate::session::{Session, SessionTable};
use crate::sql_api::SqlApiIdentity;

/// The Snowflake token of the request's `Authorization` header.
fn presented_token(req: &Request<ProxyBody>) -> Option<AuthToken> {
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    parse_authorization(header)
}

/// The live session the request's token belongs to.
pub fn session_of(sessions: &SessionTable, req: &Request<ProxyBody>) -> Option<Arc<Session>> {
    sessions.get(presented_token(req)?.secret().expose())
}

/// What the request's `Authorization` header names: `None` without a token, `Some(None)` for a
/// token of no live session.
pub fn presented_session(
    sessions: &SessionTable,
    req: &Request<ProxyBody>,
) -> Option<Option<Arc<Session>>> {
    let token = presented_token(req)?;
    Some(sessions.get(token.secret().expose()))
}

/// The bearer token of a SQL API request.
pub fn bearer_token(req: &Request<ProxyBody>) -> Option<Secret> {
    match presented_token(req)? {
        AuthToken::Bearer(t) => Some(t),
        _ => None,
    }
}

/// `host[:port]` the request addressed (chunk URLs Tollgate hands out point there).
pub fn authority(req: &Request<ProxyBody>, conn: &ConnectionContext) -> String {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| conn.sni.clone())
}

/// Who a login request says logs in.
pub fn from_login(login: &LoginRequest) -> SnowflakeIdentity {
    SnowflakeIdentity {
        account: login.account.clone(),
        user: login.login_name.clone(),
        role: login.role.clone(),
        warehouse: login.warehouse.clone(),
        database: login.database.clone(),
        schema: login.schema.clone(),
        authenticator: Some(login.authenticator.as_wire().to_owned()),
        client: login.client_app_id.clone().map(|app| {
            format!(
                "{app} {}",
                login.client_app_version.clone().unwrap_or_default()
            )
        }),
    }
}

/// The process behind an exchange: the one that logged in (kept with the session), else the
/// one behind this connection.
pub fn process_of<'a>(
    conn: &'a ConnectionContext,
    session: Option<&'a Session>,
) -> Option<&'a ProcessIdentity> {
    session
        .and_then(|s| s.process.as_deref())
        .or(conn.process.as_deref())
}

/// The identity the policy decides on (and the audit records): the Snowflake identity of the
/// session (or of the SQL API token), the process that logged in (or behind this connection),
/// and this host.
pub fn policy_identity(
    conn: &ConnectionContext,
    session: Option<&Session>,
    sql_api: Option<&SqlApiIdentity>,
    host: Option<&str>,
) -> Identity {
    let snowflake = match sql_api {
        Some(api) => api.snowflake.clone(),
        None => session.map(Session::identity).unwrap_or_default(),
    };
    Identity {
        snowflake,
        process: process_of(conn, session).cloned(),
        host: host.map(str::to_owned),
        claims: Claims::default(),
    }
}
