//! The audit trail end to end: an unmodified Python agent in a redirected cgroup, Tollgate
//! intercepting, the stand-in on a test host, a real ClickHouse server (chdb's LocalServer,
//! `tests/clickhouse/`), and `tollgate replay` / `tollgate audit verify` as an auditor runs them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tollgate_e2e::clickhouse::ClickHouse;
use tollgate_e2e::snowflake::{run_python, AgentEnv, Standin, StandinOpts, Statement};
use tollgate_e2e::{unique_tag, Cgroup, Scratch, TestHost, Tollgate, TollgateOpts};

const WRITER: &str = "tollgate_writer";
const WRITER_PASSWORD: &str = "writer-secret-1";

struct World {
    tollgate: Tollgate,
    clickhouse: ClickHouse,
    standin: Standin,
    agents: Cgroup,
    _top: Cgroup,
    scratch: Scratch,
    _host: TestHost,
}

fn policy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies/masking.yaml")
}

/// Tollgate shipping to a fresh ClickHouse as an insert-only writer (migrations as `default`).
fn world(what: &str, extra: Vec<String>) -> Result<World> {
    let host = TestHost::create()?;
    let scratch = Scratch::new(what)?;
    let standin = Standin::start(&host, &scratch, StandinOpts::default())?;
    let mut clickhouse = ClickHouse::start(&scratch.join("ch"))?;
    clickhouse.declare_user(WRITER, WRITER_PASSWORD, &["INSERT ON tollgate.events"])?;
    let password_file = scratch.join("writer.password");
    std::fs::write(&password_file, format!("{WRITER_PASSWORD}\n"))?;
    let config = scratch.join("tollgate.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\naudit:\n  clickhouse:\n    url: {}\n    user: {WRITER}\n    password_file: {}\n    admin_user: default\n    batch_max: 2000\n",
            clickhouse.http_url(),
            password_file.display()
        ),
    )?;
    let top = Cgroup::create(&format!("tollgate-e2e-{what}-{}", unique_tag()))?;
    let agents = top.child("agents")?;
    let tollgate = Tollgate::start(
        &scratch,
        TollgateOpts {
            cgroups: vec![agents.path.clone()],
            upstream_roots: Some(standin.ca_pem()),
            extra: [
                vec![
                    "--config".into(),
                    config.display().to_string(),
                    "--policy".into(),
                    policy().display().to_string(),
                ],
                standin.tollgate_args(),
                extra,
            ]
            .concat(),
            ..TollgateOpts::default()
        },
    )?;
    Ok(World {
        tollgate,
        clickhouse,
        standin,
        agents,
        _top: top,
        scratch,
        _host: host,
    })
}

impl World {
    fn env(&self) -> AgentEnv {
        let mut env = self.standin.agent_env(&self.scratch);
        env.ca_roots.push(self.tollgate.ca_cert());
        env
    }

    fn spool(&self) -> PathBuf {
        self.tollgate.state_dir.join("spool")
    }

    fn tollgate_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(Tollgate::bin());
        c.args(args);
        c
    }

    /// Runs a `tollgate` subcommand; (success, stdout, stderr).
    fn cli(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = self
            .tollgate_cmd(args)
            .output()
            .with_context(|| format!("running tollgate {args:?}"))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// `tollgate audit verify` of the spool, or of ClickHouse (one session or everything);
    /// (success, report with stderr appended).
    fn verify(&self, clickhouse: bool, session: Option<&str>) -> Result<(bool, String)> {
        let state = self.tollgate.state_dir.display().to_string();
        let url = self.clickhouse.http_url();
        let mut args = vec!["audit", "verify", "--state-dir", state.as_str()];
        if clickhouse {
            args.extend(["--clickhouse", url.as_str()]);
        }
        if let Some(s) = session {
            args.extend(["--session", s]);
        }
        let (ok, report, err) = self.cli(&args)?;
        Ok((ok, format!("{report}{err}")))
    }

    /// Rows of `sql` as JSON objects (as `default`).
    fn rows(&self, sql: &str) -> Result<Vec<Value>> {
        let text = self
            .clickhouse
            .query(&format!("{sql} FORMAT JSONEachRow"))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).context("a JSONEachRow line"))
            .collect()
    }

    fn count(&self, sql: &str) -> Result<u64> {
        Ok(self.clickhouse.query(sql)?.trim().parse()?)
    }

    /// Waits until ClickHouse holds as many events as the spool.
    fn wait_shipped(&self, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let spooled = spool_events(&self.spool())?.len() as u64;
            let shipped = self
                .count("SELECT count() FROM tollgate.events")
                .unwrap_or(0);
            if shipped >= spooled && spooled > 0 {
                return Ok(shipped);
            }
            if Instant::now() > deadline {
                bail!(
                    "ClickHouse has {shipped} events, the spool {spooled}; tollgate log:\n{}",
                    tail(&self.tollgate.log())
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// What the shipper logs when a batch could not be shipped.
const SHIPPING_FAILED: &str = "audit shipping to ClickHouse failed";

impl World {
    /// Waits until the shipper has caught up with the spool: its cursor (`shipped.json`) has
    /// no batch in flight and is past the spool's last event. Once it has, every event the
    /// spool holds was acknowledged by ClickHouse (or set aside) and no re-sent batch is still
    /// on its way: a duplicate or an extra row would be in ClickHouse by then. Returns the
    /// spool's events at that point.
    fn wait_caught_up(&self, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = spool_events(&self.spool())?;
            let end = events
                .iter()
                .filter_map(|e| e["host_seq"].as_u64())
                .max()
                .map_or(0, |last| last + 1);
            let cursor: Value = std::fs::read(self.spool().join("shipped.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            if cursor["inflight"].is_null() && cursor["next"].as_u64() >= Some(end) && end > 0 {
                return Ok(events);
            }
            if Instant::now() > deadline {
                bail!(
                    "the shipper did not catch up with the spool ({end} events) within {timeout:?}: cursor {cursor}; log:\n{}",
                    tail(&self.tollgate.log())
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Every event in the spool, parsed (the spool's JSON payloads, frames skipped).
fn spool_events(dir: &Path) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort();
    for p in names {
        let data = std::fs::read(&p)?;
        let mut pos = 0usize;
        while pos + 8 <= data.len() {
            let len = u32::from_le_bytes(data[pos..pos + 4].try_into()?) as usize;
            let Some(payload) = data.get(pos + 8..pos + 8 + len) else {
                break;
            };
            out.push(serde_json::from_slice(payload)?);
            pos += 8 + len;
        }
    }
    Ok(out)
}

/// Every byte stored about the trail: the spool files and a dump of the ClickHouse table.
fn stored_bytes(w: &World) -> Result<Vec<u8>> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(w.spool())? {
        let p = e?.path();
        if p.is_file() {
            all.extend(std::fs::read(&p)?);
        }
    }
    all.extend(
        w.clickhouse
            .query("SELECT * FROM tollgate.events FORMAT JSONEachRow")?
            .into_bytes(),
    );
    Ok(all)
}

const PATIENTS: &str = "SELECT ID, NAME, SSN, DOB FROM CLINICAL.EHR.PATIENTS ORDER BY ID";
const BULK: &str = "SELECT ID, NAME, SSN FROM CLINICAL.EHR.PATIENTS_BULK ORDER BY ID";
const PREDICATE: &str =
    "SELECT ID FROM CLINICAL.EHR.PATIENTS WHERE NAME = 'Alice Synthetic' AND SSN LIKE '900-00%'";

#[test]
fn a_session_is_recorded_chained_shipped_replayed_and_tampering_is_detected() -> Result<()> {
    let w = world("audit", vec![])?;
    let tap_dir = w.scratch.join("tap");
    std::fs::create_dir_all(&tap_dir)?;
    let mut env = w.env();
    env.tap = Some(tap_dir.clone());
    let out = run_python(
        &w.agents.path,
        env,
        &[
            Statement::sql(PATIENTS),
            Statement::sql(PREDICATE),
            Statement::sql(BULK).digest(),
        ],
    )?;
    assert_eq!(out[0]["ok"], true, "{}", out[0]);
    assert_eq!(out[1]["ok"], false, "{}", out[1]);
    assert_eq!(out[2]["ok"], true, "{}", out[2]);
    let qid = out[0]["query_id"].as_str().unwrap_or_default().to_owned();
    let bulk_qid = out[2]["query_id"].as_str().unwrap_or_default().to_owned();

    // The agent logged out: its session chain is closed, then everything reaches ClickHouse.
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.count("SELECT count() FROM tollgate.events WHERE kind = 'session_end'")? == 0 {
        if Instant::now() > deadline {
            bail!(
                "no session_end in ClickHouse; log:\n{}",
                tail(&w.tollgate.log())
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    w.wait_shipped(Duration::from_secs(30))?;
    assert_eq!(
        w.count("SELECT count() - uniqExact(event_id) FROM tollgate.events")?,
        0,
        "an event arrived twice"
    );

    let sessions = w.rows(
        "SELECT DISTINCT session_id FROM tollgate.events WHERE kind = 'login' AND decision = 'ok'",
    )?;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let sid = sessions[0]["session_id"].as_str().unwrap().to_owned();
    let events = w.rows(&format!(
        "SELECT seq, kind, decision, rule_id, sf_user, comm, pid, uid, cgroup, query_id, rows, sql, sql_fingerprint, tables, masked_column, masked_method, masked_values, signature, reason \
         FROM tollgate.events WHERE session_id = '{sid}' ORDER BY seq"
    ))?;
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    eprintln!("session {sid}: {kinds:?}");
    // In order, contiguous, starting with the login and ending with the signed end.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64), "{e}");
        assert_eq!(e["sf_user"], "agent1", "{e}");
        assert_eq!(
            e["comm"].as_str().map(|c| c.starts_with("python")),
            Some(true),
            "{e}"
        );
        assert!(e["pid"].as_u64().is_some_and(|p| p > 0), "{e}");
        assert!(
            e["cgroup"].as_str().is_some_and(|c| c.ends_with("/agents")),
            "{e}"
        );
    }
    assert_eq!(kinds.first(), Some(&"login"));
    assert_eq!(kinds.last(), Some(&"session_end"));
    assert!(!events.last().unwrap()["signature"]
        .as_str()
        .unwrap()
        .is_empty());
    let expected = [
        "login", "query", "decision", "result", "query", "decision", "query", "decision", "result",
    ];
    assert_eq!(&kinds[..expected.len()], &expected, "{kinds:?}");
    // Decisions name their rules; the masked read reports its masked columns and counts.
    assert_eq!(events[2]["decision"], "mask");
    assert_eq!(events[2]["rule_id"], "analysts-masked");
    assert_eq!(events[5]["decision"], "deny");
    assert_eq!(events[3]["query_id"], qid.as_str());
    assert_eq!(events[3]["rows"], 3);
    let masked: Vec<(String, String, u64)> = events[3]["masked_column"]
        .as_array()
        .unwrap()
        .iter()
        .zip(events[3]["masked_method"].as_array().unwrap())
        .zip(events[3]["masked_values"].as_array().unwrap())
        .map(|((c, m), v)| {
            (
                c.as_str().unwrap().to_owned(),
                m.as_str().unwrap().to_owned(),
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .unwrap(),
            )
        })
        .collect();
    assert!(
        masked.contains(&("NAME".into(), "redact".into(), 3)),
        "{masked:?}"
    );
    assert!(
        masked.contains(&("SSN".into(), "partial".into(), 3)),
        "{masked:?}"
    );
    // The SQL is stored with its literals redacted, with a fingerprint.
    let denied_sql = events[4]["sql"].as_str().unwrap();
    assert!(
        denied_sql.contains("NAME = ?") || denied_sql.contains("NAME=?"),
        "{denied_sql}"
    );
    assert!(!events[4]["sql_fingerprint"].as_str().unwrap().is_empty());
    // The chunked masked read: chunk events whose NAME counts add up to every row.
    let names_masked = w.count(&format!(
        "SELECT sum(masked_values[indexOf(masked_column, 'NAME')]) FROM tollgate.events \
         WHERE session_id = '{sid}' AND query_id = '{bulk_qid}' AND kind IN ('result', 'chunk')"
    ))?;
    let chunks = w.count(&format!(
        "SELECT count() FROM tollgate.events WHERE session_id = '{sid}' AND kind = 'chunk' AND query_id = '{bulk_qid}'"
    ))?;
    assert!(chunks >= 10, "{chunks} chunk events");
    assert_eq!(
        names_masked, 120_000,
        "masked NAME values over inline rows and chunks"
    );
    // Connection chains: opened and closed, with the process.
    assert!(
        w.count(
            "SELECT count() FROM tollgate.events WHERE kind = 'connection' AND comm LIKE 'python%'"
        )? >= 1
    );
    assert!(w.count("SELECT count() FROM tollgate.events WHERE kind = 'disconnect'")? >= 1);
    // Analyst views answer.
    assert!(w.count("SELECT count() FROM tollgate.denied_statements")? >= 1);
    assert!(w.count("SELECT count() FROM tollgate.masked_values WHERE column = 'SSN'")? >= 1);

    // No literal, token or unmasked value anywhere in the spool or ClickHouse.
    let stored = stored_bytes(&w)?;
    for needle in [
        "Alice Synthetic",
        "Synthetic",
        "900-00",
        "alice.synthetic@example.org",
        "Bulk Person",
        WRITER_PASSWORD,
    ] {
        assert!(
            !stored
                .windows(needle.len())
                .any(|win| win == needle.as_bytes()),
            "{needle:?} is stored in the audit trail"
        );
    }
    let ssn = regex::bytes::Regex::new(r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b").unwrap();
    assert!(ssn.find(&stored).is_none(), "an SSN-shaped value is stored");
    // The session and master tokens the driver received (from the tap) are nowhere either.
    let token_re =
        regex::bytes::Regex::new(r#""(?:token|masterToken)"\s*:\s*"([^"]{8,})""#).unwrap();
    let mut tokens = Vec::new();
    for p in tollgate_e2e::tap::received_payloads(&tap_dir)? {
        for c in token_re.captures_iter(&p.body) {
            tokens.push(c[1].to_vec());
        }
    }
    assert!(!tokens.is_empty(), "no token seen in the login response");
    for t in &tokens {
        assert!(
            !stored.windows(t.len()).any(|win| win == t.as_slice()),
            "a Snowflake token is stored in the audit trail"
        );
    }

    // A rule that records more: full SQL and the first rows the agent received.
    let mut env = w.env();
    env.user = "recorded".into();
    let rec = run_python(
        &w.agents.path,
        env,
        &[Statement::sql(
            "SELECT ID, LABEL FROM BULK.PUBLIC.EVENTS WHERE ID < 42 ORDER BY ID",
        )],
    )?;
    assert_eq!(rec[0]["ok"], true, "{}", rec[0]);
    let rec_qid = rec[0]["query_id"].as_str().unwrap_or_default().to_owned();
    w.wait_shipped(Duration::from_secs(30))?;
    let q = w.rows(
        "SELECT sql, sql_full FROM tollgate.events WHERE kind = 'query' AND sf_user = 'recorded'",
    )?;
    assert!(q[0]["sql"].as_str().unwrap().contains("ID < 42"), "{q:?}");
    assert_eq!(q[0]["sql_full"], true, "{q:?}");
    let r = w.rows(&format!(
        "SELECT result_rows FROM tollgate.events WHERE kind = 'result' AND query_id = '{rec_qid}'"
    ))?;
    let rows: Vec<Vec<Option<String>>> =
        serde_json::from_str(r[0]["result_rows"].as_str().unwrap())?;
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert_eq!(
        rows[0],
        vec![Some("0".to_owned()), Some("event-0".to_owned())]
    );

    // Replay from ClickHouse and from the spool.
    let state = w.tollgate.state_dir.display().to_string();
    let url = w.clickhouse.http_url();
    let (ok, replay, err) = w.cli(&["replay", &sid, "--clickhouse", &url])?;
    assert!(ok, "{err}");
    eprintln!("{replay}");
    for want in [
        "user=agent1",
        "decision=mask rule=analysts-masked",
        "masked[SSN:partial×3",
        "session_end",
        "comm=python",
    ] {
        assert!(replay.contains(want), "replay lacks {want:?}:\n{replay}");
    }
    let (ok, replay_spool, err) = w.cli(&["replay", &sid, "--state-dir", &state])?;
    assert!(ok, "{err}");
    assert_eq!(replay_spool, replay, "spool and ClickHouse replays differ");

    // Verification: intact, from both stores.
    let (ok, report) = w.verify(false, None)?;
    assert!(ok, "spool verify failed: {report}");
    assert!(
        report.contains("OK: the trail is complete and unaltered"),
        "{report}"
    );
    let (ok, report) = w.verify(true, Some(&sid))?;
    assert!(ok, "ClickHouse verify failed: {report}");

    // Tampering in ClickHouse, as someone with write access would do it.
    let verify = |what: &str| -> Result<String> {
        let (ok, report) = w.verify(true, Some(&sid))?;
        assert!(!ok, "{what} not detected:\n{report}");
        Ok(report)
    };
    // An edit: the deny becomes an allow.
    w.clickhouse.query(&format!(
        "ALTER TABLE tollgate.events UPDATE decision = 'allow' WHERE session_id = '{sid}' AND seq = 5 SETTINGS mutations_sync = 2"
    ))?;
    let report = verify("an edited decision")?;
    assert!(
        report.contains(&format!("EDITED   session {sid} seq 5")),
        "{report}"
    );
    // A deletion.
    w.clickhouse.query(&format!(
        "ALTER TABLE tollgate.events DELETE WHERE session_id = '{sid}' AND seq = 7 SETTINGS mutations_sync = 2"
    ))?;
    let report = verify("a deleted event")?;
    assert!(
        report.contains(&format!("MISSING  session {sid} seq 7: event deleted")),
        "{report}"
    );
    // A reorder: events 1 and 2 swap places (re-inserted with each other's positions).
    w.clickhouse.query(&format!(
        "INSERT INTO tollgate.events SELECT * REPLACE (3 - seq AS seq) FROM tollgate.events WHERE session_id = '{sid}' AND seq IN (1, 2)"
    ))?;
    w.clickhouse.query(&format!(
        "ALTER TABLE tollgate.events DELETE WHERE session_id = '{sid}' AND seq IN (1, 2) AND kind = if(seq = 1, 'query', 'decision') SETTINGS mutations_sync = 2"
    ))?;
    let report = verify("a reorder")?;
    assert!(report.contains(&format!("session {sid} seq 1")), "{report}");
    assert!(report.contains(&format!("session {sid} seq 2")), "{report}");
    // The spool still verifies: the tampering was in ClickHouse only.
    let (ok, report) = w.verify(false, None)?;
    assert!(ok, "{report}");
    Ok(())
}

#[test]
fn an_unwritable_spool_refuses_queries_and_nothing_reaches_snowflake() -> Result<()> {
    // A spool on a tiny file system that is then filled: disk full.
    let tag = unique_tag();
    let mnt = PathBuf::from(format!("/tmp/tollgate-spool-full-{tag}"));
    std::fs::create_dir_all(&mnt)?;
    tollgate_e2e::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&mnt),
    )?;
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _unmount = Unmount(mnt.clone());
    let spool = mnt.join("spool");
    let w = world(
        "audit-full",
        vec!["--spool".into(), spool.display().to_string()],
    )?;
    // Fill the file system.
    let _ = std::fs::write(mnt.join("filler"), vec![0u8; 1 << 20]);
    let before = w.standin.requests().len();
    let out = run_python(&w.agents.path, w.env(), &[Statement::sql(PATIENTS)])?;
    eprintln!("{out:?}");
    assert_eq!(out[0]["ok"], false, "{}", out[0]);
    let message = out[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cannot be audited") && message.contains("No space left"),
        "{message}"
    );
    let reached: Vec<String> = w.standin.requests()[before..]
        .iter()
        .filter_map(|r| r["sqlText"].as_str().map(str::to_owned))
        .collect();
    assert!(
        reached.is_empty(),
        "statements reached Snowflake unaudited: {reached:?}"
    );
    // Space again: access resumes, audited.
    std::fs::remove_file(mnt.join("filler"))?;
    let out = run_python(&w.agents.path, w.env(), &[Statement::sql(PATIENTS)])?;
    assert_eq!(out[0]["ok"], true, "{}", out[0]);
    assert!(spool_events(&spool)?
        .iter()
        .any(|e| e["kind"] == "result" && e["query_id"] == out[0]["query_id"]));
    Ok(())
}

/// Distinct event ids in the spool.
fn spool_ids(dir: &Path) -> Result<std::collections::HashSet<String>> {
    Ok(spool_events(dir)?
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect())
}

#[test]
fn every_event_arrives_exactly_once_through_clickhouse_and_tollgate_kills() -> Result<()> {
    let mut w = world("audit-kill", vec![])?;
    // Keep every delivered copy visible: no background merge may fold duplicates away.
    let stop_merges = |w: &World| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while w
            .clickhouse
            .query("SYSTEM STOP MERGES tollgate.events")
            .is_err()
        {
            if Instant::now() > deadline {
                bail!(
                    "the events table never appeared; log:\n{}",
                    tail(&w.tollgate.log())
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    };
    stop_merges(&w)?;
    // Four agents side by side, 2,500 statements each.
    const AGENTS: usize = 4;
    const QUERIES: usize = 10_000;
    let mut handles = Vec::new();
    for a in 0..AGENTS {
        let statements: Vec<Statement> = (0..QUERIES / AGENTS)
            .map(|i| {
                Statement::sql(&format!(
                    "SELECT ID, LABEL FROM BULK.PUBLIC.EVENTS WHERE ID = {}",
                    a * QUERIES / AGENTS + i
                ))
            })
            .collect();
        let mut env = w.env();
        env.timeout = Duration::from_secs(1500);
        let agents = w.agents.path.clone();
        handles.push(std::thread::spawn(move || {
            run_python(&agents, env, &statements)
        }));
    }
    let shipped = |w: &World| w.count("SELECT count() FROM tollgate.events").unwrap_or(0);
    let wait_until = |w: &World, n: u64| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(600);
        while shipped(w) < n {
            if Instant::now() > deadline {
                bail!(
                    "ClickHouse stuck below {n} events; log:\n{}",
                    tail(&w.tollgate.log())
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    };
    // ClickHouse dies mid-stream and comes back.
    wait_until(&w, 3_000)?;
    let failures_before = w.tollgate.log().matches(SHIPPING_FAILED).count();
    w.clickhouse.kill();
    let killed_at = spool_events(&w.spool())?.len();
    // ClickHouse stays down until the shipper has met the outage (a batch failed), so that
    // what follows is a recovery, not an outage nobody saw.
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.tollgate.log().matches(SHIPPING_FAILED).count() == failures_before {
        if Instant::now() > deadline {
            bail!(
                "the shipper never noticed ClickHouse was down; log:\n{}",
                tail(&w.tollgate.log())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    w.clickhouse.restart()?;
    stop_merges(&w)?;
    eprintln!("ClickHouse killed at {killed_at} spooled events, restarted");
    // Tollgate is SIGKILLed mid-stream and restarted on the same spool.
    wait_until(&w, 15_000)?;
    w.tollgate.kill();
    eprintln!(
        "Tollgate killed at {} spooled events",
        spool_events(&w.spool())?.len()
    );
    // A deliberate outage (not a wait for anything): agents meet refused connections.
    std::thread::sleep(Duration::from_secs(1));
    w.tollgate.restart()?;
    let mut out = Vec::new();
    for h in handles {
        out.extend(h.join().expect("agent thread")?);
    }
    let ok: Vec<&Value> = out.iter().filter(|r| r["ok"] == true).collect();
    eprintln!("{} of {QUERIES} statements answered", ok.len());
    assert!(
        ok.len() > QUERIES / 2,
        "too few statements got through: {:?}",
        out.last()
    );

    // Everything durable reaches ClickHouse once.
    let spooled = spool_ids(&w.spool())?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while (shipped(&w) as usize) < spooled.len() {
        if Instant::now() > deadline {
            bail!("ClickHouse has {} of {} events", shipped(&w), spooled.len());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Absence of duplicates is judged once the shipper has caught up: no re-sent batch is
    // still on its way then.
    let spooled: std::collections::HashSet<String> = w
        .wait_caught_up(Duration::from_secs(120))?
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect();
    let total = w.count("SELECT count() FROM tollgate.events")?;
    let distinct = w.count("SELECT uniqExact(event_id) FROM tollgate.events")?;
    eprintln!(
        "spool {} events, ClickHouse {total} rows, {distinct} distinct",
        spooled.len()
    );
    assert!(
        spooled.len() >= 3 * QUERIES,
        "{} events for {QUERIES} queries",
        spooled.len()
    );
    assert_eq!(distinct, total, "duplicates in ClickHouse");
    assert_eq!(
        total as usize,
        spooled.len(),
        "ClickHouse and the spool differ"
    );
    let stored: std::collections::HashSet<String> = w
        .rows("SELECT toString(event_id) AS id FROM tollgate.events")?
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        stored == spooled,
        "event ids differ between ClickHouse and the spool"
    );
    // Every answered statement's result is on record.
    let results: std::collections::HashSet<String> = w
        .rows("SELECT query_id FROM tollgate.events WHERE kind = 'result'")?
        .iter()
        .filter_map(|r| r["query_id"].as_str().map(str::to_owned))
        .collect();
    for r in &ok {
        let q = r["query_id"].as_str().unwrap_or_default();
        assert!(
            results.contains(q),
            "answered query {q} has no result event"
        );
    }
    // And the whole trail verifies, from ClickHouse, with no hole in the host sequence.
    let (ok, report) = w.verify(true, None)?;
    assert!(ok, "{report}");
    Ok(())
}

#[test]
fn an_event_clickhouse_refuses_is_set_aside_and_shipping_goes_on() -> Result<()> {
    let w = world("audit-refused", vec![])?;
    // Wait for the schema, then make ClickHouse refuse results of more than 100 rows (a data
    // error, code 469), as a schema drift or a bad value would.
    let deadline = Instant::now() + Duration::from_secs(30);
    while w
        .clickhouse
        .query("ALTER TABLE tollgate.events ADD CONSTRAINT small_results CHECK rows <= 100")
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("no events table; log:\n{}", tail(&w.tollgate.log()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = run_python(
        &w.agents.path,
        w.env(),
        &[
            Statement::sql("SELECT ID, LABEL FROM BULK.PUBLIC.EVENTS WHERE ID < 5"),
            Statement::sql("SELECT ID, LABEL FROM BULK.PUBLIC.EVENTS WHERE ID < 500").digest(),
            Statement::sql("SELECT ID, LABEL FROM BULK.PUBLIC.EVENTS WHERE ID < 7"),
        ],
    )?;
    assert!(out.iter().all(|r| r["ok"] == true), "{out:?}");
    let big_qid = out[1]["query_id"].as_str().unwrap_or_default().to_owned();
    // Everything but the refused event arrives; the refused one is in quarantine/ and the spool.
    let spooled = spool_events(&w.spool())?.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.count("SELECT count() FROM tollgate.events")? + 1 < spooled {
        if Instant::now() > deadline {
            bail!("shipping stalled; log:\n{}", tail(&w.tollgate.log()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Exactly one is missing once the shipper has caught up (the refused event set aside, not
    // retried into ClickHouse later).
    let spooled = w.wait_caught_up(Duration::from_secs(60))?;
    let in_ch = w.count("SELECT count() FROM tollgate.events")?;
    assert_eq!(
        in_ch + 1,
        spooled.len() as u64,
        "exactly one event set aside"
    );
    let quarantine: Vec<PathBuf> = std::fs::read_dir(w.spool().join("quarantine"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert_eq!(quarantine.len(), 1, "{quarantine:?}");
    let q: Value = serde_json::from_slice(&std::fs::read(&quarantine[0])?)?;
    assert_eq!(q["code"], 469, "{q}");
    assert_eq!(q["event"]["kind"], "result");
    assert_eq!(q["event"]["query_id"], big_qid.as_str());
    assert!(
        w.tollgate.log().contains("set aside"),
        "the refusal is not logged"
    );
    // The later statement's events made it: shipping went on.
    let later = out[2]["query_id"].as_str().unwrap_or_default();
    assert_eq!(
        w.count(&format!(
            "SELECT count() FROM tollgate.events WHERE kind = 'result' AND query_id = '{later}'"
        ))?,
        1
    );
    // verify names the missing event in ClickHouse; the spool is whole.
    let (ok, report) = w.verify(true, None)?;
    assert!(!ok && report.contains("MISSING"), "{report}");
    let (ok, report) = w.verify(false, None)?;
    assert!(ok, "{report}");
    Ok(())
}

/// Tollgate SIGKILLed while a forwarded statement runs in Snowflake: at restart, recovery marks
/// that statement `lost` in its chain (it may have run; its outcome is unknown), before it
/// closes the chain, and leaves the statements whose result was recorded alone.
#[test]
fn a_statement_in_flight_when_tollgate_is_killed_is_marked_lost_at_restart() -> Result<()> {
    let mut w = world("audit-inflight", vec![])?;
    let mut env = w.env();
    env.timeout = Duration::from_secs(120);
    let agents = w.agents.path.clone();
    let agent = std::thread::spawn(move || {
        run_python(
            &agents,
            env,
            &[
                Statement::sql(PATIENTS),
                Statement::sql(&format!("{PATIENTS} /*standin:stall=600*/")),
            ],
        )
    });
    // The event we mean: the second statement's decision is in the spool (it is forwarded).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (chain, first, stalled) = loop {
        let events = spool_events(&w.spool())?;
        let decisions: Vec<&Value> = events
            .iter()
            .filter(|e| e["kind"] == "decision" && e["session_id"].as_str() != Some(""))
            .collect();
        if decisions.len() >= 2 {
            let key = |e: &Value| {
                e["attrs"]["statement"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            };
            break (
                decisions[1]["session_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                key(decisions[0]),
                key(decisions[1]),
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the stalled statement was never decided; log:\n{}",
                tail(&w.tollgate.log())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!first.is_empty() && !stalled.is_empty() && first != stalled);
    w.tollgate.kill();
    // The agent is not needed any more: its retries would only meet the stall again.
    for pid in w.agents.pids() {
        // SAFETY: kill(2) on a pid of the test's own agent cgroup.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    let _ = agent.join();
    w.tollgate.restart()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let chain_events = loop {
        let events: Vec<Value> = spool_events(&w.spool())?
            .into_iter()
            .filter(|e| e["session_id"] == chain.as_str())
            .collect();
        if events.iter().any(|e| e["kind"] == "session_end") {
            break events;
        }
        if Instant::now() > deadline {
            bail!(
                "recovery never closed the chain; log:\n{}",
                tail(&w.tollgate.log())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let results: Vec<(&str, &str)> = chain_events
        .iter()
        .filter(|e| e["kind"] == "result")
        .map(|e| {
            (
                e["attrs"]["statement"].as_str().unwrap_or_default(),
                e["decision"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[0].0, first);
    assert_ne!(
        results[0].1, "lost",
        "the first statement's result was recorded"
    );
    assert_eq!(results[1], (stalled.as_str(), "lost"));
    let tail_kinds: Vec<&str> = chain_events[chain_events.len() - 2..]
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(tail_kinds, ["result", "session_end"]);
    let (ok, report) = w.verify(false, Some(&chain))?;
    assert!(ok, "{report}");
    Ok(())
}

impl World {
    /// `tollgate audit verify` of a spool Tollgate keeps outside its state dir (`--spool DIR`),
    /// with the state dir's key; (success, report with stderr appended).
    fn verify_spool_at(&self, spool: &Path) -> Result<(bool, String)> {
        let state = self.tollgate.state_dir.display().to_string();
        let spool = spool.display().to_string();
        let (ok, report, err) = self.cli(&[
            "audit",
            "verify",
            "--state-dir",
            state.as_str(),
            "--spool",
            spool.as_str(),
        ])?;
        Ok((ok, format!("{report}{err}")))
    }
}

/// Stops Tollgate as an operator does (SIGTERM) and waits until it has exited.
fn stop_gracefully(tollgate: &mut Tollgate) -> Result<()> {
    if let Some(mut s) = tollgate.service.take() {
        s.signal(libc::SIGTERM);
        match s.wait_exit(Duration::from_secs(30))? {
            Some(status) => eprintln!("tollgate stopped: {status}"),
            None => bail!(
                "tollgate did not stop within 30 s of SIGTERM; log:\n{}",
                tail(&tollgate.log())
            ),
        }
    }
    Ok(())
}

/// The SQL texts the stand-in received after its first `from` requests.
fn sql_received_since(standin: &Standin, from: usize) -> Vec<String> {
    standin
        .requests()
        .get(from..)
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["sqlText"].as_str().map(str::to_owned))
        .collect()
}

/// A spool on a real file system whose `fdatasync` fails (`tollgate-faultfs`, a FUSE
/// passthrough: this kernel has no dm-flakey and no fault injection). The statement in flight
/// when syncs start failing gets an error instead of its rows; every later statement is refused
/// too, even once syncs succeed again (the failed sync may have lost what it covered, and a
/// later one proves nothing about it), and none reaches Snowflake. Restarted on the same spool,
/// Tollgate reads what the disk holds, statements work again and the spool verifies.
#[test]
fn a_failed_fsync_refuses_every_statement_until_tollgate_restarts() -> Result<()> {
    use tollgate_e2e::faultfs::FaultFs;
    // Declared before the world, so dropped after it: Tollgate has stopped by then.
    let fs_scratch = Scratch::new("audit-fsync-fs")?;
    let faultfs = FaultFs::mount(&fs_scratch)?;
    let spool = faultfs.path().join("spool");
    let mut w = world(
        "audit-fsync",
        vec!["--spool".into(), spool.display().to_string()],
    )?;
    let refused_unaudited = |out: &Value| {
        assert_eq!(out["ok"], false, "{out}");
        let message = out["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("cannot be audited") && message.contains("fdatasync failed"),
            "{message}"
        );
    };

    // Syncs work: statements are answered and audited on the fault file system.
    let out = run_python(&w.agents.path, w.env(), &[Statement::sql(PATIENTS)])?;
    assert_eq!(out[0]["ok"], true, "{}", out[0]);
    assert!(spool_events(&spool)?
        .iter()
        .any(|e| e["kind"] == "result" && e["query_id"] == out[0]["query_id"]));

    // Syncs fail: the statement's decision is written (it may reach Snowflake), but it cannot
    // be made durable, so the answer is withheld; or an earlier sync failed first, and it is
    // refused before it goes anywhere. Either way the agent gets no rows, and no `result`
    // event claims an answer it never got.
    faultfs.fail_fsync(true)?;
    let before = w.standin.requests().len();
    let out = run_python(&w.agents.path, w.env(), &[Statement::sql(PATIENTS)])?;
    eprintln!("the statement when syncs fail: {out:?}");
    refused_unaudited(&out[0]);
    let forwarded = !sql_received_since(&w.standin, before).is_empty();
    eprintln!("it had reached Snowflake: {forwarded}");

    // Syncs work again, the spool stays broken: refused, and nothing reaches Snowflake.
    faultfs.fail_fsync(false)?;
    let before = w.standin.requests().len();
    let out = run_python(&w.agents.path, w.env(), &[Statement::sql(PATIENTS)])?;
    eprintln!("with syncs working again: {out:?}");
    refused_unaudited(&out[0]);
    let reached = sql_received_since(&w.standin, before);
    assert!(
        reached.is_empty(),
        "statements reached Snowflake unaudited: {reached:?}"
    );

    // Restarted on the same spool: audited access again.
    stop_gracefully(&mut w.tollgate)?;
    w.tollgate.restart()?;
    let out = run_python(&w.agents.path, w.env(), &[Statement::sql(PATIENTS)])?;
    assert_eq!(out[0]["ok"], true, "{}", out[0]);
    let events = spool_events(&spool)?;
    assert!(events
        .iter()
        .any(|e| e["kind"] == "result" && e["query_id"] == out[0]["query_id"]));
    let trail: Vec<String> = events
        .iter()
        .map(|e| format!("{}:{}", e["kind"], e["decision"]).replace('"', ""))
        .collect();
    eprintln!("the spool after the restart: {trail:?}");
    // Exactly two statements were answered with rows: the first and the last.
    let served = events
        .iter()
        .filter(|e| e["kind"] == "result" && e["decision"] == "ok")
        .count();
    assert_eq!(served, 2, "{trail:?}");
    let (ok, report) = w.verify_spool_at(&spool)?;
    eprintln!("{report}");
    assert!(ok, "{report}");
    Ok(())
}
