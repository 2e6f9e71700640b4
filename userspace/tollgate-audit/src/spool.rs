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
//! One writer thread owns the files. [`Spool::append`] hands it an event and waits: the thread
//! takes every event queued meanwhile, seals them ([`crate::chain::Chainer::seal`]), writes them
//! with one `write` and one `fdatasync` (group commit), and only then answers — so an answered
//! append survives a crash or power loss. If writing or syncing fails (disk full, read-only
//! file system, permissions), the segment is cut back to its last good length, the chain state
//! is rolled back, and every waiting append gets the error: the caller must refuse what the
//! event describes (no access without audit).
//!
//! # Recovery
//! [`Spool::open`] reads the last segment's heads, scans that segment (a torn frame at its end —
//! a crash mid-write of events nobody was told are stored — is cut off), and then closes every
//! chain left open by the previous run with a signed [`EventKind::SessionEnd`] /
//! [`EventKind::Disconnect`] ("tollgate restarted"), because their in-memory state is gone.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

use crate::chain::{ChainHead, Chainer, HostKey};
use crate::event::{Event, EventKind};

/// Largest event payload accepted (a frame longer than this is damage, not an event).
pub const MAX_EVENT_BYTES: usize = 16 << 20;
/// Events the writer takes per group commit at most.
const MAX_BATCH: usize = 4096;
/// Queue between appenders and the writer.
const QUEUE: usize = 64 * 1024;

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
    /// The writer thread is gone (tollgate is shutting down).
    #[error("the audit spool writer has stopped")]
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

enum Msg {
    Append(
        Box<Event>,
        Option<oneshot::Sender<Result<Receipt, SpoolError>>>,
    ),
    Flush(oneshot::Sender<()>),
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
}

/// Handle to the spool writer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Spool {
    tx: mpsc::Sender<Msg>,
    dir: PathBuf,
    /// Host sequence number one past the last durable event.
    durable: watch::Receiver<u64>,
    failures: Arc<AtomicU64>,
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

struct Writer {
    opts: SpoolOptions,
    key: HostKey,
    chainer: Chainer,
    file: Option<File>,
    len: u64,
    durable: watch::Sender<u64>,
    failures: Arc<AtomicU64>,
    buf: Vec<u8>,
}

impl Writer {
    fn werr(&self, e: impl std::fmt::Display) -> SpoolError {
        SpoolError::Write {
            dir: self.opts.dir.clone(),
            cause: e.to_string(),
        }
    }

    /// Starts a segment at the current host sequence (heads first, then the file).
    fn rotate(&mut self) -> io::Result<()> {
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
        self.len = f.metadata()?.len();
        self.file = Some(f);
        Ok(())
    }

    /// Seals and writes a batch; on failure nothing of it is stored and the state is as before.
    fn commit(&mut self, events: &mut [Box<Event>]) -> Result<(), SpoolError> {
        if self.file.is_none() || self.len >= self.opts.segment_bytes {
            self.rotate().map_err(|e| self.werr(e))?;
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
        let sync = self.opts.sync;
        let file = self.file.as_mut().expect("segment open");
        let res = file
            .write_all(&self.buf)
            .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        match res {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
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

    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<Box<Event>> = Vec::new();
        let mut waiters: Vec<Option<oneshot::Sender<Result<Receipt, SpoolError>>>> = Vec::new();
        let mut flushes = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append(e, w) => {
                        batch.push(e);
                        waiters.push(w);
                    }
                    Msg::Flush(f) => flushes.push(f),
                }
                if batch.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                let res = self.commit(&mut batch);
                if let Err(e) = &res {
                    error!(error = %e, events = batch.len(), "audit spool write failed");
                } else {
                    let _ = self.durable.send(self.chainer.next_host_seq);
                }
                for (e, w) in batch.drain(..).zip(waiters.drain(..)) {
                    let answer = res.clone().map(|()| Receipt {
                        host_seq: e.host_seq,
                        seq: e.seq,
                        hash: e.hash.clone(),
                    });
                    match w {
                        Some(w) => {
                            let _ = w.send(answer);
                        }
                        None => {
                            if let Err(err) = answer {
                                warn!(kind = %e.kind, session = %e.session_id, error = %err, "audit event lost");
                            }
                        }
                    }
                }
            }
            for f in flushes.drain(..) {
                let _ = f.send(());
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
            let f = OpenOptions::new().append(true).open(path).map_err(rerr)?;
            let size = f.metadata().map_err(rerr)?.len();
            if size > end {
                recovery.torn_bytes = size - end;
                warn!(
                    segment = %path.display(),
                    bytes = size - end,
                    "audit spool: cutting a torn frame off the last segment (events never acknowledged)"
                );
                f.set_len(end).map_err(rerr)?;
                f.sync_all().map_err(rerr)?;
            }
            len = end;
            file = Some(f);
        }
        let (durable_tx, durable) = watch::channel(chainer.next_host_seq);
        let failures = Arc::new(AtomicU64::new(0));
        let orphans: Vec<String> = chainer.heads.keys().cloned().collect();
        let mut writer = Writer {
            opts,
            key,
            chainer,
            file,
            len,
            durable: durable_tx,
            failures: failures.clone(),
            buf: Vec::new(),
        };
        if !orphans.is_empty() {
            let mut ends: Vec<Box<Event>> = orphans
                .iter()
                .map(|s| {
                    let kind = if s.starts_with("conn:") {
                        EventKind::Disconnect
                    } else {
                        EventKind::SessionEnd
                    };
                    let mut e = Event::new(kind, s.clone());
                    e.decision = "lost".into();
                    e.reason = "tollgate restarted: the chain's in-memory state was lost".into();
                    Box::new(e)
                })
                .collect();
            writer.commit(&mut ends)?;
            let _ = writer.durable.send(writer.chainer.next_host_seq);
            recovery.closed_chains = ends.len();
        }
        recovery.next_host_seq = writer.chainer.next_host_seq;
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("audit-spool".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| SpoolError::Write {
                dir: dir.clone(),
                cause: format!("cannot start the writer thread: {e}"),
            })?;
        Ok((
            Spool {
                tx,
                dir,
                durable,
                failures,
            },
            recovery,
        ))
    }

    /// Appends `event` and waits until it is durable. On error the event is not stored.
    pub async fn append(&self, event: Event) -> Result<Receipt, SpoolError> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Append(Box::new(event), Some(tx))).await?;
        rx.await.map_err(|_| SpoolError::Stopped)?
    }

    /// Appends several events (one group commit when the writer is idle) and waits until all
    /// are durable. On error none of those that failed is stored; the first error is returned.
    pub async fn append_many(&self, events: Vec<Event>) -> Result<Vec<Receipt>, SpoolError> {
        let mut waits = Vec::with_capacity(events.len());
        for e in events {
            let (tx, rx) = oneshot::channel();
            self.send(Msg::Append(Box::new(e), Some(tx))).await?;
            waits.push(rx);
        }
        let mut out = Vec::with_capacity(waits.len());
        let mut first_err = None;
        for w in waits {
            match w.await.map_err(|_| SpoolError::Stopped).and_then(|r| r) {
                Ok(r) => out.push(r),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Queues `event` without waiting (a failure is logged). For events nothing waits on,
    /// such as a connection's close. Never blocks: when the queue is full (the disk far
    /// behind), the event waits for room in a task of its own.
    pub fn append_detached(&self, event: Event) {
        match self.tx.try_send(Msg::Append(Box::new(event), None)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                match tokio::runtime::Handle::try_current() {
                    Ok(h) => {
                        let tx = self.tx.clone();
                        h.spawn(async move {
                            if tx.send(msg).await.is_err() {
                                warn!("audit spool writer stopped: event lost");
                            }
                        });
                    }
                    Err(_) => {
                        if self.tx.blocking_send(msg).is_err() {
                            warn!("audit spool writer stopped: event lost");
                        }
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                warn!("audit spool writer stopped: event lost");
            }
        }
    }

    async fn send(&self, msg: Msg) -> Result<(), SpoolError> {
        // The queue is large; a full queue means the disk is far behind: wait for room.
        self.tx.send(msg).await.map_err(|_| SpoolError::Stopped)
    }

    /// Waits until everything queued before is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Host sequence one past the last durable event; changes are signalled.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    /// Write failures so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
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
}
