//! Tollgate's Snowflake layer: what happens to every intercepted Snowflake exchange, as
//! explicit phases that a reader can follow in order. [`SnowflakeHooks`] plugs into the
//! generic proxy (`tollgate-proxy`) through its `ExchangeHooks`; each exchange carries a typed
//! context ([`context::ExchangeCtx`]) from its request to its response.
//!
//! On the request:
//! 1. [`classify`] — the endpoint, from the normalised path; the canonical target is what is
//!    forwarded; an ambiguous path is refused.
//! 2. [`body`] — the body read within its caps and decoded (gzip bombs refused).
//! 3. [`identify`] — the Snowflake session (by token digest), the process behind the
//!    connection, the policy's identity.
//! 4. [`decide`] — pure: SQL analysis and policy give a [`decide::Verdict`] — allow (with the
//!    result's plan), deny (a typed [`Refusal`]) or hold.
//! 5. [`audit_gate`] — the statement's events are durable before it proceeds; a spool that
//!    cannot be written refuses it (no access without audit).
//! 6. [`hold`] — a held statement waits for a human (an explicit no-op that refuses until
//!    approvals land).
//! 7. [`upstream`] — the upstream request filter (where credential brokering rewrites logins
//!    and tokens; unchanged today).
//!
//! On the response:
//! 8. [`observe`] — logins create sessions, renewals and logouts keep them, `USE` and
//!    `final*Name` keep their identity current.
//! 9. [`rewrite`] — results masked and capped, chunk URLs replaced by tickets served through
//!    Tollgate ([`chunks`], fetched by [`storage`]); the CPU work runs on a bounded blocking
//!    [`pool`], off the async runtime.
//! 10. [`logging`] — the one place where audit events are built, from typed records.
//!
//! Leaf modules the phases share: [`config`], [`reply`] (refusals and withheld results, typed
//! by kind and by the [`Side`] that failed), [`plan`], [`session`], [`sql_api`].
//!
//! Never logged or recorded: tokens, keys, storage URLs, SQL literals (statements are logged by
//! rule, kinds and the literal-free fingerprint), result values (beyond the rows a rule asks the
//! audit record to keep).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod audit_gate;
pub mod body;
pub mod budget;
pub mod chunks;
pub mod classify;
pub mod config;
pub mod context;
pub mod decide;
pub mod hold;
mod hooks;
pub mod identify;
pub mod logging;
pub mod observe;
pub mod plan;
pub mod pool;
pub mod reply;
pub mod rewrite;
pub mod session;
pub mod sql_api;
pub mod storage;
mod sync;
pub mod upstream;

pub use audit_gate::Auditor;
pub use chunks::{ChunkStore, CHUNK_PATH_PREFIX};
pub use config::{SnowflakeConfig, UnknownEndpoints, DEFAULT_MAX_INSPECTED_RESPONSE};
pub use hooks::{LayerStats, SnowflakeExchange, SnowflakeHooks, StatsSnapshot};
pub use plan::{MaskedColumn, Masking, ResultPlan};
pub use reply::{Refusal, RefusalKind, Side, Withheld, WithheldReason, TOLLGATE_DENIED_CODE};
pub use rewrite::RewriteReport;
pub use session::{Session, SessionTable};
pub use sql_api::SqlApiIdentity;
pub use storage::{StorageClient, StorageConfig};
