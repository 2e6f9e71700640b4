//! The crate's error type.

/// Why a masking component could not be built.
///
/// Masking itself never fails: a value a method cannot handle is redacted (fail closed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaskError {
    /// The tokenisation key is shorter than the minimum.
    #[error(
        "masking key is {len} bytes, but at least {min} are required; \
         load a longer random key (32 bytes recommended)"
    )]
    KeyTooShort {
        /// Length of the key that was given.
        len: usize,
        /// Minimum length accepted.
        min: usize,
    },
    /// The MRN pattern is not a valid regular expression.
    #[error(
        "MRN pattern {pattern:?} is not a valid regular expression; fix the `mrn_pattern` setting"
    )]
    InvalidMrnPattern {
        /// The pattern as configured.
        pattern: String,
        /// The regex compiler's complaint.
        #[source]
        source: regex::Error,
    },
    /// The MRN pattern matches the empty string, so it would "find" an MRN everywhere.
    #[error(
        "MRN pattern {pattern:?} matches the empty string; \
         require at least one character (e.g. `MRN[-: ]*[0-9]{{6,10}}`)"
    )]
    MrnPatternMatchesEmpty {
        /// The pattern as configured.
        pattern: String,
    },
}
