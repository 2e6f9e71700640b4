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

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::identity::ProcessIdentity;

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
    /// Why the connection ended: `eof`, `peek_timeout`, `not_tls`,
    /// `malformed_client_hello: …`, `no_original_destination`, `loop_detected`,
    /// `blocked_by_policy`, `upstream_connect: …`, `upstream_tls: …`, `shutdown`, …
    pub close_reason: String,
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

    #[test]
    fn timestamps_have_microseconds() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        assert_eq!(rfc3339_micros(at), "2023-11-14T22:13:20.123456Z");
    }
}
