//! Phase 5 — the audit gate: the events of a step are durable in the spool before the step
//! proceeds (a statement is forwarded, a result handed out); when the spool cannot be written
//! the step is refused — no access without audit. Events that gate nothing (a connection's
//! close, a chunk's counts after it was served) are queued without waiting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tollgate_audit::{Event, Spool, SpoolError};
use tracing::error;

use crate::reply::{Api, Refusal, RefusalKind};

/// Appends audit events for the layer. Cheap to share.
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

    /// Queues every event without waiting.
    pub fn record_all_detached(&self, events: Vec<Event>) {
        for e in events {
            self.spool.append_detached(e);
        }
    }
}

/// Makes `events` durable; on failure, the refusal to answer instead (in `api`'s shape).
pub async fn gate(audit: Option<&Auditor>, events: Vec<Event>, api: Api) -> Result<(), Refusal> {
    let Some(audit) = audit else {
        return Ok(());
    };
    if events.is_empty() {
        return Ok(());
    }
    audit.record(events).await.map_err(|e| {
        error!(error = %e, "request refused: the audit spool cannot be written");
        Refusal::new(
            RefusalKind::Unauditable,
            api,
            format!(
                "Tollgate refused this request because it cannot be audited: {e}. No access without audit; tell the operator of this host."
            ),
        )
    })
}
