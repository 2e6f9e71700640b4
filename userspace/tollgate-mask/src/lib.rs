//! Tollgate's masking core: PHI value detectors, masking methods and free-text masking.
//!
//! What it does:
//! - [`detect`]: finds PHI-shaped values in free text (SSN, email, US phone, dates, MRN, NPI,
//!   payment cards, IPv4, US street addresses and ZIP codes) and returns their byte spans,
//!   validated where a check exists (SSN area/group/serial rules, Luhn, calendar dates).
//! - [`method`]: masks one value — redact, partial, keyed deterministic token (HMAC-SHA256),
//!   null, or HIPAA Safe Harbor generalisation.
//! - [`text`]: masks every finding in a piece of free text in place.
//! - [`rowset`]: masks Snowflake result sets — JSON rowsets and Arrow IPC streams, inline or
//!   streamed chunk by chunk — column by column, rewriting the rowtype and Arrow schema when a
//!   masked column changes type.
//!
//! What it does not do: no I/O, no async runtime, no logging, no key loading (the caller hands
//! in key bytes), and no column lineage — deciding which result column gets which rule (masking
//! by meaning, `docs/design.md`, "Masking") is the caller's. Detectors are the *fallback* for
//! free text and unknown lineage, not the primary control.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod detect;
mod error;
pub mod method;
pub mod rowset;
pub mod text;

pub use detect::{Detector, DetectorConfig, DetectorSet, Finding};
pub use error::MaskError;
pub use method::{MaskKey, MaskedValue, Method, TokenMac, REDACTED};
pub use rowset::{
    ArrowChunkMasker, ColumnCount, ColumnCounts, ColumnRule, DetectRule, JsonChunkMasker,
    ResultMasker, RowsetError,
};
pub use text::{mask_text, MaskCounts};
