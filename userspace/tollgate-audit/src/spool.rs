//! The local spool: an append-only, fsync'd log of sealed events — the first place every event
//! goes, the store `tollgate replay` and `tollgate audit verify` read when there is no
//! ClickHouse, and the queue the ClickHouse shipper drains.
//!
//! # Layout
//! `DIR/seg-<first host_seq, 20 digits>.log` segments hold frames
//! `[u32 LE payload length][u32 LE CRC-32 of payload][payload: the event as JSON]`, in host
//! sequence order. Beside each segment, `seg-….heads` holds the open chains and the next host
//! sequence at the segment's start (JSON), so recovery reads one segment, not the whole spool.
//! A new segment starts when the current one passes [`SpoolOptions::segment_bytes`].
//!
//! # Writing
//! The appending task writes; a thread of the spool's makes the writes durable.
//! [`Spool::append_written`] takes the writer's lock, seals the events
//! ([`crate::chain::Chainer::seal`]) and writes them with one `write` on the caller's thread —
//! a copy into the kernel's page cache, no hand-off to another thread and no wake-up — and from
//! then on they survive a crash of Tollgate (`kill -9`), since the kernel holds them. (When a
//! segment is full, the append that starts the next one also makes the old one durable first,
//! a few milliseconds once per segment.) The answer is a [`Written`] ticket;
//! [`Written::durable`] waits until an `fdatasync` that began after the write has returned —
//! from then on they also survive a power loss. The sync thread runs `fdatasync` back to back
//! while appends ask for it, so one sync covers every event written before it began (group
//! commit), and a caller can let the sync run while it does other work: the Snowflake layer
//! forwards a statement once its events are written and releases the answer only once they are
//! durable. Events nothing waits for ([`Spool::write_lazy`], [`Spool::append_detached`]) are
//! synced with the next sync asked for, or within [`LAZY_SYNC`]. [`Spool::append`] and
//! [`Spool::append_many`] wait for both.
//!
//! If a `write` fails (disk full, read-only file system, permissions), the segment is cut back to
//! its last good length, the chain state is rolled back, and every waiting append gets the error:
//! the caller must refuse what the event describes (no access without audit). If an `fdatasync`
//! fails, what the kernel held may be gone, and a later sync that succeeds proves nothing about
//! it: the spool is *broken* — every event not yet durable and every later append gets the
//! error, so every later step is refused — until Tollgate restarts, and recovery reads what the
//! disk really holds.
//!
//! # Recovery
//! [`Spool::open`] reads the last segment's heads, scans that segment (a torn frame at its end —
//! a crash mid-write of events nobody was told are stored — is cut off), and then closes every
//! chain left open by the previous run with a signed [`EventKind::SessionEnd`] /
//! [`EventKind::Disconnect`] ("tollgate restarted"), because their in-memory state is gone.
//! Before it closes a chain, recovery marks each statement of it that was forwarded (its
//! `decision` event allowed it) but has no `result` event — the statement reached Snowflake and
//! its outcome is unknown — with a `result` event of decision `lost` ([`STATEMENT_ATTR`] links
//! them). It looks for them in the last two segments.

use std::collections::HashMap;
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{error, warn};

use crate::chain::{ChainHead, Chainer, HostKey};
use crate::event::{Event, EventKind};

/// Largest event payload accepted (a frame longer than this is damage, not an event).
pub const MAX_EVENT_BYTES: usize = 16 << 20;
/// The attribute linking a statement's `query`, `decision` and `result` events (the `query`
/// event's id); recovery uses it to find statements whose result was never recorded.
pub const STATEMENT_ATTR: &str = "statement";

/// Spool settings.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// The directory (created when missing, mode 0700).
    pub dir: PathBuf,
    /// This host's name, stamped on events.
    pub host: String,
    /// Size at which a new segment starts.
    pub segment_bytes: u64,
    /// `fdatasync` before answering (true in production; false only to measure its cost).
    pub sync: bool,
}

impl SpoolOptions {
    /// Defaults for `dir`: 64 MiB segments, fsync on.
    pub fn new(dir: impl Into<PathBuf>, host: impl Into<String>) -> Self {
        SpoolOptions {
            dir: dir.into(),
            host: host.into(),
            segment_bytes: 64 << 20,
            sync: true,
        }
    }
}

/// Spool failures.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The spool could not be written; the event is not stored.
    #[error(
        "the audit spool {dir} cannot be written ({cause}); free space or fix permissions on it"
    )]
    Write {
        /// The spool directory.
        dir: PathBuf,
        /// What failed.
        cause: String,
    },
    /// The spool could not be opened or read.
    #[error("the audit spool {dir} cannot be read ({cause})")]
    Read {
        /// The spool directory.
        dir: PathBuf,
        /// What failed.
        cause: String,
    },
    /// The spool has stopped (Tollgate is shutting down).
    #[error("the audit spool has stopped (Tollgate is shutting down)")]
    Stopped,
}

/// What an append stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The event's host sequence number.
    pub host_seq: u64,
    /// Its position in its chain.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

/// What every handle of one spool shares: the writer (its lock orders the appends; it holds
/// the sync thread's handle).
struct Shared {
    writer: Mutex<Writer>,
    dir: PathBuf,
    failures: Arc<AtomicU64>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Seals and writes `events` (see [`Writer::commit`]); failures are logged here.
    fn commit(&self, events: &mut [Event], urgent: bool) -> Result<(), SpoolError> {
        let res = self.writer().commit(events, urgent);
        if let Err(e) = &res {
            error!(error = %e, events = events.len(), "audit spool write failed");
        }
        res
    }
}

impl Drop for Shared {
    /// Every handle is gone: make the rest durable and stop the sync thread.
    fn drop(&mut self) {
        let writer = self
            .writer
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writer.sync_now();
        writer.syncer.stop();
    }
}

/// What recovery found.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Events in the spool.
    pub next_host_seq: u64,
    /// Chains left open by the previous run, now closed.
    pub closed_chains: usize,
    /// Bytes of a torn frame cut off the last segment.
    pub torn_bytes: u64,
    /// Statements of those chains that reached Snowflake without a recorded result, now
    /// marked `lost`.
    pub lost_statements: usize,
}

/// The `result` events (decision `lost`) that mark each statement of the `open` chains that was
/// forwarded — a `decision` event of `allow` or `mask` carrying [`STATEMENT_ATTR`] — but has no
/// `result` event with the same key in `events`. In the order the statements were decided.
pub fn lost_statements(events: &[Event], open: &HashSet<&str>) -> Vec<Event> {
    let mut pending: BTreeMap<u64, &Event> = BTreeMap::new();
    let mut by_key: HashMap<&str, u64> = HashMap::new();
    for e in events {
        if !open.contains(e.session_id.as_str()) {
            continue;
        }
        let Some(key) = e.attrs.get(STATEMENT_ATTR) else {
            continue;
        };
        match e.kind {
            EventKind::Decision if matches!(e.decision.as_str(), "allow" | "mask") => {
                by_key.insert(key, e.host_seq);
                pending.insert(e.host_seq, e);
            }
            EventKind::Result => {
                if let Some(at) = by_key.remove(key.as_str()) {
                    pending.remove(&at);
                }
            }
            _ => {}
        }
    }
    pending
        .into_values()
        .map(|d| {
            let mut e = Event::new(EventKind::Result, d.session_id.clone());
            e.connection_id.clone_from(&d.connection_id);
            e.attrs
                .insert(STATEMENT_ATTR.to_owned(), d.attrs[STATEMENT_ATTR].clone());
            e.rule_id.clone_from(&d.rule_id);
            e.sql_fingerprint.clone_from(&d.sql_fingerprint);
            e.with_identity_of(d);
            e.decision = "lost".into();
            e.reason = "tollgate stopped after forwarding this statement and before its result was recorded: the statement may have run in Snowflake; its outcome is unknown".into();
            e
        })
        .collect()
}

/// Handle to the spool writer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Spool {
    shared: Arc<Shared>,
    /// Host sequence number one past the last durable event.
    durable: watch::Receiver<u64>,
    /// Set once an `fdatasync` failed (see the module docs).
    broken: watch::Receiver<Option<SpoolError>>,
}

/// Events written to the spool file — they survive a crash of Tollgate — whose durability
/// (an `fdatasync`) may still be under way. See the module docs.
#[derive(Debug)]
#[must_use = "a written event is not durable until `durable` says so"]
pub struct Written {
    receipts: Vec<Receipt>,
    /// Host sequence one past the last of these events.
    until: u64,
    durable: watch::Receiver<u64>,
    broken: watch::Receiver<Option<SpoolError>>,
}

impl Written {
    /// What the appends stored, in order.
    pub fn receipts(&self) -> &[Receipt] {
        &self.receipts
    }

    /// Whether the events are durable already.
    pub fn is_durable(&self) -> bool {
        *self.durable.borrow() >= self.until
    }

    /// Waits until the events are durable; an error when the sync failed (they may be lost:
    /// refuse what they describe).
    pub async fn durable(mut self) -> Result<Vec<Receipt>, SpoolError> {
        loop {
            if *self.durable.borrow_and_update() >= self.until {
                return Ok(self.receipts);
            }
            if let Some(e) = self.broken.borrow_and_update().clone() {
                return Err(e);
            }
            tokio::select! {
                r = self.durable.changed() => r.map_err(|_| SpoolError::Stopped)?,
                r = self.broken.changed() => r.map_err(|_| SpoolError::Stopped)?,
            }
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
struct HeadsFile {
    next_host_seq: u64,
    heads: HashMap<String, (u64, String, i64)>,
}

fn seg_name(start: u64) -> String {
    format!("seg-{start:020}.log")
}

fn heads_name(start: u64) -> String {
    format!("seg-{start:020}.heads")
}

/// Segments of `dir` by first host sequence, ascending.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix("seg-")
            .and_then(|r| r.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            v.push((n, entry.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// Encodes one frame.
fn frame(e: &Event, out: &mut Vec<u8>) {
    let payload = serde_json::to_vec(e).unwrap_or_default();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// Reads the frames of one segment from `offset`: the events with their offsets, and the
/// offset where valid data ends (a torn or damaged frame stops the read there).
pub fn read_segment(path: &Path, offset: u64) -> io::Result<(Vec<(u64, Event)>, u64)> {
    read_frames(path, offset, usize::MAX)
}

/// Where a sequential reader stopped: the next host sequence, and the segment and byte offset
/// it starts at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPos {
    /// Host sequence of the next event.
    pub next: u64,
    /// Its segment's first host sequence.
    pub segment: u64,
    /// Its byte offset in that segment.
    pub offset: u64,
}

/// Reads up to `limit` events from `pos` without rescanning what is before it; returns them
/// and the position after the last. Falls back to [`read_from`] semantics when the segment is
/// gone.
pub fn read_at(
    dir: &Path,
    pos: &ReadPos,
    limit: usize,
) -> Result<(Vec<Event>, ReadPos), SpoolError> {
    let rerr = |e: io::Error| SpoolError::Read {
        dir: dir.to_path_buf(),
        cause: e.to_string(),
    };
    let segs = segments(dir).map_err(rerr)?;
    let mut out = Vec::new();
    let mut at = pos.clone();
    let Some(first) = segs.iter().position(|(s, _)| *s == pos.segment) else {
        let events = read_from(dir, pos.next, limit)?;
        let next = events.last().map_or(pos.next, |e| e.host_seq + 1);
        // No byte position known: the next call rescans from the segment holding `next`.
        let segment = segs
            .iter()
            .rev()
            .find(|(s, _)| *s <= next)
            .map_or(0, |(s, _)| *s);
        return Ok((
            events,
            ReadPos {
                next,
                segment,
                offset: 0,
            },
        ));
    };
    for (start, path) in &segs[first..] {
        let mut offset = if *start == pos.segment { pos.offset } else { 0 };
        at.segment = *start;
        loop {
            let want = (limit - out.len() + 1).clamp(1, 4096);
            let (events, end) = read_frames(path, offset, want).map_err(rerr)?;
            if events.is_empty() {
                break;
            }
            for (off, e) in events {
                if e.host_seq < at.next {
                    continue;
                }
                if out.len() >= limit {
                    at.offset = off;
                    return Ok((out, at));
                }
                at.next = e.host_seq + 1;
                out.push(e);
            }
            offset = end;
        }
        at.offset = offset;
    }
    Ok((out, at))
}

/// Reads at most `max` frames of a segment from `offset`, frame by frame (nothing after them
/// is read): the events with their offsets, and the offset after the last one read. A torn or
/// damaged frame ends the read there.
fn read_frames(path: &Path, offset: u64, max: usize) -> io::Result<(Vec<(u64, Event)>, u64)> {
    let mut f = io::BufReader::with_capacity(256 << 10, File::open(path)?);
    f.seek(SeekFrom::Start(offset))?;
    let mut at = offset;
    let mut events = Vec::new();
    let mut header = [0u8; 8];
    let mut payload = Vec::new();
    while events.len() < max {
        if f.read_exact(&mut header).is_err() {
            break;
        }
        let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
        if len > MAX_EVENT_BYTES {
            break;
        }
        payload.resize(len, 0);
        if f.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            break;
        }
        let Ok(e) = serde_json::from_slice::<Event>(&payload) else {
            break;
        };
        events.push((at, e));
        at += 8 + len as u64;
    }
    Ok((events, at))
}

/// Reads every event with `host_seq >= from`, in order, at most `limit`.
pub fn read_from(dir: &Path, from: u64, limit: usize) -> Result<Vec<Event>, SpoolError> {
    let rerr = |e: io::Error| SpoolError::Read {
        dir: dir.to_path_buf(),
        cause: e.to_string(),
    };
    let segs = segments(dir).map_err(rerr)?;
    let first = segs
        .iter()
        .rposition(|(start, _)| *start <= from)
        .unwrap_or(0);
    let mut out = Vec::new();
    for (_, path) in &segs[first.min(segs.len())..] {
        let (events, _) = read_segment(path, 0).map_err(rerr)?;
        for (_, e) in events {
            if e.host_seq >= from {
                out.push(e);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

/// Reads every event of the spool (for verification and replay of small spools).
pub fn read_all(dir: &Path) -> Result<Vec<Event>, SpoolError> {
    read_from(dir, 0, usize::MAX)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// What the writer hands the sync thread: the file written to and the host sequence one past
/// its last written event.
struct SyncTarget {
    file: Arc<File>,
    until: u64,
}

/// Shared by the writer and the sync thread.
struct Syncer {
    state: Mutex<SyncState>,
    wake: Condvar,
    durable: watch::Sender<u64>,
    broken: watch::Sender<Option<SpoolError>>,
    failures: Arc<AtomicU64>,
    dir: PathBuf,
}

#[derive(Default)]
struct SyncState {
    target: Option<SyncTarget>,
    /// Someone may wait for `target`: sync it now (else within [`LAZY_SYNC`]).
    urgent: bool,
    stop: bool,
}

/// How long written events nothing waits for (a result's record, a connection's close) may
/// stay not yet durable when no other append asks for a sync sooner. Syncing them at once
/// would put their `fdatasync` in front of the next statement's.
pub const LAZY_SYNC: std::time::Duration = std::time::Duration::from_millis(20);

impl Syncer {
    fn state(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks for `target` to be made durable (replacing an older request: one sync covers both),
    /// at once when `urgent`, else within [`LAZY_SYNC`].
    fn request(&self, target: SyncTarget, urgent: bool) {
        let mut st = self.state();
        // Wake the thread to sync now, or to start the lazy clock of a first request.
        let wake = st.target.is_none() || (urgent && !st.urgent);
        st.target = Some(target);
        st.urgent |= urgent;
        drop(st);
        if wake {
            self.wake.notify_one();
        }
    }

    fn stop(&self) {
        self.state().stop = true;
        self.wake.notify_one();
    }

    /// Everything before host sequence `until` is durable.
    fn advance(&self, until: u64) {
        self.durable.send_if_modified(|d| {
            let moved = until > *d;
            if moved {
                *d = until;
            }
            moved
        });
    }

    fn broken(&self) -> Option<SpoolError> {
        self.broken.borrow().clone()
    }

    /// Syncs `file`; on failure the spool is broken from here on.
    fn sync(&self, file: &File, until: u64) -> Result<(), SpoolError> {
        if let Some(e) = self.broken() {
            return Err(e);
        }
        match file.sync_data() {
            Ok(()) => {
                self.advance(until);
                Ok(())
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let err = SpoolError::Write {
                    dir: self.dir.clone(),
                    cause: format!(
                        "fdatasync failed: {e}; events not yet durable may be lost, and every later statement is refused until Tollgate is restarted"
                    ),
                };
                error!(error = %err, "audit spool broken");
                self.broken.send_replace(Some(err.clone()));
                Err(err)
            }
        }
    }

    /// The sync thread: `fdatasync` back to back while appends ask for one urgently; a lazy
    /// request waits at most [`LAZY_SYNC`] for company.
    fn run(&self) {
        loop {
            let target = {
                let mut st = self.state();
                let mut lazy_since: Option<std::time::Instant> = None;
                loop {
                    if st.target.is_some() {
                        let since = *lazy_since.get_or_insert_with(std::time::Instant::now);
                        let waited = since.elapsed();
                        if st.urgent || st.stop || waited >= LAZY_SYNC {
                            st.urgent = false;
                            break st.target.take().expect("checked");
                        }
                        st = self
                            .wake
                            .wait_timeout(st, LAZY_SYNC - waited)
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .0;
                        continue;
                    }
                    if st.stop {
                        return;
                    }
                    st = self
                        .wake
                        .wait(st)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            };
            let _ = self.sync(&target.file, target.until);
        }
    }
}

struct Writer {
    opts: SpoolOptions,
    key: HostKey,
    chainer: Chainer,
    file: Option<Arc<File>>,
    len: u64,
    syncer: Arc<Syncer>,
    buf: Vec<u8>,
}

impl Writer {
    fn werr(&self, e: impl std::fmt::Display) -> SpoolError {
        SpoolError::Write {
            dir: self.opts.dir.clone(),
            cause: e.to_string(),
        }
    }

    /// Makes everything written so far durable, on this thread (before a segment is left, at a
    /// flush, at the end).
    fn sync_now(&mut self) -> Result<(), SpoolError> {
        let until = self.chainer.next_host_seq;
        match (&self.file, self.opts.sync) {
            (Some(f), true) if *self.syncer.durable.borrow() < until => {
                let f = f.clone();
                self.syncer.sync(&f, until)
            }
            _ => {
                self.syncer.advance(until);
                Ok(())
            }
        }
    }

    /// Starts a segment at the current host sequence (the old one made durable, heads first,
    /// then the file).
    fn rotate(&mut self) -> Result<(), SpoolError> {
        if self.file.is_some() {
            self.sync_now()?;
        }
        let start = self.chainer.next_host_seq;
        let heads = HeadsFile {
            next_host_seq: start,
            heads: self
                .chainer
                .heads
                .iter()
                .map(|(k, h)| (k.clone(), (h.next_seq, h.last_hash.clone(), h.last_ts_us)))
                .collect(),
        };
        let open = || -> io::Result<File> {
            write_atomic(
                &self.opts.dir,
                &heads_name(start),
                &serde_json::to_vec(&heads).unwrap_or_default(),
            )?;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.opts.dir.join(seg_name(start)))?;
            sync_dir(&self.opts.dir)?;
            Ok(f)
        };
        let f = open().map_err(|e| self.werr(e))?;
        self.len = f.metadata().map_err(|e| self.werr(e))?.len();
        self.file = Some(Arc::new(f));
        Ok(())
    }

    /// Seals and writes a batch; on failure nothing of it is stored and the state is as before.
    /// Written is not durable: the sync thread is asked for that.
    fn commit(&mut self, events: &mut [Event], urgent: bool) -> Result<(), SpoolError> {
        if let Some(e) = self.syncer.broken() {
            return Err(e);
        }
        if self.file.is_none() || self.len >= self.opts.segment_bytes {
            self.rotate()?;
        }
        let before_seq = self.chainer.next_host_seq;
        let mut undo: Vec<(String, Option<ChainHead>)> = Vec::with_capacity(events.len());
        self.buf.clear();
        for e in events.iter_mut() {
            undo.push((
                e.session_id.clone(),
                self.chainer.heads.get(&e.session_id).cloned(),
            ));
            self.chainer.seal(e, &self.opts.host, &self.key);
            frame(e, &mut self.buf);
        }
        let file = self.file.clone().expect("segment open");
        match (&*file).write_all(&self.buf) {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                let until = self.chainer.next_host_seq;
                if self.opts.sync {
                    self.syncer.request(SyncTarget { file, until }, urgent);
                } else {
                    self.syncer.advance(until);
                }
                Ok(())
            }
            Err(e) => {
                self.syncer.failures.fetch_add(1, Ordering::Relaxed);
                // Cut the segment back so no partial frame stays between good ones; if even
                // that fails, the next batch starts a new segment.
                if file
                    .set_len(self.len)
                    .and_then(|()| file.sync_data())
                    .is_err()
                {
                    self.file = None;
                }
                for (session, head) in undo.into_iter().rev() {
                    match head {
                        Some(h) => {
                            self.chainer.heads.insert(session, h);
                        }
                        None => {
                            self.chainer.heads.remove(&session);
                        }
                    }
                }
                self.chainer.next_host_seq = before_seq;
                Err(self.werr(e))
            }
        }
    }
}

impl Spool {
    /// Opens (or creates) the spool, recovers it, closes chains the previous run left open,
    /// and starts the writer thread.
    pub fn open(opts: SpoolOptions, key: HostKey) -> Result<(Spool, Recovery), SpoolError> {
        let dir = opts.dir.clone();
        let rerr = |e: io::Error| SpoolError::Read {
            dir: dir.clone(),
            cause: e.to_string(),
        };
        fs::create_dir_all(&dir).map_err(rerr)?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        }
        let mut recovery = Recovery::default();
        let mut chainer = Chainer::default();
        let segs = segments(&dir).map_err(rerr)?;
        let mut file = None;
        let mut len = 0;
        // Events of the last two segments, for statements left without a result.
        let mut recent: Vec<Event> = Vec::new();
        if segs.len() > 1 {
            let (events, _) = read_segment(&segs[segs.len() - 2].1, 0).map_err(rerr)?;
            recent.extend(events.into_iter().map(|(_, e)| e));
        }
        if let Some((s, path)) = segs.last() {
            if let Ok(text) = fs::read(dir.join(heads_name(*s))) {
                let h: HeadsFile = serde_json::from_slice(&text).map_err(|e| SpoolError::Read {
                    dir: dir.clone(),
                    cause: format!("{}: {e}", heads_name(*s)),
                })?;
                chainer.next_host_seq = h.next_host_seq;
                chainer.heads = h
                    .heads
                    .into_iter()
                    .map(|(k, (next_seq, last_hash, last_ts_us))| {
                        (
                            k,
                            ChainHead {
                                next_seq,
                                last_hash,
                                last_ts_us,
                            },
                        )
                    })
                    .collect();
            } else if segs.len() > 1 {
                return Err(SpoolError::Read {
                    dir: dir.clone(),
                    cause: format!("{} is missing", heads_name(*s)),
                });
            }
            chainer.next_host_seq = chainer.next_host_seq.max(*s);
            let (events, end) = read_segment(path, 0).map_err(rerr)?;
            for (_, e) in &events {
                chainer.observe(e);
            }
            recent.extend(events.into_iter().map(|(_, e)| e));
            let f = OpenOptions::new().append(true).open(path).map_err(rerr)?;
            let size = f.metadata().map_err(rerr)?.len();
            if size > end {
                recovery.torn_bytes = size - end;
                warn!(
                    segment = %path.display(),
                    bytes = size - end,
                    "audit spool: cutting a torn frame off the last segment (events that were never durable)"
                );
                f.set_len(end).map_err(rerr)?;
                f.sync_all().map_err(rerr)?;
            }
            len = end;
            file = Some(Arc::new(f));
        }
        let (durable_tx, durable) = watch::channel(chainer.next_host_seq);
        let (broken_tx, broken) = watch::channel(None);
        let failures = Arc::new(AtomicU64::new(0));
        let syncer = Arc::new(Syncer {
            state: Mutex::new(SyncState::default()),
            wake: Condvar::new(),
            durable: durable_tx,
            broken: broken_tx,
            failures: failures.clone(),
            dir: dir.clone(),
        });
        let mut orphans: Vec<String> = chainer.heads.keys().cloned().collect();
        orphans.sort();
        let mut writer = Writer {
            opts,
            key,
            chainer,
            file,
            len,
            syncer: syncer.clone(),
            buf: Vec::new(),
        };
        if !orphans.is_empty() {
            let open: HashSet<&str> = orphans.iter().map(String::as_str).collect();
            let mut ends: Vec<Event> = lost_statements(&recent, &open);
            recovery.lost_statements = ends.len();
            ends.extend(orphans.iter().map(|s| {
                let kind = if s.starts_with("conn:") {
                    EventKind::Disconnect
                } else {
                    EventKind::SessionEnd
                };
                let mut e = Event::new(kind, s.clone());
                e.decision = "lost".into();
                e.reason = "tollgate restarted: the chain's in-memory state was lost".into();
                e
            }));
            writer.commit(&mut ends, true)?;
            writer.sync_now()?;
            recovery.closed_chains = orphans.len();
        }
        recovery.next_host_seq = writer.chainer.next_host_seq;
        std::thread::Builder::new()
            .name("audit-sync".into())
            .spawn(move || syncer.run())
            .map_err(|e| SpoolError::Write {
                dir: dir.clone(),
                cause: format!("cannot start the spool's sync thread: {e}"),
            })?;
        Ok((
            Spool {
                shared: Arc::new(Shared {
                    writer: Mutex::new(writer),
                    dir,
                    failures,
                }),
                durable,
                broken,
            },
            recovery,
        ))
    }

    /// Appends `event` and waits until it is durable. On error the event is not stored.
    pub async fn append(&self, event: Event) -> Result<Receipt, SpoolError> {
        let mut receipts = self.append_many(vec![event]).await?;
        receipts.pop().ok_or(SpoolError::Stopped)
    }

    /// Appends several events (one group commit when the writer is idle) and waits until all
    /// are durable. On error none of those that failed is stored; the first error is returned.
    pub async fn append_many(&self, events: Vec<Event>) -> Result<Vec<Receipt>, SpoolError> {
        self.append_written(events).await?.durable().await
    }

    /// Appends several events and waits until they are written (they survive a crash of
    /// Tollgate); the ticket tells when they are durable. On error none of those that failed
    /// is stored; the first error is returned.
    pub async fn append_written(&self, events: Vec<Event>) -> Result<Written, SpoolError> {
        self.write_with(events, true)
    }

    /// Writes `events` for which nothing waits: they are made durable with the next sync
    /// another append asks for, or within [`LAZY_SYNC`] (a `Written::durable` on them may wait
    /// that long). For a result's record, whose answer has left.
    pub fn write_lazy(&self, events: Vec<Event>) -> Result<Written, SpoolError> {
        self.write_with(events, false)
    }

    fn write_with(&self, mut events: Vec<Event>, urgent: bool) -> Result<Written, SpoolError> {
        self.shared.commit(&mut events, urgent)?;
        let receipts: Vec<Receipt> = events
            .into_iter()
            .map(|e| Receipt {
                host_seq: e.host_seq,
                seq: e.seq,
                hash: e.hash,
            })
            .collect();
        Ok(Written {
            until: receipts.last().map_or(0, |r| r.host_seq + 1),
            receipts,
            durable: self.durable.clone(),
            broken: self.broken.clone(),
        })
    }

    /// Writes `event` without waiting for its durability (a failure is logged; durable as
    /// for [`Spool::write_lazy`]). For events nothing waits on, such as a connection's close.
    pub fn append_detached(&self, event: Event) {
        let (kind, session) = (event.kind, event.session_id.clone());
        if let Err(err) = self.shared.commit(&mut [event], false) {
            warn!(kind = %kind, session = %session, error = %err, "audit event lost");
        }
    }

    /// Waits until everything written before is durable.
    pub async fn flush(&self) {
        let shared = self.shared.clone();
        let sync = move || {
            let _ = shared.writer().sync_now();
        };
        if tokio::task::spawn_blocking(sync).await.is_err() {
            warn!("audit spool flush failed");
        }
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Host sequence one past the last durable event; changes are signalled.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    /// Why the spool is broken (an `fdatasync` failed), if it is: every append is refused.
    pub fn broken(&self) -> Option<SpoolError> {
        self.broken.borrow().clone()
    }

    /// Write failures so far.
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::GENESIS;

    fn opts(dir: &Path) -> SpoolOptions {
        SpoolOptions::new(dir, "host-a")
    }

    #[tokio::test]
    async fn appends_are_durable_ordered_and_chained() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, rec) = Spool::open(opts(dir.path()), HostKey::generate()).unwrap();
        assert_eq!(rec.next_host_seq, 0);
        let mut handles = Vec::new();
        for i in 0..50 {
            let s = spool.clone();
            handles.push(tokio::spawn(async move {
                let mut e = Event::new(EventKind::Query, format!("s{}", i % 3));
                e.rows = i;
                s.append(e).await.unwrap()
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let all = read_all(dir.path()).unwrap();
        assert_eq!(all.len(), 50);
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.host_seq, i as u64);
            assert_eq!(e.host, "host-a");
        }
        let s0: Vec<_> = all.iter().filter(|e| e.session_id == "s0").collect();
        assert_eq!(s0[0].prev_hash, GENESIS);
        for w in s0.windows(2) {
            assert_eq!(w[1].prev_hash, w[0].hash);
            assert_eq!(w[1].seq, w[0].seq + 1);
        }
        assert_eq!(*spool.durable().borrow(), 50);
    }

    #[tokio::test]
    async fn restart_recovers_cuts_torn_tails_and_closes_open_chains() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("k");
        let spool_dir = dir.path().join("spool");
        {
            let key = HostKey::load_or_create(&key_path).unwrap();
            let (spool, _) = Spool::open(opts(&spool_dir), key).unwrap();
            spool
                .append(Event::new(EventKind::Login, "s1"))
                .await
                .unwrap();
            spool
                .append(Event::new(EventKind::Query, "s1"))
                .await
                .unwrap();
            spool
                .append(Event::new(EventKind::Login, "s2"))
                .await
                .unwrap();
            spool
                .append(Event::new(EventKind::SessionEnd, "s2"))
                .await
                .unwrap();
        }
        // A torn frame, as a crash mid-write leaves it.
        let (_, seg) = segments(&spool_dir).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
        drop(f);
        let key = HostKey::load_or_create(&key_path).unwrap();
        let public = key.public();
        let (spool, rec) = Spool::open(opts(&spool_dir), key).unwrap();
        assert_eq!(rec.torn_bytes, 9);
        assert_eq!(rec.closed_chains, 1, "s1 was open");
        let r = spool
            .append(Event::new(EventKind::Login, "s3"))
            .await
            .unwrap();
        assert_eq!(r.host_seq, 5);
        let all = read_all(&spool_dir).unwrap();
        assert_eq!(all.len(), 6);
        let end = &all[4];
        assert_eq!(
            (end.kind, end.session_id.as_str(), end.seq),
            (EventKind::SessionEnd, "s1", 2)
        );
        assert_eq!(end.prev_hash, all[1].hash);
        assert!(public.verify_hash(&end.hash, &end.signature));
    }

    #[tokio::test]
    async fn segments_rotate_and_recovery_uses_heads() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.segment_bytes = 2048;
        let key_path = dir.path().join("k");
        {
            let (spool, _) =
                Spool::open(o.clone(), HostKey::load_or_create(&key_path).unwrap()).unwrap();
            for i in 0..40 {
                spool
                    .append(Event::new(EventKind::Query, format!("s{}", i % 2)))
                    .await
                    .unwrap();
            }
        }
        assert!(segments(dir.path()).unwrap().len() > 3);
        let (spool, rec) = Spool::open(o, HostKey::load_or_create(&key_path).unwrap()).unwrap();
        assert_eq!(rec.closed_chains, 2);
        spool
            .append(Event::new(EventKind::Query, "s9"))
            .await
            .unwrap();
        let all = read_all(dir.path()).unwrap();
        assert_eq!(all.len(), 43);
        let s1: Vec<_> = all.iter().filter(|e| e.session_id == "s1").collect();
        assert_eq!(s1.len(), 21);
        for w in s1.windows(2) {
            assert_eq!(w[1].prev_hash, w[0].hash);
        }
        assert_eq!(read_from(dir.path(), 30, 5).unwrap()[0].host_seq, 30);
        // Sequential reads by position see every event once, in order, across segments.
        let mut pos = ReadPos {
            next: 0,
            segment: 0,
            offset: 0,
        };
        let mut seen = Vec::new();
        loop {
            let (events, next) = read_at(dir.path(), &pos, 7).unwrap();
            if events.is_empty() {
                break;
            }
            seen.extend(events.iter().map(|e| e.host_seq));
            pos = next;
        }
        assert_eq!(seen, (0..43).collect::<Vec<u64>>());
        // From a position without a byte offset (a restart): no event skipped or repeated.
        let mut pos = ReadPos {
            next: 30,
            segment: u64::MAX,
            offset: 0,
        };
        let mut seen = Vec::new();
        loop {
            let (events, next) = read_at(dir.path(), &pos, 3).unwrap();
            if events.is_empty() {
                break;
            }
            seen.extend(events.iter().map(|e| e.host_seq));
            pos = next;
        }
        assert_eq!(seen, (30..43).collect::<Vec<u64>>());
        let mut pos = ReadPos {
            next: 1,
            segment: 0,
            offset: 0,
        };
        let (events, _) = read_at(dir.path(), &pos, 2).unwrap();
        assert_eq!(
            events.iter().map(|e| e.host_seq).collect::<Vec<_>>(),
            [1, 2]
        );
        pos.next = 0;
        assert_eq!(read_at(dir.path(), &pos, 1).unwrap().0[0].host_seq, 0);
    }

    fn statement(chain: &str, key: &str, kind: EventKind, decision: &str) -> Event {
        let mut e = Event::new(kind, chain).attr(STATEMENT_ATTR, key);
        e.decision = decision.into();
        e.sf_user = "ALICE".into();
        e.pid = Some(4242);
        e.comm = "agent".into();
        e.oidc_subject = "repo:org/agent:ref:refs/heads/main".into();
        e
    }

    #[tokio::test]
    async fn written_events_are_readable_before_and_durable_after() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(opts(dir.path()), HostKey::generate()).unwrap();
        let written = spool
            .append_written(vec![
                Event::new(EventKind::Query, "s1"),
                Event::new(EventKind::Decision, "s1"),
            ])
            .await
            .unwrap();
        // Written: in the file (a crash of the process cannot take them back).
        assert_eq!(read_all(dir.path()).unwrap().len(), 2);
        assert_eq!(
            written
                .receipts()
                .iter()
                .map(|r| r.host_seq)
                .collect::<Vec<_>>(),
            [0, 1]
        );
        let receipts = written.durable().await.unwrap();
        assert_eq!(receipts.len(), 2);
        assert!(*spool.durable().borrow() >= 2);
        assert!(spool.broken().is_none());
    }

    #[tokio::test]
    async fn lazy_writes_become_durable_alone_or_with_the_next_urgent_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(opts(dir.path()), HostKey::generate()).unwrap();
        // Alone: the sync thread syncs it once its grace has passed (a hang here fails).
        let alone = spool
            .write_lazy(vec![Event::new(EventKind::Result, "s1")])
            .unwrap();
        assert_eq!(read_all(dir.path()).unwrap().len(), 1, "written at once");
        alone.durable().await.unwrap();
        // With company: an urgent write covers the lazy one written before it.
        let lazy = spool
            .write_lazy(vec![Event::new(EventKind::Result, "s1")])
            .unwrap();
        let urgent = spool
            .append_written(vec![Event::new(EventKind::Query, "s2")])
            .await
            .unwrap();
        urgent.durable().await.unwrap();
        assert!(
            lazy.is_durable(),
            "one sync covers everything written before it"
        );
        // Detached events are lazy too, and a flush makes them durable.
        spool.append_detached(Event::new(EventKind::Disconnect, "conn:1"));
        spool.flush().await;
        assert!(*spool.durable().borrow() >= 4);
    }

    #[tokio::test]
    async fn durability_without_fsync_is_immediate() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.sync = false;
        let (spool, _) = Spool::open(o, HostKey::generate()).unwrap();
        let w = spool
            .append_written(vec![Event::new(EventKind::Query, "s1")])
            .await
            .unwrap();
        assert!(w.is_durable());
    }

    #[test]
    fn lost_statements_are_the_forwarded_ones_without_a_result() {
        let mut events = vec![
            statement("s1", "q1", EventKind::Query, ""),
            statement("s1", "q1", EventKind::Decision, "allow"),
            statement("s1", "q1", EventKind::Result, "ok"),
            statement("s1", "q2", EventKind::Decision, "mask"),
            statement("s1", "q3", EventKind::Decision, "deny"),
            statement("s2", "q4", EventKind::Decision, "allow"),
            statement("s1", "q5", EventKind::Decision, "allow"),
        ];
        for (i, e) in events.iter_mut().enumerate() {
            e.host_seq = i as u64;
        }
        let open: HashSet<&str> = ["s1"].into();
        let lost = lost_statements(&events, &open);
        let keys: Vec<&str> = lost
            .iter()
            .map(|e| e.attrs[STATEMENT_ATTR].as_str())
            .collect();
        assert_eq!(
            keys,
            ["q2", "q5"],
            "q1 has a result, q3 was denied, s2 closed"
        );
        assert!(lost.iter().all(|e| e.kind == EventKind::Result
            && e.decision == "lost"
            && e.sf_user == "ALICE"
            && e.pid == Some(4242)
            && e.comm == "agent"
            && e.oidc_subject == "repo:org/agent:ref:refs/heads/main"
            && e.session_id == "s1"));
    }

    #[tokio::test]
    async fn recovery_marks_forwarded_statements_without_a_result() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("k");
        let spool_dir = dir.path().join("spool");
        {
            let (spool, _) = Spool::open(
                opts(&spool_dir),
                HostKey::load_or_create(&key_path).unwrap(),
            )
            .unwrap();
            spool
                .append_many(vec![
                    statement("s1", "q1", EventKind::Query, ""),
                    statement("s1", "q1", EventKind::Decision, "allow"),
                    statement("s1", "q1", EventKind::Result, "ok"),
                    statement("s1", "q2", EventKind::Query, ""),
                    statement("s1", "q2", EventKind::Decision, "allow"),
                ])
                .await
                .unwrap();
        }
        let (_spool, rec) = Spool::open(
            opts(&spool_dir),
            HostKey::load_or_create(&key_path).unwrap(),
        )
        .unwrap();
        assert_eq!((rec.lost_statements, rec.closed_chains), (1, 1));
        let all = read_all(&spool_dir).unwrap();
        let tail: Vec<(EventKind, &str, Option<&str>)> = all[5..]
            .iter()
            .map(|e| {
                (
                    e.kind,
                    e.decision.as_str(),
                    e.attrs.get(STATEMENT_ATTR).map(String::as_str),
                )
            })
            .collect();
        assert_eq!(
            tail,
            [
                (EventKind::Result, "lost", Some("q2")),
                (EventKind::SessionEnd, "lost", None)
            ]
        );
        assert_eq!(all[5].prev_hash, all[4].hash, "the mark is in the chain");
    }
}
