//! Phase 8 — observe: what Snowflake's answers say about the session, applied to it. A login
//! answer creates the session (its tokens kept only as digests, for as long as Snowflake says
//! they live); a renewal maps the new tokens to the same session; `USE` and the `final*Name`
//! fields keep the identity current; a logout ends the session and its chunk tickets.

use std::sync::Arc;
use std::time::Duration;

use tollgate_identity::{ProcessIdentity, SnowflakeIdentity};
use tollgate_policy::UseKind;
use tollgate_wire::snowflake::{LoginResponse, QueryResponse, TokenResponse};
use tracing::info;

use crate::chunks::ChunkStore;
use crate::context::LoginOutcome;
use crate::session::{Session, SessionTable, DEFAULT_MASTER_VALIDITY, DEFAULT_SESSION_VALIDITY};
use crate::sql_api::{response_handles, AllowedHandles};

/// A validity in seconds as Snowflake sent it, or `default`.
fn validity(secs: Option<i64>, default: Duration) -> Duration {
    secs.map_or(default, |s| Duration::from_secs(s.max(0) as u64))
}

/// A login's (decoded) answer: the session it began, or why it failed.
pub fn login(
    sessions: &SessionTable,
    request: &SnowflakeIdentity,
    process: Option<Arc<ProcessIdentity>>,
    body: &[u8],
) -> LoginOutcome {
    let resp = match LoginResponse::parse(body) {
        Ok(r) => r,
        Err(e) => {
            return LoginOutcome::Failed {
                code: "-".into(),
                message: format!("login response unreadable: {e}"),
            }
        }
    };
    if !resp.success {
        return LoginOutcome::Failed {
            code: resp.code.clone().unwrap_or_default(),
            message: "login failed".into(),
        };
    }
    let mut identity = request.clone();
    let info = &resp.session_info;
    identity.database = info.database_name.clone().or(identity.database);
    identity.schema = info.schema_name.clone().or(identity.schema);
    identity.warehouse = info.warehouse_name.clone().or(identity.warehouse);
    identity.role = info.role_name.clone().or(identity.role);
    let session_validity = validity(resp.validity_in_seconds, DEFAULT_SESSION_VALIDITY);
    let master_validity = validity(resp.master_validity_in_seconds, DEFAULT_MASTER_VALIDITY);
    let mut tokens = Vec::new();
    if let Some(t) = &resp.token {
        tokens.push((t.expose(), session_validity));
    }
    if let Some(t) = &resp.master_token {
        tokens.push((t.expose(), master_validity));
    }
    let session = sessions.create(identity, process, &tokens, master_validity);
    info!(session = %session.id, "snowflake session started");
    LoginOutcome::Started(session)
}

/// A token renewal's answer: the new tokens map to `session`, for as long as Snowflake says
/// (the master token's life as given at login when the answer does not repeat it).
pub fn renewal(sessions: &SessionTable, session: &Arc<Session>, body: &[u8]) {
    let Ok(resp) = TokenResponse::parse(body) else {
        return;
    };
    if let Some(t) = &resp.session_token {
        let v = validity(resp.validity_in_seconds, DEFAULT_SESSION_VALIDITY);
        sessions.register(t.expose(), session, v);
    }
    if let Some(t) = &resp.master_token {
        let v = validity(resp.master_validity_in_seconds, session.master_validity());
        sessions.register(t.expose(), session, v);
    }
}

/// A logout: the session and its chunk tickets are forgotten.
pub fn logout(sessions: &SessionTable, chunks: &ChunkStore, session: &Arc<Session>) {
    sessions.remove(session);
    chunks.forget_session(session);
    info!(session = %session.id, "snowflake session ended");
}

/// A statement's answer: `USE` targets and `final*Name` fields keep the identity current.
pub fn statement(session: Option<&Arc<Session>>, uses: &[(UseKind, String)], resp: &QueryResponse) {
    let Some(session) = session else {
        return;
    };
    if !resp.success {
        return;
    }
    session.update(|id| {
        for (kind, name) in uses {
            match kind {
                UseKind::Database => {
                    id.database = Some(name.clone());
                    id.schema = None;
                }
                UseKind::Schema => id.schema = Some(name.clone()),
                UseKind::Warehouse => id.warehouse = Some(name.clone()),
                UseKind::Role => id.role = Some(name.clone()),
                _ => {}
            }
        }
        if let Some(d) = &resp.final_database_name {
            id.database = Some(d.clone());
        }
        if let Some(s) = &resp.final_schema_name {
            id.schema = Some(s.clone());
        }
        if let Some(w) = &resp.final_warehouse_name {
            id.warehouse = Some(w.clone());
        }
        if let Some(r) = &resp.final_role_name {
            id.role = Some(r.clone());
        }
    });
}

/// An allowed SQL API submission's answer: its statement handles become fetchable with the
/// same bearer token.
pub fn sql_api_submit(handles: &AllowedHandles, bearer: [u8; 32], body: &[u8]) {
    for handle in response_handles(body) {
        handles.allow(handle, bearer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGIN_OK: &str = r#"{"success":true,"code":null,"message":null,"data":{
        "token":"st-1","masterToken":"mt-1","validityInSeconds":3600,
        "masterValidityInSeconds":7200,
        "sessionInfo":{"databaseName":"CLINICAL","schemaName":"EHR","warehouseName":"WH","roleName":"ANALYST"}}}"#;

    #[test]
    fn a_login_answer_begins_a_session_with_snowflake_s_validities() {
        let t = SessionTable::default();
        let LoginOutcome::Started(s) =
            login(&t, &SnowflakeIdentity::default(), None, LOGIN_OK.as_bytes())
        else {
            panic!("login should start a session")
        };
        assert_eq!(s.master_validity(), Duration::from_secs(7200));
        assert_eq!(s.identity().schema.as_deref(), Some("EHR"));
        assert!(Arc::ptr_eq(&t.get("mt-1").unwrap(), &s));
        // A renewal without a master validity keeps the login's.
        renewal(
            &t,
            &s,
            br#"{"success":true,"data":{"sessionToken":"st-2","masterToken":"mt-2","validityInSecondsST":60}}"#,
        );
        assert!(Arc::ptr_eq(&t.get("st-2").unwrap(), &s));
        assert!(Arc::ptr_eq(&t.get("mt-2").unwrap(), &s));
    }

    #[test]
    fn failed_and_unreadable_logins_say_so() {
        let t = SessionTable::default();
        let failed = login(
            &t,
            &SnowflakeIdentity::default(),
            None,
            br#"{"success":false,"code":"390100","message":"Incorrect username or password","data":null}"#,
        );
        assert!(matches!(failed, LoginOutcome::Failed { ref code, .. } if code == "390100"));
        let junk = login(&t, &SnowflakeIdentity::default(), None, b"not json");
        assert!(
            matches!(junk, LoginOutcome::Failed { ref code, ref message } if code == "-" && message.contains("unreadable"))
        );
        assert!(t.is_empty());
    }

    #[test]
    fn use_and_final_names_update_the_session() {
        let t = SessionTable::default();
        let s = t.create(
            SnowflakeIdentity::default(),
            None,
            &[("a", Duration::from_secs(60))],
            DEFAULT_MASTER_VALIDITY,
        );
        let ok = QueryResponse::parse(br#"{"success":true,"data":{"finalRoleName":"AUDITOR"}}"#)
            .unwrap();
        statement(Some(&s), &[(UseKind::Database, "CLINICAL".into())], &ok);
        let id = s.identity();
        assert_eq!(id.database.as_deref(), Some("CLINICAL"));
        assert_eq!(id.role.as_deref(), Some("AUDITOR"));
        let failed =
            QueryResponse::parse(br#"{"success":false,"code":"002003","data":{}}"#).unwrap();
        statement(Some(&s), &[(UseKind::Database, "OTHER".into())], &failed);
        assert_eq!(
            s.identity().database.as_deref(),
            Some("CLINICAL"),
            "a failed USE changes nothing"
        );
    }
}
