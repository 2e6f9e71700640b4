//! Phase 6 — hold: a statement the policy holds for a human approval. Until approvals are
//! served, holding is an explicit no-op that refuses the statement with the policy's reason:
//! the agent's driver raises its usual error, and nothing reaches Snowflake.

use crate::decide::{Allowed, HoldRequest};
use crate::reply::Refusal;

/// What became of a held statement.
#[derive(Debug)]
pub enum Held {
    /// Approved: forward it as allowed.
    Approved(Allowed),
    /// Not approved (today: always, since no approver can be asked).
    Refused(Refusal),
}

/// Holds `request` until it is decided.
pub async fn hold(request: HoldRequest) -> Held {
    Held::Refused(request.refusal)
}
