//! The data path's side of the audit trail: builds [`Event`]s from what the proxy knows
//! (connection, process, Snowflake session, decision, result) and appends them to the spool.
//!
//! Appends that gate access are awaited (the event is fsync'd before the step proceeds) and
//! their failure refuses the step; the others (a connection's close, a chunk's counts after it
//! was served) are queued without waiting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tollgate_audit::{Event, EventKind, Spool, SpoolError};

use crate::hooks::ConnectionContext;
use crate::identity::ProcessIdentity;
use crate::record::ConnectionRecord;
use crate::snowflake::SnowflakeIdentity;

/// Appends audit events for the proxy. Cheap to share.
#[derive(Debug, Clone)]
pub struct Auditor {
    spool: Spool,
    healthy: Arc<AtomicBool>,
}

impl Auditor {
    /// Events go to `spool`.
    pub fn new(spool: Spool) -> Self {
        Auditor {
            spool,
            healthy: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The spool.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Whether the last awaited append succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Appends and waits until durable.
    pub async fn record(&self, events: Vec<Event>) -> Result<(), SpoolError> {
        let res = self.spool.append_many(events).await.map(|_| ());
        self.healthy.store(res.is_ok(), Ordering::Relaxed);
        res
    }

    /// Queues without waiting.
    pub fn record_detached(&self, event: Event) {
        self.spool.append_detached(event);
    }
}

/// Fills the process fields.
pub fn with_process(e: &mut Event, p: Option<&ProcessIdentity>) {
    if let Some(p) = p {
        e.pid = Some(p.tgid);
        e.uid = Some(p.uid);
        e.comm.clone_from(&p.comm);
        e.exe = p.exe.clone().unwrap_or_default();
        e.cgroup = p.cgroup_path.clone().unwrap_or_default();
    }
}

/// Fills the Snowflake identity fields.
pub fn with_snowflake(e: &mut Event, id: &SnowflakeIdentity) {
    e.sf_account = id.account.clone().unwrap_or_default();
    e.sf_user = id.user.clone().unwrap_or_default();
    e.sf_role = id.role.clone().unwrap_or_default();
    e.sf_warehouse = id.warehouse.clone().unwrap_or_default();
    e.sf_database = id.database.clone().unwrap_or_default();
    e.sf_schema = id.schema.clone().unwrap_or_default();
}

/// The `connection` event of an intercepted connection, at accept.
pub fn connection_opened(ctx: &ConnectionContext) -> Event {
    let mut e = Event::new(EventKind::Connection, Event::connection_chain(&ctx.id))
        .attr("client", ctx.client)
        .attr("original_dst", ctx.original_dst)
        .attr("sni", &ctx.sni)
        .attr("gate", "intercept");
    e.connection_id.clone_from(&ctx.id);
    e.decision = "intercept".into();
    with_process(&mut e, ctx.process.as_deref());
    e
}

/// The events of a closed connection: `disconnect` for an intercepted one (its `connection`
/// event was recorded at accept); `connection` + `disconnect` for one the gate blocked. Other
/// connections (passed through, rejected before the gate) are in the connection records only.
pub fn connection_closed(r: &ConnectionRecord) -> Vec<Event> {
    use crate::record::Decision;
    let chain = Event::connection_chain(&r.id);
    let mut out = Vec::new();
    if r.decision == Decision::Block {
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
        with_process(&mut open, r.process.as_ref());
        out.push(open);
    } else if r.decision != Decision::Intercept {
        return out;
    }
    let mut close = Event::new(EventKind::Disconnect, chain)
        .attr("bytes_up", r.bytes_up)
        .attr("bytes_down", r.bytes_down)
        .attr("requests", r.requests)
        .attr("upstream_verified", r.upstream_verified);
    close.connection_id.clone_from(&r.id);
    close.reason.clone_from(&r.close_reason);
    close.duration_us = r.duration_ms.saturating_mul(1000);
    with_process(&mut close, r.process.as_ref());
    out.push(close);
    out
}
