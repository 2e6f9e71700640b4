//! The typed per-exchange context ([`ExchangeCtx`]): what the request phases leave for the
//! response phases, and the typed outcomes ([`ResultOutcome`], [`LoginOutcome`]) the logging
//! phase turns into audit events.

use std::sync::Arc;
use std::time::Instant;

use tollgate_identity::{ProcessIdentity, SnowflakeIdentity};
use tollgate_policy::UseKind;

use crate::audit_gate::Pending;
use crate::plan::{MaskedColumn, ResultPlan};
use crate::session::Session;

/// One exchange's state, from its request to its response.
#[derive(Debug)]
pub struct ExchangeCtx {
    /// When the request arrived.
    pub started: Instant,
    /// What the response phases must do.
    pub expect: Expect,
    /// Audit events written by the request phases whose durability the answer waits for.
    pub pending: Pending,
}

impl Default for ExchangeCtx {
    fn default() -> Self {
        ExchangeCtx {
            started: Instant::now(),
            expect: Expect::Nothing,
            pending: Pending::default(),
        }
    }
}

/// What the response of a forwarded request means to the layer.
#[derive(Debug, Default)]
pub enum Expect {
    /// Nothing: the response is passed on unchanged.
    #[default]
    Nothing,
    /// A login: the answer creates the session.
    Login {
        /// Who logs in, as the request said.
        request: SnowflakeIdentity,
        /// The process behind the connection.
        process: Option<Arc<ProcessIdentity>>,
    },
    /// A statement or a result fetch: the answer is a result to check, rewrite and record.
    Statement(StatementCtx),
    /// A token renewal: the new tokens map to the same session.
    Renewal {
        /// The session renewed.
        session: Arc<Session>,
    },
    /// A logout: the session ends.
    Logout {
        /// The session ending.
        session: Arc<Session>,
    },
    /// An allowed SQL API submission: its handles become fetchable for this bearer token.
    SqlApiSubmit {
        /// SHA-256 of the bearer token.
        bearer: [u8; 32],
    },
}

/// A statement on its way: what its result must be checked against. Moved (not cloned) into
/// the rewrite job that runs on the blocking pool.
#[derive(Debug)]
pub struct StatementCtx {
    /// The session, when known.
    pub session: Option<Arc<Session>>,
    /// `USE` targets of an allowed statement, applied once it succeeds.
    pub uses: Vec<(UseKind, String)>,
    /// What the decision asks of the result; `None` only when no decision is known (a result
    /// fetched by query id that Tollgate did not see decided, an unknown endpoint forwarded).
    pub plan: Option<Arc<ResultPlan>>,
    /// `host[:port]` the driver addressed (chunk URLs point there).
    pub authority: String,
    /// The key linking the statement's audit events, when this exchange decided it.
    pub statement: Option<String>,
}

/// What became of a statement's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResultStatus {
    /// A final, successful result.
    Ok,
    /// Still running (the driver polls).
    Running,
    /// Snowflake answered with an error.
    Failed,
    /// Tollgate withheld the result.
    Withheld,
    /// Too large to inspect, and no rewrite needed: forwarded as it came.
    ForwardedUninspected,
    /// Unreadable, and no masking needed: forwarded as it came.
    ForwardedUnparsed,
    /// The upstream's response (or its body) failed.
    UpstreamFailed,
}

impl ResultStatus {
    /// The name in the audit record (`decision` of a `result` event).
    pub fn name(self) -> &'static str {
        match self {
            ResultStatus::Ok => "ok",
            ResultStatus::Running => "running",
            ResultStatus::Failed => "failed",
            ResultStatus::Withheld => "withheld",
            ResultStatus::ForwardedUninspected => "forwarded_uninspected",
            ResultStatus::ForwardedUnparsed => "forwarded_unparsed",
            ResultStatus::UpstreamFailed => "upstream_failed",
        }
    }
}

/// Chunks of a rewritten result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkSummary {
    /// Chunks served through Tollgate.
    pub served: usize,
    /// Chunks dropped by a cap.
    pub dropped: usize,
    /// Uncompressed bytes of the chunks served, as announced.
    pub bytes: u64,
}

/// What a statement's response did, for the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultOutcome {
    /// The query id.
    pub query_id: Option<String>,
    /// What became of it.
    pub status: ResultStatus,
    /// Rows of the result (after caps).
    pub rows: u64,
    /// Bytes of the (decoded) response.
    pub bytes: u64,
    /// Masked columns and their counts (inline part).
    pub masked: Vec<MaskedColumn>,
    /// Snowflake's error code, or `502` for an upstream failure.
    pub error_code: String,
    /// Why (SQLSTATE of a failure, or why it was withheld).
    pub reason: String,
    /// Chunks, when the result has any.
    pub chunks: Option<ChunkSummary>,
    /// Which cap cut the result.
    pub capped_by: Option<&'static str>,
    /// The rows as the agent received them, when the rule records them (JSON).
    pub result_rows: String,
    /// Why the rows could not be recorded.
    pub result_rows_error: Option<String>,
}

impl ResultOutcome {
    /// An outcome of `status` with nothing else known yet.
    pub fn new(status: ResultStatus) -> Self {
        ResultOutcome {
            query_id: None,
            status,
            rows: 0,
            bytes: 0,
            masked: Vec::new(),
            error_code: String::new(),
            reason: String::new(),
            chunks: None,
            capped_by: None,
            result_rows: String::new(),
            result_rows_error: None,
        }
    }
}

/// What a login's answer did.
#[derive(Debug, Clone)]
pub enum LoginOutcome {
    /// The session began.
    Started(Arc<Session>),
    /// Snowflake refused it, or its answer was unreadable.
    Failed {
        /// Snowflake's code (`-` when unknown).
        code: String,
        /// What failed (never the credential).
        message: String,
    },
}
