//! Result chunks served by Tollgate.
//!
//! Snowflake hands large results out as `data.chunks[].url`: pre-signed cloud-storage URLs that
//! drivers fetch directly — a path around any proxy that only sees the Snowflake host. Tollgate
//! rewrites every chunk URL to a path on the same Snowflake host
//! (`/tollgate/chunks/<ticket>`); the driver's fetch is redirected and intercepted like any
//! other request, and Tollgate fetches the real chunk itself (with the chunk's `qrmk` /
//! `chunkHeaders`), decompresses it, masks it and streams it back. The agent never learns the
//! storage URL or its keys.
//!
//! A ticket is a 128-bit random name bound to the Snowflake session and to the process that
//! logged in: it is refused once the session has ended or expired, from another process (even
//! one of the same uid and cgroup with a Snowflake session of its own), with another session's
//! token, and after its own expiry. Tickets and storage URLs are never logged.
//!
//! Memory stays bounded while streaming: compressed input is fed to the decoder in small
//! slices, the filter emits output per row or record batch (big batches in slices), a bounded
//! channel applies the client's back-pressure to the storage download, and a process-wide
//! [`ChunkBudget`](crate::budget::ChunkBudget) bounds how many bytes the chunks being filtered
//! hold at once, whatever the number of agents and of the chunks each fetches in parallel. A chunk reserves twice its
//! announced size (its input message and its output) before it is fetched and keeps the
//! reservation until its client has taken the last byte (at most [`BUDGET_HOLD`]); a chunk
//! bigger than the whole budget waits for all of it and is filtered alone.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::{mpsc, oneshot};
use tollgate_identity::ProcessIdentity;
use tollgate_mask::rowset::ColumnCounts;
use tollgate_proxy::{BodyError, ConnectionContext, ProxyBody};
use tollgate_wire::snowflake::Secret;
use tracing::{debug, info, warn};

use crate::budget::Reservation;
use crate::plan::MaskedColumn;
use crate::pool::BlockingPool;
use crate::reply::text_reply;
use crate::session::{Session, SessionTable};
use crate::storage::StorageClient;
use crate::sync::lock;

/// Path prefix of the chunk URLs Tollgate hands to drivers.
pub const CHUNK_PATH_PREFIX: &str = "/tollgate/chunks/";

/// Tickets beyond this many are refused (the oldest expired ones are pruned first).
const MAX_TICKETS: usize = 200_000;

/// Compressed bytes fed to the decoder per step: bounds what one step can inflate to.
const INFLATE_STEP: usize = 8 << 10;

/// Storage bytes gathered before they are handed to a worker of the pool.
const WORK_BATCH: usize = 64 << 10;

/// Output frames buffered between the masking task and the client.
const CHANNEL_FRAMES: usize = 4;

/// Longest a served chunk keeps its share of the [`ChunkBudget`](crate::budget::ChunkBudget): a
/// client that stops reading cannot hold back every other agent's chunks (past it, the chunk
/// goes on outside the budget).
pub const BUDGET_HOLD: Duration = Duration::from_secs(60);

/// Why a chunk filter failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

/// A streaming transformation of one chunk's (decompressed) body: masking and row caps.
pub trait ChunkFilter: Send {
    /// Consumes `input`, appending whatever output is complete to `out` (a few MiB at most of
    /// a big batch: the rest waits for [`drain`](Self::drain)).
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FilterError>;
    /// Whether output of input already consumed waits for [`drain`](Self::drain).
    fn has_pending_output(&self) -> bool;
    /// Appends the next piece of the output that waits.
    fn drain(&mut self, out: &mut Vec<u8>) -> Result<(), FilterError>;
    /// Ends the body: appends the rest of the output, or fails on a truncated body. Returns
    /// the per-column counts (counts, never values).
    fn finish(self: Box<Self>, out: &mut Vec<u8>) -> Result<ColumnCounts, FilterError>;
}

/// Makes a fresh [`ChunkFilter`] for each fetch of a chunk.
pub trait ChunkFilterFactory: Send + Sync {
    /// A filter for one fetch.
    fn make(&self) -> Box<dyn ChunkFilter>;
}

/// One rewritten chunk: where it really is and how to serve it.
pub struct ChunkTicket {
    /// The session the result belongs to.
    pub session: Arc<Session>,
    /// The pre-signed storage URL.
    pub url: Secret,
    /// Headers the storage needs (`x-amz-server-side-encryption-customer-*`, `chunkHeaders`).
    pub headers: Vec<(String, Secret)>,
    /// `None`: served byte for byte; otherwise decompressed and filtered.
    pub filter: Option<Arc<dyn ChunkFilterFactory>>,
    /// The query, for logs.
    pub query_id: String,
    /// The chunk's index in the result, for logs.
    pub index: usize,
    /// Rows the result announced for it (after caps).
    pub rows: u64,
    /// Its uncompressed size as the server announced it (before caps).
    pub bytes: u64,
    /// Per result column: the masked column (values 0) when masked, for the audit record.
    pub masked: Arc<Vec<Option<MaskedColumn>>>,
    /// After this the ticket is refused.
    pub expires: Instant,
}

impl std::fmt::Debug for ChunkTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the storage URL or its keys.
        f.debug_struct("ChunkTicket")
            .field("session", &self.session.id)
            .field("query_id", &self.query_id)
            .field("index", &self.index)
            .field("rows", &self.rows)
            .field("filtered", &self.filter.is_some())
            .finish_non_exhaustive()
    }
}

/// The live tickets.
#[derive(Default)]
pub struct ChunkStore {
    tickets: Mutex<HashMap<String, Arc<ChunkTicket>>>,
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStore")
            .field("tickets", &self.len())
            .finish()
    }
}

/// Why a ticket could not be issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// Too many live tickets.
    #[error(
        "too many result chunks are outstanding ({0}); retry when earlier results have been read"
    )]
    Full(usize),
    /// No randomness.
    #[error("no randomness for a chunk ticket: {0}")]
    Random(String),
}

impl ChunkStore {
    /// Registers a ticket and returns its name (32 hex digits).
    pub fn issue(&self, ticket: ChunkTicket) -> Result<String, TicketError> {
        let mut raw = [0u8; 16];
        getrandom::getrandom(&mut raw).map_err(|e| TicketError::Random(e.to_string()))?;
        let name: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut tickets = lock(&self.tickets);
        if tickets.len() >= MAX_TICKETS {
            let now = Instant::now();
            tickets.retain(|_, t| t.expires > now);
            if tickets.len() >= MAX_TICKETS {
                return Err(TicketError::Full(tickets.len()));
            }
        }
        tickets.insert(name.clone(), Arc::new(ticket));
        Ok(name)
    }

    /// The ticket named `name`, unless unknown or expired.
    pub fn get(&self, name: &str) -> Option<Arc<ChunkTicket>> {
        let mut tickets = lock(&self.tickets);
        let ticket = tickets.get(name)?.clone();
        if ticket.expires <= Instant::now() {
            tickets.remove(name);
            return None;
        }
        Some(ticket)
    }

    /// Forgets every ticket of `session` (logout).
    pub fn forget_session(&self, session: &Arc<Session>) {
        lock(&self.tickets).retain(|_, t| !Arc::ptr_eq(&t.session, session));
    }

    /// Number of live tickets.
    pub fn len(&self) -> usize {
        lock(&self.tickets).len()
    }

    /// Whether there is no ticket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ticket name in a chunk path (`/tollgate/chunks/<ticket>`), if `target` is one.
pub fn ticket_name(target: &str) -> Option<&str> {
    let rest = target.strip_prefix(CHUNK_PATH_PREFIX)?;
    Some(rest.split(['?', '/']).next().unwrap_or(""))
}

/// Whether `conn` may use `ticket`: the session must be live, the connection must come from
/// the process that logged in (thread group, uid, cgroup and network namespace — another
/// process of the same workload running a second Snowflake session is refused), and a
/// Snowflake token on the request, if any, must be that session's.
///
/// `presented` is what the request's `Authorization` header carried: `None` for no token,
/// `Some(None)` for a token Tollgate does not know, `Some(Some(session))` for a live session.
pub fn authorize(
    ticket: &ChunkTicket,
    sessions: &SessionTable,
    conn: &ConnectionContext,
    presented: Option<Option<&Arc<Session>>>,
) -> Result<(), &'static str> {
    if !sessions.is_live(&ticket.session) {
        return Err("the Snowflake session of this result has ended or expired");
    }
    match presented {
        Some(Some(session)) if Arc::ptr_eq(session, &ticket.session) => {}
        Some(_) => return Err("the result belongs to another Snowflake session"),
        None => {}
    }
    match (&ticket.session.process, &conn.process) {
        (Some(owner), Some(caller)) if same_process(owner, caller) => Ok(()),
        (Some(owner), Some(caller)) if same_workload(owner, caller) => {
            Err("the result belongs to another process's Snowflake session")
        }
        (Some(_), _) => Err("the result belongs to another workload"),
        // Logged in without a redirect record (tests without eBPF): the session must still
        // be live, which was checked above.
        (None, _) => Ok(()),
    }
}

fn same_workload(a: &ProcessIdentity, b: &ProcessIdentity) -> bool {
    a.uid == b.uid && a.cgroup_id == b.cgroup_id && a.netns_cookie == b.netns_cookie
}

/// The same process: chunk downloads run on the driver's threads, which share the thread group
/// of the one that logged in.
fn same_process(a: &ProcessIdentity, b: &ProcessIdentity) -> bool {
    same_workload(a, b) && a.tgid == b.tgid
}

/// How a served chunk ended: `Ok` with the filter's per-column counts (`None` when served
/// unfiltered), or the error that ended it.
pub type ChunkResult = Result<Option<ColumnCounts>, String>;

/// Hears how a served chunk ended (the logging phase records it).
pub type ChunkDone = Box<dyn FnOnce(ChunkResult) + Send>;

/// Fetches the ticket's chunk and streams it (filtered on `pool`) to the client; `done` hears
/// how it ended.
pub async fn serve(
    ticket: Arc<ChunkTicket>,
    storage: &StorageClient,
    pool: &BlockingPool,
    done: Option<ChunkDone>,
) -> Response<ProxyBody> {
    let what = format!("result chunk {} of query {}", ticket.index, ticket.query_id);
    // A filtered chunk holds its input message and its output: reserve both before fetching.
    let reservation = match &ticket.filter {
        Some(_) => Some(
            storage
                .chunk_budget()
                .reserve(ticket.bytes.saturating_mul(2))
                .await,
        ),
        None => None,
    };
    let resp = match storage.get(&ticket.url, &ticket.headers).await {
        Ok(r) => r,
        Err(e) => {
            warn!(query = %ticket.query_id, chunk = ticket.index, error = %e, "chunk fetch failed");
            if let Some(done) = done {
                done(Err(format!("fetch: {e}")));
            }
            return text_reply(
                StatusCode::BAD_GATEWAY,
                &format!("Tollgate could not fetch {what}: {e}"),
            );
        }
    };
    let Some(factory) = ticket.filter.clone() else {
        // Unfiltered: the storage's bytes as they are, encoding included.
        let (parts, body) = resp.into_parts();
        let mut out = Response::new(body.map_err(|e| -> BodyError { Box::new(e) }).boxed());
        for name in [
            http::header::CONTENT_TYPE,
            http::header::CONTENT_ENCODING,
            http::header::CONTENT_LENGTH,
        ] {
            if let Some(v) = parts.headers.get(&name) {
                out.headers_mut().insert(name, v.clone());
            }
        }
        debug!(query = %ticket.query_id, chunk = ticket.index, "chunk served unfiltered");
        if let Some(done) = done {
            done(Ok(None));
        }
        return out;
    };
    let gzip_header = resp
        .headers()
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.eq_ignore_ascii_case("gzip"));
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, String>>(CHANNEL_FRAMES);
    let max = storage.config().max_chunk_decompressed;
    let body = resp.into_body();
    let log_ticket = ticket.clone();
    let pool = pool.clone();
    let released = hold(reservation, ticket.clone());
    tokio::spawn(async move {
        let feeder = Feeder::new(gzip_header, factory.make(), max);
        match pump(body, feeder, &pool, &tx).await {
            Ok(counts) => {
                info!(query = %log_ticket.query_id, chunk = log_ticket.index, masked = counts.columns().iter().map(|c| c.masked).sum::<u64>(), rows = counts.rows(), "chunk served");
                if let Some(done) = done {
                    done(Ok(Some(counts)));
                }
            }
            Err(e) => {
                warn!(query = %log_ticket.query_id, chunk = log_ticket.index, error = %e, "chunk failed");
                if let Some(done) = done {
                    done(Err(e.clone()));
                }
                let _ = tx.send(Err(e)).await;
            }
        }
    });
    // Wait for the first output (or the failure) before answering, so that a chunk that is
    // malformed from its start gets an error status instead of a truncated 200.
    let first = match rx.recv().await {
        Some(Ok(bytes)) => Some(bytes),
        Some(Err(e)) => {
            return text_reply(
                StatusCode::BAD_GATEWAY,
                &format!("Tollgate could not serve {what}: {e}"),
            )
        }
        None => None,
    };
    // The body keeps the reservation (`released`) until the client has taken its last byte.
    let stream = futures_util::stream::unfold(
        (first, rx, released),
        |(first, mut rx, released)| async move {
            if let Some(bytes) = first {
                return Some((Ok(Frame::data(bytes)), (None, rx, released)));
            }
            match rx.recv().await? {
                Ok(bytes) => Some((Ok(Frame::data(bytes)), (None, rx, released))),
                Err(e) => Some((
                    Err(BodyError::from(format!("chunk aborted: {e}"))),
                    (None, rx, released),
                )),
            }
        },
    );
    let mut out = Response::new(StreamBody::new(stream).boxed());
    out.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    out
}

/// Keeps `reservation` until the returned sender is dropped, or for [`BUDGET_HOLD`] at most.
fn hold(reservation: Option<Reservation>, ticket: Arc<ChunkTicket>) -> oneshot::Sender<()> {
    let (tx, rx) = oneshot::channel::<()>();
    if let Some(reservation) = reservation {
        tokio::spawn(async move {
            if tokio::time::timeout(BUDGET_HOLD, rx).await.is_err() {
                warn!(query = %ticket.query_id, chunk = ticket.index, "the client has not taken this chunk within {} s; its memory reservation is released", BUDGET_HOLD.as_secs());
            }
            drop(reservation);
        });
    }
    tx
}

/// The CPU side of serving a chunk: inflating (when gzip'd, by header or magic bytes),
/// counting against the cap, and filtering. Runs on the blocking pool, one batch at a time.
struct Feeder {
    inflater: Option<flate2::write::MultiGzDecoder<Vec<u8>>>,
    /// Whether gzip or plain has been decided.
    decided: bool,
    sniff: Vec<u8>,
    filter: Box<dyn ChunkFilter>,
    total: u64,
    max_decompressed: u64,
}

impl Feeder {
    fn new(gzip_header: Option<bool>, filter: Box<dyn ChunkFilter>, max_decompressed: u64) -> Self {
        let gzip = gzip_header == Some(true);
        Feeder {
            inflater: gzip.then(|| flate2::write::MultiGzDecoder::new(Vec::new())),
            decided: gzip,
            sniff: Vec::new(),
            filter,
            total: 0,
            max_decompressed,
        }
    }

    /// Consumes storage bytes, appending the filter's output to `out`.
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        if !self.decided {
            // No Content-Encoding header: decide by the gzip magic bytes.
            self.sniff.extend_from_slice(data);
            if self.sniff.len() < 2 {
                return Ok(());
            }
            self.decided = true;
            if self.sniff[..2] == [0x1f, 0x8b] {
                self.inflater = Some(flate2::write::MultiGzDecoder::new(Vec::new()));
            }
            let buffered = std::mem::take(&mut self.sniff);
            return self.inflate(&buffered, out);
        }
        self.inflate(data, out)
    }

    fn inflate(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let max = self.max_decompressed;
        match &mut self.inflater {
            None => {
                self.total += data.len() as u64;
                if self.total > max {
                    return Err(format!("larger than {max} bytes"));
                }
                self.filter.push(data, out).map_err(|e| e.0)
            }
            Some(dec) => {
                for piece in data.chunks(INFLATE_STEP) {
                    dec.write_all(piece).map_err(|e| format!("gzip: {e}"))?;
                    let inflated = std::mem::take(dec.get_mut());
                    self.total += inflated.len() as u64;
                    if self.total > max {
                        return Err(format!("decompresses to more than {max} bytes"));
                    }
                    self.filter.push(&inflated, out).map_err(|e| e.0)?;
                }
                Ok(())
            }
        }
    }

    /// Ends the body: the rest of the output and the filter's counts.
    fn finish(mut self, out: &mut Vec<u8>) -> Result<ColumnCounts, String> {
        if !self.sniff.is_empty() {
            let sniffed = std::mem::take(&mut self.sniff);
            self.decided = true;
            self.inflate(&sniffed, out)?;
        }
        if let Some(mut dec) = self.inflater.take() {
            dec.try_finish().map_err(|e| format!("gzip: {e}"))?;
            let rest = std::mem::take(dec.get_mut());
            if !rest.is_empty() {
                self.filter.push(&rest, out).map_err(|e| e.0)?;
            }
            // A gzip member cut short inflates what it can without error: the filter's own end
            // check catches the truncated rows or batches.
        }
        self.filter.finish(out).map_err(|e| e.0)
    }
}

/// A job of the pump on the pool.
enum Step {
    /// Input from storage.
    Feed(Bytes),
    /// More of the output of input already fed.
    Drain,
}

/// Reads the storage body, hands it in batches to `feeder` on the pool, and sends the output.
async fn pump<B>(
    mut body: B,
    feeder: Feeder,
    pool: &BlockingPool,
    tx: &mpsc::Sender<Result<Bytes, String>>,
) -> Result<ColumnCounts, String>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut feeder = Some(feeder);
    let mut batch = BytesMut::new();
    let mut ended = false;
    while !ended {
        match body.frame().await {
            Some(frame) => {
                let frame = frame.map_err(|e| format!("reading from storage: {e}"))?;
                if let Ok(data) = frame.into_data() {
                    batch.extend_from_slice(&data);
                }
                if batch.len() < WORK_BATCH {
                    continue;
                }
            }
            None => ended = true,
        }
        let data = std::mem::take(&mut batch).freeze();
        let mut f = feeder.take().ok_or("chunk filter lost")?;
        // One batch of input, then (a big batch's output) one piece of output per job, each
        // sent before the next is made.
        let mut step = Step::Feed(data);
        loop {
            let (back, out, res) = pool
                .run(move || {
                    let mut out = Vec::new();
                    let res = match step {
                        Step::Feed(data) => f.feed(&data, &mut out),
                        Step::Drain => f.filter.drain(&mut out).map_err(|e| e.0),
                    };
                    (f, out, res)
                })
                .await
                .map_err(|e| e.to_string())?;
            res?;
            f = back;
            if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                return Err("the client went away".into());
            }
            if !f.filter.has_pending_output() {
                break;
            }
            step = Step::Drain;
        }
        feeder = Some(f);
    }
    let f = feeder.take().ok_or("chunk filter lost")?;
    let (out, counts) = pool
        .run(move || {
            let mut out = Vec::new();
            let counts = f.finish(&mut out);
            (out, counts)
        })
        .await
        .map_err(|e| e.to_string())?;
    let counts = counts?;
    if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
        return Err("the client went away".into());
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use http_body_util::Full;

    use super::*;

    /// Passes bytes through; fails at the end unless the body ends with `END` when `strict`.
    struct Checked {
        seen: Vec<u8>,
        strict: bool,
    }

    impl ChunkFilter for Checked {
        fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FilterError> {
            self.seen.extend_from_slice(input);
            out.extend_from_slice(input);
            Ok(())
        }
        fn has_pending_output(&self) -> bool {
            false
        }
        fn drain(&mut self, _out: &mut Vec<u8>) -> Result<(), FilterError> {
            Ok(())
        }
        fn finish(self: Box<Self>, _out: &mut Vec<u8>) -> Result<ColumnCounts, FilterError> {
            if !self.strict || self.seen.ends_with(b"END") {
                Ok(ColumnCounts::new(1))
            } else {
                Err(FilterError("truncated".into()))
            }
        }
    }

    /// Holds everything it is fed and hands it out 1000 bytes per `drain`, like a big batch.
    struct Trickle {
        held: Vec<u8>,
        drains: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl ChunkFilter for Trickle {
        fn push(&mut self, input: &[u8], _out: &mut Vec<u8>) -> Result<(), FilterError> {
            self.held.extend_from_slice(input);
            Ok(())
        }
        fn has_pending_output(&self) -> bool {
            !self.held.is_empty()
        }
        fn drain(&mut self, out: &mut Vec<u8>) -> Result<(), FilterError> {
            self.drains
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let k = self.held.len().min(1000);
            out.extend(self.held.drain(..k));
            Ok(())
        }
        fn finish(mut self: Box<Self>, out: &mut Vec<u8>) -> Result<ColumnCounts, FilterError> {
            // Like the Arrow masker: whatever is still held is written at the end.
            out.append(&mut self.held);
            Ok(ColumnCounts::new(1))
        }
    }

    #[tokio::test]
    async fn held_output_is_drained_piece_by_piece_each_sent_on_its_own() {
        let p = payload();
        let drains = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let filter = Trickle {
            held: Vec::new(),
            drains: drains.clone(),
        };
        let (tx, mut rx) = mpsc::channel(1 << 16);
        let feeder = Feeder::new(Some(true), Box::new(filter), u64::MAX);
        let r = pump(
            Full::new(Bytes::from(gz(&p))),
            feeder,
            &BlockingPool::new(1),
            &tx,
        )
        .await;
        drop(tx);
        assert!(r.is_ok(), "{r:?}");
        let mut frames = Vec::new();
        while let Some(Ok(b)) = rx.recv().await {
            frames.push(b);
        }
        assert_eq!(frames.concat(), p);
        // Every frame but the last (what the end of the gzip stream held) is one drain's.
        let (last, drained) = frames.split_last().unwrap();
        assert!(drained.len() > 100, "{} frames", frames.len());
        assert!(drained.iter().all(|b| b.len() <= 1000));
        assert!(last.len() <= p.len());
        assert_eq!(
            drains.load(std::sync::atomic::Ordering::SeqCst),
            drained.len()
        );
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Runs `body` through a filter (strict or not), in frames of `frame` bytes.
    async fn run_with(
        body: Vec<u8>,
        header: Option<bool>,
        max: u64,
        strict: bool,
    ) -> (Result<ColumnCounts, String>, Vec<u8>) {
        let (tx, mut rx) = mpsc::channel(1 << 16);
        let body = Full::new(Bytes::from(body));
        let feeder = Feeder::new(
            header,
            Box::new(Checked {
                seen: Vec::new(),
                strict,
            }),
            max,
        );
        let r = pump(body, feeder, &BlockingPool::new(1), &tx).await;
        drop(tx);
        let mut out = Vec::new();
        while let Some(Ok(b)) = rx.recv().await {
            out.extend_from_slice(&b);
        }
        (r, out)
    }

    async fn run(
        body: Vec<u8>,
        header: Option<bool>,
        max: u64,
    ) -> (Result<ColumnCounts, String>, Vec<u8>) {
        run_with(body, header, max, true).await
    }

    fn payload() -> Vec<u8> {
        let mut p: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        p.extend_from_slice(b"END");
        p
    }

    #[tokio::test]
    async fn gzip_by_header_or_magic_is_inflated_in_order() {
        let p = payload();
        for header in [Some(true), None] {
            let (r, out) = run(gz(&p), header, u64::MAX).await;
            assert!(r.is_ok(), "{r:?}");
            assert_eq!(out, p);
        }
    }

    #[tokio::test]
    async fn plain_bodies_pass_as_they_are() {
        let p = payload();
        let (r, out) = run(p.clone(), None, u64::MAX).await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(out, p);
        // A body too short to sniff is plain.
        let (r, out) = run_with(b"x".to_vec(), None, u64::MAX, false).await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(out, b"x");
    }

    #[tokio::test]
    async fn truncated_gzip_fails_even_when_the_filter_would_accept_it() {
        let z = gz(&payload());
        // A filter without an end check of its own: the gzip stream itself must be found cut.
        for cut in [z.len() / 2, z.len() - 4] {
            let (r, _) = run_with(z[..cut].to_vec(), Some(true), u64::MAX, false).await;
            let e = r.expect_err("a truncated gzip stream must fail");
            assert!(e.contains("gzip"), "{e}");
        }
        // The whole stream passes the same filter.
        let (r, _) = run_with(z, Some(true), u64::MAX, false).await;
        assert!(r.is_ok(), "{r:?}");
    }

    #[tokio::test]
    async fn bytes_that_are_not_gzip_under_a_gzip_header_fail() {
        let mut junk = vec![0x1f, 0x8b, 0x08, 0x00];
        junk.extend((0..4096u32).map(|i| (i * 7919 % 251) as u8));
        let (r, out) = run_with(junk, Some(true), u64::MAX, false).await;
        let e = r.expect_err("junk under a gzip header must fail");
        assert!(e.contains("gzip"), "{e}");
        assert!(
            out.is_empty(),
            "nothing inflated from junk reaches the client"
        );
    }

    #[tokio::test]
    async fn decompression_is_capped() {
        let bomb = gz(&vec![0u8; 64 << 20]);
        let (r, out) = run(bomb, Some(true), 1 << 20).await;
        let e = r.unwrap_err();
        assert!(e.contains("decompresses to more than"), "{e}");
        assert!(out.len() <= 1 << 20, "{}", out.len());
    }

    #[test]
    fn ticket_names_come_from_chunk_paths_only() {
        assert_eq!(ticket_name("/tollgate/chunks/abc?x=1"), Some("abc"));
        assert_eq!(ticket_name("/tollgate/chunks/abc/def"), Some("abc"));
        assert_eq!(ticket_name("/queries/v1/query-request"), None);
    }
}
