//! `cargo xtask demo`: Tollgate's main job on embedded defaults, end to end on this host.
//!
//! 1. A test host (network namespace) plays Snowflake: the stand-in (fakesnow behind a wrapper
//!    that adds what real Snowflake has — master tokens, renewal, 333333, chunks from a storage
//!    host) serving `demo-acct.snowflakecomputing.com` over real TLS.
//! 2. Unmodified agents — a script on the real `snowflake-connector-python`, and one on the real
//!    Node `snowflake-sdk` — run in an agents cgroup, in a private mount namespace whose
//!    /etc/hosts resolves the real hostnames to the test host. Their host trusts Tollgate's CA
//!    the way an installer sets it up.
//! 3. Tollgate redirects their connections with eBPF, terminates TLS for the Snowflake name
//!    (upstream verified), enforces `policies/demo.yaml` on every statement, masks PHI in the
//!    results by column lineage (inline Arrow and JSON rows, and every result chunk: chunk URLs
//!    point at Tollgate, which fetches the chunk from storage, masks it and streams it back),
//!    caps rows and bytes (`max_rows`, `max_bytes`), and writes a record per connection.
//! 4. Every step is an audit event, spooled (fsync) before it proceeds, hash-chained per
//!    session and shipped to a real ClickHouse; `tollgate replay` and `tollgate audit verify`
//!    show a session and catch an edit made in ClickHouse.
//! 5. Fail closed: Tollgate is SIGKILLed and the agent's next connection is refused (never
//!    direct); a restart resumes interception with no duplicate links.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::Value;
use tollgate_e2e::snowflake::{
    run_attack, run_node, run_python, AgentEnv, Standin, StandinOpts, Statement,
};
use tollgate_e2e::{Cgroup, Scratch, TestHost, Tollgate, TollgateOpts};

fn step(s: &str) {
    println!("\n\x1b[1m== {s}\x1b[0m");
}

fn show(results: &[Value], statements: &[&str]) {
    for (sql, r) in statements.iter().zip(results) {
        println!("   agent> {sql}");
        if r["ok"] == true {
            if let Some(n) = r["nrows"].as_u64() {
                println!(
                    "      ok: {n} rows (sha256 {}), first {}, last {}",
                    r["rows_sha256"].as_str().unwrap_or("?"),
                    r["first"],
                    r["last"]
                );
            } else {
                println!("      ok: {}", r["rows"]);
            }
        } else {
            println!(
                "      {}: {}",
                r["error"].as_str().unwrap_or("error"),
                r["message"].as_str().unwrap_or("")
            );
        }
    }
}

fn print_status(tollgate: &Tollgate) -> Result<()> {
    let mut status = tollgate.cli();
    status.arg("status").arg("--pin-dir").arg(&tollgate.pin_dir);
    print!("{}", tollgate_e2e::run(&mut status)?);
    Ok(())
}

/// Runs the demo.
pub fn demo(root: &Path) -> Result<()> {
    std::env::set_var("TOLLGATE_BIN_DIR", root.join("target/debug"));
    let scratch = Scratch::new("demo")?;

    step("A test host plays Snowflake: demo-acct.snowflakecomputing.com over TLS");
    let host = TestHost::create()?;
    let standin = Standin::start(&host, &scratch, StandinOpts::default())?;
    println!(
        "   test host {} at {}: {} (result chunks from {})",
        host.name,
        host.ip4,
        standin.account_host(),
        standin.opts.storage_host
    );

    step("ClickHouse starts on loopback: the audit trail's store for analysts");
    let clickhouse = tollgate_e2e::clickhouse::ClickHouse::start(&scratch.join("ch"))?;
    println!("   ClickHouse {} (HTTP)", clickhouse.http_url());

    step(
        "Tollgate starts: eBPF redirect on the agents cgroup, TLS interception, policies/demo.yaml, audit spool + ClickHouse",
    );
    let top = Cgroup::create(&format!("tollgate-demo-{}", std::process::id()))?;
    let agents = top.child("agents")?;
    let policy = root.join("policies/demo.yaml");
    let mut tollgate = Tollgate::start(
        &scratch,
        TollgateOpts {
            cgroups: vec![agents.path.clone()],
            upstream_roots: Some(standin.ca_pem()),
            extra: [
                vec![
                    "--policy".into(),
                    policy.display().to_string(),
                    "--clickhouse".into(),
                    clickhouse.http_url(),
                ],
                standin.tollgate_args(),
            ]
            .concat(),
            ..TollgateOpts::default()
        },
    )?;
    println!(
        "   tollgate pid {} on 127.0.0.1:{} and [::1]:{}; agents cgroup {}; CA {}",
        tollgate.service.as_ref().map(|s| s.pid()).unwrap_or(0),
        tollgate.listen_port,
        tollgate.listen_port,
        agents.path.display(),
        tollgate.ca_cert().display()
    );
    let tollgate_ca = tollgate.ca_cert();
    let env = || -> AgentEnv {
        let mut e = standin.agent_env(&scratch);
        e.ca_roots.push(tollgate_ca.clone());
        e
    };

    step("The Python agent (snowflake-connector-python, unmodified) runs its statements");
    let sqls = [
        "SELECT ID, NAME, SSN, DOB, BALANCE FROM PATIENTS ORDER BY ID",
        "SELECT PATIENT_ID, MRN, EMAIL, ZIP FROM PATIENT_CONTACTS ORDER BY PATIENT_ID",
        "SELECT UPPER(SSN) AS S, NAME || '!' AS N FROM PATIENTS ORDER BY ID",
        "SELECT * FROM PATIENTS_BULK ORDER BY ID",
        "SELECT * FROM BULK.PUBLIC.EVENTS ORDER BY ID",
        "SELECT ID FROM PATIENTS WHERE SSN LIKE '900%'",
        "SELECT * FROM CLINICAL.EHR.VISITS",
        "GET @clinical_stage/patients.csv file:///tmp/",
        "INSERT INTO PATIENTS (ID, NAME) VALUES (99, 'Mallory')",
        "SELECT 1; SELECT * FROM VISITS",
    ];
    let statements: Vec<Statement> = sqls
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let st = Statement::sql(s);
            if i == 3 || i == 4 {
                st.digest()
            } else {
                st
            }
        })
        .collect();
    let seen_before = standin.requests().len();
    let out = run_python(&agents.path, env(), &statements)?;
    show(&out, &sqls);
    if out[0]["ok"] != true
        || out[0]["rows"][0][1] != "***"
        || out[3]["nrows"] != 50_000
        || !out[4]["nrows"]
            .as_u64()
            .is_some_and(|n| (1..100_000).contains(&n))
        || out[5]["ok"] != false
        || out[6]["ok"] != false
    {
        bail!("unexpected outcome; tollgate log:\n{}", tollgate.log());
    }
    let reached: Vec<String> = standin.requests()[seen_before..]
        .iter()
        .filter_map(|r| r["sqlText"].as_str().map(str::to_owned))
        .collect();
    println!("   statements that reached Snowflake: {reached:?}");

    step("Masking report per query (Tollgate's log: columns, rule, method, values; chunks served by Tollgate)");
    for line in tollgate
        .log()
        .lines()
        .filter(|l| l.contains("result rewritten"))
    {
        println!("   {}", strip_ansi(line));
    }

    step("The Node agent (snowflake-sdk, unmodified) reads JSON results through the same path: the same tokens");
    let node_sqls = [
        "SELECT ID, NAME, SSN, DOB FROM CLINICAL.EHR.PATIENTS ORDER BY ID",
        "SELECT PATIENT_ID, MRN, EMAIL, ZIP FROM CLINICAL.EHR.PATIENT_CONTACTS ORDER BY PATIENT_ID",
        "SELECT * FROM CLINICAL.EHR.VISITS",
    ];
    let out = run_node(
        &agents.path,
        env(),
        &node_sqls
            .iter()
            .map(|s| Statement::sql(s))
            .collect::<Vec<_>>(),
    )?;
    show(&out, &node_sqls);

    step("The ways around the gate, tried from inside the agents cgroup: each one closed");
    let outside = top.child("outside")?;
    let attack = |name: &str, args: &[String]| -> Result<Value> {
        let lines = run_attack(&agents.path, &env(), name, args)?;
        lines
            .into_iter()
            .last()
            .ok_or_else(|| anyhow::anyhow!("the {name} attack printed nothing"))
    };
    let fronted = attack("fronting", &["--sni".into(), "cdn.example.net".into()])?;
    println!(
        "   TLS to Snowflake's address with SNI cdn.example.net: ok={} ({})",
        fronted["ok"],
        fronted["error"]
            .as_str()
            .unwrap_or("connection closed by Tollgate")
    );
    let oracle = run_python(
        &agents.path,
        env(),
        &[Statement::sql(
            "SELECT a.ID FROM PATIENTS a JOIN (SELECT '900-00-0002' AS s) b ON a.SSN = b.s",
        )],
    )?;
    println!(
        "   a join against a literal as an SSN oracle: {}",
        oracle[0]["message"].as_str().unwrap_or("?")
    );
    let leak = run_attack(
        &outside.path,
        &standin.agent_env(&scratch),
        "leak_chunks",
        &[],
    )?;
    if let Some(url) = leak
        .first()
        .and_then(|l| l["chunks"][0]["url"].as_str())
        .map(str::to_owned)
    {
        let fetched = attack("fetch", &["--url".into(), url])?;
        println!(
            "   a pre-signed chunk URL leaked from outside, fetched from the storage host: {}",
            fetched["error"]
                .as_str()
                .or(fetched["status"].as_str())
                .unwrap_or("?")
        );
    }
    for r in tollgate
        .records()
        .iter()
        .filter(|r| r["decision"] == "block")
    {
        println!(
            "   record: block sni={} ({})",
            r["sni"].as_str().unwrap_or("-"),
            r["close_reason"].as_str().unwrap_or("?")
        );
    }
    drop(outside);

    step("Audit trail: every step spooled (fsync) before it proceeded, hash-chained, shipped to ClickHouse");
    let state = tollgate.state_dir.display().to_string();
    let url = clickhouse.http_url();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let session = loop {
        let s = clickhouse.query(
            "SELECT session_id FROM tollgate.events WHERE kind = 'session_end' AND sf_user = 'agent1' ORDER BY ts LIMIT 1",
        )?;
        if !s.trim().is_empty() {
            break s.trim().to_owned();
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the Python agent's session never reached ClickHouse; tollgate log:\n{}",
                tollgate.log()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    std::thread::sleep(Duration::from_secs(2));
    println!("   $ tollgate replay {session} --clickhouse {url}");
    let mut replay = tollgate.cli();
    replay.args(["replay", &session, "--clickhouse", &url]);
    for line in tollgate_e2e::run(&mut replay)?.lines().take(24) {
        println!("   {line}");
    }
    println!("   $ tollgate audit verify --session {session} --clickhouse {url}");
    let mut verify = tollgate.cli();
    verify.args([
        "audit",
        "verify",
        "--state-dir",
        &state,
        "--clickhouse",
        &url,
        "--session",
        &session,
    ]);
    for line in tollgate_e2e::run(&mut verify)?.lines() {
        println!("   {line}");
    }
    println!("   analysts' view tollgate.masked_values (values masked per column and method):");
    for line in clickhouse
        .query("SELECT column, method, sum(values) FROM tollgate.masked_values GROUP BY column, method ORDER BY column")?
        .lines()
    {
        println!("      {line}");
    }
    println!("   analysts' view tollgate.denied_statements:");
    for line in clickhouse
        .query("SELECT rule_id, sql FROM tollgate.denied_statements ORDER BY ts")?
        .lines()
    {
        println!("      {line}");
    }
    println!("   tampering: a denied decision edited to 'allow' in ClickHouse …");
    clickhouse.query(&format!(
        "ALTER TABLE tollgate.events UPDATE decision = 'allow' WHERE session_id = '{session}' AND kind = 'decision' AND decision = 'deny' SETTINGS mutations_sync = 2"
    ))?;
    let out = verify.output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("   {line}");
    }
    if out.status.success() {
        bail!("tampering went unnoticed");
    }

    step("Connection records (one JSON line per connection; chunk downloads served by Tollgate)");
    std::thread::sleep(Duration::from_millis(300));
    for r in tollgate.records().iter().take(12) {
        println!(
            "   {} {} → {} sni={} pid={} comm={} exe={} cgroup={} verified={} requests={} up={}B down={}B ({})",
            r["decision"].as_str().unwrap_or("?"),
            r["client"].as_str().unwrap_or("?"),
            r["original_dst"].as_str().unwrap_or("?"),
            r["sni"].as_str().unwrap_or("-"),
            r["process"]["tgid"],
            r["process"]["comm"].as_str().unwrap_or("?"),
            r["process"]["exe"].as_str().unwrap_or("?"),
            r["process"]["cgroup_path"].as_str().unwrap_or("?"),
            r["upstream_verified"],
            r["requests"],
            r["bytes_up"],
            r["bytes_down"],
            r["close_reason"].as_str().unwrap_or("?"),
        );
    }

    step("tollgate status");
    print_status(&tollgate)?;

    step("Fail closed: SIGKILL tollgate; the agent cannot connect, and never goes direct");
    tollgate.kill();
    let before = standin.requests().len();
    let mut quick = env();
    quick.timeout = Duration::from_secs(60);
    let out = run_python(&agents.path, quick, &[Statement::sql("SELECT 1")])?;
    show(&out, &["SELECT 1"]);
    if out.first().map(|r| r["ok"] == true).unwrap_or(false) {
        bail!("the agent reached Snowflake while tollgate was down");
    }
    println!(
        "   the stand-in saw {} request(s) meanwhile",
        standin.requests().len() - before
    );

    step("Restart: interception resumes; links are replaced, not duplicated");
    tollgate.restart()?;
    let out = run_python(
        &agents.path,
        env(),
        &[Statement::sql("SELECT COUNT(*) FROM PATIENTS")],
    )?;
    show(&out, &["SELECT COUNT(*) FROM PATIENTS"]);
    print_status(&tollgate)?;

    step("Done: tollgate stops and `tollgate detach` removes the redirect");
    drop(tollgate);
    drop(agents);
    drop(top);
    drop(standin);
    drop(host);
    println!("demo complete");
    Ok(())
}

/// The text of a log line without terminal colours.
pub(crate) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
