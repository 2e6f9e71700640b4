//! The ways around the gate, each tried as an attacker inside the agents' cgroup would, against
//! Tollgate's defaults and a policy that masks PHI for the agent's user (`policies/masking.yaml`).
//!
//! Every test is the attack itself — real sockets, the real Python driver where a driver is
//! involved, the real kernel redirect — and asserts that no seeded PHI value reaches the
//! attacker and that the attempt is recorded. Where an attack is only meaningful if it would
//! work without Tollgate, a control runs it from a cgroup that is not redirected and shows the
//! PHI it gets there, so a test cannot pass by seeing nothing.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use regex::Regex;
use serde_json::Value;
use tollgate_e2e::snowflake::{
    attack_command, run_attack, run_python, AgentEnv, Standin, StandinOpts, Statement,
};
use tollgate_e2e::{unique_tag, Cgroup, Scratch, Service, TestHost, Tollgate, TollgateOpts};

struct World {
    tollgate: Option<Tollgate>,
    standin: Standin,
    agents: Cgroup,
    direct: Cgroup,
    _top: Cgroup,
    scratch: Scratch,
    host: TestHost,
}

fn policy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies/masking.yaml")
}

fn world(what: &str, start_tollgate: bool) -> Result<World> {
    let host = TestHost::create()?;
    let scratch = Scratch::new(what)?;
    let standin = Standin::start(&host, &scratch, StandinOpts::default())?;
    let top = Cgroup::create(&format!("tollgate-e2e-{what}-{}", unique_tag()))?;
    let agents = top.child("agents")?;
    let direct = top.child("direct")?;
    let mut w = World {
        tollgate: None,
        standin,
        agents,
        direct,
        _top: top,
        scratch,
        host,
    };
    if start_tollgate {
        w.start_tollgate()?;
    }
    Ok(w)
}

impl World {
    /// Tollgate on its documented defaults: every port redirected, other TLS passed through.
    fn start_tollgate(&mut self) -> Result<()> {
        self.tollgate = Some(Tollgate::start(
            &self.scratch,
            TollgateOpts {
                cgroups: vec![self.agents.path.clone()],
                ports: vec![],
                upstream_roots: Some(self.standin.ca_pem()),
                extra: [
                    vec!["--policy".into(), policy().display().to_string()],
                    self.standin.tollgate_args(),
                ]
                .concat(),
                ..TollgateOpts::default()
            },
        )?);
        Ok(())
    }

    fn tollgate(&self) -> &Tollgate {
        self.tollgate.as_ref().expect("tollgate started")
    }

    /// The agent's environment through Tollgate (its CA trusted, as an installer would).
    fn via(&self) -> AgentEnv {
        let mut env = self.standin.agent_env(&self.scratch);
        env.ca_roots.push(self.tollgate().ca_cert());
        env.timeout = Duration::from_secs(120);
        env
    }

    fn direct_env(&self) -> AgentEnv {
        let mut env = self.standin.agent_env(&self.scratch);
        env.timeout = Duration::from_secs(120);
        env
    }

    fn standin_saw(&self, needle: &str) -> bool {
        self.standin.requests().iter().any(|r| {
            r["sqlText"].as_str().is_some_and(|s| s.contains(needle))
                || r["path"].as_str().is_some_and(|s| s.contains(needle))
        })
    }

    fn context(&self) -> String {
        match &self.tollgate {
            Some(t) => format!("Tollgate log:\n{}", tail(&t.log(), 60)),
            None => String::new(),
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Seeded PHI (tests/standin/seed.sql): the three patients' names and SSNs, and the bulk
/// table's SSN shape.
fn phi_found(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for needle in [
        "900-00-0001",
        "900-00-0002",
        "900-00-0003",
        "Alice Synthetic",
        "Bob Synthetic",
        "Carol Synthetic",
    ] {
        if text.contains(needle) {
            found.push(needle.to_owned());
        }
    }
    // Values sit back to back in Arrow buffers: no word boundaries to rely on.
    let bulk = Regex::new(r"7\d\d-[12]\d-\d{4}").expect("regex");
    found.extend(bulk.find_iter(text).take(3).map(|m| m.as_str().to_owned()));
    found
}

fn assert_no_phi(lines: &[Value], what: &str, w: &World) {
    for l in lines {
        let got = l["received"].as_str().unwrap_or_default();
        let found = phi_found(got);
        assert!(
            found.is_empty(),
            "{what}: PHI reached the attacker: {found:?} in {l}\n{}",
            w.context()
        );
    }
}

fn step<'a>(lines: &'a [Value], name: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["step"] == name).collect()
}

/// 1. Path confusion: percent-encoded and dot-segment spellings of a result path with a
///    pre-signed-looking query must not be forwarded as a chunk download.
#[test]
fn path_confusion_never_serves_an_unmasked_result() -> Result<()> {
    let w = world("bypass-path", true)?;
    let lines = run_attack(&w.agents.path, &w.via(), "path_confusion", &[])?;
    let masked = step(&lines, "masked_query");
    assert_eq!(masked.len(), 1, "{lines:?}\n{}", w.context());
    // The query itself came back masked (the result exists and is reachable).
    let rows = masked[0]["received"].as_str().unwrap_or_default();
    assert!(rows.contains("***-**-0001"), "masked rows: {rows}");
    let gets = step(&lines, "get");
    assert_eq!(gets.len(), 8, "{lines:?}");
    // Every spelling is either read as the result it names — and masked like it — or refused
    // as ambiguous; an encoded slash or `?` is always refused.
    let mut refused = 0;
    for g in &gets {
        let path = g["path"].as_str().unwrap_or_default();
        let got = g["received"].as_str().unwrap_or_default();
        if got.contains("Tollgate refused") {
            refused += 1;
        } else {
            assert!(
                got.contains("***-**-0001"),
                "{path}: neither refused nor masked: {g}\n{}",
                w.context()
            );
        }
        if path.contains("%2F") || path.contains("%3F") {
            assert!(got.contains("Tollgate refused"), "{path}: {g}");
        }
    }
    assert!(refused >= 2, "{lines:?}");
    assert_no_phi(&lines, "path confusion", &w);
    // Each refusal is recorded.
    let logged = w.tollgate().log().matches("request refused").count();
    assert!(
        logged >= refused,
        "{logged} refusals logged\n{}",
        w.context()
    );
    Ok(())
}

/// 2. A join against a derived table of literals is an oracle for a masked column.
#[test]
fn joins_against_constants_are_refused() -> Result<()> {
    let w = world("bypass-join", true)?;
    let oracles = [
        "SELECT a.ID FROM CLINICAL.EHR.PATIENTS a JOIN (SELECT '900-00-0002' AS s) b ON a.SSN = b.s /* tg_oracle_1 */",
        "SELECT a.ID FROM CLINICAL.EHR.PATIENTS a JOIN (VALUES ('900-00-0002')) v(s) ON a.SSN = v.s /* tg_oracle_2 */",
        "WITH g AS (SELECT '900-00-0002' AS s) SELECT a.ID FROM CLINICAL.EHR.PATIENTS a JOIN g ON a.SSN = g.s /* tg_oracle_3 */",
        "SELECT a.ID FROM CLINICAL.EHR.PATIENTS a JOIN (SELECT CONCAT('900-00-', '0002') AS s) b ON a.SSN = b.s /* tg_oracle_4 */",
    ];
    let statements: Vec<Statement> = oracles.iter().map(|s| Statement::sql(s)).collect();
    let results = run_python(&w.agents.path, w.via(), &statements)?;
    assert_eq!(results.len(), oracles.len(), "{results:?}");
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["ok"], false, "oracle {} allowed: {r}", i + 1);
        let msg = r["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("Tollgate denied") && msg.contains("SSN"),
            "oracle {}: {msg}",
            i + 1
        );
        assert!(!w.standin_saw(&format!("tg_oracle_{}", i + 1)));
    }
    // A join of table columns still works (the exception is kept where it is safe).
    let ok = run_python(
        &w.agents.path,
        w.via(),
        &[Statement::sql(
            "SELECT v.ID, p.SSN FROM CLINICAL.EHR.VISITS v JOIN CLINICAL.EHR.PATIENTS p ON v.PATIENT_ID = p.ID ORDER BY v.ID",
        )],
    )?;
    assert_eq!(ok[0]["ok"], true, "{}", ok[0]);
    let rows = ok[0]["rows"].to_string();
    assert!(
        rows.contains("***-**-0001") && phi_found(&rows).is_empty(),
        "{rows}"
    );
    Ok(())
}

/// 3. A connection opened before Tollgate attached is cut when it attaches.
#[test]
fn connections_older_than_the_redirect_are_cut() -> Result<()> {
    let mut w = world("bypass-early", false)?;
    let (mut cmd, stderr) =
        attack_command(&w.agents.path, &w.direct_env(), "early_connection", &[])?;
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().context("spawning the early connection")?;
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line)?;
    let ready: Value = serde_json::from_str(&line).with_context(|| {
        format!(
            "no ready line: {line:?}; stderr: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        )
    })?;
    assert_eq!(ready["step"], "ready");

    w.start_tollgate()?;
    writeln!(stdin, "go")?;
    line.clear();
    out.read_line(&mut line)?;
    let _ = child.wait();
    let query: Value = serde_json::from_str(&line)
        .with_context(|| format!("no query line: {line:?}\n{}", w.context()))?;
    assert_eq!(
        query["ok"],
        false,
        "the old connection still works: {query}\n{}",
        w.context()
    );
    assert_no_phi(std::slice::from_ref(&query), "early connection", &w);
    assert!(
        !w.standin_saw("SELECT ID, NAME, SSN"),
        "the query reached Snowflake"
    );
    let log = w.tollgate().log();
    assert!(
        log.contains("pre-existing") || log.contains("destroyed"),
        "the cut is not reported\n{}",
        w.context()
    );
    Ok(())
}

/// 4. TLS that does not say "Snowflake" to Snowflake's address: another SNI, or none.
#[test]
fn tls_without_a_snowflake_name_is_blocked() -> Result<()> {
    let w = world("bypass-fronting", true)?;
    // Control: without Tollgate the attack reads raw PHI.
    let control = run_attack(
        &w.direct.path,
        &w.direct_env(),
        "fronting",
        &["--sni".into(), "cdn.example.net".into()],
    )?;
    assert!(
        !phi_found(control[0]["received"].as_str().unwrap_or_default()).is_empty(),
        "the attack does not work even without Tollgate: {control:?}"
    );
    for sni in ["cdn.example.net", ""] {
        let lines = run_attack(
            &w.agents.path,
            &w.via(),
            "fronting",
            &["--sni".into(), sni.into()],
        )?;
        assert_eq!(lines[0]["ok"], false, "sni {sni:?}: {}", lines[0]);
        assert_no_phi(&lines, "fronting", &w);
        let expect_sni = (!sni.is_empty()).then(|| sni.to_owned());
        let record = w.tollgate().wait_record(Duration::from_secs(10), |r| {
            r["decision"] == "block" && r["sni"].as_str().map(str::to_owned) == expect_sni
        })?;
        let reason = record["close_reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("fronting") || reason.contains("Snowflake address"),
            "sni {sni:?}: {reason}"
        );
    }
    Ok(())
}

/// 5. Proxies on other ports: an HTTP CONNECT proxy (the real driver through `HTTPS_PROXY`)
///    and a SOCKS5 proxy reach Snowflake only through the gate.
#[test]
fn tunnels_through_proxies_are_gated() -> Result<()> {
    let w = world("bypass-tunnels", true)?;
    let proxy_log = w.scratch.join("tunnel-proxy.jsonl");
    let mut proxy = w.host.command(tollgate_e2e::snowflake::python_bin());
    proxy
        .arg(tollgate_e2e::snowflake::workspace_root().join("tests/standin/tunnel_proxy.py"))
        .args(["--http-port", "3128", "--socks-port", "1080", "--map"])
        .arg(format!("{}={}", w.standin.account_host(), w.host.ip4))
        .arg("--log")
        .arg(&proxy_log);
    let mut proxy = Service::spawn(proxy, &w.scratch.join("tunnel-proxy.log"))?;
    proxy.wait_line(Duration::from_secs(30), |l| l == "tunnel proxy ready")?;

    // The real driver behind an HTTP CONNECT proxy: results masked as on a direct path.
    let mut env = w.via();
    env.extra_env
        .push(("HTTPS_PROXY".into(), format!("http://{}:3128", w.host.ip4)));
    let r = run_python(
        &w.agents.path,
        env,
        &[Statement::sql(
            "SELECT ID, NAME, SSN FROM CLINICAL.EHR.PATIENTS ORDER BY ID",
        )],
    )?;
    assert_eq!(r[0]["ok"], true, "{}\n{}", r[0], w.context());
    let rows = r[0]["rows"].to_string();
    assert!(rows.contains("***-**-0001"), "{rows}");
    assert!(phi_found(&rows).is_empty(), "{rows}");
    let rec = w.tollgate().wait_record(Duration::from_secs(10), |r| {
        r["decision"] == "intercept"
            && r["tunnel"]
                .as_str()
                .is_some_and(|t| t.starts_with("http_connect"))
    })?;
    assert_eq!(rec["protocol"], "http_connect", "{rec}");

    // SOCKS5 by hand, TLS inside unverified: through the gate all the same.
    let lines = run_attack(
        &w.agents.path,
        &w.via(),
        "socks5",
        &["--proxy".into(), format!("{}:1080", w.host.ip4)],
    )?;
    assert_no_phi(&lines, "socks5", &w);
    w.tollgate().wait_record(Duration::from_secs(10), |r| {
        r["tunnel"]
            .as_str()
            .is_some_and(|t| t.starts_with("socks5"))
    })?;
    // Tollgate reached the stand-in through the client's proxy (the route was kept).
    let tunnels = std::fs::read_to_string(&proxy_log).unwrap_or_default();
    assert!(
        tunnels.contains("http_connect") && tunnels.contains("socks5"),
        "{tunnels}"
    );
    Ok(())
}

/// 6. A pre-signed chunk URL obtained outside the agent, fetched from the storage host.
#[test]
fn storage_hosts_are_unreachable_for_agents() -> Result<()> {
    let w = world("bypass-storage", true)?;
    let leak = run_attack(&w.direct.path, &w.direct_env(), "leak_chunks", &[])?;
    let chunk = &leak[0]["chunks"][0];
    let url = chunk["url"]
        .as_str()
        .context("no chunk URL leaked")?
        .to_owned();
    let headers: Vec<String> = chunk["headers"]
        .as_object()
        .map(|h| {
            h.iter()
                .map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let mut args = vec!["--url".to_string(), url.clone()];
    for h in &headers {
        args.extend(["--header".to_string(), h.clone()]);
    }
    // Control: the URL is a real leak of raw PHI where no gate stands.
    let control = run_attack(&w.direct.path, &w.direct_env(), "fetch", &args)?;
    assert!(
        !phi_found(control[0]["received"].as_str().unwrap_or_default()).is_empty(),
        "the leaked URL serves no PHI even directly: {}",
        control[0]["status"]
    );
    let lines = run_attack(&w.agents.path, &w.via(), "fetch", &args)?;
    // The gate closes the connection on its ClientHello: the TLS handshake never completes,
    // so no HTTP status and no byte of an answer, only the handshake cut off.
    let fetched = &lines[0];
    assert!(
        fetched.get("status").is_none() && fetched.get("bytes").is_none(),
        "{fetched}"
    );
    assert_eq!(
        fetched["url_host"],
        w.standin.opts.storage_host.as_str(),
        "{fetched}"
    );
    assert_eq!(fetched["received"], "", "{fetched}");
    assert!(
        fetched["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("SSLEOFError: [SSL: UNEXPECTED_EOF_WHILE_READING]")),
        "{fetched}"
    );
    assert_no_phi(&lines, "storage", &w);
    let record = w.tollgate().wait_record(Duration::from_secs(10), |r| {
        r["sni"].as_str() == Some(w.standin.opts.storage_host.as_str())
    })?;
    assert_eq!(record["decision"], "block", "{record}");
    assert!(
        record["close_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("blocked_by_policy: a Snowflake storage host")),
        "{record}"
    );
    // Nothing went either way: closed on the ClientHello, the storage host never contacted.
    assert_eq!(
        (
            &record["bytes_up"],
            &record["bytes_down"],
            &record["requests"]
        ),
        (&Value::from(0), &Value::from(0), &Value::from(0)),
        "{record}"
    );
    Ok(())
}

/// 7. A chunk ticket is bound to the session that ran the query, not only to the workload.
#[test]
fn chunk_tickets_are_bound_to_the_session() -> Result<()> {
    let w = world("bypass-tickets", true)?;
    let (mut cmd, stderr) = attack_command(&w.agents.path, &w.via(), "hold_chunk", &[])?;
    cmd.stdin(Stdio::piped());
    let mut holder = cmd.spawn().context("spawning the ticket holder")?;
    let mut stdin = holder.stdin.take().expect("stdin");
    let mut out = BufReader::new(holder.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line)?;
    let held: Value = serde_json::from_str(&line).with_context(|| {
        format!(
            "holder: {line:?} {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        )
    })?;
    let url = held["chunk"]["url"]
        .as_str()
        .context("no chunk URL held")?
        .to_owned();
    assert!(url.contains("/tollgate/chunks/"), "{url}");
    // Another process of the same uid and cgroup, with a Snowflake session of its own, and
    // without one: refused.
    for login in [true, false] {
        let mut args = vec!["--url".to_string(), url.clone()];
        if login {
            args.push("--login".into());
        }
        let lines = run_attack(&w.agents.path, &w.via(), "fetch", &args)?;
        let status = lines[0]["status"].as_str().unwrap_or_default();
        assert!(status.contains("403"), "login={login}: {}", lines[0]);
        assert_no_phi(&lines, "ticket", &w);
    }
    assert!(w.tollgate().log().contains("result chunk refused"));
    // The holder's own fetch works (the ticket is live), and is masked.
    writeln!(stdin, "fetch")?;
    line.clear();
    out.read_line(&mut line)?;
    let _ = holder.wait();
    let own: Value = serde_json::from_str(&line)?;
    assert!(
        own["status"].as_str().unwrap_or_default().contains("200"),
        "{own}"
    );
    assert!(own["received"].as_str().unwrap_or_default().len() > 1000);
    assert_no_phi(&[own], "ticket owner", &w);
    Ok(())
}

/// 8. The SQL API is decided with the identity its request carries, and a driver query's
///    result cannot be fetched through it by handle.
#[test]
fn sql_api_is_decided_with_the_identity_it_carries() -> Result<()> {
    let w = world("bypass-sqlapi", true)?;
    let r = run_python(
        &w.agents.path,
        w.via(),
        &[Statement::sql(
            "SELECT ID, NAME, SSN FROM CLINICAL.EHR.PATIENTS ORDER BY ID",
        )],
    )?;
    let qid = r[0]["query_id"].as_str().context("no query id")?.to_owned();
    let lines = run_attack(
        &w.agents.path,
        &w.via(),
        "sql_api",
        &["--handle".into(), qid],
    )?;
    assert_no_phi(&lines, "sql api", &w);
    let submit = step(&lines, "submit");
    let msg = submit[0]["received"].as_str().unwrap_or_default();
    // The masking rule for user agent1 matched: the identity came from the token's claims.
    assert!(
        msg.contains("rule analysts-masked") && msg.contains("user AGENT1"),
        "{msg}"
    );
    let status = step(&lines, "status");
    assert!(
        status[0]["received"]
            .as_str()
            .unwrap_or_default()
            .contains("Tollgate refused this statement handle"),
        "{}",
        status[0]
    );
    if w.standin
        .requests()
        .iter()
        .any(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/api/v2")))
    {
        bail!("a SQL API request reached the stand-in");
    }
    Ok(())
}
