//! One [`ConnectionRecord`] per connection, written as a JSON line by a [`RecordSink`].
//!
//! The sink is a bounded channel drained by a dedicated writer thread. A connection's task
//! queues its record when it ends; when the writer falls behind by more than the channel
//! capacity, the ending connection waits for room (it still holds its connection permit, so new
//! accepts slow down too) — records are never dropped. Only a writer that is gone (its thread
//! died) loses records, and those are counted and logged.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::identity::ProcessIdentity;
use crate::upstream::UpstreamFailure;

/// Records buffered between the data path and the writer.
const SINK_CAPACITY: usize = 16 * 1024;

/// What the proxy did with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// TLS terminated and HTTP relayed.
    Intercept,
    /// Bytes relayed unchanged.
    Passthrough,
    /// Closed by the SNI gate.
    Block,
    /// Closed before a gate decision (no original destination, loop, timeout, malformed…).
    #[default]
    Reject,
}

/// The record of one connection, serialised as one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionRecord {
    /// Unique id: proxy start time (µs, hex) and a per-process counter.
    pub id: String,
    /// Accept time, RFC 3339 with microseconds, UTC.
    pub started_at: String,
    /// The client's address.
    pub client: SocketAddr,
    /// The listener that accepted it.
    pub listener: SocketAddr,
    /// The process behind it, when the redirect hooks knew.
    pub process: Option<ProcessIdentity>,
    /// Where the client meant to connect.
    pub original_dst: Option<SocketAddr>,
    /// What the client spoke first: `tls`, `http`, `http_connect`, `socks5`, `socks4`,
    /// `server_first` (silent), `other`; `None` before a byte was read.
    pub protocol: Option<String>,
    /// The tunnel the client opened through a proxy and Tollgate judged (`http_connect
    /// acct.snowflakecomputing.com:443`), if any.
    pub tunnel: Option<String>,
    /// SNI from the ClientHello.
    pub sni: Option<String>,
    /// ALPN protocols offered by the client.
    pub alpn: Vec<String>,
    /// Protocol negotiated with the client (intercepted connections).
    pub negotiated_alpn: Option<String>,
    /// The decision taken.
    pub decision: Decision,
    /// Bytes from the client: raw TLS bytes when passed through, decrypted HTTP bytes when
    /// intercepted.
    pub bytes_up: u64,
    /// Bytes to the client, counted like `bytes_up`.
    pub bytes_down: u64,
    /// HTTP requests received (intercepted connections).
    pub requests: u64,
    /// Whether a TLS connection to the real server was established and its certificate
    /// verified.
    pub upstream_verified: bool,
    /// Time from accept to close.
    pub duration_ms: u64,
    /// Why the connection ended (serialised as one string: `eof`, `peek_timeout`,
    /// `blocked_by_policy: …`, `upstream_tls: …`, …; see [`CloseReason`]).
    pub close_reason: CloseReason,
}

/// Why a connection ended, as its record says.
///
/// Serialised as one string, `<kind>` or `<kind>: <detail>` (`eof`, `peek_timeout`,
/// `upstream_tls: invalid peer certificate: UnknownIssuer`, …), the same text the records
/// carried when the reason was a plain string, so record files, the audit trail's
/// `disconnect` events and ClickHouse rows keep their shape. The detail is a human-readable
/// explanation; match on the variant, never on the detail. Parsing a string back
/// ([`str::parse`], `Deserialize`) gives the same variant and detail.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client closed the connection without sending anything more (`eof`), or, once
    /// relaying, both sides finished.
    Eof,
    /// The client closed after `read` bytes, before they made a whole first message
    /// (`client closed after N bytes`).
    ClientClosedEarly {
        /// Bytes received before the close.
        read: usize,
    },
    /// The client sent nothing usable within the peek timeout (`peek_timeout`).
    PeekTimeout,
    /// The client does not speak TLS and what it speaks is not allowed (`not_tls`, or
    /// `not_tls: <why>`).
    NotTls(Option<String>),
    /// The first message (a tunnel request, an HTTP head) could not be parsed
    /// (`malformed: <why>`).
    Malformed(String),
    /// The TLS ClientHello could not be parsed (`malformed_client_hello: <why>`).
    MalformedClientHello(String),
    /// Reading from or writing to the client failed (`client_io: <error>`).
    ClientIo(String),
    /// The TLS handshake with the client failed or timed out (`client_tls: <error>`).
    ClientTls(String),
    /// The client's HTTP connection failed (`client_http: <error>`).
    ClientHttp(String),
    /// The redirect left no original destination (`no_original_destination`, or
    /// `no_original_destination: <error>` when looking it up failed).
    NoOriginalDestination(Option<String>),
    /// Tollgate's own connection came back to it (`loop_detected`).
    LoopDetected,
    /// The gate refused the connection (`blocked_by_policy: <why>`).
    BlockedByPolicy(String),
    /// An intercepted connection was closed because its audit event could not be written
    /// (`audit_unavailable: <why>`).
    AuditUnavailable(String),
    /// The SOCKS5 handshake could not go on (`socks5: <why>`).
    Socks5(String),
    /// The upstream could not be reached, or the mark could not be set
    /// (`upstream_connect: <error>`).
    UpstreamConnect(String),
    /// The upstream TLS handshake or certificate verification failed (`upstream_tls: <error>`).
    UpstreamTls(String),
    /// The HTTP exchange with the upstream failed (`upstream_http: <error>`).
    UpstreamHttp(String),
    /// Relaying passed-through bytes failed (`splice: <error>`).
    Splice(String),
    /// Tollgate was shutting down: drained, or aborted after the grace period (`shutdown`).
    Shutdown,
}

impl CloseReason {
    /// The reason's kind, the text before any `: detail` (`client closed` for
    /// [`CloseReason::ClientClosedEarly`]).
    pub fn kind(&self) -> &'static str {
        match self {
            CloseReason::Eof => "eof",
            CloseReason::ClientClosedEarly { .. } => "client closed",
            CloseReason::PeekTimeout => "peek_timeout",
            CloseReason::NotTls(_) => "not_tls",
            CloseReason::Malformed(_) => "malformed",
            CloseReason::MalformedClientHello(_) => "malformed_client_hello",
            CloseReason::ClientIo(_) => "client_io",
            CloseReason::ClientTls(_) => "client_tls",
            CloseReason::ClientHttp(_) => "client_http",
            CloseReason::NoOriginalDestination(_) => "no_original_destination",
            CloseReason::LoopDetected => "loop_detected",
            CloseReason::BlockedByPolicy(_) => "blocked_by_policy",
            CloseReason::AuditUnavailable(_) => "audit_unavailable",
            CloseReason::Socks5(_) => "socks5",
            CloseReason::UpstreamConnect(_) => "upstream_connect",
            CloseReason::UpstreamTls(_) => "upstream_tls",
            CloseReason::UpstreamHttp(_) => "upstream_http",
            CloseReason::Splice(_) => "splice",
            CloseReason::Shutdown => "shutdown",
        }
    }

    /// The explanation after the kind, if any.
    pub fn detail(&self) -> Option<&str> {
        match self {
            CloseReason::Eof
            | CloseReason::ClientClosedEarly { .. }
            | CloseReason::PeekTimeout
            | CloseReason::LoopDetected
            | CloseReason::Shutdown => None,
            CloseReason::NotTls(d) | CloseReason::NoOriginalDestination(d) => d.as_deref(),
            CloseReason::Malformed(d)
            | CloseReason::MalformedClientHello(d)
            | CloseReason::ClientIo(d)
            | CloseReason::ClientTls(d)
            | CloseReason::ClientHttp(d)
            | CloseReason::BlockedByPolicy(d)
            | CloseReason::AuditUnavailable(d)
            | CloseReason::Socks5(d)
            | CloseReason::UpstreamConnect(d)
            | CloseReason::UpstreamTls(d)
            | CloseReason::UpstreamHttp(d)
            | CloseReason::Splice(d) => Some(d),
        }
    }

    /// Whether the upstream side failed (connect, TLS or HTTP).
    pub fn is_upstream_failure(&self) -> bool {
        matches!(
            self,
            CloseReason::UpstreamConnect(_)
                | CloseReason::UpstreamTls(_)
                | CloseReason::UpstreamHttp(_)
        )
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self, self.detail()) {
            (CloseReason::ClientClosedEarly { read }, _) => {
                write!(f, "client closed after {read} bytes")
            }
            (_, Some(detail)) => write!(f, "{}: {detail}", self.kind()),
            (_, None) => f.write_str(self.kind()),
        }
    }
}

impl From<&UpstreamFailure> for CloseReason {
    fn from(failure: &UpstreamFailure) -> Self {
        match failure {
            UpstreamFailure::Connect(e) => CloseReason::UpstreamConnect(e.clone()),
            UpstreamFailure::Tls(e) => CloseReason::UpstreamTls(e.clone()),
            UpstreamFailure::Http(e) => CloseReason::UpstreamHttp(e.clone()),
        }
    }
}

/// A string that is not a close reason Tollgate writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a connection close reason (expected `eof`, `peek_timeout`, `blocked_by_policy: …`, …)")]
pub struct ParseCloseReasonError(String);

impl std::str::FromStr for CloseReason {
    type Err = ParseCloseReasonError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseCloseReasonError(s.to_owned());
        if let Some(read) = s
            .strip_prefix("client closed after ")
            .and_then(|rest| rest.strip_suffix(" bytes"))
        {
            return read
                .parse()
                .map(|read| CloseReason::ClientClosedEarly { read })
                .map_err(|_| bad());
        }
        let (kind, detail) = match s.split_once(": ") {
            Some((kind, detail)) => (kind, Some(detail.to_owned())),
            None => (s, None),
        };
        let required = |make: fn(String) -> CloseReason| detail.clone().map(make).ok_or_else(bad);
        let unit = |reason: CloseReason| match detail {
            None => Ok(reason),
            Some(_) => Err(bad()),
        };
        match kind {
            "eof" => unit(CloseReason::Eof),
            "peek_timeout" => unit(CloseReason::PeekTimeout),
            "loop_detected" => unit(CloseReason::LoopDetected),
            "shutdown" => unit(CloseReason::Shutdown),
            "not_tls" => Ok(CloseReason::NotTls(detail)),
            "no_original_destination" => Ok(CloseReason::NoOriginalDestination(detail)),
            "malformed" => required(CloseReason::Malformed),
            "malformed_client_hello" => required(CloseReason::MalformedClientHello),
            "client_io" => required(CloseReason::ClientIo),
            "client_tls" => required(CloseReason::ClientTls),
            "client_http" => required(CloseReason::ClientHttp),
            "blocked_by_policy" => required(CloseReason::BlockedByPolicy),
            "audit_unavailable" => required(CloseReason::AuditUnavailable),
            "socks5" => required(CloseReason::Socks5),
            "upstream_connect" => required(CloseReason::UpstreamConnect),
            "upstream_tls" => required(CloseReason::UpstreamTls),
            "upstream_http" => required(CloseReason::UpstreamHttp),
            "splice" => required(CloseReason::Splice),
            _ => Err(bad()),
        }
    }
}

impl Serialize for CloseReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CloseReason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// RFC 3339 with exactly six fractional digits, UTC.
pub(crate) fn rfc3339_micros(at: OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// Failures opening a record destination.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordSinkError {
    /// The record file could not be opened for appending.
    #[error("cannot open connection record file {path}: {source}; check the directory exists and is writable")]
    Open {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the record writer thread: {0}")]
    Spawn(#[source] io::Error),
}

enum SinkMessage {
    Record(Box<ConnectionRecord>),
    Flush(oneshot::Sender<()>),
}

/// Where connection records go. Cheap to clone; the writer stops when the last clone drops.
#[derive(Clone, Debug)]
pub struct RecordSink {
    tx: mpsc::Sender<SinkMessage>,
    dropped: Arc<AtomicU64>,
}

impl RecordSink {
    /// Appends JSON lines to `path`, creating it with mode 0640.
    pub fn file(path: impl AsRef<Path>) -> Result<Self, RecordSinkError> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
            .map_err(|source| RecordSinkError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Self::writer(file)
    }

    /// Writes JSON lines to standard output.
    pub fn stdout() -> Result<Self, RecordSinkError> {
        Self::writer(io::stdout())
    }

    /// Writes JSON lines to any writer, flushing after each line.
    pub fn writer(mut out: impl Write + Send + 'static) -> Result<Self, RecordSinkError> {
        Self::spawn(move |record| {
            serde_json::to_writer(&mut out, record)
                .map_err(io::Error::from)
                .and_then(|()| out.write_all(b"\n"))
                .and_then(|()| out.flush())
        })
    }

    /// Hands records to a channel instead of serialising them (for embedding and tests).
    pub fn channel() -> Result<(Self, mpsc::UnboundedReceiver<ConnectionRecord>), RecordSinkError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = Self::spawn(move |record| {
            // A closed receiver means nobody wants records any more: not an error.
            let _ = tx.send(record.clone());
            Ok(())
        })?;
        Ok((sink, rx))
    }

    fn spawn(
        mut write: impl FnMut(&ConnectionRecord) -> io::Result<()> + Send + 'static,
    ) -> Result<Self, RecordSinkError> {
        let (tx, mut rx) = mpsc::channel(SINK_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        std::thread::Builder::new()
            .name("tollgate-records".into())
            .spawn(move || {
                while let Some(message) = rx.blocking_recv() {
                    match message {
                        SinkMessage::Record(record) => {
                            if let Err(error) = write(&record) {
                                lost.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(%error, id = %record.id, "writing a connection record failed");
                            }
                        }
                        SinkMessage::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .map_err(RecordSinkError::Spawn)?;
        Ok(RecordSink { tx, dropped })
    }

    /// Queues a record, waiting for room when the writer is behind (never dropping it). Only
    /// when the writer is gone is the record counted as dropped.
    pub async fn submit(&self, record: ConnectionRecord) {
        if self
            .tx
            .send(SinkMessage::Record(Box::new(record)))
            .await
            .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!("connection record lost: the record writer has stopped");
        }
    }

    /// Waits until every record queued before this call has been written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(SinkMessage::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Records lost so far (queue full or write failure).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant with the string records carried before the reason was typed.
    fn every_reason() -> Vec<(CloseReason, &'static str)> {
        let s = |t: &str| t.to_owned();
        vec![
            (CloseReason::Eof, "eof"),
            (
                CloseReason::ClientClosedEarly { read: 17 },
                "client closed after 17 bytes",
            ),
            (CloseReason::PeekTimeout, "peek_timeout"),
            (CloseReason::NotTls(None), "not_tls"),
            (
                CloseReason::NotTls(Some(s("http blocked (intercept.other_protocols)"))),
                "not_tls: http blocked (intercept.other_protocols)",
            ),
            (
                CloseReason::Malformed(s("SOCKS5: unsupported version 4")),
                "malformed: SOCKS5: unsupported version 4",
            ),
            (
                CloseReason::MalformedClientHello(s("record type 23 is not a handshake")),
                "malformed_client_hello: record type 23 is not a handshake",
            ),
            (
                CloseReason::ClientIo(s("Connection reset by peer (os error 104)")),
                "client_io: Connection reset by peer (os error 104)",
            ),
            (
                CloseReason::ClientTls(s("handshake not completed within 10s")),
                "client_tls: handshake not completed within 10s",
            ),
            (
                CloseReason::ClientHttp(s("connection error")),
                "client_http: connection error",
            ),
            (
                CloseReason::NoOriginalDestination(None),
                "no_original_destination",
            ),
            (
                CloseReason::NoOriginalDestination(Some(s("Protocol not available"))),
                "no_original_destination: Protocol not available",
            ),
            (CloseReason::LoopDetected, "loop_detected"),
            (
                CloseReason::BlockedByPolicy(s("SNI x is a storage host")),
                "blocked_by_policy: SNI x is a storage host",
            ),
            (
                CloseReason::AuditUnavailable(s("spool full: \"No space\" {left}")),
                "audit_unavailable: spool full: \"No space\" {left}",
            ),
            (
                CloseReason::Socks5(s("no acceptable authentication method")),
                "socks5: no acceptable authentication method",
            ),
            (
                CloseReason::UpstreamConnect(s("connect to 1.2.3.4:443: refused")),
                "upstream_connect: connect to 1.2.3.4:443: refused",
            ),
            (
                CloseReason::UpstreamTls(s("invalid peer certificate: UnknownIssuer")),
                "upstream_tls: invalid peer certificate: UnknownIssuer",
            ),
            (
                CloseReason::UpstreamHttp(s("connection closed before message completed")),
                "upstream_http: connection closed before message completed",
            ),
            (CloseReason::Splice(s("broken pipe")), "splice: broken pipe"),
            (CloseReason::Shutdown, "shutdown"),
        ]
    }

    /// Does not compile when a variant is added without a case in [`every_reason`].
    fn listed(reason: &CloseReason) -> bool {
        match reason {
            CloseReason::Eof
            | CloseReason::ClientClosedEarly { .. }
            | CloseReason::PeekTimeout
            | CloseReason::NotTls(_)
            | CloseReason::Malformed(_)
            | CloseReason::MalformedClientHello(_)
            | CloseReason::ClientIo(_)
            | CloseReason::ClientTls(_)
            | CloseReason::ClientHttp(_)
            | CloseReason::NoOriginalDestination(_)
            | CloseReason::LoopDetected
            | CloseReason::BlockedByPolicy(_)
            | CloseReason::AuditUnavailable(_)
            | CloseReason::Socks5(_)
            | CloseReason::UpstreamConnect(_)
            | CloseReason::UpstreamTls(_)
            | CloseReason::UpstreamHttp(_)
            | CloseReason::Splice(_)
            | CloseReason::Shutdown => true,
        }
    }

    #[test]
    fn close_reasons_serialise_as_the_old_strings_and_round_trip() {
        let all = every_reason();
        let kinds: std::collections::BTreeSet<&str> = all.iter().map(|(r, _)| r.kind()).collect();
        assert_eq!(kinds.len(), 19, "every variant is listed: {kinds:?}");
        for (reason, text) in all {
            assert!(listed(&reason));
            assert_eq!(reason.to_string(), text);
            let json = serde_json::to_value(&reason).unwrap();
            assert_eq!(json, serde_json::Value::String(text.to_owned()));
            let back: CloseReason = serde_json::from_value(json).unwrap();
            assert_eq!(back, reason, "{text}");
            assert_eq!(text.parse::<CloseReason>().unwrap(), reason);
        }
    }

    #[test]
    fn strings_that_are_no_close_reason_are_refused() {
        for text in [
            "",
            "EOF",
            "eof: and more",
            "malformed",
            "blocked_by_policy",
            "client closed after many bytes",
            "something_new: detail",
        ] {
            assert!(text.parse::<CloseReason>().is_err(), "{text:?}");
            assert!(
                serde_json::from_value::<CloseReason>(serde_json::json!(text)).is_err(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn upstream_failures_keep_their_text() {
        for failure in [
            UpstreamFailure::Connect("timed out".into()),
            UpstreamFailure::Tls("bad certificate".into()),
            UpstreamFailure::Http("reset".into()),
        ] {
            let reason = CloseReason::from(&failure);
            assert!(reason.is_upstream_failure());
            assert_eq!(reason.to_string(), failure.to_string());
            assert_eq!(reason.kind(), failure.kind());
        }
        assert!(!CloseReason::Eof.is_upstream_failure());
    }

    #[test]
    fn records_carry_the_reason_as_a_string() {
        let record = ConnectionRecord {
            id: "x-1".into(),
            started_at: "2024-01-01T00:00:00.000000Z".into(),
            client: "127.0.0.1:40000".parse().unwrap(),
            listener: "127.0.0.1:15443".parse().unwrap(),
            process: None,
            original_dst: None,
            protocol: None,
            tunnel: None,
            sni: None,
            alpn: Vec::new(),
            negotiated_alpn: None,
            decision: Decision::Reject,
            bytes_up: 0,
            bytes_down: 0,
            requests: 0,
            upstream_verified: false,
            duration_ms: 0,
            close_reason: CloseReason::ClientClosedEarly { read: 3 },
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["close_reason"], "client closed after 3 bytes");
    }

    #[test]
    fn timestamps_have_microseconds() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        assert_eq!(rfc3339_micros(at), "2023-11-14T22:13:20.123456Z");
    }
}
