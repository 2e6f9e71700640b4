//! Settings of the Snowflake layer.

use tollgate_wire::snowflake::BodyLimits;

/// What to do with requests to endpoints the wire model does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownEndpoints {
    /// Refuse them with an error (the HIPAA default: nothing unaudited).
    Deny,
    /// Forward them (logged with method and path); a Snowflake-shaped result in the answer is
    /// still withheld, since no decision stands behind it.
    Forward,
}

/// Responses larger than this (as received) are not inspected: forwarded when no decision
/// needs them rewritten, withheld otherwise.
pub const DEFAULT_MAX_INSPECTED_RESPONSE: usize = 64 << 20;

/// Bytes of recently seen statement texts whose analysis is kept (see
/// [`tollgate_policy::StatementCache`]).
pub const DEFAULT_STATEMENT_CACHE: u64 = 4 << 20;

/// Results up to this size (as received) are processed on the exchange's own task: for them
/// a hand-off to the rewrite pool costs more than the work.
pub const DEFAULT_INLINE_RESULT: usize = 64 << 10;

/// Settings of the Snowflake layer.
#[derive(Debug, Clone)]
pub struct SnowflakeConfig {
    /// Unknown endpoints: deny (default) or forward.
    pub unknown_endpoints: UnknownEndpoints,
    /// Caps on request bodies (size, decompressed size, gzip ratio).
    pub request_limits: BodyLimits,
    /// Responses larger than this (as received) are forwarded without inspection.
    pub max_inspected_response: usize,
    /// This host's name, for policies that match on it.
    pub host: Option<String>,
    /// Threads that parse, mask and re-encode results at once (off the async runtime), so one
    /// big result cannot stall other agents; `0` picks the number of CPUs.
    pub rewrite_threads: usize,
    /// Bytes of statement analyses kept for texts sent again; `0` analyses every statement.
    pub statement_cache: u64,
    /// Results up to this many bytes are processed without the hand-off to the pool.
    pub inline_result: usize,
}

impl Default for SnowflakeConfig {
    fn default() -> Self {
        SnowflakeConfig {
            unknown_endpoints: UnknownEndpoints::Deny,
            request_limits: BodyLimits::default(),
            max_inspected_response: DEFAULT_MAX_INSPECTED_RESPONSE,
            host: None,
            rewrite_threads: 0,
            statement_cache: DEFAULT_STATEMENT_CACHE,
            inline_result: DEFAULT_INLINE_RESULT,
        }
    }
}

impl SnowflakeConfig {
    /// The caps on an inspected response body.
    pub fn response_limits(&self) -> BodyLimits {
        BodyLimits {
            max_compressed: self.max_inspected_response,
            max_decompressed: self.max_inspected_response.saturating_mul(4),
            ..BodyLimits::default()
        }
    }
}
