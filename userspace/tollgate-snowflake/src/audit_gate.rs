//! Phase 5 — the audit gate: no access without audit, and no waiting for the disk where the
//! promise does not need it. The events of a step (a login attempt, a statement and its
//! decision) are *written* to the spool before the step proceeds — they survive a crash of
//! Tollgate from then on — and their `fdatasync` runs while Snowflake works: the answer is
//! released to the agent only once they are *durable* ([`release`]). A result's event is written
//! before the answer leaves and made durable by the next sync. When the spool cannot be written
//! the step is refused; when it cannot be made durable the answer is withheld. Events that gate
//! nothing (a connection's close, a chunk's counts after it was served) are queued without
//! waiting. The promise in full: `tollgate-audit`'s README.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tollgate_audit::{Event, Spool, SpoolError, Written};
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

    /// Whether the last awaited append succeeded and the spool is not broken.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.spool.broken().is_none()
    }

    fn note<T>(&self, res: Result<T, SpoolError>) -> Result<T, SpoolError> {
        self.healthy.store(res.is_ok(), Ordering::Relaxed);
        res
    }

    /// Appends and waits until written (not durable: see [`Written::durable`]).
    pub async fn write(&self, events: Vec<Event>) -> Result<Written, SpoolError> {
        let res = self.spool.append_written(events).await;
        self.note(res)
    }

    /// Appends an event nothing waits for (see [`Spool::write_lazy`]).
    pub fn write_lazy(&self, events: Vec<Event>) -> Result<(), SpoolError> {
        let res = self.spool.write_lazy(events).map(|_| ());
        self.note(res)
    }

    /// Appends and waits until durable.
    pub async fn record(&self, events: Vec<Event>) -> Result<(), SpoolError> {
        let res = self.spool.append_many(events).await.map(|_| ());
        self.note(res)
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

/// Events written whose durability an answer waits for ([`release`]). Empty when nothing was
/// recorded (no auditor, no events).
#[derive(Debug, Default)]
#[must_use = "an answer may be released only once its events are durable: pass this to `release`"]
pub struct Pending(Option<Written>);

/// The refusal when the spool fails (in `api`'s shape).
fn unauditable(e: &SpoolError, api: Api) -> Refusal {
    Refusal::new(
        RefusalKind::Unauditable,
        api,
        format!(
            "Tollgate refused this request because it cannot be audited: {e}. No access without audit; tell the operator of this host."
        ),
    )
}

/// Writes `events` before the step proceeds; on failure, the refusal to answer instead.
pub async fn gate_written(
    audit: Option<&Auditor>,
    events: Vec<Event>,
    api: Api,
) -> Result<Pending, Refusal> {
    let Some(audit) = audit else {
        return Ok(Pending::default());
    };
    if events.is_empty() {
        return Ok(Pending::default());
    }
    match audit.write(events).await {
        Ok(w) => Ok(Pending(Some(w))),
        Err(e) => {
            error!(error = %e, "request refused: the audit spool cannot be written");
            Err(unauditable(&e, api))
        }
    }
}

/// Writes `events` of a step that has happened (a result's record, before its answer leaves):
/// written first, made durable by the next sync (at most [`tollgate_audit::LAZY_SYNC`] later);
/// on failure, the refusal to answer instead.
pub fn record_written(
    audit: Option<&Auditor>,
    events: Vec<Event>,
    api: Api,
) -> Result<(), Refusal> {
    let Some(audit) = audit.filter(|_| !events.is_empty()) else {
        return Ok(());
    };
    audit.write_lazy(events).map_err(|e| {
        error!(error = %e, "answer withheld: the audit spool cannot be written");
        unauditable(&e, api)
    })
}

/// Waits until the events of `pending` are durable, before an answer is released; on failure,
/// the refusal to answer instead (the answer is withheld).
pub async fn release(audit: Option<&Auditor>, pending: Pending, api: Api) -> Result<(), Refusal> {
    let (Some(audit), Some(written)) = (audit, pending.0) else {
        return Ok(());
    };
    if written.is_durable() {
        return Ok(());
    }
    audit
        .note(written.durable().await.map(|_| ()))
        .map_err(|e| {
            error!(error = %e, "answer withheld: its audit events could not be made durable");
            unauditable(&e, api)
        })
}

/// Makes `events` durable before the step proceeds; on failure, the refusal to answer instead.
pub async fn gate(audit: Option<&Auditor>, events: Vec<Event>, api: Api) -> Result<(), Refusal> {
    release(audit, gate_written(audit, events, api).await?, api).await
}
