//! Tollgate's audit trail.
//!
//! Every step of an intercepted session becomes an [`Event`]: connection, login, query,
//! decision, result, chunk, approval request and decision, error, disconnect, session end.
//! Events go first to the local [`Spool`] — written before the step they describe proceeds, and
//! durable (fsync'd) before its outcome is released ([`spool`] has the precise promise) — where they are sealed into per-session hash chains ([`chain`]) whose final event
//! is signed with the host key. The spool is the embedded default store; [`clickhouse`] ships
//! it to ClickHouse in batches, exactly once, without ever blocking the request path.
//! [`verify`] proves a record complete and unaltered; [`replay`] prints a session as it
//! happened.
//!
//! Layout: pure cores ([`event`], [`chain`], [`verify`], [`replay`]) and thin I/O
//! ([`spool`], [`clickhouse`]).

pub mod chain;
pub mod clickhouse;
pub mod event;
pub mod replay;
pub mod spool;
pub mod verify;

pub use chain::{HostKey, PublicKey};
pub use event::{Event, EventKind, MaskedCount};
pub use spool::{
    Receipt, Recovery, Spool, SpoolError, SpoolOptions, Written, LAZY_SYNC, STATEMENT_ATTR,
};
pub use verify::{verify, Problem, Report, Scope};
