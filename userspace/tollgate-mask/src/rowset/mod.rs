//! Masking Snowflake result sets: JSON rowsets and Arrow IPC streams, whole or streamed.
//!
//! A [`ResultMasker`] is built once per query result from one [`ColumnRule`] per result column
//! (in rowtype order) and the response's `data.rowtype`. It then masks:
//! - the inline rowset: [`ResultMasker::mask_json_rowset`] (`data.rowset`) or
//!   [`ResultMasker::mask_arrow_stream`] (the decoded bytes of `data.rowsetBase64`);
//! - each chunk body (already gunzipped), streamed: [`ResultMasker::json_chunk_masker`] and
//!   [`ResultMasker::arrow_chunk_masker`], whose memory stays bounded by one row or one record
//!   batch;
//! - and the rowtype itself: [`ResultMasker::rewrite_rowtype`], which must be applied to the
//!   response the driver sees whenever a masked column changes type.
//!
//! # Values and types
//! A masking method sees each value as text, rendered from its Snowflake type the same way in
//! both formats (so a token of a number or a date is the same for JSON and Arrow clients):
//! FIXED → decimal text with `scale` fraction digits; REAL → shortest round-trip form; DATE →
//! `YYYY-MM-DD`; TIME → `HH:MM:SS[.f]`; TIMESTAMP_NTZ → `YYYY-MM-DD HH:MM:SS[.f]`;
//! TIMESTAMP_LTZ → the same in UTC with ` +00:00`; TIMESTAMP_TZ → local time with ` +HH:MM`;
//! BOOLEAN → `true`/`false`; BINARY → upper-case hex; TEXT, VARIANT, OBJECT, ARRAY → as is.
//! So `Generalize` turns a date of birth into its year and `Token` tokenises a number's
//! decimal text.
//!
//! A column masked by a method whose output is text becomes TEXT if it was not (rowtype
//! `type: "text"`, lengths 16777216, precision/scale null, nullable; Arrow `Utf8` with
//! `logicalType=TEXT`). [`Method::Null`] keeps the type and makes the column nullable. `NULL`
//! values stay `NULL` under every method and are not counted as masked. Unmasked columns are
//! passed through unchanged (JSON: byte for byte; Arrow: same values, type and metadata).
//!
//! [`ColumnRule::Detect`] scans free-text columns (TEXT, VARIANT, OBJECT, ARRAY) and masks
//! each finding in place; on any other column it keeps the values.
//!
//! # Failing closed
//! Anything the masker cannot handle for a masked column (an unexpected type or encoding) is
//! an error, never a pass-through, and output of a row or record batch that failed is never
//! emitted. See [`RowsetError`].

mod arrow;
mod error;
mod json;
mod json_scan;
mod plan;
mod value;

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

pub use self::arrow::{arrow_rows_as_text, ArrowChunkMasker};
pub use self::error::RowsetError;
pub use self::json::JsonChunkMasker;
use self::plan::Plan;
use crate::detect::{Detector, DetectorSet};
use crate::method::Method;
use crate::text::MaskCounts;

/// What to do with one result column (one per rowtype entry, in order).
#[derive(Debug, Clone)]
pub enum ColumnRule {
    /// Pass the column through unchanged.
    Keep,
    /// Mask every non-`NULL` value with this method (a classified column).
    Mask(Method),
    /// Scan free text with detectors and mask each finding (unknown lineage); columns that are
    /// not free text are kept.
    Detect(DetectRule),
}

/// The free-text fallback: mask each finding with its detector's method.
#[derive(Debug, Clone)]
pub struct DetectRule {
    /// Detectors to run.
    pub detectors: Arc<DetectorSet>,
    /// Method per detector kind; kinds not listed use `default`. [`Method::Null`] inside text
    /// becomes the redaction marker.
    pub methods: Vec<(Detector, Method)>,
    /// Method for findings whose kind has no entry in `methods`.
    pub default: Method,
}

impl DetectRule {
    /// The method for findings of `kind`.
    pub fn method_for(&self, kind: Detector) -> &Method {
        self.methods
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(&self.default, |(_, m)| m)
    }
}

/// Masks one query result; build once per response, then mask the inline rowset, rewrite the
/// rowtype and mask each chunk. Cheap to share: chunk maskers hold a reference-counted copy of
/// the plan, so they can move into other tasks.
#[derive(Debug, Clone)]
pub struct ResultMasker {
    plan: Arc<Plan>,
}

impl ResultMasker {
    /// Builds the masker from one rule per column and the response's `data.rowtype` entries
    /// (objects with `name`, `type`, `scale`, …, as Snowflake sends them).
    ///
    /// Fails if the counts differ or a masked column's entry has no `type`.
    pub fn new(rules: Vec<ColumnRule>, rowtype: &[Value]) -> Result<Self, RowsetError> {
        Ok(ResultMasker {
            plan: Arc::new(Plan::new(rules, rowtype)?),
        })
    }

    /// Whether masking would change nothing (every column kept, or `Detect` only on columns
    /// that are not free text); the caller may then forward the result untouched.
    pub fn is_noop(&self) -> bool {
        self.plan.is_noop()
    }

    /// Number of columns.
    pub fn columns(&self) -> usize {
        self.plan.columns.len()
    }

    /// Rewrites `data.rowtype` in place for the masked result: columns masked to text become
    /// `type: "text"` (length and byteLength 16777216, precision and scale null, nullable);
    /// columns masked to `NULL` become nullable. Other entries and keys are untouched.
    pub fn rewrite_rowtype(&self, rowtype: &mut [Value]) {
        self.plan.rewrite_rowtype(rowtype);
    }

    /// Masks a JSON rowset (`data.rowset`: an array of rows, each an array of string|null) in
    /// place; `null` counts as an empty rowset. Counts are added to `counts` on success.
    ///
    /// On error the rowset is replaced by an empty array, so a partly masked rowset can never
    /// be forwarded by mistake.
    pub fn mask_json_rowset(
        &self,
        rowset: &mut Value,
        counts: &mut ColumnCounts,
    ) -> Result<(), RowsetError> {
        json::mask_rowset(&self.plan, rowset, counts)
    }

    /// Masks an Arrow IPC stream (the decoded bytes of `data.rowsetBase64`) and returns the new
    /// stream: schema, masked record batches, and an end-of-stream marker if the input had one.
    /// An empty input (Snowflake's `rowsetBase64: ""`) gives an empty output. Counts are added
    /// to `counts` on success.
    pub fn mask_arrow_stream(
        &self,
        ipc: &[u8],
        counts: &mut ColumnCounts,
    ) -> Result<Vec<u8>, RowsetError> {
        let mut masker = self.arrow_chunk_masker();
        let mut out = Vec::with_capacity(ipc.len() + ipc.len() / 4);
        masker.push(ipc, &mut out)?;
        let c = masker.finish(&mut out)?;
        counts.merge(&c);
        Ok(out)
    }

    /// A streaming masker for one JSON chunk body (rows without the outer brackets).
    pub fn json_chunk_masker(&self) -> JsonChunkMasker {
        JsonChunkMasker::new(Arc::clone(&self.plan))
    }

    /// A streaming masker for one Arrow chunk body (an IPC stream).
    pub fn arrow_chunk_masker(&self) -> ArrowChunkMasker {
        ArrowChunkMasker::new(Arc::clone(&self.plan))
    }
}

/// What masking did to one column; for the audit record (never the values).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ColumnCount {
    /// Values replaced: non-`NULL` values of a masked column, or values of a `Detect` column
    /// with at least one finding.
    pub masked: u64,
    /// Findings masked inside free text, by detector (`Detect` columns only).
    pub findings: MaskCounts,
}

/// What masking did to a result set, per column; for the audit record (never the values).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ColumnCounts {
    columns: Vec<ColumnCount>,
    rows: u64,
    truncated: bool,
}

impl ColumnCounts {
    /// Empty counts for `n` columns.
    pub fn new(n: usize) -> Self {
        ColumnCounts {
            columns: vec![ColumnCount::default(); n],
            ..ColumnCounts::default()
        }
    }

    /// Per-column counts, in column order.
    pub fn columns(&self) -> &[ColumnCount] {
        &self.columns
    }

    /// Rows emitted (after any row limit).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether a row limit dropped rows.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Values replaced, all columns together.
    pub fn total_masked(&self) -> u64 {
        self.columns.iter().map(|c| c.masked).sum()
    }

    /// Findings by detector, all columns together.
    pub fn findings(&self) -> MaskCounts {
        let mut all = MaskCounts::default();
        for c in &self.columns {
            all.merge(&c.findings);
        }
        all
    }

    /// Adds `other` (e.g. one chunk's counts) to these counts.
    pub fn merge(&mut self, other: &ColumnCounts) {
        if self.columns.len() < other.columns.len() {
            self.columns
                .resize(other.columns.len(), ColumnCount::default());
        }
        for (mine, theirs) in self.columns.iter_mut().zip(&other.columns) {
            mine.masked += theirs.masked;
            mine.findings.merge(&theirs.findings);
        }
        self.rows += other.rows;
        self.truncated |= other.truncated;
    }

    pub(crate) fn column_mut(&mut self, i: usize) -> &mut ColumnCount {
        if self.columns.len() <= i {
            self.columns.resize(i + 1, ColumnCount::default());
        }
        &mut self.columns[i]
    }

    pub(crate) fn add_rows(&mut self, n: u64) {
        self.rows += n;
    }

    pub(crate) fn set_truncated(&mut self) {
        self.truncated = true;
    }
}
