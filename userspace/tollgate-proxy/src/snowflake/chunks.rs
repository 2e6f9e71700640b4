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
//! slices, the filter emits output per row or record batch, and a bounded channel applies the
//! client's back-pressure to the storage download.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tollgate_wire::snowflake::Secret;
use tracing::{debug, info, warn};

use super::full;
use super::session::{Session, SessionTable};
use crate::hooks::{BodyError, ConnectionContext, ProxyBody};
use crate::identity::ProcessIdentity;
use crate::upstream::{self, UpstreamTls};

/// Path prefix of the chunk URLs Tollgate hands to drivers.
pub const CHUNK_PATH_PREFIX: &str = "/tollgate/chunks/";

/// Tickets beyond this many are refused (the oldest expired ones are pruned first).
const MAX_TICKETS: usize = 200_000;

/// Compressed bytes fed to the decoder per step: bounds what one step can inflate to.
const INFLATE_STEP: usize = 8 << 10;

/// Output frames buffered between the masking task and the client.
const CHANNEL_FRAMES: usize = 4;

/// A streaming transformation of one chunk's (decompressed) body: masking and row caps.
pub trait ChunkFilter: Send {
    /// Consumes `input`, appending whatever output is complete to `out`.
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), String>;
    /// Ends the body: appends the rest of the output, or fails on a truncated body. Returns a
    /// short summary for the log (counts, never values).
    fn finish(self: Box<Self>, out: &mut Vec<u8>) -> Result<String, String>;
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
    /// Per result column: (name, rule, method) when masked, for the audit record.
    pub masked: Arc<Vec<Option<(String, String, String)>>>,
    /// After this the ticket is refused.
    pub expires: Instant,
}

/// The live tickets.
#[derive(Default)]
pub struct ChunkStore {
    tickets: Mutex<HashMap<String, Arc<ChunkTicket>>>,
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.tickets.lock().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("ChunkStore").field("tickets", &n).finish()
    }
}

/// Why a ticket could not be issued.
#[derive(Debug, thiserror::Error)]
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
        let mut tickets = self.tickets.lock().expect("chunk tickets lock");
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
        let mut tickets = self.tickets.lock().expect("chunk tickets lock");
        let ticket = tickets.get(name)?.clone();
        if ticket.expires <= Instant::now() {
            tickets.remove(name);
            return None;
        }
        Some(ticket)
    }

    /// Forgets every ticket of `session` (logout).
    pub fn forget_session(&self, session: &Arc<Session>) {
        let mut tickets = self.tickets.lock().expect("chunk tickets lock");
        tickets.retain(|_, t| !Arc::ptr_eq(&t.session, session));
    }

    /// Number of live tickets.
    pub fn len(&self) -> usize {
        self.tickets.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// Whether there is no ticket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Settings of the storage client.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Host name → address overrides (like curl's `--resolve`), for storage hosts that this
    /// host's resolver does not know.
    pub resolve: HashMap<String, IpAddr>,
    /// Bound on connecting and on the storage's response headers.
    pub timeout: Duration,
    /// Cap on one chunk's decompressed size.
    pub max_chunk_decompressed: u64,
    /// How long a ticket stays valid.
    pub ticket_lifetime: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            resolve: HashMap::new(),
            timeout: Duration::from_secs(30),
            max_chunk_decompressed: 16 << 30,
            ticket_lifetime: Duration::from_secs(6 * 3600),
        }
    }
}

/// Fetches chunks from cloud storage, verifying the storage's certificate like every upstream.
#[derive(Debug, Clone)]
pub struct StorageClient {
    tls: UpstreamTls,
    mark: Option<u32>,
    config: StorageConfig,
}

/// Why a chunk could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The storage URL is not an `https://` URL.
    #[error("the chunk's storage location is not an https URL")]
    BadUrl,
    /// DNS.
    #[error("cannot resolve the storage host {host}: {why}")]
    Resolve {
        /// Host name.
        host: String,
        /// Resolver message.
        why: String,
    },
    /// TCP/TLS/HTTP with storage.
    #[error("storage unreachable: {0}")]
    Upstream(String),
    /// Storage answered with an error status.
    #[error("storage answered HTTP {0}")]
    Status(StatusCode),
    /// The chunk body is malformed (bad gzip, truncated, not the result format).
    #[error("the chunk is malformed: {0}")]
    Malformed(String),
}

impl StorageClient {
    /// A client verifying storage servers with `tls`'s roots and marking its sockets with
    /// `mark` (so the redirect hooks skip them).
    pub fn new(tls: &UpstreamTls, mark: Option<u32>, config: StorageConfig) -> Self {
        StorageClient {
            tls: tls.http1_only(),
            mark,
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, ChunkError> {
        if let Some(ip) = self.config.resolve.get(&host.to_ascii_lowercase()) {
            return Ok(SocketAddr::new(*ip, port));
        }
        let mut addrs =
            tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| ChunkError::Resolve {
                    host: host.to_owned(),
                    why: e.to_string(),
                })?;
        addrs.next().ok_or_else(|| ChunkError::Resolve {
            host: host.to_owned(),
            why: "no address".into(),
        })
    }

    /// `GET url` with `headers`; returns the response once its headers have arrived.
    pub async fn get(
        &self,
        url: &Secret,
        headers: &[(String, Secret)],
    ) -> Result<Response<hyper::body::Incoming>, ChunkError> {
        let uri: Uri = url.expose().parse().map_err(|_| ChunkError::BadUrl)?;
        if uri.scheme_str() != Some("https") {
            return Err(ChunkError::BadUrl);
        }
        let host = uri.host().ok_or(ChunkError::BadUrl)?.to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let addr = self.resolve(&host, port).await?;
        let timeout = self.config.timeout;
        let up = |e: String| ChunkError::Upstream(e);
        let tcp = upstream::connect(addr, self.mark, timeout)
            .await
            .map_err(|e| up(e.to_string()))?;
        let tls = tokio::time::timeout(timeout, self.tls.handshake(tcp, &host))
            .await
            .map_err(|_| up(format!("TLS handshake with {host} timed out")))?
            .map_err(|e| up(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| up(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "storage connection ended");
            }
        });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        let authority = match uri.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let mut req = Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::USER_AGENT, "tollgate")
            .header(http::header::ACCEPT_ENCODING, "gzip, identity");
        for (name, value) in headers {
            req = req.header(name.as_str(), value.expose());
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| up(format!("building the storage request: {e}")))?;
        let resp = tokio::time::timeout(timeout, sender.send_request(req))
            .await
            .map_err(|_| up(format!("storage {host} did not answer within {timeout:?}")))?
            .map_err(|e| up(e.to_string()))?;
        if resp.status() != StatusCode::OK {
            return Err(ChunkError::Status(resp.status()));
        }
        Ok(resp)
    }
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

/// A plain-text error reply for a chunk fetch (drivers report the status).
pub fn error_reply(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::from(format!("{message}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert("x-tollgate-decision", HeaderValue::from_static("refused"));
    resp
}

/// Fetches the ticket's chunk and streams it (filtered) to the client.
/// What became of a served chunk: `Ok` with the filter's counts (JSON; `None` when served
/// unfiltered), or the error that ended it.
pub type ChunkDone = Box<dyn FnOnce(Result<Option<String>, String>) + Send>;

/// Fetches the ticket's chunk and streams it (filtered) to the client; `done` hears how it
/// ended.
pub async fn serve(
    ticket: Arc<ChunkTicket>,
    storage: &StorageClient,
    done: Option<ChunkDone>,
) -> Response<ProxyBody> {
    let what = format!("result chunk {} of query {}", ticket.index, ticket.query_id);
    let resp = match storage.get(&ticket.url, &ticket.headers).await {
        Ok(r) => r,
        Err(e) => {
            warn!(query = %ticket.query_id, chunk = ticket.index, error = %e, "chunk fetch failed");
            if let Some(done) = done {
                done(Err(format!("fetch: {e}")));
            }
            return error_reply(
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
    let max = storage.config.max_chunk_decompressed;
    let body = resp.into_body();
    let log_ticket = ticket.clone();
    tokio::spawn(async move {
        let result = pump(body, gzip_header, factory.make(), max, &tx).await;
        match result {
            Ok(summary) => {
                info!(query = %log_ticket.query_id, chunk = log_ticket.index, masked = %summary, "chunk served");
                if let Some(done) = done {
                    done(Ok(Some(summary)));
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
            return error_reply(
                StatusCode::BAD_GATEWAY,
                &format!("Tollgate could not serve {what}: {e}"),
            )
        }
        None => None,
    };
    let stream = futures_util::stream::unfold((first, rx), |(first, mut rx)| async move {
        if let Some(bytes) = first {
            return Some((Ok(Frame::data(bytes)), (None, rx)));
        }
        match rx.recv().await? {
            Ok(bytes) => Some((Ok(Frame::data(bytes)), (None, rx))),
            Err(e) => Some((
                Err(BodyError::from(format!("chunk aborted: {e}"))),
                (None, rx),
            )),
        }
    });
    let mut out = Response::new(StreamBody::new(stream).boxed());
    out.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    out
}

/// Reads the storage body, inflates it when gzip'd, filters it and sends the output.
async fn pump<B>(
    mut body: B,
    gzip_header: Option<bool>,
    mut filter: Box<dyn ChunkFilter>,
    max_decompressed: u64,
    tx: &mpsc::Sender<Result<Bytes, String>>,
) -> Result<String, String>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut inflater: Option<flate2::write::MultiGzDecoder<Vec<u8>>> = None;
    let mut decided = gzip_header == Some(true);
    if decided {
        inflater = Some(flate2::write::MultiGzDecoder::new(Vec::new()));
    }
    let mut total: u64 = 0;
    let mut out = Vec::new();
    let mut sniff: Vec<u8> = Vec::new();
    let mut feed = |data: &[u8],
                    inflater: &mut Option<flate2::write::MultiGzDecoder<Vec<u8>>>,
                    filter: &mut Box<dyn ChunkFilter>,
                    out: &mut Vec<u8>|
     -> Result<(), String> {
        match inflater {
            None => {
                total += data.len() as u64;
                if total > max_decompressed {
                    return Err(format!("larger than {max_decompressed} bytes"));
                }
                filter.push(data, out)
            }
            Some(dec) => {
                for piece in data.chunks(INFLATE_STEP) {
                    dec.write_all(piece).map_err(|e| format!("gzip: {e}"))?;
                    let inflated = std::mem::take(dec.get_mut());
                    total += inflated.len() as u64;
                    if total > max_decompressed {
                        return Err(format!(
                            "decompresses to more than {max_decompressed} bytes"
                        ));
                    }
                    filter.push(&inflated, out)?;
                }
                Ok(())
            }
        }
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading from storage: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if !decided {
            // No Content-Encoding header: decide by the gzip magic bytes.
            sniff.extend_from_slice(&data);
            if sniff.len() < 2 {
                continue;
            }
            decided = true;
            if sniff[..2] == [0x1f, 0x8b] {
                inflater = Some(flate2::write::MultiGzDecoder::new(Vec::new()));
            }
            let buffered = std::mem::take(&mut sniff);
            feed(&buffered, &mut inflater, &mut filter, &mut out)?;
        } else {
            feed(&data, &mut inflater, &mut filter, &mut out)?;
        }
        if !out.is_empty()
            && tx
                .send(Ok(Bytes::from(std::mem::take(&mut out))))
                .await
                .is_err()
        {
            return Err("the client went away".into());
        }
    }
    if !sniff.is_empty() {
        feed(
            &std::mem::take(&mut sniff),
            &mut inflater,
            &mut filter,
            &mut out,
        )?;
    }
    if let Some(mut dec) = inflater {
        dec.try_finish().map_err(|e| format!("gzip: {e}"))?;
        let rest = std::mem::take(dec.get_mut());
        if !rest.is_empty() {
            filter.push(&rest, &mut out)?;
        }
        // A gzip member cut short inflates what it can without error: the filter's own end
        // check below catches the truncated rows or batches.
    }
    let summary = filter.finish(&mut out)?;
    if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
        return Err("the client went away".into());
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use http_body_util::Full;

    use super::*;

    /// Passes bytes through, counting them; fails at the end unless the body ends with `END`.
    struct Checked {
        seen: Vec<u8>,
    }

    impl ChunkFilter for Checked {
        fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
            self.seen.extend_from_slice(input);
            out.extend_from_slice(input);
            Ok(())
        }
        fn finish(self: Box<Self>, _out: &mut Vec<u8>) -> Result<String, String> {
            if self.seen.ends_with(b"END") {
                Ok(format!("{} bytes", self.seen.len()))
            } else {
                Err("truncated".into())
            }
        }
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    async fn run(
        body: Vec<u8>,
        header: Option<bool>,
        max: u64,
    ) -> (Result<String, String>, Vec<u8>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let body = Full::new(Bytes::from(body));
        let r = pump(
            body,
            header,
            Box::new(Checked { seen: Vec::new() }),
            max,
            &tx,
        )
        .await;
        drop(tx);
        let mut out = Vec::new();
        while let Some(Ok(b)) = rx.recv().await {
            out.extend_from_slice(&b);
        }
        (r, out)
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
    }

    #[tokio::test]
    async fn truncated_gzip_fails() {
        let z = gz(&payload());
        let (r, _) = run(z[..z.len() / 2].to_vec(), Some(true), u64::MAX).await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn bytes_that_are_not_gzip_under_a_gzip_header_fail() {
        let mut junk = vec![0x1f, 0x8b, 0x08, 0x00];
        junk.extend((0..4096u32).map(|i| (i * 7919 % 251) as u8));
        let (r, out) = run(junk, Some(true), u64::MAX).await;
        assert!(r.is_err());
        assert!(out.is_empty() || !out.ends_with(b"END"));
    }

    #[tokio::test]
    async fn decompression_is_capped() {
        let bomb = gz(&vec![0u8; 64 << 20]);
        let (r, out) = run(bomb, Some(true), 1 << 20).await;
        let e = r.unwrap_err();
        assert!(e.contains("decompresses to more than"), "{e}");
        assert!(
            out.len() <= (1 << 20) + INFLATE_STEP * 1100,
            "{}",
            out.len()
        );
    }
}
