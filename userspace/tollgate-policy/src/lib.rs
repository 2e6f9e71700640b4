//! Tollgate's policy engine.
//!
//! - [`analyze`]: SQL text → [`Analysis`] (statement kinds, tables read and written, data
//!   sources without a table name ([`OpaqueSource`]), columns, stage operations), Snowflake
//!   dialect, names resolved against the session's database and
//!   schema. [`redact_literals`] and [`fingerprint`] give the audit trail a literal-free form.
//! - [`Policy`]: a YAML policy file → validated → compiled once; [`Policy::evaluate`] turns an
//!   [`Identity`] and an analysis into a [`Decision`] (allow, deny, mask, require approval) naming
//!   the deciding rule. Evaluation is pure and takes microseconds. A rule's `mask` list may
//!   name a [`profile`] (`safe_harbor`: the 18 HIPAA Safe Harbor identifiers,
//!   [`SAFE_HARBOR_TAGS`]), expanded into directives at compile time.
//!
//! - [`lineage`]: for a query, the base columns behind every result column and the columns it
//!   filters, sorts or groups on; a mask decision carries it in its [`MaskPlan`], and
//!   [`Policy::resolve_result_columns`] turns plan plus result metadata into one
//!   [`ColumnAction`] per result column when the result arrives.
//!
//! This crate does no I/O apart from [`load`], which reads one policy file; it has no runtime,
//! no sockets, no global state. Reloading a policy means building a new [`Policy`] and swapping
//! an `Arc` — the caller's business.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod analysis;
pub mod evaluate;
pub mod glob;
pub mod lineage;
pub mod names;
pub mod policy;
pub mod prepared;
mod prescan;
pub mod profile;
pub mod redact;
pub mod resolve;
pub mod schema;

pub use analysis::{
    analyze, Analysis, AnalysisError, OpaqueSource, StageOp, StageOpKind, StatementInfo,
    StatementKind, UseKind, UseTarget,
};
pub use evaluate::{
    Action, Decision, EvalInput, Fallback, MaskDirective, MaskPlan, Recording, StatementDecision,
};
pub use lineage::{OutputItem, ProjectionLineage, StatementLineage};
pub use names::{ColumnRef, NameContext, TableName};
pub use policy::{load, Issue, Policy, PolicyError};
pub use prepared::{Prepared, StatementCache};
pub use profile::{safe_harbor_method, MASK_PROFILES, SAFE_HARBOR_TAGS};
pub use redact::{fingerprint, literal_free, redact_literals, LiteralFree};
pub use resolve::{ColumnAction, ResultColumnMeta};
pub use schema::{ByteSize, ClassifiedCopies, MaskMethod, MaskedPredicates, UnknownLineage};
/// Who is asking: the policy's input (defined in `tollgate-identity`, shared with the proxy, the
/// Snowflake layer and the audit trail).
pub use tollgate_identity::{Claims, Identity, ProcessIdentity, SnowflakeIdentity};
