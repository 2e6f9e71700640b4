//! The [`Proxy`]: listeners, the per-connection pipeline (original destination → identity →
//! loop check → ClientHello peek → SNI gate → pass-through | intercept | block) and graceful
//! shutdown. Every accepted connection produces exactly one [`ConnectionRecord`], also when it
//! is aborted at shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::ca::{CertificateAuthority, LeafResolver};
use crate::config::ProxyConfig;
use crate::counting::ByteCounters;
use crate::gate::{GateAction, GateQuery, GateReason, GateVerdict, SnowflakeAddresses};
use crate::hooks::ExchangeHooks;
use crate::identity::{ProcFs, ProcessIdentity, Redirects};
use crate::listener;
use crate::probe::Prober;
use crate::record::{rfc3339_micros, CloseReason, ConnectionRecord, Decision, RecordSink};
use crate::upstream::UpstreamTls;
use crate::upstream::{Route, UpstreamFailure};

/// Failures starting or running the proxy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The configuration is unusable.
    #[error("invalid proxy configuration: {0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}; is another tollgate running, or is the address not configured on this host?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Counts over one [`BoundProxy::run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections intercepted.
    pub intercepted: u64,
    /// Connections passed through.
    pub passed_through: u64,
    /// Connections blocked by the SNI gate.
    pub blocked: u64,
    /// Connections rejected before a gate decision.
    pub rejected: u64,
    /// Connections still open at the end of the grace period, aborted.
    pub aborted: u64,
    /// Connection records lost by the record sink.
    pub records_dropped: u64,
}

#[derive(Default)]
struct StatCounters {
    accepted: AtomicU64,
    intercepted: AtomicU64,
    passed_through: AtomicU64,
    blocked: AtomicU64,
    rejected: AtomicU64,
    aborted: AtomicU64,
}

/// The parts of a record filled in as a connection progresses.
#[derive(Default)]
pub(crate) struct Draft {
    process: Option<ProcessIdentity>,
    original_dst: Option<SocketAddr>,
    pub(crate) protocol: Option<&'static str>,
    pub(crate) tunnel: Option<String>,
    pub(crate) sni: Option<String>,
    pub(crate) alpn: Vec<String>,
    negotiated_alpn: Option<String>,
    pub(crate) decision: Decision,
}

/// Per-connection state shared by the data path and the record.
pub(crate) struct ConnState {
    pub(crate) counters: Arc<ByteCounters>,
    pub(crate) requests: AtomicU64,
    pub(crate) upstream_verified: AtomicBool,
    upstream_failure: Mutex<Option<CloseReason>>,
    draft: Mutex<Draft>,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            counters: Arc::default(),
            requests: AtomicU64::new(0),
            upstream_verified: AtomicBool::new(false),
            upstream_failure: Mutex::new(None),
            draft: Mutex::new(Draft::default()),
        }
    }

    pub(crate) fn draft(&self) -> std::sync::MutexGuard<'_, Draft> {
        self.draft.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_negotiated_alpn(&self, alpn: Option<String>) {
        self.draft().negotiated_alpn = alpn;
    }

    /// Keeps the first upstream failure: it is the one that explains the rest.
    pub(crate) fn note_upstream_failure(&self, failure: &UpstreamFailure) {
        let mut first = self
            .upstream_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| CloseReason::from(failure));
    }

    pub(crate) fn upstream_failure(&self) -> Option<CloseReason> {
        self.upstream_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    pub(crate) upstream: UpstreamTls,
    redirects: Arc<dyn Redirects>,
    records: RecordSink,
    pub(crate) hooks: Arc<dyn ExchangeHooks>,
    pub(crate) acceptor: TlsAcceptor,
    procfs: ProcFs,
    /// Where Snowflake names live (configured ranges, learned, resolved).
    pub(crate) snowflake_addresses: Mutex<SnowflakeAddresses>,
    pub(crate) prober: Prober,
    id_prefix: String,
    next_id: AtomicU64,
}

/// The interception proxy, configured but not yet listening.
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    /// Assembles a proxy. `ca` mints the certificates shown to intercepted clients,
    /// `upstream` verifies real servers, `redirects` supplies identities (and original
    /// destinations), `records` receives one record per connection and `hooks` sees every
    /// intercepted exchange.
    pub fn new(
        config: ProxyConfig,
        ca: Arc<CertificateAuthority>,
        upstream: UpstreamTls,
        redirects: Arc<dyn Redirects>,
        records: RecordSink,
        hooks: Arc<dyn ExchangeHooks>,
    ) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(LeafResolver::new(ca)));
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let started = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
        let prober = Prober::new(config.upstream_mark, config.upstream_connect_timeout);
        let snowflake_addresses = Mutex::new(SnowflakeAddresses::with_ranges(
            config.snowflake_ranges.clone(),
        ));
        Proxy {
            shared: Arc::new(Shared {
                snowflake_addresses,
                prober,
                config,
                upstream,
                redirects,
                records,
                hooks,
                acceptor: TlsAcceptor::from(Arc::new(tls)),
                procfs: ProcFs::system(),
                id_prefix: format!("{started:x}"),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Validates the configuration and binds every listener. Must be called inside a Tokio
    /// runtime.
    pub fn bind(&self) -> Result<BoundProxy, ProxyError> {
        self.shared.config.validate().map_err(ProxyError::Config)?;
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for &addr in &self.shared.config.listen {
            let listener =
                listener::bind(addr).map_err(|source| ProxyError::Bind { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| ProxyError::Bind { addr, source })?;
            tracing::info!(%local, "listening");
            listeners.push(listener);
            addrs.push(local);
        }
        Ok(BoundProxy {
            shared: self.shared.clone(),
            listeners,
            addrs: addrs.into(),
        })
    }
}

/// A proxy with bound listeners, ready to [`run`](BoundProxy::run).
pub struct BoundProxy {
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    addrs: Arc<[SocketAddr]>,
}

impl BoundProxy {
    /// The bound listener addresses (actual ports when port 0 was configured).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Serves until `shutdown` completes; then stops accepting, lets open connections drain
    /// for the grace period, aborts the rest, and returns once every connection record has
    /// been written.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<ProxyStats, ProxyError> {
        let shared = self.shared;
        let max = shared.config.max_connections;
        let permits = Arc::new(Semaphore::new(max));
        let stats = Arc::new(StatCounters::default());
        let (drain_tx, drain_rx) = watch::channel(false);
        let (abort_tx, abort_rx) = watch::channel(false);

        let mut accept_loops = JoinSet::new();
        tokio::spawn(refresh_snowflake_addresses(
            shared.clone(),
            Duration::from_secs(60),
            drain_rx.clone(),
        ));
        for listener in self.listeners {
            accept_loops.spawn(accept_loop(
                listener,
                shared.clone(),
                self.addrs.clone(),
                permits.clone(),
                stats.clone(),
                drain_rx.clone(),
                abort_rx.clone(),
            ));
        }

        shutdown.await;
        tracing::info!("shutting down: no new connections, draining open ones");
        let _ = drain_tx.send(true);
        while accept_loops.join_next().await.is_some() {}

        // Every connection holds a permit until its record is queued: owning all permits
        // means every connection is done.
        let all = u32::try_from(max).expect("validated max_connections fits in u32");
        let drained = tokio::time::timeout(shared.config.shutdown_grace, permits.acquire_many(all))
            .await
            .is_ok();
        if !drained {
            tracing::warn!(grace = ?shared.config.shutdown_grace, "grace period over: aborting open connections");
            let _ = abort_tx.send(true);
            let _ = permits.acquire_many(all).await;
        }
        shared.records.flush().await;

        Ok(ProxyStats {
            accepted: stats.accepted.load(Ordering::Relaxed),
            intercepted: stats.intercepted.load(Ordering::Relaxed),
            passed_through: stats.passed_through.load(Ordering::Relaxed),
            blocked: stats.blocked.load(Ordering::Relaxed),
            rejected: stats.rejected.load(Ordering::Relaxed),
            aborted: stats.aborted.load(Ordering::Relaxed),
            records_dropped: shared.records.dropped(),
        })
    }
}

/// Resolves once a shutdown-phase flag is set (or its sender is gone). Returns `()` so that
/// no watch guard is held across other awaits.
pub(crate) async fn signalled(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    listen_addrs: Arc<[SocketAddr]>,
    permits: Arc<Semaphore>,
    stats: Arc<StatCounters>,
    mut drain: watch::Receiver<bool>,
    abort: watch::Receiver<bool>,
) {
    loop {
        // The permit is taken before accept: over the limit, clients wait in the backlog.
        let permit = tokio::select! {
            _ = signalled(&mut drain) => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (stream, client) = tokio::select! {
            _ = signalled(&mut drain) => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        let listen_addrs = listen_addrs.clone();
        let stats = stats.clone();
        let drain = drain.clone();
        let abort = abort.clone();
        tokio::spawn(async move {
            serve_connection(shared, stream, client, listen_addrs, stats, drain, abort).await;
            drop(permit);
        });
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    client: SocketAddr,
    listen_addrs: Arc<[SocketAddr]>,
    stats: Arc<StatCounters>,
    drain: watch::Receiver<bool>,
    mut abort: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let started_at = OffsetDateTime::now_utc();
    let id = format!(
        "{}-{}",
        shared.id_prefix,
        shared.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let listener = stream.local_addr().unwrap_or(client);
    let state = Arc::new(ConnState::new());
    let close_reason = tokio::select! {
        reason = pipeline(&shared, &id, stream, client, &listen_addrs, &state, drain) => reason,
        _ = signalled(&mut abort) => {
            stats.aborted.fetch_add(1, Ordering::Relaxed);
            CloseReason::Shutdown
        }
    };

    let draft = std::mem::take(&mut *state.draft());
    let counter = match draft.decision {
        Decision::Intercept => &stats.intercepted,
        Decision::Passthrough => &stats.passed_through,
        Decision::Block => &stats.blocked,
        Decision::Reject => &stats.rejected,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let record = ConnectionRecord {
        id,
        started_at: rfc3339_micros(started_at),
        client,
        listener,
        process: draft.process,
        original_dst: draft.original_dst,
        protocol: draft.protocol.map(str::to_owned),
        tunnel: draft.tunnel,
        sni: draft.sni,
        alpn: draft.alpn,
        negotiated_alpn: draft.negotiated_alpn,
        decision: draft.decision,
        bytes_up: state.counters.up.load(Ordering::Relaxed),
        bytes_down: state.counters.down.load(Ordering::Relaxed),
        requests: state.requests.load(Ordering::Relaxed),
        upstream_verified: state.upstream_verified.load(Ordering::Relaxed),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        close_reason,
    };
    tracing::debug!(
        id = %record.id,
        client = %record.client,
        sni = ?record.sni,
        decision = ?record.decision,
        reason = %record.close_reason,
        "connection closed"
    );
    shared.hooks.connection_closed(&record);
    shared.records.submit(record).await;
}

/// Runs one connection through its phases; returns the close reason.
async fn pipeline(
    shared: &Shared,
    id: &str,
    stream: TcpStream,
    client: SocketAddr,
    listen_addrs: &[SocketAddr],
    state: &Arc<ConnState>,
    drain: watch::Receiver<bool>,
) -> CloseReason {
    let config = &shared.config;
    let _ = stream.set_nodelay(true);

    // The original destination first: SO_ORIGINAL_DST (emulated by the eBPF getsockopt hook)
    // reads the redirect record that `take_identity` then consumes, whatever happens next.
    let original_dst = shared.redirects.original_dst(client, &stream);
    let mut process = shared.redirects.take_identity(client);
    if let (Some(identity), true) = (process.as_mut(), config.enrich_identity) {
        let procfs = shared.procfs.clone();
        let mut copy = identity.clone();
        if let Ok(enriched) = tokio::task::spawn_blocking(move || {
            procfs.enrich(&mut copy);
            copy
        })
        .await
        {
            *identity = enriched;
        }
    }
    state.draft().process = process.clone();

    let original_dst = match original_dst {
        Ok(Some(dst)) => dst,
        Ok(None) => return CloseReason::NoOriginalDestination(None),
        Err(e) => return CloseReason::NoOriginalDestination(Some(e.to_string())),
    };
    state.draft().original_dst = Some(original_dst);

    let own_pid = process
        .as_ref()
        .is_some_and(|p| p.tgid == std::process::id());
    if own_pid || listen_addrs.contains(&original_dst) {
        tracing::warn!(%id, %client, %original_dst, "connection from tollgate to itself dropped");
        return CloseReason::LoopDetected;
    }

    crate::dispatch::Conn {
        shared,
        id,
        client,
        original_dst,
        process,
        state,
        drain,
    }
    .serve(stream)
    .await
}

impl Shared {
    /// The gate's decision for TLS over `route` asking for `sni`, probing the destination's
    /// certificate when the connection would otherwise be passed through.
    pub(crate) async fn gate(
        &self,
        sni: Option<&str>,
        route: &Route,
        snowflake_address: bool,
    ) -> (GateAction, GateReason) {
        let mut query = GateQuery {
            sni,
            snowflake_address,
            certificate: None,
        };
        match self.config.gate.decide(&query) {
            GateVerdict::Decided(action, reason) => (action, reason),
            GateVerdict::NeedCertificate => {
                let probed = self.prober.certificate(route, sni).await;
                query.certificate = Some(probed.as_ref().map_err(String::as_str));
                match self.config.gate.decide(&query) {
                    GateVerdict::Decided(action, reason) => (action, reason),
                    GateVerdict::NeedCertificate => (
                        GateAction::Block,
                        GateReason::DestinationUnverified {
                            why: "no decision after the probe".into(),
                        },
                    ),
                }
            }
        }
    }

    /// Remembers that the Snowflake name `sni` lives at `dst`.
    pub(crate) fn learn_snowflake(&self, sni: &str, dst: SocketAddr) {
        self.snowflake_addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .learn(dst.ip(), sni, Instant::now());
    }
}

/// Keeps the learned Snowflake addresses fresh: every `interval`, the names seen are resolved
/// again and their current addresses learned; stale ones expire.
async fn refresh_snowflake_addresses(
    shared: Arc<Shared>,
    interval: Duration,
    mut drain: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = signalled(&mut drain) => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let names = {
            let mut book = shared
                .snowflake_addresses
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            book.expire(Instant::now());
            book.names()
        };
        for name in names {
            if let Ok(addrs) = tokio::net::lookup_host((name.as_str(), 443)).await {
                for addr in addrs {
                    shared.learn_snowflake(&name, addr);
                }
            }
        }
    }
}
