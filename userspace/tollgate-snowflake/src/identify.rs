//! Phase 3 — identify: who is asking. The Snowflake session comes from the token the request
//! presents (looked up by digest), the process from the redirect record of the connection;
//! together they form the policy's [`Identity`]. (Verified OIDC claims join here.)

use std::sync::Arc;

use http::Request;
use tollgate_policy::Identity;
use tollgate_proxy::{ConnectionContext, ProxyBody};
use tollgate_wire::snowflake::{parse_authorization, AuthToken, Secret};

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

/// The identity the policy decides on: the Snowflake identity of the session (or of the SQL
/// API token), the process that logged in (or behind this connection), and this host.
pub fn policy_identity(
    conn: &ConnectionContext,
    session: Option<&Session>,
    sql_api: Option<&SqlApiIdentity>,
    host: Option<&str>,
) -> Identity {
    let sf = match sql_api {
        Some(api) => api.snowflake.clone(),
        None => session.map(Session::identity).unwrap_or_default(),
    };
    let process = session
        .and_then(|s| s.process.clone())
        .or_else(|| conn.process.clone());
    Identity {
        account: sf.account,
        user: sf.user,
        role: sf.role,
        warehouse: sf.warehouse,
        database: sf.database,
        schema: sf.schema,
        uid: process.as_ref().map(|p| p.uid),
        comm: process.as_ref().map(|p| p.comm.clone()),
        exe: process.as_ref().and_then(|p| p.exe.clone()),
        cgroup_path: process.as_ref().and_then(|p| p.cgroup_path.clone()),
        host: host.map(str::to_owned),
        claims: Default::default(),
    }
}
