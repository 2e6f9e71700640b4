//! Phase 9 — rewrite: query results checked and rewritten before the agent sees them: masking
//! (per result column, from the policy's mask plan and the statement's column lineage), row and
//! byte caps across inline and chunked rows, and chunk URLs replaced by Tollgate-served tickets.
//! [`process_result`] is the whole phase for one response (it runs on the blocking pool).
//!
//! The pure parts ([`plan_caps`], [`rows_within_bytes`], [`column_rules`]) are separate from the
//! edit of the parsed response ([`rewrite`]), which goes through the wire model's edit methods so
//! that its typed view and its body never disagree.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use serde_json::Value;
use tollgate_mask::rowset::{ColumnCounts, ColumnRule, DetectRule, ResultMasker};
use tollgate_mask::{Detector, Method};
use tollgate_policy::{ColumnAction, MaskMethod, MaskPlan, ResultColumnMeta};
use tollgate_wire::snowflake::{decode_body, HandedOutChunk, QueryResponse, ResultFormat, Secret};
use tracing::{info, warn};

use crate::chunks::{
    ChunkFilter, ChunkFilterFactory, ChunkStore, ChunkTicket, FilterError, CHUNK_PATH_PREFIX,
};
use crate::context::{ChunkSummary, ResultOutcome, ResultStatus, StatementCtx};
use crate::observe;
use crate::plan::{counted, MaskedColumn, Masking, ResultPlan};
use crate::reply::{Withheld, WithheldReason};
use crate::session::Session;

/// What a rewrite did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RewriteReport {
    /// Masked columns.
    pub masked: Vec<MaskedColumn>,
    /// Chunks served through Tollgate.
    pub chunks: usize,
    /// Chunks dropped by the row cap.
    pub chunks_dropped: usize,
    /// Uncompressed bytes of the chunks served (as the server announced them).
    pub chunk_bytes: u64,
    /// Rows in the result after the cap.
    pub rows: Option<u64>,
    /// A cap cut the result.
    pub capped: bool,
    /// Which cap cut it: `max_rows` or `max_bytes` (the smaller row count; rows on a tie).
    pub capped_by: Option<&'static str>,
}

/// The size of a result's inline rows, for byte caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InlineSize {
    /// Size of each row (JSON rowsets: the row's JSON text).
    PerRow(Vec<u64>),
    /// Rows and their bytes together (Arrow: the decoded IPC stream), taken as evenly sized.
    Total {
        /// Rows.
        rows: u64,
        /// Bytes.
        bytes: u64,
    },
}

/// How many leading rows of a result fit in `max_bytes`: inline rows first, then whole chunks by
/// the uncompressed size Snowflake announces for them (`chunks[].uncompressedSize`); the chunk
/// (or Arrow inline part) that crosses the cap keeps the share of its rows that the bytes left
/// allow, rounded down (rows × bytes left ÷ size). Errors when a chunk's size or row count is
/// unknown (the cap could not be kept).
pub fn rows_within_bytes(
    max_bytes: u64,
    inline: &InlineSize,
    chunks: &[(Option<i64>, Option<i64>)],
) -> Result<u64, String> {
    fn share(rows: u64, left: u64, bytes: u64) -> u64 {
        if bytes == 0 {
            return rows;
        }
        (u128::from(rows) * u128::from(left) / u128::from(bytes)) as u64
    }
    let mut left = max_bytes;
    let mut rows = 0u64;
    match inline {
        InlineSize::PerRow(sizes) => {
            for &size in sizes {
                if size > left {
                    return Ok(rows);
                }
                left -= size;
                rows += 1;
            }
        }
        InlineSize::Total { rows: n, bytes } => {
            if *bytes > left {
                return Ok(share(*n, left, *bytes));
            }
            left -= bytes;
            rows += n;
        }
    }
    for (i, (n, size)) in chunks.iter().enumerate() {
        let n = n
            .filter(|r| *r >= 0)
            .ok_or_else(|| format!("chunk {i} has no row count, so the byte cap cannot be kept"))?
            as u64;
        let size = size
            .filter(|s| *s >= 0)
            .ok_or_else(|| format!("chunk {i} has no size, so the byte cap cannot be kept"))?
            as u64;
        if size > left {
            return Ok(rows + share(n, left, size));
        }
        left -= size;
        rows += n;
    }
    Ok(rows)
}

/// Row-cap plan: how many rows stay inline and in each chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapPlan {
    /// Inline rows kept (`None`: all).
    pub inline_keep: Option<u64>,
    /// Per chunk: `None` drops it, `Some(n)` keeps its first `n` rows.
    pub chunk_keep: Vec<Option<u64>>,
    /// Rows in the capped result.
    pub total: u64,
    /// Whether anything was cut.
    pub capped: bool,
}

/// Plans a row cap over `inline` rows followed by chunks of `chunk_rows` rows each.
/// Errors when a cap applies and a chunk's row count is unknown (the cap could not be kept).
pub fn plan_caps(
    max_rows: Option<u64>,
    inline: u64,
    chunk_rows: &[Option<i64>],
) -> Result<CapPlan, String> {
    let Some(cap) = max_rows else {
        let total = inline
            + chunk_rows
                .iter()
                .map(|r| r.unwrap_or(0).max(0) as u64)
                .sum::<u64>();
        return Ok(CapPlan {
            inline_keep: None,
            chunk_keep: chunk_rows
                .iter()
                .map(|r| Some(r.unwrap_or(0).max(0) as u64))
                .collect(),
            total,
            capped: false,
        });
    };
    let mut left = cap;
    let inline_keep = inline.min(left);
    left -= inline_keep;
    let mut capped = inline_keep < inline;
    let mut chunk_keep = Vec::with_capacity(chunk_rows.len());
    for (i, rows) in chunk_rows.iter().enumerate() {
        let rows = rows
            .filter(|r| *r >= 0)
            .ok_or_else(|| format!("chunk {i} has no row count, so the row cap cannot be kept"))?
            as u64;
        if left == 0 {
            chunk_keep.push(None);
            capped = true;
            continue;
        }
        let keep = rows.min(left);
        capped |= keep < rows;
        left -= keep;
        chunk_keep.push(Some(keep));
    }
    Ok(CapPlan {
        inline_keep: Some(inline_keep),
        chunk_keep,
        total: cap - left,
        capped,
    })
}

/// Tag a detector's findings count as (for picking the plan's directive).
fn detector_tag(d: Detector) -> &'static str {
    match d {
        Detector::Ssn => "phi.ssn",
        Detector::Email => "phi.email",
        Detector::Phone => "phi.phone",
        Detector::DateOfBirth => "phi.dob",
        Detector::Mrn => "phi.mrn",
        Detector::Npi => "phi.other_id",
        Detector::PaymentCard => "phi.account",
        Detector::Ipv4 => "phi.ip",
        Detector::StreetAddress | Detector::Zip => "phi.address",
        _ => "phi.other_id",
    }
}

fn method_of(method: MaskMethod, keep_last: Option<u32>, masking: &Masking) -> Method {
    match method {
        MaskMethod::Redact => Method::Redact,
        MaskMethod::Partial => Method::Partial {
            keep_last: keep_last.unwrap_or(4) as usize,
        },
        MaskMethod::Token => match &masking.key {
            Some(key) => Method::Token { key: key.clone() },
            None => Method::Redact,
        },
        MaskMethod::Null => Method::Null,
        MaskMethod::Generalize => Method::Generalize,
    }
}

fn method_name(method: MaskMethod) -> &'static str {
    match method {
        MaskMethod::Redact => "redact",
        MaskMethod::Partial => "partial",
        MaskMethod::Token => "token",
        MaskMethod::Null => "null",
        MaskMethod::Generalize => "generalize",
    }
}

/// The masking rule of every result column, and what each means for the report.
pub fn column_rules(
    plan: &ResultPlan,
    mask: &MaskPlan,
    resp: &QueryResponse,
    masking: &Masking,
) -> (Vec<ColumnRule>, Vec<Option<MaskedColumn>>) {
    let metas: Vec<ResultColumnMeta<'_>> = resp
        .rowtype
        .iter()
        .map(|c| ResultColumnMeta {
            name: &c.name,
            database: &c.database,
            schema: &c.schema,
            table: &c.table,
        })
        .collect();
    let actions = plan
        .policy
        .resolve_result_columns(&plan.rule_id, mask, &metas);
    let mut rules = Vec::with_capacity(actions.len());
    let mut report = Vec::with_capacity(actions.len());
    for (action, col) in actions.into_iter().zip(&resp.rowtype) {
        match action {
            ColumnAction::Keep => {
                rules.push(ColumnRule::Keep);
                report.push(None);
            }
            ColumnAction::Mask {
                rule_id,
                method,
                keep_last,
                ..
            } => {
                rules.push(ColumnRule::Mask(method_of(method, keep_last, masking)));
                report.push(Some(MaskedColumn {
                    column: col.name.clone(),
                    rule_id,
                    method: method_name(method).to_owned(),
                    values: 0,
                }));
            }
            ColumnAction::Detect { rule_id } => {
                let methods = Detector::ALL
                    .iter()
                    .map(|d| {
                        let m = plan
                            .policy
                            .directive_for_tag(mask, detector_tag(*d))
                            .map(|dir| method_of(dir.method, dir.keep_last, masking))
                            .unwrap_or(Method::Redact);
                        (*d, m)
                    })
                    .collect();
                rules.push(ColumnRule::Detect(DetectRule {
                    detectors: masking.detectors.clone(),
                    methods,
                    default: Method::Redact,
                }));
                report.push(Some(MaskedColumn {
                    column: col.name.clone(),
                    rule_id,
                    method: "detect".to_owned(),
                    values: 0,
                }));
            }
        }
    }
    (rules, report)
}

/// Everything a rewrite needs besides the response.
pub struct RewriteContext<'a> {
    /// The result's plan.
    pub plan: &'a ResultPlan,
    /// Keys and detectors.
    pub masking: &'a Masking,
    /// Where tickets go.
    pub chunks: &'a ChunkStore,
    /// The session the result belongs to (tickets are bound to it).
    pub session: Option<&'a Arc<Session>>,
    /// `host[:port]` the driver used for the query: chunk URLs point there.
    pub authority: &'a str,
    /// Ticket lifetime.
    pub ticket_lifetime: std::time::Duration,
}

/// Chunk filter over a [`ResultMasker`]: JSON or Arrow, with a row limit.
struct MaskerFactory {
    masker: Arc<ResultMasker>,
    arrow: bool,
    limit: Option<u64>,
}

impl ChunkFilterFactory for MaskerFactory {
    fn make(&self) -> Box<dyn ChunkFilter> {
        if self.arrow {
            let mut m = self.masker.arrow_chunk_masker();
            if let Some(n) = self.limit {
                m = m.with_row_limit(n);
            }
            Box::new(m)
        } else {
            let mut m = self.masker.json_chunk_masker();
            if let Some(n) = self.limit {
                m = m.with_row_limit(n);
            }
            Box::new(m)
        }
    }
}

/// Both streaming maskers are chunk filters (same methods, no common trait in the mask crate).
macro_rules! chunk_filter {
    ($masker:ty) => {
        impl ChunkFilter for $masker {
            fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FilterError> {
                <$masker>::push(self, input, out).map_err(|e| FilterError(e.to_string()))
            }
            fn has_pending_output(&self) -> bool {
                <$masker>::has_pending_output(self)
            }
            fn drain(&mut self, out: &mut Vec<u8>) -> Result<(), FilterError> {
                <$masker>::drain(self, out).map_err(|e| FilterError(e.to_string()))
            }
            fn finish(self: Box<Self>, out: &mut Vec<u8>) -> Result<ColumnCounts, FilterError> {
                <$masker>::finish(*self, out).map_err(|e| FilterError(e.to_string()))
            }
        }
    };
}
chunk_filter!(tollgate_mask::rowset::ArrowChunkMasker);
chunk_filter!(tollgate_mask::rowset::JsonChunkMasker);

/// Whether a response needs [`rewrite`]: a successful result with rows or chunks under a
/// mask plan, a row cap, or chunks (whose storage URLs are never handed out).
pub fn needs_rewrite(plan: &ResultPlan, resp: &QueryResponse) -> bool {
    resp.success
        && !resp.is_in_progress()
        && (!resp.chunks.is_empty() || (plan.rewrites() && !resp.rowtype.is_empty()))
}

/// Rewrites a successful query response per its plan. On error nothing of the response may be
/// sent: the caller answers with an error instead (fail closed).
pub fn rewrite(
    resp: &mut QueryResponse,
    ctx: &RewriteContext<'_>,
) -> Result<RewriteReport, String> {
    let plan = ctx.plan;
    let arrow = match &resp.query_result_format {
        Some(ResultFormat::Arrow) => true,
        Some(ResultFormat::Json) | None => false,
        Some(ResultFormat::Other(f)) => {
            return Err(format!("the result format {f:?} is not understood"));
        }
        Some(_) => return Err("the result format is not understood".into()),
    };
    let mut report = RewriteReport::default();
    let rowtype: Vec<Value> = resp.rowtype_json().to_vec();
    let (masker, masked_columns) = match &plan.mask {
        Some(mask) => {
            let (rules, rep) = column_rules(plan, mask, resp, ctx.masking);
            let m = ResultMasker::new(rules, &rowtype).map_err(|e| e.to_string())?;
            (Some(Arc::new(m)), rep)
        }
        None => (None, Vec::new()),
    };
    // Inline rows.
    let inline_rows = if arrow {
        None
    } else {
        resp.rowset().map(|r| r.len() as u64)
    };
    let chunk_rows: Vec<Option<i64>> = resp.chunks.iter().map(|c| c.row_count).collect();
    // Arrow: the inline rows are what the chunks do not hold (`returned` may count them all).
    let in_chunks: i64 = chunk_rows.iter().map(|r| r.unwrap_or(0).max(0)).sum();
    let inline_count = inline_rows
        .or_else(|| resp.total.map(|t| (t - in_chunks).max(0) as u64))
        .or_else(|| resp.returned.map(|r| r.max(0) as u64))
        .unwrap_or(0);
    // A byte cap becomes a row cap (the smaller of the two holds).
    let byte_rows = match plan.max_bytes {
        None => None,
        Some(max) => {
            let inline = if arrow {
                let b64 = resp.rowset_base64().unwrap_or("");
                let pad = b64.bytes().rev().take_while(|b| *b == b'=').count();
                InlineSize::Total {
                    rows: inline_count,
                    bytes: (b64.len() / 4 * 3).saturating_sub(pad) as u64,
                }
            } else {
                InlineSize::PerRow(
                    resp.rowset()
                        .map(|rows| {
                            rows.iter()
                                .map(|r| serde_json::to_vec(r).map_or(0, |v| v.len() as u64))
                                .collect()
                        })
                        .unwrap_or_default(),
                )
            };
            let sized: Vec<(Option<i64>, Option<i64>)> = resp
                .chunks
                .iter()
                .map(|c| (c.row_count, c.uncompressed_size))
                .collect();
            Some(rows_within_bytes(max, &inline, &sized)?)
        }
    };
    let (row_cap, cut_by) = match (plan.max_rows, byte_rows) {
        (Some(r), Some(b)) if b < r => (Some(b), "max_bytes"),
        (Some(r), _) => (Some(r), "max_rows"),
        (None, Some(b)) => (Some(b), "max_bytes"),
        (None, None) => (None, "max_rows"),
    };
    let caps = plan_caps(row_cap, inline_count, &chunk_rows)?;
    // A masker that keeps every column still enforces row limits in Arrow streams.
    let limiter = match (&masker, caps.capped) {
        (Some(m), _) => Some(m.clone()),
        (None, true) => {
            let rules = (0..rowtype.len()).map(|_| ColumnRule::Keep).collect();
            Some(Arc::new(
                ResultMasker::new(rules, &rowtype).map_err(|e| e.to_string())?,
            ))
        }
        (None, false) => None,
    };
    let returned_all = resp.returned.is_some() && resp.returned == resp.total;
    let mut counts = ColumnCounts::default();
    let query_id = resp.query_id.clone().unwrap_or_default();
    if resp.json().get("data").and_then(Value::as_object).is_none() {
        return Err("the result has no data object".into());
    }

    if let Some(m) = &masker {
        resp.edit_rowtype(|cols| m.rewrite_rowtype(cols))
            .map_err(|e| e.to_string())?;
    }
    if arrow {
        let b64 = resp.rowset_base64().filter(|b| !b.is_empty());
        if let (Some(b64), Some(m)) = (b64, limiter.as_ref()) {
            let ipc = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("rowsetBase64 is not base64: {e}"))?;
            let mut filter = m.arrow_chunk_masker();
            if let Some(n) = caps.inline_keep.filter(|_| caps.capped) {
                filter = filter.with_row_limit(n);
            }
            let mut out = Vec::with_capacity(ipc.len());
            filter.push(&ipc, &mut out).map_err(|e| e.to_string())?;
            let c = filter.finish(&mut out).map_err(|e| e.to_string())?;
            counts.merge(&c);
            resp.set_rowset_base64(base64::engine::general_purpose::STANDARD.encode(out));
        }
    } else if let Some(rowset) = resp.rowset_mut() {
        if let (Some(keep), Some(rows)) = (caps.inline_keep, rowset.as_array_mut()) {
            rows.truncate(keep as usize);
        }
        if let Some(m) = &masker {
            m.mask_json_rowset(rowset, &mut counts)
                .map_err(|e| e.to_string())?;
        }
    }
    if caps.capped {
        // `returned` counts the whole result where the server counted it so (Node waits for
        // that many rows), otherwise the inline rows.
        let returned = if returned_all {
            caps.total
        } else {
            caps.inline_keep.unwrap_or(caps.total)
        };
        resp.set_row_counts(caps.total, returned);
        report.capped = true;
        report.capped_by = Some(cut_by);
    }
    report.rows = Some(caps.total);

    // Chunks: every URL replaced by a ticket; the storage keys stay with Tollgate.
    if !resp.chunks.is_empty() {
        let mut headers: Vec<(String, Secret)> = resp
            .chunk_headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(qrmk) = resp.qrmk.clone() {
            headers.push((
                "x-amz-server-side-encryption-customer-algorithm".into(),
                Secret::new("AES256".to_owned()),
            ));
            headers.push(("x-amz-server-side-encryption-customer-key".into(), qrmk));
        }
        let Some(session) = ctx.session else {
            return Err("chunked results need a known Snowflake session".into());
        };
        let masked_cols = Arc::new(masked_columns.clone());
        let mut kept = Vec::new();
        for (i, chunk) in resp.chunks.iter().enumerate() {
            let Some(keep) = caps.chunk_keep.get(i).copied().flatten() else {
                report.chunks_dropped += 1;
                continue;
            };
            let size = chunk.uncompressed_size.unwrap_or(0).max(0) as u64;
            report.chunk_bytes += size;
            let full = chunk_rows[i].map(|r| r.max(0) as u64) == Some(keep);
            let limit = (caps.capped && !full).then_some(keep);
            let filter: Option<Arc<dyn ChunkFilterFactory>> = match (&masker, limit) {
                (None, None) => None,
                (Some(m), l) => Some(Arc::new(MaskerFactory {
                    masker: m.clone(),
                    arrow,
                    limit: l,
                })),
                (None, Some(l)) => Some(Arc::new(MaskerFactory {
                    masker: limiter.clone().ok_or("no limiter")?,
                    arrow,
                    limit: Some(l),
                })),
            };
            let name = ctx
                .chunks
                .issue(ChunkTicket {
                    session: session.clone(),
                    url: chunk.url.clone(),
                    headers: headers.clone(),
                    filter,
                    query_id: query_id.clone(),
                    index: i,
                    rows: keep,
                    bytes: size,
                    masked: masked_cols.clone(),
                    expires: Instant::now() + ctx.ticket_lifetime,
                })
                .map_err(|e| e.to_string())?;
            // Sizes no longer describe what Tollgate serves once a cap cut the chunk; drivers
            // use them only as hints.
            kept.push(HandedOutChunk {
                index: i,
                url: format!("https://{}{CHUNK_PATH_PREFIX}{name}", ctx.authority),
                row_count: limit,
            });
        }
        report.chunks = kept.len();
        resp.hand_out_chunks(&kept).map_err(|e| e.to_string())?;
    }
    report.masked = counted(&masked_columns, &counts);
    if report.masked.is_empty() && plan.mask.is_some() {
        // Nothing to mask in this result's columns: fine, but worth knowing.
        warn!(query = %query_id, rule = %plan.rule_id, "mask decision, but no result column needed masking");
    }
    Ok(report)
}

/// The first `limit` rows of a (final) response as the agent receives them, as JSON (an array
/// of arrays of string|null), for the audit record; empty when there are none.
pub fn recorded_rows(resp: &QueryResponse, limit: u64) -> Result<String, String> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let data = resp.json().get("data");
    let rows: Vec<Vec<Option<String>>> = match &resp.query_result_format {
        Some(ResultFormat::Arrow) => {
            let b64 = data
                .and_then(|d| d.get("rowsetBase64"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let ipc = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("rowsetBase64: {e}"))?;
            let rowtype: &[Value] = data
                .and_then(|d| d.get("rowtype"))
                .and_then(Value::as_array)
                .map_or(&[], Vec::as_slice);
            tollgate_mask::rowset::arrow_rows_as_text(&ipc, rowtype, limit)
                .map_err(|e| e.to_string())?
        }
        _ => data
            .and_then(|d| d.get("rowset"))
            .and_then(Value::as_array)
            .map(|rows| {
                rows.iter()
                    .take(limit)
                    .map(|r| {
                        r.as_array()
                            .map(|cells| {
                                cells
                                    .iter()
                                    .map(|c| match c {
                                        Value::Null => None,
                                        Value::String(s) => Some(s.clone()),
                                        other => Some(other.to_string()),
                                    })
                                    .collect()
                            })
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    if rows.is_empty() {
        return Ok(String::new());
    }
    serde_json::to_string(&rows).map_err(|e| e.to_string())
}

/// A statement's response, to be checked, rewritten and recorded off the async runtime.
pub struct ResultJob {
    /// The body as received.
    pub raw: bytes::Bytes,
    /// Its `Content-Encoding`.
    pub encoding: Option<String>,
    /// Caps on decoding it.
    pub limits: tollgate_wire::snowflake::BodyLimits,
    /// The statement it answers.
    pub statement: StatementCtx,
    /// Keys and detectors.
    pub masking: Masking,
    /// Where chunk tickets go.
    pub chunks: Arc<ChunkStore>,
    /// Chunk ticket lifetime; `None` when no storage client serves chunks.
    pub ticket_lifetime: Option<std::time::Duration>,
}

/// What the agent gets in place of the upstream's body.
#[derive(Debug)]
pub enum ResultBody {
    /// The body as received.
    Unchanged,
    /// The rewritten body (JSON, not compressed).
    Rewritten(Vec<u8>),
    /// An error in place of a result Tollgate may not hand out.
    Withheld(Withheld),
}

/// Whether a response body is small enough to process on the exchange's own task: at most
/// `max` bytes as received and at most `4 × max` once decoded
/// ([`tollgate_wire::snowflake::decoded_size_hint`]).
pub fn small_enough_inline(raw: &[u8], content_encoding: Option<&str>, max: usize) -> bool {
    raw.len() <= max
        && tollgate_wire::snowflake::decoded_size_hint(content_encoding, raw)
            <= max.saturating_mul(4)
}

/// Reads a statement's response, keeps the session current (the observe phase), and rewrites
/// the result per its plan: the body the agent gets and the outcome the audit records. CPU
/// work: run it on the blocking pool unless [`small_enough_inline`].
pub fn process_result(job: ResultJob) -> (ResultBody, ResultOutcome) {
    let st = &job.statement;
    let decoded = decode_body(job.encoding.as_deref(), &job.raw, &job.limits);
    let decoded_len = decoded.as_ref().map_or(job.raw.len(), |d| d.bytes.len());
    let parsed = decoded
        .map_err(|e| e.to_string())
        .and_then(|d| QueryResponse::parse(&d.bytes).map_err(|e| e.to_string()));
    let mut resp = match parsed {
        Ok(r) => r,
        Err(e) => {
            let masks = st.plan.as_ref().is_some_and(|p| p.mask.is_some());
            let mut out = ResultOutcome::new(if masks {
                ResultStatus::Withheld
            } else {
                ResultStatus::ForwardedUnparsed
            });
            out.reason = format!("the response could not be read: {e}");
            if masks {
                let w = Withheld::new(
                    WithheldReason::Unreadable,
                    out.reason.clone(),
                    format!("the result could not be read: {e}"),
                    None,
                );
                return (ResultBody::Withheld(w), out);
            }
            out.bytes = job.raw.len() as u64;
            return (ResultBody::Unchanged, out);
        }
    };
    let mut out = ResultOutcome::new(if !resp.success {
        ResultStatus::Failed
    } else if resp.is_in_progress() {
        ResultStatus::Running
    } else {
        ResultStatus::Ok
    });
    out.query_id.clone_from(&resp.query_id);
    out.bytes = decoded_len as u64;
    out.rows = resp.total.or(resp.returned).unwrap_or(0).max(0) as u64;
    if !resp.success {
        out.error_code = resp.code.clone().unwrap_or_default();
        out.reason = resp
            .sql_state
            .clone()
            .map(|s| format!("SQLSTATE {s}"))
            .unwrap_or_default();
    }
    observe::statement(st.session.as_ref(), &st.uses, &resp);
    let withhold = |out: &mut ResultOutcome, reason, recorded: &str, message: &str, qid| {
        out.status = ResultStatus::Withheld;
        out.reason = recorded.to_owned();
        ResultBody::Withheld(Withheld::new(reason, recorded, message, qid))
    };
    let Some(plan) = &st.plan else {
        if resp.success && (!resp.rowtype.is_empty() || !resp.chunks.is_empty()) {
            let body = withhold(
                &mut out,
                WithheldReason::NoDecision,
                "no decision known for this query id",
                "Tollgate has no decision for this query (it was issued before a restart or by another session); run it again",
                resp.query_id.clone(),
            );
            return (body, out);
        }
        return (ResultBody::Unchanged, out);
    };
    if let (Some(s), Some(q)) = (&st.session, &resp.query_id) {
        s.remember_result_plan(q, plan.clone());
    }
    if !needs_rewrite(plan, &resp) {
        if plan.record_rows > 0 && resp.success {
            record_rows(&mut out, &resp, plan.record_rows);
        }
        return (ResultBody::Unchanged, out);
    }
    let Some(ticket_lifetime) = job
        .ticket_lifetime
        .or(resp.chunks.is_empty().then_some(std::time::Duration::ZERO))
    else {
        let body = withhold(
            &mut out,
            WithheldReason::NoStorage,
            "chunked result and no storage client",
            "the result is chunked and this Tollgate has no storage client to serve chunks",
            resp.query_id.clone(),
        );
        return (body, out);
    };
    let ctx = RewriteContext {
        plan,
        masking: &job.masking,
        chunks: &job.chunks,
        session: st.session.as_ref(),
        authority: &st.authority,
        ticket_lifetime,
    };
    let query_id = resp.query_id.clone();
    match rewrite(&mut resp, &ctx) {
        Ok(report) => {
            info!(
                session = st.session.as_ref().map(|s| s.id.as_str()).unwrap_or("-"),
                query = query_id.as_deref().unwrap_or("-"),
                rule = %plan.rule_id,
                masked_columns = report.masked.len(),
                masked_values = report.masked.iter().map(|m| m.values).sum::<u64>(),
                chunks = report.chunks,
                chunks_dropped = report.chunks_dropped,
                chunk_bytes = report.chunk_bytes,
                rows = report.rows.unwrap_or(0),
                capped = report.capped,
                capped_by = report.capped_by.unwrap_or("-"),
                "result rewritten"
            );
            out.rows = report.rows.unwrap_or(out.rows);
            out.masked = report.masked;
            if report.chunks > 0 || report.chunks_dropped > 0 {
                out.chunks = Some(ChunkSummary {
                    served: report.chunks,
                    dropped: report.chunks_dropped,
                    bytes: report.chunk_bytes,
                });
            }
            out.capped_by = report.capped_by;
            if plan.record_rows > 0 {
                record_rows(&mut out, &resp, plan.record_rows);
            }
            (ResultBody::Rewritten(resp.to_json_bytes()), out)
        }
        Err(e) => {
            warn!(query = query_id.as_deref().unwrap_or("-"), error = %e, "result withheld");
            let body = withhold(&mut out, WithheldReason::RewriteFailed, &e, &e, query_id);
            (body, out)
        }
    }
}

/// Keeps the agent's rows in the outcome (a failure to read them is noted, never fatal: the
/// rows were already checked or rewritten).
fn record_rows(out: &mut ResultOutcome, resp: &QueryResponse, limit: u64) {
    match recorded_rows(resp, limit) {
        Ok(rows) => out.result_rows = rows,
        Err(e) => out.result_rows_error = Some(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_bodies_are_processed_inline() {
        use std::io::Write as _;
        let gzip = |data: &[u8]| {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(data).unwrap();
            enc.finish().unwrap()
        };
        assert!(small_enough_inline(b"{}", None, 4096));
        assert!(!small_enough_inline(&[b' '; 8192], None, 4096));
        // Small gzip of a small body: inline; small gzip of a big body: the pool.
        assert!(small_enough_inline(
            &gzip(&[b'a'; 8000]),
            Some("gzip"),
            4096
        ));
        let bomb = gzip(&vec![b'a'; 1 << 20]);
        assert!(bomb.len() <= 4096, "{}", bomb.len());
        assert!(!small_enough_inline(&bomb, Some("gzip"), 4096));
        assert!(
            !small_enough_inline(&bomb, None, 4096),
            "sniffed by its magic"
        );
    }

    #[test]
    fn no_cap_keeps_everything() {
        let p = plan_caps(None, 10, &[Some(5), Some(7)]).unwrap();
        assert_eq!(p.inline_keep, None);
        assert_eq!(p.chunk_keep, vec![Some(5), Some(7)]);
        assert_eq!(p.total, 22);
        assert!(!p.capped);
    }

    #[test]
    fn cap_inside_inline_drops_chunks() {
        let p = plan_caps(Some(4), 10, &[Some(5), Some(7)]).unwrap();
        assert_eq!(p.inline_keep, Some(4));
        assert_eq!(p.chunk_keep, vec![None, None]);
        assert_eq!(p.total, 4);
        assert!(p.capped);
    }

    #[test]
    fn cap_straddles_a_chunk() {
        let p = plan_caps(Some(13), 10, &[Some(2), Some(7), Some(9)]).unwrap();
        assert_eq!(p.inline_keep, Some(10));
        assert_eq!(p.chunk_keep, vec![Some(2), Some(1), None]);
        assert_eq!(p.total, 13);
        assert!(p.capped);
    }

    #[test]
    fn cap_above_total_cuts_nothing() {
        let p = plan_caps(Some(100), 10, &[Some(2)]).unwrap();
        assert_eq!(p.chunk_keep, vec![Some(2)]);
        assert_eq!(p.total, 12);
        assert!(!p.capped);
    }

    #[test]
    fn byte_cap_counts_json_rows_exactly() {
        let inline = InlineSize::PerRow(vec![10, 10, 10]);
        assert_eq!(rows_within_bytes(25, &inline, &[]).unwrap(), 2);
        assert_eq!(rows_within_bytes(30, &inline, &[]).unwrap(), 3);
        assert_eq!(rows_within_bytes(9, &inline, &[]).unwrap(), 0);
        // Fits inline: whole chunks by size, then the crossing chunk's share of rows.
        let chunks = [(Some(100), Some(1000)), (Some(100), Some(1000))];
        assert_eq!(rows_within_bytes(30 + 1000, &inline, &chunks).unwrap(), 103);
        assert_eq!(rows_within_bytes(30 + 1500, &inline, &chunks).unwrap(), 153);
        assert_eq!(rows_within_bytes(30 + 1509, &inline, &chunks).unwrap(), 153);
        assert_eq!(rows_within_bytes(u64::MAX, &inline, &chunks).unwrap(), 203);
    }

    #[test]
    fn byte_cap_shares_arrow_inline_rows() {
        let inline = InlineSize::Total {
            rows: 50,
            bytes: 5000,
        };
        assert_eq!(rows_within_bytes(2599, &inline, &[]).unwrap(), 25);
        assert_eq!(
            rows_within_bytes(6000, &inline, &[(Some(10), Some(2000))]).unwrap(),
            55
        );
    }

    #[test]
    fn byte_cap_needs_sizes_and_row_counts() {
        let inline = InlineSize::PerRow(vec![]);
        let e = rows_within_bytes(10, &inline, &[(Some(1), Some(1)), (Some(5), None)]).unwrap_err();
        assert!(e.contains("chunk 1 has no size"), "{e}");
        let e = rows_within_bytes(10, &inline, &[(None, Some(1))]).unwrap_err();
        assert!(e.contains("chunk 0 has no row count"), "{e}");
    }

    #[test]
    fn byte_cap_as_row_cap_cuts_the_crossing_chunk() {
        // 10 inline rows of 10 bytes, chunks of 100 rows / 1000 bytes: 1600 bytes keep the
        // inline rows, the first chunk and half of the second.
        let inline = InlineSize::PerRow(vec![10; 10]);
        let chunks = [(Some(100), Some(1000)); 3];
        let rows = rows_within_bytes(1600, &inline, &chunks).unwrap();
        let p = plan_caps(Some(rows), 10, &[Some(100); 3]).unwrap();
        assert_eq!(p.inline_keep, Some(10));
        assert_eq!(p.chunk_keep, vec![Some(100), Some(50), None]);
        assert_eq!(p.total, 160);
        assert!(p.capped);
    }

    #[test]
    fn cap_needs_row_counts() {
        let e = plan_caps(Some(100), 10, &[Some(2), None]).unwrap_err();
        assert!(e.contains("chunk 1"), "{e}");
    }
}
