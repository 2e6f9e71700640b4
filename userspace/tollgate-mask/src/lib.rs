//! Tollgate's masking core: PHI value detectors, masking methods and free-text masking.
//!
//! What it does:
//! - [`detect`]: finds PHI-shaped values in free text (SSN, email, US phone, dates, MRN, NPI,
//!   payment cards, IPv4, US street addresses and ZIP codes) and returns their byte spans,
//!   validated where a check exists (SSN area/group/serial rules, Luhn, calendar dates).
//! - [`method`]: masks one value — redact, partial, keyed deterministic token (HMAC-SHA256),
//!   null, or HIPAA Safe Harbor generalisation.
//! - [`text`]: masks every finding in a piece of free text in place.
//!
//! What it does not do: no I/O, no async runtime, no logging, no key loading (the caller hands
//! in key bytes), and no result-set formats yet — Arrow/JSON rowset rewriting and column lineage
//! (masking by meaning, DESIGN §3.5) build on this crate. Detectors are the *fallback* for free
//! text and unknown lineage, not the primary control.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod detect;
mod error;
pub mod method;
pub mod text;

pub use detect::{Detector, DetectorConfig, DetectorSet, Finding};
pub use error::MaskError;
pub use method::{MaskKey, MaskedValue, Method, REDACTED};
pub use text::{mask_text, MaskCounts};
