//! `tollgate-testkit`: the peers of the end-to-end suites and the demo.
//!
//! - `gen-ca`: a test CA and a server certificate for chosen names (test hosts' TLS identity).
//! - `serve`: a TLS server on a test host: `stream` mode hashes what it receives and sends a
//!   deterministic pattern back; `https` mode answers every HTTP request with a JSON echo.
//!   Every accepted connection and every request is printed as a JSON line on stdout, so a test
//!   can prove what the upstream saw (or did not see).
//! - `client`: an agent-side client (run inside a target cgroup): `stream`, `http` or `raw`
//!   mode; prints one JSON line with the outcome.
//! - `hold`: opens many concurrent connections and holds them (benchmarks).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_e2e::{hex, Pattern};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Mode {
    Stream,
    Https,
    Http,
    Raw,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes ca.pem, server.pem and server.key into DIR for the given DNS names and IPs.
    GenCa {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
    },
    /// Serves TLS on each --listen address.
    Serve {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long, value_enum, default_value = "stream")]
        mode: Mode,
        /// Bytes to send back per connection in stream mode.
        #[arg(long, default_value_t = 0)]
        send_bytes: u64,
        #[arg(long, default_value_t = 2)]
        seed: u64,
    },
    /// Connects once and reports the outcome as JSON.
    Client {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        sni: Option<String>,
        /// Roots to trust (the Tollgate CA for intercepted names, the test CA otherwise).
        #[arg(long)]
        ca: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "stream")]
        mode: Mode,
        #[arg(long, default_value_t = 0)]
        send_bytes: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "/")]
        path: String,
        /// Offer only h2 in ALPN (http mode).
        #[arg(long)]
        http2: bool,
        /// Raw mode: bytes to send, hex.
        #[arg(long, default_value = "")]
        raw_hex: String,
        /// Raw mode: half-close after sending.
        #[arg(long)]
        raw_shutdown: bool,
        #[arg(long, default_value_t = 20_000)]
        timeout_ms: u64,
    },
    /// Times COUNT sequential TCP connect() calls (closing each at once); prints p50/p99 µs.
    ConnectBench {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// Times COUNT sequential HTTPS requests on one kept-alive connection (after one warm-up).
    HttpBench {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        sni: String,
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// Completes COUNT TLS handshakes with CONCURRENCY in flight; prints handshakes/s.
    HandshakeBench {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        sni: String,
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Opens COUNT TLS connections (completing handshakes) and holds them for HOLD_MS.
    Hold {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        sni: String,
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 2000)]
        hold_ms: u64,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    raise_nofile_limit();
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().cmd {
        Cmd::GenCa { dir, names } => gen_ca(&dir, &names),
        Cmd::Serve {
            listen,
            cert,
            key,
            mode,
            send_bytes,
            seed,
        } => serve(listen, cert, key, mode, send_bytes, seed).await,
        Cmd::Client {
            connect,
            sni,
            ca,
            mode,
            send_bytes,
            seed,
            path,
            http2,
            raw_hex,
            raw_shutdown,
            timeout_ms,
        } => {
            let started = Instant::now();
            let fut = client(
                connect,
                sni,
                ca,
                mode,
                send_bytes,
                seed,
                path,
                http2,
                raw_hex,
                raw_shutdown,
            );
            let mut v = match tokio::time::timeout(Duration::from_millis(timeout_ms), fut).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => json!({"ok": false, "error": format!("{e:#}"), "kind": kind(&e)}),
                Err(_) => json!({"ok": false, "error": "timeout", "kind": "timeout"}),
            };
            v["elapsed_ms"] = json!(started.elapsed().as_secs_f64() * 1000.0);
            println!("{v}");
            Ok(())
        }
        Cmd::Hold {
            connect,
            sni,
            ca,
            count,
            hold_ms,
        } => hold(connect, sni, ca, count, hold_ms).await,
        Cmd::ConnectBench { connect, count } => connect_bench(connect, count),
        Cmd::HttpBench {
            connect,
            sni,
            ca,
            count,
        } => http_bench(connect, sni, ca, count).await,
        Cmd::HandshakeBench {
            connect,
            sni,
            ca,
            count,
            concurrency,
        } => handshake_bench(connect, sni, ca, count, concurrency).await,
    }
}

fn kind(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return format!("{:?}", io.kind());
        }
    }
    "other".into()
}

fn gen_ca(dir: &PathBuf, names: &[String]) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Tollgate test-host CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    for n in names {
        leaf.subject_alt_names
            .push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into()?),
            });
    }
    leaf.distinguished_name
        .push(DnType::CommonName, "test host");
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("server.pem"), leaf_cert.pem())?;
    std::fs::write(dir.join("server.key"), leaf_key.serialize_pem())?;
    Ok(())
}

fn load_certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(rustls_pemfile::certs(&mut &pem[..]).collect::<Result<_, _>>()?)
}

async fn serve(
    listen: Vec<SocketAddr>,
    cert: PathBuf,
    key: PathBuf,
    mode: Mode,
    send_bytes: u64,
    seed: u64,
) -> Result<()> {
    let certs = load_certs(&cert)?;
    let key_pem = std::fs::read(&key)?;
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut &key_pem[..])?.context("no private key")?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let mut tasks = Vec::new();
    for addr in listen {
        let l = bind(addr)?;
        println!(
            "{}",
            json!({"event": "listening", "addr": l.local_addr()?.to_string()})
        );
        let acceptor = acceptor.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((sock, peer)) = l.accept().await else {
                    continue;
                };
                println!("{}", json!({"event": "accept", "peer": peer.to_string()}));
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let tls = match acceptor.accept(sock).await {
                        Ok(t) => t,
                        Err(e) => {
                            println!(
                                "{}",
                                json!({"event": "tls_error", "peer": peer.to_string(), "error": e.to_string()})
                            );
                            return;
                        }
                    };
                    let r = match mode {
                        Mode::Https => serve_http(tls, peer).await,
                        _ => serve_stream(tls, peer, send_bytes, seed).await,
                    };
                    if let Err(e) = r {
                        println!(
                            "{}",
                            json!({"event": "conn_error", "peer": peer.to_string(), "error": format!("{e:#}")})
                        );
                    }
                });
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr).with_context(|| format!("binding {addr}"))?;
    Ok(sock.listen(1024)?)
}

async fn serve_stream<S>(tls: S, peer: SocketAddr, send_bytes: u64, seed: u64) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(tls);
    let send = async move {
        write_pattern(&mut wr, seed, send_bytes).await?;
        wr.shutdown().await?;
        anyhow::Ok(())
    };
    let recv = async move { hash_until_eof(&mut rd).await };
    let (s, r) = tokio::join!(send, recv);
    let (n, sha) = r?;
    println!(
        "{}",
        json!({"event": "stream", "peer": peer.to_string(), "recv_bytes": n, "recv_sha256": sha, "send_ok": s.is_ok()})
    );
    s
}

async fn write_pattern<W: AsyncWrite + Unpin>(w: &mut W, seed: u64, len: u64) -> Result<()> {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        p.fill(&mut buf);
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    w.flush().await?;
    Ok(())
}

async fn hash_until_eof<R: AsyncRead + Unpin>(r: &mut R) -> Result<(u64, String)> {
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).await?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex(&h.finalize())))
}

async fn serve_http<S>(tls: S, peer: SocketAddr) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
        let method = req.method().to_string();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let host = req
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        let version = format!("{:?}", req.version());
        let body = req.into_body().collect().await?.to_bytes();
        let v = json!({
            "event": "request", "peer": peer.to_string(), "method": method, "path": path,
            "host": host, "version": version, "body_len": body.len(),
            "body_sha256": hex(&sha2::Sha256::digest(&body)),
        });
        println!("{v}");
        Ok::<_, hyper::Error>(
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(v.to_string())))
                .expect("static response"),
        )
    });
    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), svc)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn client_config(ca: Option<&PathBuf>, alpn: Vec<Vec<u8>>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        for c in load_certs(ca)? {
            roots.add(c)?;
        }
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn;
    Ok(Arc::new(cfg))
}

#[allow(clippy::too_many_arguments)]
async fn client(
    connect: SocketAddr,
    sni: Option<String>,
    ca: Option<PathBuf>,
    mode: Mode,
    send_bytes: u64,
    seed: u64,
    path: String,
    http2: bool,
    raw_hex: String,
    raw_shutdown: bool,
) -> Result<serde_json::Value> {
    let mut sock = TcpStream::connect(connect)
        .await
        .with_context(|| format!("connecting to {connect}"))?;
    sock.set_nodelay(true)?;
    let local = sock.local_addr()?.to_string();
    if mode == Mode::Raw {
        let bytes = decode_hex(&raw_hex)?;
        sock.write_all(&bytes).await?;
        if raw_shutdown {
            sock.shutdown().await?;
        }
        let mut buf = Vec::new();
        let r = sock.read_to_end(&mut buf).await;
        return Ok(json!({
            "ok": true, "local": local, "recv_bytes": buf.len(),
            "closed": true, "read_error": r.err().map(|e| e.to_string()),
        }));
    }
    let sni = sni.context("--sni is required for TLS modes")?;
    let alpn = match (mode, http2) {
        (Mode::Http, true) => vec![b"h2".to_vec()],
        (Mode::Http, false) => vec![b"http/1.1".to_vec()],
        _ => vec![],
    };
    let cfg = client_config(ca.as_ref(), alpn)?;
    let name = ServerName::try_from(sni.clone())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, sock)
        .await
        .context("TLS handshake")?;
    let (_, conn) = tls.get_ref();
    let peer_cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| hex(&sha2::Sha256::digest(c)));
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    match mode {
        Mode::Http => {
            let io = TokioIo::new(tls);
            let uri = format!("https://{sni}{path}");
            let (status, body) = if http2 {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                let req = Request::get(&uri).body(Full::new(Bytes::new()))?;
                let resp = send.send_request(req).await?;
                let status = resp.status().as_u16();
                (status, resp.into_body().collect().await?.to_bytes())
            } else {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                let req = Request::get(&path)
                    .header("host", &sni)
                    .body(Full::new(Bytes::new()))?;
                let resp = send.send_request(req).await?;
                let status = resp.status().as_u16();
                (status, resp.into_body().collect().await?.to_bytes())
            };
            let body = String::from_utf8_lossy(&body).into_owned();
            Ok(json!({
                "ok": true, "local": local, "status": status, "body": body,
                "alpn": alpn, "peer_cert_sha256": peer_cert,
            }))
        }
        _ => {
            let (mut rd, mut wr) = tokio::io::split(tls);
            let send = async move {
                write_pattern(&mut wr, seed, send_bytes).await?;
                wr.shutdown().await?;
                anyhow::Ok(())
            };
            let recv = async move { hash_until_eof(&mut rd).await };
            let (s, r) = tokio::join!(send, recv);
            s?;
            let (n, sha) = r?;
            Ok(json!({
                "ok": true, "local": local, "recv_bytes": n, "recv_sha256": sha,
                "alpn": alpn, "peer_cert_sha256": peer_cert,
            }))
        }
    }
}

fn decode_hex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd-length hex");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("bad hex"))
        .collect()
}

async fn hold(
    connect: SocketAddr,
    sni: String,
    ca: PathBuf,
    count: usize,
    hold_ms: u64,
) -> Result<()> {
    let cfg = client_config(Some(&ca), vec![b"http/1.1".to_vec()])?;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    for _ in 0..count {
        let connector = connector.clone();
        let name = ServerName::try_from(sni.clone())?;
        let sem = sem.clone();
        set.spawn(async move {
            let permit = sem.acquire_owned().await?;
            let sock = TcpStream::connect(connect).await?;
            let tls = connector.connect(name, sock).await?;
            drop(permit);
            anyhow::Ok(tls)
        });
    }
    let mut held = Vec::new();
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        match r? {
            Ok(t) => held.push(t),
            Err(_) => failed += 1,
        }
    }
    let opened_ms = started.elapsed().as_secs_f64() * 1000.0;
    println!(
        "{}",
        json!({"event": "held", "open": held.len(), "failed": failed, "opened_ms": opened_ms})
    );
    tokio::time::sleep(Duration::from_millis(hold_ms)).await;
    drop(held);
    Ok(())
}

fn percentiles(mut us: Vec<f64>) -> serde_json::Value {
    us.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| us[((us.len() as f64 - 1.0) * q).round() as usize];
    json!({"count": us.len(), "p50_us": at(0.5), "p99_us": at(0.99), "mean_us": us.iter().sum::<f64>() / us.len() as f64})
}

fn connect_bench(connect: SocketAddr, count: usize) -> Result<()> {
    let mut us = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let s = std::net::TcpStream::connect(connect)
            .with_context(|| format!("connecting to {connect}"))?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        drop(s);
    }
    println!("{}", percentiles(us));
    Ok(())
}

async fn http_bench(connect: SocketAddr, sni: String, ca: PathBuf, count: usize) -> Result<()> {
    let cfg = client_config(Some(&ca), vec![b"http/1.1".to_vec()])?;
    let sock = TcpStream::connect(connect).await?;
    sock.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from(sni.clone())?, sock)
        .await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let mut us = Vec::with_capacity(count);
    for i in 0..=count {
        let req = Request::post("/bench/echo")
            .header("host", &sni)
            .body(Full::new(Bytes::from_static(b"{\"sqlText\":\"select 1\"}")))?;
        send.ready().await?;
        let t = Instant::now();
        let resp = send.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        if !status.is_success() {
            bail!("request failed: {status}");
        }
        if i > 0 {
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    println!("{}", percentiles(us));
    Ok(())
}

async fn handshake_bench(
    connect: SocketAddr,
    sni: String,
    ca: PathBuf,
    count: usize,
    concurrency: usize,
) -> Result<()> {
    let cfg = client_config(Some(&ca), vec![b"http/1.1".to_vec()])?;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let name = ServerName::try_from(sni)?;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let per = count / concurrency;
    for _ in 0..concurrency {
        let connector = connector.clone();
        let name = name.clone();
        set.spawn(async move {
            for _ in 0..per {
                let sock = TcpStream::connect(connect).await?;
                let mut tls = connector.connect(name.clone(), sock).await?;
                tls.shutdown().await.ok();
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"handshakes": per * concurrency, "seconds": secs, "per_second": (per * concurrency) as f64 / secs})
    );
    Ok(())
}

/// Lifts the soft open-files limit to the hard one (the benchmarks hold 1,000+ sockets).
fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}
