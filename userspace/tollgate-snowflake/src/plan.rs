//! What a decision asks of a statement's result ([`ResultPlan`]), the keys masking uses
//! ([`Masking`]), and the one masked-column type the layer reports ([`MaskedColumn`]).
//!
//! A leaf module: sessions remember plans, the rewrite phase applies them, the logging phase
//! records them.

use std::sync::Arc;

use tollgate_mask::rowset::ColumnCounts;
use tollgate_mask::{DetectorSet, MaskKey};
use tollgate_policy::{MaskPlan, Policy};

/// One masked result column: which, by which rule and method, and how many values (the audit
/// record's type, so that what the rewrite reports is what the trail keeps).
pub type MaskedColumn = tollgate_audit::MaskedCount;

/// What the decision asks of a statement's result.
#[derive(Debug, Clone)]
pub struct ResultPlan {
    /// The deciding rule.
    pub rule_id: String,
    /// Masking, for `mask` decisions.
    pub mask: Option<MaskPlan>,
    /// Row cap.
    pub max_rows: Option<u64>,
    /// Byte cap, over the result's uncompressed size.
    pub max_bytes: Option<u64>,
    /// Result rows the audit record keeps (as the agent receives them; 0: none).
    pub record_rows: u64,
    /// The policy that decided (resolution of result columns uses its classifications).
    pub policy: Arc<Policy>,
}

impl ResultPlan {
    /// Whether the plan caps the result (rows or bytes).
    pub fn caps(&self) -> bool {
        self.max_rows.is_some() || self.max_bytes.is_some()
    }

    /// Whether the result must be rewritten whatever it holds (masked or capped).
    pub fn rewrites(&self) -> bool {
        self.mask.is_some() || self.caps()
    }
}

/// Keys and detectors for masking.
#[derive(Clone)]
pub struct Masking {
    /// Tokenisation key; without one, `token` directives redact (fail closed).
    pub key: Option<MaskKey>,
    /// Detectors for free-text fallback.
    pub detectors: Arc<DetectorSet>,
}

impl Masking {
    /// The standard detectors and no tokenisation key.
    pub fn standard() -> Self {
        Masking {
            key: None,
            detectors: Arc::new(DetectorSet::standard()),
        }
    }
}

impl std::fmt::Debug for Masking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masking")
            .field("key", &self.key.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// The masked columns of a result (one slot per result column, `None` for a kept one) with
/// the values each had masked according to `counts` (the masker's per-column counts, by
/// result column index).
pub fn counted(columns: &[Option<MaskedColumn>], counts: &ColumnCounts) -> Vec<MaskedColumn> {
    columns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let mut c = c.clone()?;
            c.values = counts.columns().get(i).map_or(0, |n| n.masked);
            Some(c)
        })
        .collect()
}
