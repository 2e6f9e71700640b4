//! The proxy in-process against real peers on 127.0.0.1: pass-through, interception (HTTP/1.1
//! and HTTP/2, both directions of version translation), upstream verification failures,
//! fail-closed rejections, the connection bound and graceful shutdown.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_proxy::{
    CloseReason, Decision, GateAction, ProcessIdentity, RecordSink, SniGate, UpstreamTls,
};
use x509_parser::prelude::*;

const MIB: usize = 1024 * 1024;

fn trusting(pki: &TestPki) -> UpstreamTls {
    UpstreamTls::from_pem_file(pki.root_path()).unwrap()
}

/// Answers the gate's destination probe (the first connection to a pass-through destination)
/// with a TLS server certificate for `name`, as a real destination would.
async fn answer_probe(listener: &TcpListener, name: &str) {
    let (stream, _) = listener.accept().await.unwrap();
    let pki = TestPki::new("destination");
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config(&[name], &[]));
    // The probe reads the certificate and aborts the handshake.
    assert!(acceptor.accept(stream).await.is_err());
}

/// Reads until EOF or error; true when the proxy closed the connection on us.
async fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_is_byte_exact_and_counted() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let from_server = pattern(8 * MIB, 2);
    let server_sends = from_server.clone();
    let server = tokio::spawn(async move {
        answer_probe(&upstream, "files.example.org").await;
        let (stream, _) = upstream.accept().await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let reader = tokio::spawn(async move {
            let mut hasher = Sha256::new();
            let mut total = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = rd.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                total += n;
            }
            (hasher.finalize(), total)
        });
        wr.write_all(&server_sends).await.unwrap();
        wr.shutdown().await.unwrap();
        reader.await.unwrap()
    });

    let mut proxy = start(
        test_config(),
        Some(upstream_addr),
        None,
        UpstreamTls::from_pem_file(TestPki::new("unused").root_path()).unwrap(),
    );
    let hello = client_hello_bytes("files.example.org");
    let mut from_client = hello.clone();
    from_client.extend_from_slice(&pattern(8 * MIB, 1));

    let client = TcpStream::connect(proxy.addr).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    let (mut rd, mut wr) = client.into_split();
    let sent = from_client.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut received = Vec::with_capacity(8 * MIB);
    rd.read_to_end(&mut received).await.unwrap();
    writer.await.unwrap();

    let (upstream_hash, upstream_total) = server.await.unwrap();
    assert_eq!(upstream_total, from_client.len());
    assert_eq!(upstream_hash, Sha256::digest(&from_client));
    assert_eq!(Sha256::digest(&received), Sha256::digest(&from_server));

    let record = proxy.next_record().await;
    assert_eq!(record.client, client_addr);
    assert_eq!(record.decision, Decision::Passthrough);
    assert_eq!(record.sni.as_deref(), Some("files.example.org"));
    assert_eq!(record.bytes_up, from_client.len() as u64);
    assert_eq!(record.bytes_down, from_server.len() as u64);
    assert_eq!(record.close_reason, CloseReason::Eof);
    assert!(!record.upstream_verified);
    proxy.shutdown().await;
}

fn check_leaf(der: &[u8], sni: &str) {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => d.to_string(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    assert_eq!(names, vec![sni.to_string()]);
    for ext in cert.extensions() {
        assert_ne!(
            ext.oid,
            x509_parser::oid_registry::OID_PKIX_AUTHORITY_INFO_ACCESS,
            "leaf has AIA"
        );
        assert_ne!(
            ext.oid,
            x509_parser::oid_registry::OID_X509_EXT_CRL_DISTRIBUTION_POINTS,
            "leaf has CRL DP"
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    assert!(
        (now - 3600 - 60..=now - 3600 + 60).contains(&not_before),
        "backdated 1 h"
    );
    assert!(
        (now + 24 * 3600 - 60..=now + 24 * 3600 + 60).contains(&not_after),
        "valid 24 h"
    );
    assert!(!cert.is_ca());
}

#[tokio::test]
async fn intercepts_http1_to_a_verified_upstream() {
    let pki = TestPki::new("upstream");
    let server = echo_https_server(pki.server_config(&[SNOWFLAKE_HOST], &[b"http/1.1"])).await;
    let mut proxy = start(
        test_config(),
        Some(server.addr),
        Some(ProcessIdentity {
            pid: 4242,
            tgid: 4242,
            comm: "agent".into(),
            ..Default::default()
        }),
        trusting(&pki),
    );

    let tls = proxy.tls_client(SNOWFLAKE_HOST, &[b"http/1.1"]).await;
    let client_addr = tls.get_ref().0.local_addr().unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    check_leaf(&leaf, SNOWFLAKE_HOST);
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    let request = Request::post("/queries/v1/query-request?requestId=1")
        .header("host", SNOWFLAKE_HOST)
        .body(Full::new(Bytes::from_static(b"{\"sqlText\":\"select 1\"}")))
        .unwrap();
    let (parts, body) = http1_request(tls, request).await;
    assert_eq!(parts.status, 200);
    assert_eq!(
        body,
        format!("HTTP/1.1 {SNOWFLAKE_HOST} - /queries/v1/query-request?requestId=1 22")
    );

    let record = proxy.next_record().await;
    assert_eq!(record.client, client_addr);
    assert_eq!(record.decision, Decision::Intercept);
    assert!(record.upstream_verified);
    assert_eq!(record.requests, 1);
    assert_eq!(record.negotiated_alpn.as_deref(), Some("http/1.1"));
    assert_eq!(record.process.as_ref().unwrap().comm, "agent");
    assert_eq!(record.close_reason, CloseReason::Eof);
    assert!(record.bytes_up > 22 && record.bytes_down > 22);
    let line = serde_json::to_string(&record).unwrap();
    assert!(line.contains("\"decision\":\"intercept\""), "{line}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn http2_client_to_http1_upstream_and_back() {
    let pki = TestPki::new("upstream");

    // h2 client → HTTP/1.1-only upstream: :authority becomes Host.
    let h1_server = echo_https_server(pki.server_config(&[SNOWFLAKE_HOST], &[b"http/1.1"])).await;
    let mut proxy = start(test_config(), Some(h1_server.addr), None, trusting(&pki));
    let tls = proxy.tls_client(SNOWFLAKE_HOST, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let request = Request::get(format!("https://{SNOWFLAKE_HOST}/session/heartbeat?n={i}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            format!("HTTP/1.1 {SNOWFLAKE_HOST} - /session/heartbeat?n={i} 0")
        );
    }
    drop(sender);
    let record = proxy.next_record().await;
    assert_eq!(record.requests, 3);
    assert_eq!(record.negotiated_alpn.as_deref(), Some("h2"));
    assert!(record.upstream_verified);
    // One upstream connection for all three requests.
    assert_eq!(h1_server.handshakes.load(Ordering::SeqCst), 1);
    proxy.shutdown().await;

    // HTTP/1.1 client → h2 upstream: Host becomes :authority.
    let h2_server = echo_https_server(pki.server_config(&[SNOWFLAKE_HOST], &[b"h2"])).await;
    let mut proxy = start(test_config(), Some(h2_server.addr), None, trusting(&pki));
    let tls = proxy.tls_client(SNOWFLAKE_HOST, &[b"http/1.1"]).await;
    let request = Request::get("/monitoring/queries/01")
        .header("host", SNOWFLAKE_HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (parts, body) = http1_request(tls, request).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.version, http::Version::HTTP_11);
    assert_eq!(
        body,
        format!("HTTP/2.0 - {SNOWFLAKE_HOST} /monitoring/queries/01 0")
    );
    assert!(proxy.next_record().await.upstream_verified);
    proxy.shutdown().await;
}

async fn assert_upstream_refused(
    server_config: Arc<rustls::ServerConfig>,
    trusted: &TestPki,
    expect: &str,
) {
    let server = echo_https_server(server_config).await;
    let mut proxy = start(test_config(), Some(server.addr), None, trusting(trusted));
    let tls = proxy.tls_client(SNOWFLAKE_HOST, &[b"http/1.1"]).await;
    let request = Request::post("/session/v1/login-request")
        .header("host", SNOWFLAKE_HOST)
        .body(Full::new(Bytes::from_static(
            b"{\"data\":{\"PASSWORD\":\"secret\"}}",
        )))
        .unwrap();
    let (parts, body) = http1_request(tls, request).await;
    assert_eq!(parts.status, 502);
    assert_eq!(parts.headers["x-tollgate-error"], "upstream_tls");
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.contains("not forwarded"), "{text}");
    assert!(text.contains(expect), "{text}");

    let record = proxy.next_record().await;
    assert_eq!(record.decision, Decision::Intercept);
    assert!(!record.upstream_verified);
    assert!(
        matches!(&record.close_reason, CloseReason::UpstreamTls(why) if why.contains(expect)),
        "{}",
        record.close_reason
    );
    assert!(record
        .close_reason
        .to_string()
        .starts_with("upstream_tls: "));
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        0,
        "upstream saw a request"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn untrusted_upstream_certificate_gets_502() {
    let trusted = TestPki::new("trusted");
    let rogue = TestPki::new("rogue");
    assert_upstream_refused(
        rogue.server_config(&[SNOWFLAKE_HOST], &[b"http/1.1"]),
        &trusted,
        "UnknownIssuer",
    )
    .await;
}

#[tokio::test]
async fn mismatched_upstream_name_gets_502() {
    let trusted = TestPki::new("trusted");
    assert_upstream_refused(
        trusted.server_config(&["other.example.com"], &[b"http/1.1"]),
        &trusted,
        "not valid for name",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_rejections_leave_other_connections_alone() {
    let pki = TestPki::new("upstream");
    let server = echo_https_server(pki.server_config(&[SNOWFLAKE_HOST], &[b"http/1.1"])).await;
    let config = support::test_config();
    let config = tollgate_proxy::ProxyConfig {
        gate: SniGate::snowflake_defaults(GateAction::Block),
        other_protocols: GateAction::Block,
        peek_timeout: Duration::from_millis(300),
        ..config
    };
    let mut proxy = start(config, Some(server.addr), None, trusting(&pki));

    // A healthy intercepted connection, kept open across the bad ones.
    let tls = proxy.tls_client(SNOWFLAKE_HOST, &[b"http/1.1"]).await;
    let healthy = tls.get_ref().0.local_addr().unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = || {
        Request::get("/session/heartbeat")
            .header("host", SNOWFLAKE_HOST)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(sender.send_request(get()).await.unwrap().status(), 200);

    let hello = client_hello_bytes("example.org");
    let mut bad_hello = client_hello_bytes(SNOWFLAKE_HOST);
    bad_hello[5] = 2; // a ServerHello where the ClientHello should be
                      // (what the client sends, whether it closes after, the reason's kind and how its detail
                      // starts)
    let cases: Vec<(Vec<u8>, bool, &str, &str)> = vec![
        (hello.clone(), false, "blocked_by_policy", ""),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
            "not_tls",
            "http blocked",
        ),
        (
            hello[..60].to_vec(),
            true,
            "malformed_client_hello",
            "client closed the connection after 60 bytes",
        ),
        (
            bad_hello,
            false,
            "malformed_client_hello",
            "first handshake message has type 2",
        ),
        (Vec::new(), false, "peek_timeout", ""),
    ];
    let mut clients = Vec::new();
    for (bytes, close_after, _, _) in &cases {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        if *close_after {
            stream.shutdown().await.unwrap();
        }
        clients.push(stream);
    }
    let mut pending = Vec::new();
    for ((_, _, reason, detail), mut stream) in cases.iter().zip(clients) {
        let addr = stream.local_addr().unwrap();
        assert!(
            closed_by_peer(&mut stream).await,
            "{reason}: connection left open"
        );
        let record = proxy.record_for(addr, &mut pending).await;
        assert_eq!(
            record.close_reason.kind(),
            *reason,
            "{}",
            record.close_reason
        );
        assert!(
            record
                .close_reason
                .detail()
                .unwrap_or_default()
                .starts_with(detail),
            "{} !~ {reason}: {detail}",
            record.close_reason
        );
        // Blocked by the gate: an unlisted name, or plain HTTP (other protocols are blocked
        // here).
        let expected = if *reason == "blocked_by_policy" || *reason == "not_tls" {
            Decision::Block
        } else {
            Decision::Reject
        };
        assert_eq!(record.decision, expected, "{reason}");
    }

    // The healthy connection carried on.
    assert_eq!(sender.send_request(get()).await.unwrap().status(), 200);
    drop(sender);
    let record = proxy.record_for(healthy, &mut pending).await;
    assert_eq!(record.requests, 2);
    assert_eq!(record.close_reason, CloseReason::Eof);
    proxy.shutdown().await;
}

#[tokio::test]
async fn loops_and_missing_destinations_are_refused() {
    let pki = TestPki::new("upstream");
    let own = ProcessIdentity {
        tgid: std::process::id(),
        pid: std::process::id(),
        ..Default::default()
    };
    let mut proxy = start(
        test_config(),
        Some("127.0.0.1:9".parse().unwrap()),
        Some(own),
        trusting(&pki),
    );
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(closed_by_peer(&mut stream).await);
    assert_eq!(
        proxy.next_record().await.close_reason,
        CloseReason::LoopDetected
    );
    proxy.shutdown().await;

    let mut proxy = start(test_config(), None, None, trusting(&pki));
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(closed_by_peer(&mut stream).await);
    let record = proxy.next_record().await;
    assert_eq!(
        record.close_reason,
        CloseReason::NoOriginalDestination(None)
    );
    assert_eq!(record.decision, Decision::Reject);
    proxy.shutdown().await;
}

#[tokio::test]
async fn connection_limit_holds_the_next_client_back() {
    // A plain TCP echo server as the pass-through destination.
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        answer_probe(&echo, "echo.example.org").await;
        loop {
            let (mut s, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let config = tollgate_proxy::ProxyConfig {
        max_connections: 1,
        ..test_config()
    };
    let mut proxy = start(
        config,
        Some(echo_addr),
        None,
        trusting(&TestPki::new("unused")),
    );
    let hello = client_hello_bytes("echo.example.org");

    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    first.write_all(&hello).await.unwrap();
    let mut buf = vec![0u8; hello.len()];
    first.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, hello);

    let mut second = TcpStream::connect(proxy.addr).await.unwrap();
    second.write_all(&hello).await.unwrap();
    let waited =
        tokio::time::timeout(Duration::from_millis(500), second.read_exact(&mut buf)).await;
    assert!(
        waited.is_err(),
        "second client served while the first held the only slot"
    );
    // Not merely slow: not accepted at all while the slot was taken.
    assert_eq!(proxy.accepted(), 1, "second client accepted over the limit");

    drop(first);
    tokio::time::timeout(Duration::from_secs(5), second.read_exact(&mut buf))
        .await
        .expect("second client never served")
        .unwrap();
    assert_eq!(buf, hello);
    drop(second);
    assert_eq!(proxy.next_record().await.close_reason, CloseReason::Eof);
    assert_eq!(proxy.next_record().await.close_reason, CloseReason::Eof);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_and_writes_every_record() {
    let pki = TestPki::new("upstream");
    let server = echo_https_server(pki.server_config(&[SNOWFLAKE_HOST], &[b"http/1.1"])).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("connections.jsonl");
    let records = RecordSink::file(&path).unwrap();
    let config = tollgate_proxy::ProxyConfig {
        shutdown_grace: Duration::from_millis(500),
        ..test_config()
    };
    let (_unused, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut proxy = start_with_sink(config, Some(server.addr), None, trusting(&pki), records, rx);

    // An idle keep-alive intercepted connection: closed gracefully at drain.
    let tls = proxy.tls_client(SNOWFLAKE_HOST, &[b"http/1.1"]).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let client_conn = tokio::spawn(conn);
    let request = Request::get("/")
        .header("host", SNOWFLAKE_HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);

    // A silent client that would otherwise wait out the peek timeout: aborted after the grace.
    // It must be accepted (and waiting in the peek) before shutdown starts, or it would stay
    // in the backlog and be refused instead.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    proxy.wait_accepted(2).await;

    let started = std::time::Instant::now();
    let stats = proxy.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert_eq!(stats.accepted, 2);
    assert_eq!(stats.aborted, 1);
    assert_eq!(stats.intercepted, 1);
    assert!(client_conn.await.unwrap().is_ok());
    assert!(closed_by_peer(&mut silent).await);

    // New connections are refused once run has returned.
    assert!(TcpStream::connect(proxy.addr).await.is_err());

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let reasons: Vec<&str> = lines
        .iter()
        .map(|l| l["close_reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, vec!["shutdown", "shutdown"]);
    for line in &lines {
        let started_at = line["started_at"].as_str().unwrap();
        assert_eq!(
            started_at.len(),
            "2024-01-01T00:00:00.000000Z".len(),
            "{started_at}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );
}

/// One heartbeat over an intercepted TLS stream, answered 200 by the upstream; the stream is
/// closed afterwards.
async fn heartbeat_over(tls: tokio_rustls::client::TlsStream<TcpStream>) {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = Request::get("/session/heartbeat")
        .header("host", SNOWFLAKE_HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(get).await.unwrap().status(), 200);
}

/// Domain fronting: TLS to a destination that presents a Snowflake certificate, under another
/// name or none, is blocked — and once an intercepted connection has shown where Snowflake
/// lives, any other name to that address is blocked without a probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fronting_to_a_snowflake_destination_is_blocked() {
    let pki = TestPki::new("upstream");
    let server = echo_https_server(pki.server_config(&[SNOWFLAKE_HOST], &[b"http/1.1"])).await;
    let mut proxy = start(test_config(), Some(server.addr), None, trusting(&pki));

    let no_sni = {
        // An IP address as the server name: rustls sends no SNI.
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into()),
        )
        .unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    };
    let mut pending = Vec::new();
    for (hello, sni) in [
        (
            client_hello_bytes("cdn.example.net"),
            Some("cdn.example.net"),
        ),
        (no_sni, None),
    ] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let addr = stream.local_addr().unwrap();
        stream.write_all(&hello).await.unwrap();
        assert!(closed_by_peer(&mut stream).await, "{sni:?}: left open");
        let record = proxy.record_for(addr, &mut pending).await;
        assert_eq!(record.decision, Decision::Block, "{sni:?}");
        assert!(
            matches!(&record.close_reason, CloseReason::BlockedByPolicy(why) if why.contains("fronting")),
            "{sni:?}: {}",
            record.close_reason
        );
        assert_eq!(record.sni.as_deref(), sni);
    }
    // The probes never completed a handshake; nothing was relayed.
    assert_eq!(server.handshakes.load(Ordering::SeqCst), 0);

    // An intercepted connection to the same destination teaches the gate its address.
    heartbeat_over(proxy.tls_client(SNOWFLAKE_HOST, &[b"http/1.1"]).await).await;
    let record = proxy.next_record().await;
    assert_eq!(record.decision, Decision::Intercept);
    assert!(record.upstream_verified);

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let addr = stream.local_addr().unwrap();
    stream
        .write_all(&client_hello_bytes("pypi.org"))
        .await
        .unwrap();
    assert!(closed_by_peer(&mut stream).await);
    let record = proxy.record_for(addr, &mut pending).await;
    assert_eq!(record.decision, Decision::Block);
    assert!(
        matches!(&record.close_reason, CloseReason::BlockedByPolicy(why) if why.contains("Snowflake address")),
        "{}",
        record.close_reason
    );
    proxy.shutdown().await;
}

/// A forward proxy on 127.0.0.1 that answers `CONNECT` (any target) with a tunnel to `to`, and
/// counts the tunnels it opened.
async fn connect_proxy(
    to: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tunnels = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = tunnels.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if client.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    head.push(b[0]);
                }
                assert!(head.starts_with(b"CONNECT "), "{head:?}");
                count.fetch_add(1, Ordering::SeqCst);
                let mut upstream = TcpStream::connect(to).await.unwrap();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, tunnels)
}

/// An HTTP CONNECT tunnel to a Snowflake name is answered by Tollgate and intercepted; the
/// upstream goes through the client's proxy. A tunnel to a storage host is refused, and TLS
/// for another name inside a tunnel to Snowflake is blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_meet_the_gate() {
    let pki = TestPki::new("upstream");
    let server = echo_https_server(pki.server_config(&[SNOWFLAKE_HOST], &[b"http/1.1"])).await;
    let (proxy_addr, tunnels) = connect_proxy(server.addr).await;
    let mut proxy = start(test_config(), Some(proxy_addr), None, trusting(&pki));
    let mut pending = Vec::new();

    let proxy_listener = proxy.addr;
    let open = |target: &'static str| {
        let addr = proxy_listener;
        async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(
                format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                if tcp.read_exact(&mut b).await.is_err() {
                    break;
                }
                head.push(b[0]);
            }
            (tcp, String::from_utf8_lossy(&head).into_owned())
        }
    };

    // Intercepted through the tunnel.
    let (tcp, reply) = open("acct.snowflakecomputing.com:443").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let client_addr = tcp.local_addr().unwrap();
    heartbeat_over(proxy.tls_over(tcp, SNOWFLAKE_HOST).await.unwrap()).await;
    let record = proxy.record_for(client_addr, &mut pending).await;
    assert_eq!(record.decision, Decision::Intercept, "{record:?}");
    assert_eq!(record.protocol.as_deref(), Some("http_connect"));
    assert_eq!(
        record.tunnel.as_deref(),
        Some("http_connect acct.snowflakecomputing.com:443")
    );
    assert!(record.upstream_verified);
    assert!(
        tunnels.load(Ordering::SeqCst) >= 1,
        "the upstream did not use the proxy"
    );

    // A storage host as the tunnel's target: refused before it opens.
    let (mut tcp, reply) = open("sfc-results.s3.us-west-2.amazonaws.com:443").await;
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    let client_addr = tcp.local_addr().unwrap();
    assert!(closed_by_peer(&mut tcp).await);
    let record = proxy.record_for(client_addr, &mut pending).await;
    assert_eq!(record.decision, Decision::Block);
    assert!(
        matches!(&record.close_reason, CloseReason::BlockedByPolicy(why) if why.contains("storage")),
        "{}",
        record.close_reason
    );

    // TLS for another name inside a tunnel to Snowflake: blocked.
    let (mut tcp, reply) = open("acct.snowflakecomputing.com:443").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let client_addr = tcp.local_addr().unwrap();
    tcp.write_all(&client_hello_bytes("cdn.example.net"))
        .await
        .unwrap();
    assert!(closed_by_peer(&mut tcp).await);
    let record = proxy.record_for(client_addr, &mut pending).await;
    assert_eq!(record.decision, Decision::Block, "{record:?}");
    assert_eq!(record.sni.as_deref(), Some("cdn.example.net"));
    proxy.shutdown().await;
}
