//! Rewriting query results before the agent sees them: masking (per result column, from the
//! policy's mask plan and the statement's column lineage), row caps across inline and chunked
//! rows, and chunk URLs replaced by Tollgate-served tickets.
//!
//! The pure parts ([`plan_caps`], [`column_rules`]) are separate from the glue that edits the
//! response JSON ([`rewrite`]).

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use serde_json::Value;
use tollgate_mask::rowset::{ColumnCounts, ColumnRule, DetectRule, ResultMasker};
use tollgate_mask::{Detector, DetectorSet, MaskKey, Method};
use tollgate_policy::{ColumnAction, MaskMethod, MaskPlan, Policy, ResultColumnMeta};
use tollgate_wire::snowflake::{QueryResponse, ResultFormat, Secret};
use tracing::warn;

use super::chunks::{ChunkFilter, ChunkFilterFactory, ChunkStore, ChunkTicket, CHUNK_PATH_PREFIX};
use super::session::Session;

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

/// Keys and detectors for masking.
#[derive(Clone)]
pub struct Masking {
    /// Tokenisation key; without one, `token` directives redact (fail closed).
    pub key: Option<MaskKey>,
    /// Detectors for free-text fallback.
    pub detectors: Arc<DetectorSet>,
}

impl std::fmt::Debug for Masking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masking")
            .field("key", &self.key.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// Per masked column: what was done and how often (for logs and audit).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MaskedColumn {
    /// Result column name.
    pub column: String,
    /// Rule that asked for it.
    pub rule_id: String,
    /// `redact`, `partial`, `token`, `null`, `generalize` or `detect`.
    pub method: String,
    /// Values masked in the inline part (chunks report their own counts).
    pub values: u64,
}

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

fn summary(counts: &ColumnCounts) -> String {
    serde_json::to_string(counts).unwrap_or_default()
}

/// Both streaming maskers are chunk filters (same methods, no common trait in the mask crate).
macro_rules! chunk_filter {
    ($masker:ty) => {
        impl ChunkFilter for $masker {
            fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
                <$masker>::push(self, input, out).map_err(|e| e.to_string())
            }
            fn finish(self: Box<Self>, out: &mut Vec<u8>) -> Result<String, String> {
                <$masker>::finish(*self, out)
                    .map(|c| summary(&c))
                    .map_err(|e| e.to_string())
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
    let rowtype: &[Value] = resp
        .json()
        .pointer("/data/rowtype")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let (masker, mut masked_report) = match &plan.mask {
        Some(mask) => {
            let (rules, rep) = column_rules(plan, mask, resp, ctx.masking);
            let m = ResultMasker::new(rules, rowtype).map_err(|e| e.to_string())?;
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
                let b64 = resp
                    .json()
                    .pointer("/data/rowsetBase64")
                    .and_then(Value::as_str)
                    .unwrap_or("");
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
                ResultMasker::new(rules, rowtype).map_err(|e| e.to_string())?,
            ))
        }
        (None, false) => None,
    };
    let returned_all = resp.returned.is_some() && resp.returned == resp.total;
    let mut counts = ColumnCounts::default();
    let qrmk = resp.qrmk.clone();
    let chunk_headers: Vec<(String, Secret)> = resp
        .chunk_headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let urls: Vec<Secret> = resp.chunks.iter().map(|c| c.url.clone()).collect();
    let sizes: Vec<u64> = resp
        .chunks
        .iter()
        .map(|c| c.uncompressed_size.unwrap_or(0).max(0) as u64)
        .collect();
    let query_id = resp.query_id.clone().unwrap_or_default();
    let data = resp
        .json_mut()
        .get_mut("data")
        .and_then(Value::as_object_mut)
        .ok_or("the result has no data object")?;

    if let Some(m) = &masker {
        if let Some(rowtype) = data.get_mut("rowtype").and_then(Value::as_array_mut) {
            m.rewrite_rowtype(rowtype);
        }
    }
    if arrow {
        let b64 = data.get("rowsetBase64").and_then(Value::as_str);
        if let (Some(b64), Some(m)) = (b64, limiter.as_ref()) {
            if !b64.is_empty() {
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
                data.insert(
                    "rowsetBase64".into(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(out)),
                );
            }
        }
    } else if let Some(rowset) = data.get_mut("rowset") {
        if let (Some(keep), Some(rows)) = (caps.inline_keep, rowset.as_array_mut()) {
            rows.truncate(keep as usize);
        }
        if let Some(m) = &masker {
            m.mask_json_rowset(rowset, &mut counts)
                .map_err(|e| e.to_string())?;
        }
    }
    if caps.capped {
        data.insert("total".into(), Value::from(caps.total));
        // `returned` counts the whole result where the server counted it so (Node waits for
        // that many rows), otherwise the inline rows.
        let returned = if returned_all {
            caps.total
        } else {
            caps.inline_keep.unwrap_or(caps.total)
        };
        data.insert("returned".into(), Value::from(returned));
        report.capped = true;
        report.capped_by = Some(cut_by);
    }
    report.rows = Some(caps.total);

    // Chunks: every URL replaced by a ticket; the storage keys stay with Tollgate.
    if !urls.is_empty() {
        let mut headers = chunk_headers;
        if let Some(qrmk) = qrmk {
            headers.push((
                "x-amz-server-side-encryption-customer-algorithm".into(),
                Secret::new("AES256".to_owned()),
            ));
            headers.push(("x-amz-server-side-encryption-customer-key".into(), qrmk));
        }
        let Some(session) = ctx.session else {
            return Err("chunked results need a known Snowflake session".into());
        };
        let entries = data
            .get_mut("chunks")
            .and_then(Value::as_array_mut)
            .ok_or("data.chunks is not an array")?;
        let masked_cols: Arc<Vec<Option<(String, String, String)>>> = Arc::new(
            masked_report
                .iter()
                .map(|c| {
                    c.as_ref()
                        .map(|c| (c.column.clone(), c.rule_id.clone(), c.method.clone()))
                })
                .collect(),
        );
        let mut kept = Vec::new();
        for (i, (entry, url)) in entries.drain(..).zip(urls).enumerate() {
            let Some(keep) = caps.chunk_keep.get(i).copied().flatten() else {
                report.chunks_dropped += 1;
                continue;
            };
            report.chunk_bytes += sizes.get(i).copied().unwrap_or(0);
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
                    url,
                    headers: headers.clone(),
                    filter,
                    query_id: query_id.clone(),
                    index: i,
                    rows: keep,
                    bytes: sizes.get(i).copied().unwrap_or(0),
                    masked: masked_cols.clone(),
                    expires: Instant::now() + ctx.ticket_lifetime,
                })
                .map_err(|e| e.to_string())?;
            let mut entry = entry;
            if let Some(obj) = entry.as_object_mut() {
                obj.insert(
                    "url".into(),
                    Value::String(format!(
                        "https://{}{CHUNK_PATH_PREFIX}{name}",
                        ctx.authority
                    )),
                );
                if limit.is_some() {
                    obj.insert("rowCount".into(), Value::from(keep));
                    // Sizes no longer describe what Tollgate serves; drivers use them only as
                    // hints.
                }
            }
            kept.push(entry);
        }
        report.chunks = kept.len();
        *entries = kept;
        data.remove("qrmk");
        data.remove("chunkHeaders");
    }
    for (i, col) in masked_report.iter_mut().enumerate() {
        if let Some(col) = col {
            col.values = counts.columns().get(i).map_or(0, |c| c.masked);
        }
    }
    report.masked = masked_report.into_iter().flatten().collect();
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

#[cfg(test)]
mod tests {
    use super::*;

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
