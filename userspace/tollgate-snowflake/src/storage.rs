//! Fetching result chunks from cloud storage: verified TLS like every upstream, and a bounded
//! pool of keep-alive connections per storage host, so a result of hundreds of chunks does not
//! pay a TCP and TLS handshake for each.
//!
//! A pooled connection is reused only for the host (name and port) whose certificate it
//! verified; at most [`MAX_IDLE_PER_HOST`] idle connections are kept per host and
//! [`MAX_POOLED_HOSTS`] hosts at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tollgate_proxy::upstream;
use tollgate_proxy::UpstreamTls;
use tollgate_wire::snowflake::Secret;
use tracing::debug;

use crate::budget::ChunkBudget;
use crate::sync::lock;

/// Idle keep-alive connections kept per storage host.
pub const MAX_IDLE_PER_HOST: usize = 8;
/// Storage hosts with pooled connections at once.
pub const MAX_POOLED_HOSTS: usize = 64;

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
    /// Bytes that the chunks being filtered may hold at once, process-wide (each reserves
    /// twice its announced size: its input message and its output); a chunk bigger than this
    /// is filtered alone.
    pub chunk_memory_budget: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            resolve: HashMap::new(),
            timeout: Duration::from_secs(30),
            max_chunk_decompressed: 16 << 30,
            ticket_lifetime: Duration::from_secs(6 * 3600),
            chunk_memory_budget: 32 << 20,
        }
    }
}

/// Why a chunk could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
}

type PoolKey = (String, u16);
type Sender = SendRequest<Empty<Bytes>>;
type IdlePool = Arc<Mutex<HashMap<PoolKey, Vec<Sender>>>>;

/// Fetches chunks from cloud storage, verifying the storage's certificate like every upstream.
#[derive(Clone)]
pub struct StorageClient {
    tls: UpstreamTls,
    mark: Option<u32>,
    config: StorageConfig,
    idle: IdlePool,
    budget: ChunkBudget,
}

impl std::fmt::Debug for StorageClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageClient")
            .field("config", &self.config)
            .field("pooled_hosts", &lock(&self.idle).len())
            .finish_non_exhaustive()
    }
}

impl StorageClient {
    /// A client verifying storage servers with `tls`'s roots and marking its sockets with
    /// `mark` (so the redirect hooks skip them).
    pub fn new(tls: &UpstreamTls, mark: Option<u32>, config: StorageConfig) -> Self {
        StorageClient {
            tls: tls.http1_only(),
            mark,
            budget: ChunkBudget::new(config.chunk_memory_budget),
            config,
            idle: Arc::default(),
        }
    }

    /// The process-wide budget of the chunks being filtered.
    pub fn chunk_budget(&self) -> &ChunkBudget {
        &self.budget
    }

    /// The settings.
    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    /// Idle pooled connections to `host:port`.
    pub fn idle_connections(&self, host: &str, port: u16) -> usize {
        lock(&self.idle)
            .get(&(host.to_ascii_lowercase(), port))
            .map_or(0, |v| v.iter().filter(|s| !s.is_closed()).count())
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

    /// An idle, ready connection to `key`, if the pool has one.
    fn take_idle(&self, key: &PoolKey) -> Option<Sender> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(key)?;
        while let Some(sender) = list.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Returns `sender` to the pool once its response has been read to the end (the connection
    /// is ready again); a connection whose response was abandoned closes instead.
    fn give_back(&self, key: PoolKey, mut sender: Sender) {
        let idle = self.idle.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let mut idle = lock(&idle);
            if !idle.contains_key(&key) && idle.len() >= MAX_POOLED_HOSTS {
                idle.retain(|_, v| {
                    v.retain(|s| !s.is_closed());
                    !v.is_empty()
                });
                if idle.len() >= MAX_POOLED_HOSTS {
                    return;
                }
            }
            let list = idle.entry(key).or_default();
            list.retain(|s| !s.is_closed());
            if list.len() < MAX_IDLE_PER_HOST {
                list.push(sender);
            }
        });
    }

    async fn connect(&self, host: &str, port: u16) -> Result<Sender, ChunkError> {
        let addr = self.resolve(host, port).await?;
        let timeout = self.config.timeout;
        let up = |e: String| ChunkError::Upstream(e);
        let tcp = upstream::connect(addr, self.mark, timeout)
            .await
            .map_err(|e| up(e.to_string()))?;
        let tls = tokio::time::timeout(timeout, self.tls.handshake(tcp, host))
            .await
            .map_err(|_| up(format!("TLS handshake with {host} timed out")))?
            .map_err(|e| up(e.to_string()))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| up(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "storage connection ended");
            }
        });
        Ok(sender)
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
        let key = (host.to_ascii_lowercase(), port);
        let timeout = self.config.timeout;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        let authority = match uri.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let build = || {
            let mut req = Request::get(path.as_str())
                .header(http::header::HOST, authority.as_str())
                .header(http::header::USER_AGENT, "tollgate")
                .header(http::header::ACCEPT_ENCODING, "gzip, identity");
            for (name, value) in headers {
                req = req.header(name.as_str(), value.expose());
            }
            req.body(Empty::<Bytes>::new())
                .map_err(|e| ChunkError::Upstream(format!("building the storage request: {e}")))
        };
        // A pooled connection the server closed meanwhile fails at once: retried once on a
        // fresh connection.
        let resp = match self.take_idle(&key) {
            Some(mut sender) => {
                match tokio::time::timeout(timeout, sender.send_request(build()?)).await {
                    Ok(Ok(resp)) => Some((sender, resp)),
                    Ok(Err(e)) => {
                        debug!(error = %e, host = %host, "pooled storage connection failed; reconnecting");
                        None
                    }
                    Err(_) => {
                        return Err(ChunkError::Upstream(format!(
                            "storage {host} did not answer within {timeout:?}"
                        )))
                    }
                }
            }
            None => None,
        };
        let (sender, resp) = match resp {
            Some(x) => x,
            None => {
                let mut sender = self.connect(&host, port).await?;
                let resp = tokio::time::timeout(timeout, sender.send_request(build()?))
                    .await
                    .map_err(|_| {
                        ChunkError::Upstream(format!(
                            "storage {host} did not answer within {timeout:?}"
                        ))
                    })?
                    .map_err(|e| ChunkError::Upstream(e.to_string()))?;
                (sender, resp)
            }
        };
        if resp.status() != StatusCode::OK {
            return Err(ChunkError::Status(resp.status()));
        }
        self.give_back(key, sender);
        Ok(resp)
    }
}
