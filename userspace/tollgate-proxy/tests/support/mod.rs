//! Test peers for the proxy: a test PKI, TLS/plain upstream servers, TLS clients, a fixed
//! `Redirects`, and a proxy harness. Everything on 127.0.0.1 with ports from the kernel.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tollgate_proxy::{
    BoundProxy, CertificateAuthority, ConnectionRecord, PassThroughHooks, ProcessIdentity, Proxy,
    ProxyConfig, ProxyStats, RecordSink, Redirects, UpstreamTls,
};

pub const SNOWFLAKE_HOST: &str = "acct.snowflakecomputing.com";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test certificate authority for upstream servers.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    key: KeyPair,
}

impl TestPki {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test root"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("root.pem"), ca.pem()).unwrap();
        TestPki { dir, ca, key }
    }

    pub fn root_path(&self) -> PathBuf {
        self.dir.path().join("root.pem")
    }

    /// A server certificate for `names`, signed by this root.
    pub fn server_config(&self, names: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.key).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A TLS HTTP server echoing what it saw: `version host authority path body_len`.
pub struct EchoHttpsServer {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    /// TLS handshakes completed.
    pub handshakes: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for EchoHttpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn echo_https_server(config: Arc<rustls::ServerConfig>) -> EchoHttpsServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let (req_count, hs_count) = (requests.clone(), handshakes.clone());
    let acceptor = TlsAcceptor::from(config);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let req_count = req_count.clone();
            let hs_count = hs_count.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                hs_count.fetch_add(1, Ordering::SeqCst);
                let service = service_fn(move |req: Request<Incoming>| {
                    let req_count = req_count.clone();
                    async move {
                        req_count.fetch_add(1, Ordering::SeqCst);
                        let version = format!("{:?}", req.version());
                        let host = req
                            .headers()
                            .get(http::header::HOST)
                            .map(|h| h.to_str().unwrap().to_string())
                            .unwrap_or_else(|| "-".into());
                        let authority = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .unwrap_or_else(|| "-".into());
                        let path = req.uri().path_and_query().unwrap().to_string();
                        let body = req.into_body().collect().await?.to_bytes();
                        let text = format!("{version} {host} {authority} {path} {}", body.len());
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(text))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    EchoHttpsServer {
        addr,
        requests,
        handshakes,
        task,
    }
}

/// Redirects that report one fixed original destination and, optionally, an identity, and
/// count the lookups: the proxy asks for the original destination of every connection right
/// after accepting it, so the count is the number of connections being served.
pub struct FixedRedirects {
    pub dst: Option<SocketAddr>,
    pub identity: Mutex<Option<ProcessIdentity>>,
    /// Original-destination lookups so far.
    pub lookups: tokio::sync::watch::Sender<usize>,
}

impl Redirects for FixedRedirects {
    fn take_identity(&self, _client: SocketAddr) -> Option<ProcessIdentity> {
        self.identity.lock().unwrap().clone()
    }

    fn original_dst(
        &self,
        _client: SocketAddr,
        _stream: &TcpStream,
    ) -> std::io::Result<Option<SocketAddr>> {
        self.lookups.send_modify(|n| *n += 1);
        Ok(self.dst)
    }
}

/// A running proxy with its records and a shutdown trigger.
pub struct Harness {
    pub addr: SocketAddr,
    pub ca: Arc<CertificateAuthority>,
    pub ca_dir: tempfile::TempDir,
    pub records: mpsc::UnboundedReceiver<ConnectionRecord>,
    pub redirects: Arc<FixedRedirects>,
    shutdown: Option<oneshot::Sender<()>>,
    run: Option<JoinHandle<ProxyStats>>,
}

pub fn test_config() -> ProxyConfig {
    ProxyConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        peek_timeout: Duration::from_secs(5),
        upstream_connect_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        ..ProxyConfig::default()
    }
}

pub fn start(
    config: ProxyConfig,
    dst: Option<SocketAddr>,
    identity: Option<ProcessIdentity>,
    upstream: UpstreamTls,
) -> Harness {
    let (records, rx) = RecordSink::channel().unwrap();
    start_with_sink(config, dst, identity, upstream, records, rx)
}

pub fn start_with_sink(
    config: ProxyConfig,
    dst: Option<SocketAddr>,
    identity: Option<ProcessIdentity>,
    upstream: UpstreamTls,
    records: RecordSink,
    rx: mpsc::UnboundedReceiver<ConnectionRecord>,
) -> Harness {
    let ca_dir = tempfile::tempdir().unwrap();
    let (ca, created) = CertificateAuthority::load_or_create(ca_dir.path().join("state")).unwrap();
    assert!(created);
    let ca = Arc::new(ca);
    let redirects = Arc::new(FixedRedirects {
        dst,
        identity: Mutex::new(identity),
        lookups: tokio::sync::watch::Sender::new(0),
    });
    let proxy = Proxy::new(
        config,
        ca.clone(),
        upstream,
        redirects.clone(),
        records,
        Arc::new(PassThroughHooks),
    );
    let bound: BoundProxy = proxy.bind().unwrap();
    let addr = bound.local_addrs()[0];
    let (tx, shutdown) = oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        bound
            .run(async {
                let _ = shutdown.await;
            })
            .await
            .unwrap()
    });
    Harness {
        addr,
        ca,
        ca_dir,
        records: rx,
        redirects,
        shutdown: Some(tx),
        run: Some(run),
    }
}

impl Harness {
    /// Triggers shutdown and waits for `run` to return.
    pub async fn shutdown(&mut self) -> ProxyStats {
        let _ = self.shutdown.take().unwrap().send(());
        self.run.take().unwrap().await.unwrap()
    }

    /// Waits until the proxy has accepted and started serving `n` connections in all (it
    /// looked up their original destinations), failing the test after 10 s.
    pub async fn wait_accepted(&self, n: usize) {
        let mut lookups = self.redirects.lookups.subscribe();
        tokio::time::timeout(Duration::from_secs(10), lookups.wait_for(|&seen| seen >= n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the proxy accepted {} of {n} connections within 10 s",
                    *self.redirects.lookups.borrow()
                )
            })
            .expect("the redirects outlive the harness");
    }

    /// Connections the proxy has accepted and started serving so far.
    pub fn accepted(&self) -> usize {
        *self.redirects.lookups.borrow()
    }

    /// The next record, failing the test after 10 s.
    pub async fn next_record(&mut self) -> ConnectionRecord {
        tokio::time::timeout(Duration::from_secs(10), self.records.recv())
            .await
            .expect("no connection record within 10 s")
            .expect("record channel closed")
    }

    /// The record of the connection from `client`.
    pub async fn record_for(
        &mut self,
        client: SocketAddr,
        pending: &mut Vec<ConnectionRecord>,
    ) -> ConnectionRecord {
        loop {
            if let Some(i) = pending.iter().position(|r| r.client == client) {
                return pending.remove(i);
            }
            let record = self.next_record().await;
            pending.push(record);
        }
    }

    /// A TLS client configuration trusting the proxy's CA, offering `alpn`.
    fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let der: CertificateDer<'static> =
            rustls_pemfile::certs(&mut self.ca.cert_pem().as_bytes())
                .next()
                .unwrap()
                .unwrap();
        roots.add(der).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// TLS trusting the proxy's CA over an already connected stream (after a tunnel
    /// handshake, say).
    pub async fn tls_over(
        &self,
        tcp: TcpStream,
        sni: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        TlsConnector::from(self.client_config(&[b"http/1.1"]))
            .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
            .await
    }

    /// A TLS client trusting the proxy's CA.
    pub async fn tls_client(
        &self,
        sni: &str,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        TlsConnector::from(self.client_config(alpn))
            .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
            .await
            .unwrap()
    }
}

/// The bytes of a rustls ClientHello for `sni`, as sent on the wire.
pub fn client_hello_bytes(sni: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from(sni.to_string()).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Deterministic pseudo-random bytes (xorshift), so a run can be reproduced.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sends an HTTP/1.1 request over an established TLS stream; returns the response.
pub async fn http1_request<I>(
    io: I,
    request: Request<Full<Bytes>>,
) -> (http::response::Parts, Bytes)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}
