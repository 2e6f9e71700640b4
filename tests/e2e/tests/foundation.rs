//! Foundation end-to-end suite: the real `tollgate` binary, its eBPF programs in the real kernel,
//! agents in real cgroups, upstream servers on test hosts in network namespaces, real TLS.
//!
//! Runs as root (CI does); nothing here is skipped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use tollgate_e2e::{
    run, workspace_bin, Cgroup, Pattern, Scratch, Service, TestHost, Tollgate, TollgateOpts,
};

const SF_NAME: &str = "acct.snowflakecomputing.com";
const OTHER_NAME: &str = "files.example.test";
const MIB: u64 = 1024 * 1024;

/// One test's world: a test host with its own CA, a top cgroup with an agents cgroup (target)
/// and a sibling (not a target).
struct World {
    scratch: Scratch,
    host: TestHost,
    pki: PathBuf,
    // Field order is drop order: children before parents.
    agents: Cgroup,
    sibling: Cgroup,
    top: Cgroup,
}

fn testkit() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tollgate-testkit"))
}

impl World {
    fn new() -> Result<Self> {
        let scratch = Scratch::new("e2e")?;
        let host = TestHost::create()?;
        let pki = scratch.join("pki");
        gen_ca(&pki, &[SF_NAME, OTHER_NAME])?;
        let top = Cgroup::create(&format!("tollgate-e2e-{}", tollgate_e2e::unique_tag()))?;
        let agents = top.child("agents")?;
        let sibling = top.child("sibling")?;
        Ok(World {
            scratch,
            host,
            pki,
            agents,
            sibling,
            top,
        })
    }

    /// A testkit server on the test host.
    fn serve(&self, mode: &str, listen: &[SocketAddr], extra: &[&str]) -> Result<Service> {
        self.serve_with(&self.pki, mode, listen, extra)
    }

    fn serve_with(
        &self,
        pki: &std::path::Path,
        mode: &str,
        listen: &[SocketAddr],
        extra: &[&str],
    ) -> Result<Service> {
        let mut c = self.host.command(testkit());
        c.args(["serve", "--mode", mode])
            .arg("--cert")
            .arg(pki.join("server.pem"))
            .arg("--key")
            .arg(pki.join("server.key"))
            .args(extra);
        for l in listen {
            c.arg("--listen").arg(l.to_string());
        }
        let log = self
            .scratch
            .join(&format!("serve-{}.log", tollgate_e2e::unique_tag()));
        let mut s = Service::spawn(c, &log)?;
        for _ in listen {
            s.wait_line(Duration::from_secs(10), |l| l.contains("listening"))?;
        }
        Ok(s)
    }

    fn tollgate(&self, opts: TollgateOpts) -> Result<Tollgate> {
        Tollgate::start(
            &self.scratch,
            TollgateOpts {
                cgroups: if opts.cgroups.is_empty() {
                    vec![self.agents.path.clone()]
                } else {
                    opts.cgroups
                },
                upstream_roots: opts.upstream_roots.or(Some(self.pki.join("ca.pem"))),
                // These tests speak plain HTTP to test servers on intercepted names, not the
                // Snowflake protocol: let the Snowflake layer forward what it does not know.
                extra: [
                    vec!["--unknown-endpoints".to_string(), "forward".to_string()],
                    opts.extra,
                ]
                .concat(),
                ..opts
            },
        )
    }
}

fn gen_ca(dir: &std::path::Path, names: &[&str]) -> Result<()> {
    run(Command::new(testkit())
        .arg("gen-ca")
        .arg("--dir")
        .arg(dir)
        .arg("--names")
        .arg(names.join(",")))?;
    Ok(())
}

/// Runs a testkit client inside `cg`; returns (pid, its JSON report).
fn client(cg: &Cgroup, args: &[&str]) -> Result<(u32, Value)> {
    client_in(&cg.path, args)
}

fn client_in(cgroup: &std::path::Path, args: &[&str]) -> Result<(u32, Value)> {
    let mut c = Command::new(testkit());
    c.arg("client").args(args).stdout(Stdio::piped());
    tollgate_e2e::place_in_cgroup(cgroup, &mut c);
    let child = c.spawn().context("spawning the testkit client")?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    let line = String::from_utf8_lossy(&out.stdout);
    let v: Value =
        serde_json::from_str(line.trim()).with_context(|| format!("client printed {line:?}"))?;
    Ok((pid, v))
}

fn addr(a: SocketAddr) -> String {
    a.to_string()
}

/// The position of a record's connection in the order Tollgate accepted connections: record
/// ids are `<start time>-<n>` with `n` counting accepts from 1, whatever order the records
/// are written in. So a record with `n = k` proves that exactly `k - 1` connections were
/// accepted before it, including any whose record is not written yet.
fn accept_seq(rec: &Value) -> u64 {
    rec["id"]
        .as_str()
        .and_then(|id| id.rsplit_once('-'))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("record without a `<start>-<n>` id: {rec}"))
}

#[test]
fn passthrough_is_byte_exact_both_ways_and_recorded() -> Result<()> {
    let w = World::new()?;
    let size = 100 * MIB;
    let size_s = size.to_string();
    let server = w.serve(
        "stream",
        &[w.host.v4(443)],
        &["--send-bytes", &size_s, "--seed", "2"],
    )?;
    let tg = w.tollgate(TollgateOpts::default())?;
    let (pid, r) = client(
        &w.agents,
        &[
            "--connect",
            &addr(w.host.v4(443)),
            "--sni",
            OTHER_NAME,
            "--ca",
            w.pki.join("ca.pem").to_str().unwrap(),
            "--send-bytes",
            &size_s,
            "--seed",
            "1",
            "--timeout-ms",
            "120000",
        ],
    )?;
    assert_eq!(r["ok"], true, "client: {r}");
    assert_eq!(r["recv_bytes"], size);
    assert_eq!(
        r["recv_sha256"],
        Pattern::sha256(2, size),
        "server→client bytes differ"
    );
    let mut server = server;
    let line = server.wait_line(Duration::from_secs(30), |l| l.contains("\"stream\""))?;
    let s: Value = serde_json::from_str(&line)?;
    assert_eq!(s["recv_bytes"], size);
    assert_eq!(
        s["recv_sha256"],
        Pattern::sha256(1, size),
        "client→server bytes differ"
    );

    let rec = tg.wait_record(Duration::from_secs(10), |r| r["decision"] == "passthrough")?;
    assert_eq!(rec["original_dst"], addr(w.host.v4(443)), "{rec}");
    assert_eq!(rec["sni"], OTHER_NAME);
    assert_eq!(rec["process"]["tgid"], pid, "{rec}");
    assert_eq!(rec["process"]["uid"], 0);
    assert_eq!(rec["process"]["comm"], "tollgate-testki");
    assert!(
        rec["process"]["cgroup_path"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/agents"),
        "{rec}"
    );
    assert!(rec["bytes_up"].as_u64().unwrap() >= size, "{rec}");
    assert!(rec["bytes_down"].as_u64().unwrap() >= size, "{rec}");
    Ok(())
}

#[test]
fn intercepted_name_gets_minted_leaf_and_verified_upstream() -> Result<()> {
    let w = World::new()?;
    let mut server = w.serve("https", &[w.host.v4(443)], &[])?;
    let tg = w.tollgate(TollgateOpts::default())?;
    for http2 in [false, true] {
        let mut args = vec![
            "--connect".to_string(),
            addr(w.host.v4(443)),
            "--sni".into(),
            SF_NAME.into(),
            "--ca".into(),
            tg.ca_cert().display().to_string(),
            "--mode".into(),
            "http".into(),
            "--path".into(),
            "/status/v1/probe?requestId=1".into(),
        ];
        if http2 {
            args.push("--http2".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The client trusts only Tollgate's CA: success proves the leaf was minted by it.
        let (_, r) = client(&w.agents, &args)?;
        assert_eq!(r["ok"], true, "http2={http2}: {r}\n{}", tg.log());
        assert_eq!(r["status"], 200, "{r}");
        let echo: Value = serde_json::from_str(r["body"].as_str().unwrap())?;
        assert_eq!(echo["path"], "/status/v1/probe?requestId=1");
        assert_eq!(echo["host"], SF_NAME);
        if http2 {
            assert_eq!(r["alpn"], "h2");
        }
    }
    server.wait_line(Duration::from_secs(5), |l| l.contains("\"request\""))?;
    // Records are written when Tollgate sees a connection close, which may be just after the
    // client has exited: wait for both.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let recs = loop {
        let recs: Vec<Value> = tg
            .records()
            .into_iter()
            .filter(|r| r["decision"] == "intercept")
            .collect();
        if recs.len() >= 2 || std::time::Instant::now() > deadline {
            break recs;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(recs.len(), 2, "{recs:#?}");
    for rec in recs {
        assert_eq!(rec["sni"], SF_NAME);
        assert_eq!(rec["upstream_verified"], true, "{rec}");
        assert_eq!(rec["original_dst"], addr(w.host.v4(443)));
        assert_eq!(rec["requests"], 1, "{rec}");
    }
    Ok(())
}

#[test]
fn untrusted_or_mismatched_upstream_certificate_forwards_nothing() -> Result<()> {
    let w = World::new()?;
    // A server whose CA Tollgate does not trust, and one with a certificate for another name.
    let rogue = w.scratch.join("rogue-pki");
    gen_ca(&rogue, &[SF_NAME])?;
    let wrong = w.scratch.join("wrong-pki");
    gen_ca(&wrong, &["not-snowflake.example.test"])?;
    let roots = w.scratch.join("roots.pem");
    std::fs::write(
        &roots,
        [
            std::fs::read(w.pki.join("ca.pem"))?,
            std::fs::read(wrong.join("ca.pem"))?,
        ]
        .concat(),
    )?;
    let rogue_srv = w.serve_with(&rogue, "https", &[w.host.v4(443)], &[])?;
    let wrong_srv = w.serve_with(&wrong, "https", &[w.host.v4(8443)], &[])?;
    let tg = w.tollgate(TollgateOpts {
        ports: vec![443, 8443],
        upstream_roots: Some(roots),
        ..TollgateOpts::default()
    })?;
    for (port, why) in [(443, "untrusted"), (8443, "mismatched")] {
        let (_, r) = client(
            &w.agents,
            &[
                "--connect",
                &addr(w.host.v4(port)),
                "--sni",
                SF_NAME,
                "--ca",
                tg.ca_cert().to_str().unwrap(),
                "--mode",
                "http",
            ],
        )?;
        assert_eq!(r["ok"], true, "{why}: {r}");
        assert_eq!(r["status"], 502, "{why}: {r}");
        let rec = tg.wait_record(Duration::from_secs(5), |r| {
            r["original_dst"] == addr(w.host.v4(port))
        })?;
        let reason = rec["close_reason"].as_str().unwrap_or_default();
        assert!(reason.contains("upstream_tls"), "{why}: {rec}");
        assert_eq!(rec["upstream_verified"], false, "{why}: {rec}");
    }
    for s in [&rogue_srv, &wrong_srv] {
        assert!(
            !s.lines().iter().any(|l| l.contains("\"request\"")),
            "a request reached an unverified upstream: {:?}",
            s.lines()
        );
    }
    Ok(())
}

#[test]
fn sibling_cgroup_and_other_ports_are_not_redirected() -> Result<()> {
    let w = World::new()?;
    let mut server = w.serve("https", &[w.host.v4(443), w.host.v4(8443)], &[])?;
    let tg = w.tollgate(TollgateOpts::default())?;
    // These clients trust only the test host's CA and use an intercepted name: had Tollgate
    // intercepted them, their handshake would have failed.
    let ca = w.pki.join("ca.pem");
    for (cg, port) in [(&w.sibling, 443), (&w.agents, 8443)] {
        let (_, r) = client(
            cg,
            &[
                "--connect",
                &addr(w.host.v4(port)),
                "--sni",
                SF_NAME,
                "--ca",
                ca.to_str().unwrap(),
                "--mode",
                "http",
            ],
        )?;
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["status"], 200, "{r}");
    }
    server.wait_line(Duration::from_secs(5), |l| l.contains("\"request\""))?;
    // The sentinel: a target connection after them, intercepted. Had either of the first two
    // been redirected, Tollgate would have accepted it first.
    let (pid, r) = client(
        &w.agents,
        &[
            "--connect",
            &addr(w.host.v4(443)),
            "--sni",
            SF_NAME,
            "--ca",
            tg.ca_cert().to_str().unwrap(),
            "--mode",
            "http",
        ],
    )?;
    assert_eq!(r["status"], 200, "sentinel: {r}\n{}", tg.log());
    let sentinel = tg.wait_record(Duration::from_secs(10), |r| r["process"]["tgid"] == pid)?;
    assert_eq!(sentinel["decision"], "intercept", "{sentinel}");
    assert_eq!(
        accept_seq(&sentinel),
        1,
        "Tollgate accepted non-target traffic before the sentinel: {:#?}",
        tg.records()
    );
    assert_eq!(
        tg.records().len(),
        1,
        "non-target traffic was recorded: {:#?}",
        tg.records()
    );
    Ok(())
}

#[test]
fn ipv6_and_ipv4_mapped_destinations_are_intercepted() -> Result<()> {
    let w = World::new()?;
    let _server = w.serve("https", &[w.host.v4(443), w.host.v6(443)], &[])?;
    let tg = w.tollgate(TollgateOpts::default())?;
    for dst in [w.host.v6(443), w.host.v4_mapped(443)] {
        let (pid, r) = client(
            &w.agents,
            &[
                "--connect",
                &addr(dst),
                "--sni",
                SF_NAME,
                "--ca",
                tg.ca_cert().to_str().unwrap(),
                "--mode",
                "http",
            ],
        )?;
        assert_eq!(r["ok"], true, "{dst}: {r}\n{}", tg.log());
        assert_eq!(r["status"], 200, "{dst}: {r}");
        let rec = tg.wait_record(Duration::from_secs(5), |r| r["process"]["tgid"] == pid)?;
        assert_eq!(rec["decision"], "intercept", "{rec}");
        let want = match dst {
            SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => addr(w.host.v4(443)),
            other => addr(other),
        };
        assert_eq!(rec["original_dst"], want, "{rec}");
    }
    Ok(())
}

#[test]
fn sigkill_fails_closed_and_restart_resumes_without_duplicate_links() -> Result<()> {
    let w = World::new()?;
    let server = w.serve("https", &[w.host.v4(443)], &[])?;
    let mut tg = w.tollgate(TollgateOpts::default())?;
    let args = |ca: &str| {
        vec![
            "--connect".to_string(),
            addr(w.host.v4(443)),
            "--sni".into(),
            SF_NAME.into(),
            "--ca".into(),
            ca.to_string(),
            "--mode".into(),
            "http".into(),
        ]
    };
    let ca = tg.ca_cert().display().to_string();
    let before = tg.status()?;
    tg.kill();
    let accepts_before = server.lines().len();
    // Trusting both CAs: a direct path would succeed, so only a refusal passes this check.
    let both = w.scratch.join("both.pem");
    std::fs::write(
        &both,
        [std::fs::read(&ca)?, std::fs::read(w.pki.join("ca.pem"))?].concat(),
    )?;
    let a = args(both.to_str().unwrap());
    let (_, r) = client(&w.agents, &a.iter().map(String::as_str).collect::<Vec<_>>())?;
    assert_eq!(
        r["ok"], false,
        "reached upstream while tollgate was down: {r}"
    );
    assert_eq!(r["kind"], "ConnectionRefused", "{r}");
    // The sentinel: a direct connection (a sibling cgroup is not redirected) after the refused
    // one. The server logs accepts in order, so had the refused attempt reached it, its accept
    // would come first.
    let direct = args(w.pki.join("ca.pem").to_str().unwrap());
    let (_, sentinel) = client(
        &w.sibling,
        &direct.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    assert_eq!(sentinel["status"], 200, "sentinel: {sentinel}");
    let echo: Value = serde_json::from_str(sentinel["body"].as_str().unwrap_or_default())
        .with_context(|| format!("sentinel body: {sentinel}"))?;
    let seen: Vec<Value> = server.lines()[accepts_before..]
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let accepts: Vec<&Value> = seen.iter().filter(|l| l["event"] == "accept").collect();
    assert_eq!(
        accepts.first().map(|a| &a["peer"]),
        Some(&echo["peer"]),
        "the upstream saw a connection while tollgate was down: {seen:?}"
    );
    assert_eq!(accepts.len(), 1, "{seen:?}");

    tg.restart()?;
    let a = args(&ca);
    let (_, r) = client(&w.agents, &a.iter().map(String::as_str).collect::<Vec<_>>())?;
    assert_eq!(r["status"], 200, "after restart: {r}");
    let after = tg.status()?;
    for hook in ["connect4", "connect6", "sockops", "getsockopt"] {
        assert_eq!(
            attached(&after, hook),
            attached(&before, hook),
            "{hook}: before {before:#} after {after:#}"
        );
        assert_eq!(attached(&after, hook), vec![1], "{hook}: {after:#}");
    }
    Ok(())
}

/// Per cgroup, how many Tollgate programs the kernel reports attached for `hook`.
fn attached(status: &Value, hook: &str) -> Vec<u64> {
    status["kernel_attachments"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|k| k["hook"] == hook)
                .map(|k| k["tollgate_programs"].as_u64().unwrap_or(u64::MAX))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn tollgate_own_upstream_connections_never_loop() -> Result<()> {
    let w = World::new()?;
    let _server = w.serve("https", &[w.host.v4(443)], &[])?;
    // The target is the top cgroup, and Tollgate itself runs inside it.
    let proxy_cg = w.top.path.join("tollgate");
    let tg = w.tollgate(TollgateOpts {
        cgroups: vec![w.top.path.clone()],
        proxy_cgroup: Some(proxy_cg),
        ..TollgateOpts::default()
    })?;
    let (_, r) = client(
        &w.agents,
        &[
            "--connect",
            &addr(w.host.v4(443)),
            "--sni",
            SF_NAME,
            "--ca",
            tg.ca_cert().to_str().unwrap(),
            "--mode",
            "http",
        ],
    )?;
    assert_eq!(r["status"], 200, "{r}\n{}", tg.log());
    // The sentinel: a second agent connection. A looped upstream connection of the first
    // would have been accepted before it.
    let (pid, r) = client(
        &w.agents,
        &[
            "--connect",
            &addr(w.host.v4(443)),
            "--sni",
            SF_NAME,
            "--ca",
            tg.ca_cert().to_str().unwrap(),
            "--mode",
            "http",
        ],
    )?;
    assert_eq!(r["status"], 200, "sentinel: {r}\n{}", tg.log());
    let sentinel = tg.wait_record(Duration::from_secs(10), |r| r["process"]["tgid"] == pid)?;
    let first = tg.wait_record(Duration::from_secs(10), |r| r["id"] != sentinel["id"])?;
    assert_eq!(
        (accept_seq(&first), accept_seq(&sentinel)),
        (1, 2),
        "one connection, one accept: {:#?}",
        tg.records()
    );
    let recs = tg.records();
    assert_eq!(recs.len(), 2, "one connection, one record: {recs:#?}");
    assert!(
        recs.iter().all(|r| r["decision"] == "intercept"),
        "{recs:#?}"
    );
    Ok(())
}

#[test]
fn bad_input_is_closed_with_a_reason_while_others_carry_on() -> Result<()> {
    let w = World::new()?;
    let size = 4 * MIB;
    let size_s = size.to_string();
    let _server = w.serve("stream", &[w.host.v4(443)], &["--send-bytes", &size_s])?;
    let cfg = w.scratch.join("tollgate.yaml");
    // Other protocols blocked: non-TLS bytes and silence are bad input here, not a protocol
    // to pass through (`intercept.other_protocols: passthrough` is the default).
    std::fs::write(
        &cfg,
        "version: 1\nlimits:\n  peek_timeout_ms: 1500\nintercept:\n  other_protocols: block\n",
    )?;
    let tg = w.tollgate(TollgateOpts {
        extra: vec!["--config".into(), cfg.display().to_string()],
        ..TollgateOpts::default()
    })?;
    let dst = addr(w.host.v4(443));
    // A real ClientHello, captured from the testkit client, to truncate.
    let hello = capture_client_hello()?;
    let cases: Vec<(&str, String, bool)> = vec![
        (
            "not_tls",
            tollgate_e2e::hex(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            true,
        ),
        (
            "truncated",
            tollgate_e2e::hex(&hello[..hello.len() / 2]),
            true,
        ),
        ("garbage", format!("160301002a{}", "ff".repeat(42)), true),
        ("silent", String::new(), false),
    ];
    let good = {
        let agents = w.agents.path.clone();
        let dst = dst.clone();
        let ca = w.pki.join("ca.pem");
        std::thread::spawn(move || {
            client_in(
                &agents,
                &[
                    "--connect",
                    &dst,
                    "--sni",
                    OTHER_NAME,
                    "--ca",
                    ca.to_str().unwrap(),
                    "--send-bytes",
                    "4194304",
                ],
            )
        })
    };
    let mut pids = Vec::new();
    for (name, hex, shutdown) in &cases {
        let mut args = vec!["--connect", &dst, "--mode", "raw", "--raw-hex", hex];
        if *shutdown {
            args.push("--raw-shutdown");
        }
        let (pid, r) = client(&w.agents, &args)?;
        assert_eq!(r["ok"], true, "{name}: {r}");
        assert_eq!(
            r["recv_bytes"], 0,
            "{name}: tollgate answered bad input: {r}"
        );
        pids.push((*name, pid));
    }
    let (_, g) = good.join().unwrap()?;
    assert_eq!(g["ok"], true, "{g}");
    assert_eq!(g["recv_sha256"], Pattern::sha256(2, size));
    for (name, pid) in pids {
        let rec = tg.wait_record(Duration::from_secs(5), |r| r["process"]["tgid"] == pid)?;
        let reason = rec["close_reason"].as_str().unwrap_or_default().to_owned();
        let want = match name {
            "not_tls" => "not_tls",
            "truncated" => "client_hello",
            "garbage" => "client_hello",
            _ => "peek_timeout",
        };
        assert!(reason.contains(want), "{name}: {rec}");
        assert_ne!(rec["decision"], "passthrough", "{name}: {rec}");
        assert_ne!(rec["decision"], "intercept", "{name}: {rec}");
    }
    Ok(())
}

/// Captures the first flight of a TLS client (its ClientHello) on a local listener.
fn capture_client_hello() -> Result<Vec<u8>> {
    use std::io::Read;
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let a = l.local_addr()?;
    let mut c = Command::new(testkit())
        .args(["client", "--connect", &a.to_string(), "--sni", SF_NAME])
        .args(["--mode", "http", "--timeout-ms", "3000"])
        .stdout(Stdio::null())
        .spawn()?;
    let (mut s, _) = l.accept()?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut hdr = [0u8; 5];
    s.read_exact(&mut hdr)?;
    let len = u16::from_be_bytes([hdr[3], hdr[4]]) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    let _ = c.kill();
    let _ = c.wait();
    Ok([hdr.to_vec(), body].concat())
}

#[test]
fn sigterm_drains_and_detach_removes_everything() -> Result<()> {
    let w = World::new()?;
    let _server = w.serve("https", &[w.host.v4(443)], &[])?;
    let mut tg = w.tollgate(TollgateOpts::default())?;
    let ca = tg.ca_cert().display().to_string();
    let (_, r) = client(
        &w.agents,
        &[
            "--connect",
            &addr(w.host.v4(443)),
            "--sni",
            SF_NAME,
            "--ca",
            &ca,
            "--mode",
            "http",
        ],
    )?;
    assert_eq!(r["status"], 200, "{r}");
    let mut svc = tg.service.take().unwrap();
    svc.signal(libc::SIGTERM);
    let status = svc.wait_exit(Duration::from_secs(20))?;
    assert!(
        status.map(|s| s.success()).unwrap_or(false),
        "graceful exit: {status:?}"
    );
    assert_eq!(tg.records().len(), 1, "{:#?}", tg.records());
    // Still pinned after a clean exit: fail closed until an explicit detach.
    let st = tg.status()?;
    assert_eq!(st["pinned"], true, "{st:#}");
    run(Command::new(workspace_bin("tollgate"))
        .arg("detach")
        .arg("--pin-dir")
        .arg(&tg.pin_dir))?;
    let st = tg.status()?;
    assert_eq!(st["pinned"], false, "{st:#}");
    assert!(!tg.pin_dir.exists());
    // Detached: the agent now reaches the test host directly (trusting the test host's CA).
    let (_, r) = client(
        &w.agents,
        &[
            "--connect",
            &addr(w.host.v4(443)),
            "--sni",
            SF_NAME,
            "--ca",
            w.pki.join("ca.pem").to_str().unwrap(),
            "--mode",
            "http",
        ],
    )?;
    assert_eq!(r["status"], 200, "{r}");
    Ok(())
}
