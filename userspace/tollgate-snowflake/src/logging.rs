//! Phase 10 — logging: the one place where audit events are built, each from a typed record of
//! what happened ([`Record`]). Events carry who (process, Snowflake identity), what (statement
//! kinds, tables, the literal-free fingerprint, SQL with literals redacted unless the rule keeps
//! it in full) and what came of it — never tokens, keys, or result values beyond the rows a rule
//! asks to record.

use tollgate_audit::{Event, EventKind, STATEMENT_ATTR};
use tollgate_identity::{Identity, ProcessIdentity, SnowflakeIdentity};
use tollgate_proxy::record::{ConnectionRecord, Decision as GateDecision};
use tollgate_proxy::ConnectionContext;

use crate::chunks::{ChunkResult, ChunkTicket};
use crate::context::{LoginOutcome, ResultOutcome};
use crate::decide::Decided;
use crate::identify::policy_identity;
use crate::plan::counted;
use crate::reply::{Refusal, TOLLGATE_DENIED_CODE};
use crate::session::Session;
use crate::sql_api::SqlApiIdentity;

/// Something that happened, to be recorded.
#[derive(Debug)]
#[non_exhaustive]
pub enum Record<'a> {
    /// The gate intercepted a connection.
    ConnectionOpened,
    /// A login is about to reach Snowflake.
    LoginAttempt {
        /// Who logs in, as the request says.
        request: &'a SnowflakeIdentity,
    },
    /// Snowflake answered a login.
    LoginDone {
        /// Who logged in, as the request said.
        request: &'a SnowflakeIdentity,
        /// The process behind the login.
        process: Option<&'a ProcessIdentity>,
        /// What came of it.
        outcome: &'a LoginOutcome,
    },
    /// A statement was decided (a `query` and a `decision` event).
    Statement {
        /// The session, when known (the events' chain).
        session: Option<&'a Session>,
        /// Who asked: the identity the policy decided on.
        who: &'a Identity,
        /// The SQL text.
        sql: &'a str,
        /// The decision.
        decided: &'a Decided,
        /// The SQL API identity, for SQL API statements.
        api: Option<&'a SqlApiIdentity>,
    },
    /// Tollgate answered a request itself (an endpoint it does not serve, a path it cannot read
    /// unambiguously, a result it has no decision for).
    Refused {
        /// The session, when known.
        session: Option<&'a Session>,
        /// Which endpoint (a short name).
        endpoint: &'a str,
        /// Why.
        refusal: &'a Refusal,
    },
    /// A statement's response.
    Result {
        /// The session, when known.
        session: Option<&'a Session>,
        /// The deciding rule, when a decision is known.
        rule_id: Option<&'a str>,
        /// The statement's key ([`statement_key`] of its events), when this exchange decided it.
        statement: Option<&'a str>,
        /// What came of it.
        outcome: &'a ResultOutcome,
        /// Microseconds since the request arrived.
        duration_us: u64,
    },
    /// A session logged out.
    Logout {
        /// The session.
        session: &'a Session,
    },
    /// A result chunk was served (or failed).
    Chunk {
        /// The ticket.
        ticket: &'a ChunkTicket,
        /// How it ended.
        result: &'a ChunkResult,
        /// Microseconds the serving took.
        duration_us: u64,
    },
}

/// The events recording `record` on `conn`.
pub fn events(conn: &ConnectionContext, record: Record<'_>) -> Vec<Event> {
    match record {
        Record::ConnectionOpened => vec![connection_opened(conn)],
        Record::LoginAttempt { request } => {
            let who = login_identity(request, conn.process.as_deref());
            let mut e = event(EventKind::Login, conn, None, &who);
            e.decision = "attempt".into();
            if let Some(a) = &request.authenticator {
                e.attrs.insert("authenticator".into(), a.clone());
            }
            vec![e]
        }
        Record::LoginDone {
            request,
            process,
            outcome,
        } => match outcome {
            LoginOutcome::Started(session) => {
                let mut e = session_event(EventKind::Login, conn, Some(session));
                e.decision = "ok".into();
                if let Some(a) = &request.authenticator {
                    e.attrs.insert("authenticator".into(), a.clone());
                }
                if let Some(c) = &request.client {
                    e.attrs.insert("client".into(), c.clone());
                }
                vec![e]
            }
            LoginOutcome::Failed { code, message } => {
                let process = process.or(conn.process.as_deref());
                let mut e = event(
                    EventKind::Login,
                    conn,
                    None,
                    &login_identity(request, process),
                );
                e.decision = "failed".into();
                e.error_code.clone_from(code);
                e.reason.clone_from(message);
                vec![e]
            }
        },
        Record::Statement {
            session,
            who,
            sql,
            decided,
            api,
        } => statement(conn, session, who, sql, decided, api),
        Record::Refused {
            session,
            endpoint,
            refusal,
        } => {
            let mut e = session_event(EventKind::Error, conn, session);
            e.decision = "refused".into();
            e.reason.clone_from(&refusal.message);
            e.error_code = TOLLGATE_DENIED_CODE.into();
            e.attrs.insert("endpoint".into(), endpoint.to_owned());
            e.attrs
                .insert("side".into(), refusal.kind.side().name().to_owned());
            vec![e]
        }
        Record::Result {
            session,
            rule_id,
            statement,
            outcome,
            duration_us,
        } => {
            let mut e = session_event(EventKind::Result, conn, session);
            if let Some(key) = statement {
                e.attrs.insert(STATEMENT_ATTR.to_owned(), key.to_owned());
            }
            e.query_id = outcome.query_id.clone().unwrap_or_default();
            e.decision = outcome.status.name().to_owned();
            e.rule_id = rule_id.unwrap_or_default().to_owned();
            e.rows = outcome.rows;
            e.bytes = outcome.bytes;
            e.masked.clone_from(&outcome.masked);
            e.error_code.clone_from(&outcome.error_code);
            e.reason.clone_from(&outcome.reason);
            if let Some(c) = outcome.chunks {
                e.attrs.insert("chunks".into(), c.served.to_string());
                e.attrs
                    .insert("chunks_dropped".into(), c.dropped.to_string());
                e.attrs.insert("chunk_bytes".into(), c.bytes.to_string());
            }
            if let Some(by) = outcome.capped_by {
                e.attrs.insert("capped_by".into(), by.to_owned());
            }
            if let Some(err) = &outcome.result_rows_error {
                e.attrs
                    .insert("result_rows_error".into(), err.chars().take(200).collect());
            }
            e.result_rows.clone_from(&outcome.result_rows);
            e.duration_us = duration_us;
            vec![e]
        }
        Record::Logout { session } => {
            let mut e = session_event(EventKind::SessionEnd, conn, Some(session));
            e.decision = "logout".into();
            vec![e]
        }
        Record::Chunk {
            ticket,
            result,
            duration_us,
        } => {
            let mut e = session_event(EventKind::Chunk, conn, Some(&ticket.session));
            e.query_id.clone_from(&ticket.query_id);
            e.rows = ticket.rows;
            e.bytes = ticket.bytes;
            e.attrs.insert("chunk".into(), ticket.index.to_string());
            e.duration_us = duration_us;
            match result {
                Ok(counts) => {
                    e.decision = "served".into();
                    if let Some(counts) = counts {
                        e.masked = counted(&ticket.masked, counts);
                    }
                }
                Err(why) => {
                    e.decision = "failed".into();
                    e.reason.clone_from(why);
                }
            }
            vec![e]
        }
    }
}

/// The key linking a statement's events (its `query` event's id, in [`STATEMENT_ATTR`]), from
/// the events of a [`Record::Statement`]; `None` for SQL API statements.
pub fn statement_key(events: &[Event]) -> Option<String> {
    events
        .iter()
        .find(|e| e.kind == EventKind::Query)
        .and_then(|e| e.attrs.get(STATEMENT_ATTR).cloned())
}

/// The `query` and `decision` events of a decided statement, about `who` the policy decided
/// for (for the SQL API, the identity the request carries).
/// Driver statements' events are linked by [`STATEMENT_ATTR`].
fn statement(
    conn: &ConnectionContext,
    session: Option<&Session>,
    who: &Identity,
    sql: &str,
    decided: &Decided,
    api: Option<&SqlApiIdentity>,
) -> Vec<Event> {
    let decision = &decided.decision;
    let kind_names = decided.kinds.join(",");
    let mut q = event(EventKind::Query, conn, session, who);
    if decision.record.sql_full {
        sql.clone_into(&mut q.sql);
        q.sql_full = true;
    } else {
        q.sql.clone_from(&decided.redacted_sql);
    }
    q.sql_fingerprint.clone_from(&decided.fingerprint);
    q.statement_kind.clone_from(&kind_names);
    q.tables.clone_from(&decided.tables);
    if let Some(api) = api {
        q.attrs.insert("api".into(), "sql_api".into());
        q.attrs.insert("identity_source".into(), api.source.clone());
    }
    let mut d = event(EventKind::Decision, conn, session, who);
    // The key links the statement to its `result` event. SQL API statements have none (their
    // results are fetched by handle), so they carry no key: recovery would mark them lost.
    if api.is_none() {
        let key = q.event_id.to_string();
        q.attrs.insert(STATEMENT_ATTR.to_owned(), key.clone());
        d.attrs.insert(STATEMENT_ATTR.to_owned(), key);
    }
    d.rule_id.clone_from(&decision.rule_id);
    d.decision = decision.action.name().to_owned();
    d.statement_kind = kind_names;
    d.tables.clone_from(&decided.tables);
    d.sql_fingerprint.clone_from(&decided.fingerprint);
    d.sql.clone_from(&q.sql);
    d.sql_full = q.sql_full;
    match &decision.action {
        tollgate_policy::Action::Deny { reason }
        | tollgate_policy::Action::RequireApproval { reason } => {
            d.reason.clone_from(reason);
        }
        _ => {}
    }
    if let Some(n) = decision.max_rows {
        d.attrs.insert("max_rows".into(), n.to_string());
    }
    if let Some(n) = decision.max_bytes {
        d.attrs.insert("max_bytes".into(), n.to_string());
    }
    vec![q, d]
}

/// An event of `kind` on this connection, in the session's chain (else the connection's), about
/// `who`.
fn event(
    kind: EventKind,
    conn: &ConnectionContext,
    session: Option<&Session>,
    who: &Identity,
) -> Event {
    let chain = session
        .map(|s| s.id.clone())
        .unwrap_or_else(|| Event::connection_chain(&conn.id));
    let mut e = Event::new(kind, chain);
    e.connection_id.clone_from(&conn.id);
    e.with_identity(who);
    e
}

/// An event of `kind` about the session (its Snowflake identity, the process that logged in)
/// or, without one, about the connection's process.
fn session_event(kind: EventKind, conn: &ConnectionContext, session: Option<&Session>) -> Event {
    let who = policy_identity(conn, session, None, None);
    event(kind, conn, session, &who)
}

/// Who a login request says logs in, from `process`.
fn login_identity(request: &SnowflakeIdentity, process: Option<&ProcessIdentity>) -> Identity {
    Identity {
        snowflake: request.clone(),
        process: process.cloned(),
        ..Identity::default()
    }
}

/// Who a connection event is about: the connection's process only.
fn process_identity(process: Option<&ProcessIdentity>) -> Identity {
    Identity {
        process: process.cloned(),
        ..Identity::default()
    }
}

/// The `connection` event of an intercepted connection, at accept.
fn connection_opened(ctx: &ConnectionContext) -> Event {
    let mut e = Event::new(EventKind::Connection, Event::connection_chain(&ctx.id))
        .attr("client", ctx.client)
        .attr("original_dst", ctx.original_dst)
        .attr("sni", &ctx.sni)
        .attr("gate", "intercept");
    e.connection_id.clone_from(&ctx.id);
    e.decision = "intercept".into();
    e.with_identity(&process_identity(ctx.process.as_deref()));
    e
}

/// The events of a closed connection: `disconnect` for an intercepted one (its `connection`
/// event was recorded at accept); `connection` + `disconnect` for one the gate blocked. Other
/// connections (passed through, rejected before the gate) are in the connection records only.
pub fn connection_closed_events(r: &ConnectionRecord) -> Vec<Event> {
    let chain = Event::connection_chain(&r.id);
    let who = process_identity(r.process.as_ref());
    let mut out = Vec::new();
    if r.decision == GateDecision::Block {
        let mut open = Event::new(EventKind::Connection, chain.clone())
            .attr("client", r.client)
            .attr("gate", "block");
        if let Some(d) = r.original_dst {
            open = open.attr("original_dst", d);
        }
        if let Some(s) = &r.sni {
            open = open.attr("sni", s);
        }
        open.connection_id.clone_from(&r.id);
        open.decision = "block".into();
        open.with_identity(&who);
        out.push(open);
    } else if r.decision != GateDecision::Intercept {
        return out;
    }
    let mut close = Event::new(EventKind::Disconnect, chain)
        .attr("bytes_up", r.bytes_up)
        .attr("bytes_down", r.bytes_down)
        .attr("requests", r.requests)
        .attr("upstream_verified", r.upstream_verified);
    close.connection_id.clone_from(&r.id);
    close.reason = r.close_reason.to_string();
    close.duration_us = r.duration_ms.saturating_mul(1000);
    close.with_identity(&who);
    out.push(close);
    out
}
