//! Snowflake-aware enforcement end to end: the real Python and Node drivers as unmodified
//! agents in a target cgroup, redirected by eBPF, intercepted by Tollgate (which they trust the
//! way an installer sets it up), against the Snowflake stand-in on a test host.
//!
//! - Allowed statements return exactly what they return without Tollgate (Arrow and JSON).
//! - Denied statements (GET @stage, a forbidden table, unparseable SQL, a multi-statement text
//!   hiding a forbidden statement) raise the driver's own error with Tollgate's message, and the
//!   stand-in never sees them.
//! - One session spans several connections; token renewal, 333333 polling and chunked results
//!   pass through.
//! - Bad input (malformed JSON, a gzip bomb, an oversized body, an unknown endpoint) gets a clear
//!   error and Tollgate carries on.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;
use serde_json::{json, Value};
use tollgate_e2e::snowflake::{run_node, run_python, AgentEnv, Standin, StandinOpts, Statement};
use tollgate_e2e::{unique_tag, Cgroup, Scratch, TestHost, Tollgate, TollgateOpts};

struct World {
    tollgate: Tollgate,
    standin: Standin,
    agents: Cgroup,
    direct: Cgroup,
    _top: Cgroup,
    scratch: Scratch,
    _host: TestHost,
}

fn policy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies/enforcement.yaml")
}

fn world(what: &str) -> Result<World> {
    let host = TestHost::create()?;
    let scratch = Scratch::new(what)?;
    let standin = Standin::start(&host, &scratch, StandinOpts::default())?;
    let top = Cgroup::create(&format!("tollgate-e2e-{what}-{}", unique_tag()))?;
    let agents = top.child("agents")?;
    let direct = top.child("direct")?;
    let tollgate = Tollgate::start(
        &scratch,
        TollgateOpts {
            cgroups: vec![agents.path.clone()],
            upstream_roots: Some(standin.ca_pem()),
            extra: [
                vec!["--policy".into(), policy().display().to_string()],
                standin.tollgate_args(),
            ]
            .concat(),
            ..TollgateOpts::default()
        },
    )?;
    Ok(World {
        tollgate,
        standin,
        agents,
        direct,
        _top: top,
        scratch,
        _host: host,
    })
}

impl World {
    /// The agent's environment through Tollgate: its host trusts Tollgate's CA as well.
    fn via(&self) -> AgentEnv {
        let mut env = self.standin.agent_env(&self.scratch);
        env.ca_roots.push(self.tollgate.ca_cert());
        env
    }

    /// Without Tollgate: trusting only the stand-in (and from a cgroup that is not redirected).
    fn direct_env(&self) -> AgentEnv {
        self.standin.agent_env(&self.scratch)
    }

    fn standin_saw(&self, needle: &str) -> bool {
        self.standin
            .requests()
            .iter()
            .any(|r| r["sqlText"].as_str().is_some_and(|s| s.contains(needle)))
    }
}

/// Read-only statements both runs execute: a typed clinical read, bindings, 333333 polling,
/// token renewal, a chunked 100k-row result.
fn allowed() -> Vec<Statement> {
    vec![
        Statement::sql(
            "SELECT ID, NAME, DOB, BALANCE, ADMITTED FROM CLINICAL.EHR.PATIENTS ORDER BY ID",
        ),
        Statement::sql("SELECT ID, NAME FROM CLINICAL.EHR.PATIENTS WHERE ID = ?")
            .bindings(json!([2])),
        Statement::sql("SELECT /*standin:slow=2*/ 7 AS X"),
        Statement::sql("SELECT /*standin:expire*/ 8 AS X"),
        Statement::sql("SELECT * FROM BULK.PUBLIC.EVENTS ORDER BY ID").digest(),
    ]
}

/// Statements Tollgate must refuse, each with a marker the stand-in log can be searched for.
fn denied() -> Vec<(Statement, &'static str, &'static str)> {
    vec![
        (
            Statement::sql("GET @clinical_stage/tg_marker_get.csv file:///tmp/"),
            "tg_marker_get",
            "deny-stage-transfers",
        ),
        (
            Statement::sql("SELECT * FROM CLINICAL.EHR.VISITS /* tg_marker_table */"),
            "tg_marker_table",
            "deny-visits",
        ),
        (
            Statement::sql("SELEC tg_marker_garbage FROMM (("),
            "tg_marker_garbage",
            "default:unparseable_sql",
        ),
        (
            Statement::sql("SELECT 1 AS tg_marker_multi; SELECT * FROM VISITS"),
            "tg_marker_multi",
            "deny-visits",
        ),
    ]
}

fn strip_ids(mut v: Vec<Value>) -> Vec<Value> {
    for r in &mut v {
        if let Some(o) = r.as_object_mut() {
            o.remove("query_id");
            o.remove("elapsed_us");
        }
    }
    v
}

fn check_driver(
    w: &World,
    run: fn(&std::path::Path, AgentEnv, &[Statement]) -> Result<Vec<Value>>,
    error_class: &str,
) -> Result<()> {
    let direct = strip_ids(run(&w.direct.path, w.direct_env(), &allowed())?);
    for r in &direct {
        assert_eq!(r["ok"], true, "direct run failed: {r}");
    }
    let before = w.standin.requests().len();
    let via = strip_ids(run(&w.agents.path, w.via(), &allowed())?);
    assert_eq!(
        via,
        direct,
        "through Tollgate differs from direct\nTollgate log:\n{}",
        w.tollgate.log()
    );
    // It really went through Tollgate: intercepted connections from the agent, verified upstream,
    // and more than one of them for the one session (pool, polling, renewal).
    let recs: Vec<Value> = w
        .tollgate
        .records()
        .into_iter()
        .filter(|r| r["decision"] == "intercept")
        .collect();
    assert!(!recs.is_empty(), "no intercepted connection recorded");
    // Every upstream was verified; connections that only fetched result chunks (served by
    // Tollgate, which fetched them from storage itself) never needed one.
    assert!(recs.iter().any(|r| r["upstream_verified"] == true));
    assert!(
        recs.iter().all(|r| !r["close_reason"]
            .as_str()
            .unwrap_or("")
            .contains("upstream")),
        "an upstream failed: {recs:?}"
    );
    let requests_after = &w.standin.requests()[before..];
    let logins = requests_after
        .iter()
        .filter(|r| r["path"] == "/session/v1/login-request")
        .count();
    assert_eq!(logins, 1, "one session through Tollgate");
    assert!(requests_after
        .iter()
        .any(|r| r["path"] == "/session/token-request" && r["renewed"] == true));

    let statements: Vec<Statement> = denied().into_iter().map(|(s, _, _)| s).collect();
    let out = run(&w.agents.path, w.via(), &statements)?;
    for ((_, marker, rule), r) in denied().into_iter().zip(&out) {
        assert_eq!(r["ok"], false, "{marker} was allowed: {r}");
        assert_eq!(r["error"], error_class, "{marker}: {r}");
        let msg = r["message"].as_str().unwrap_or_default();
        assert!(msg.contains("Tollgate"), "{marker}: {r}");
        assert!(msg.contains(rule), "{marker}: expected rule {rule}: {r}");
        assert!(!w.standin_saw(marker), "{marker} reached the stand-in");
    }
    Ok(())
}

#[test]
fn python_driver_through_tollgate() -> Result<()> {
    let w = world("enf-py")?;
    check_driver(&w, run_python, "ProgrammingError")?;
    // Writes by the allowed user reach Snowflake and read back the same; USE keeps the
    // session's database current, so unqualified names resolve where Snowflake resolves them.
    let out = run_python(
        &w.agents.path,
        w.via(),
        &[
            Statement::sql("CREATE TABLE CLINICAL.EHR.NOTES_PY (ID INT, NAME VARCHAR)"),
            Statement::sql("INSERT INTO CLINICAL.EHR.NOTES_PY VALUES (?, ?)")
                .bindings(json!([1, "x"])),
            Statement::sql("SELECT * FROM NOTES_PY"),
            Statement::sql("USE DATABASE BULK"),
            Statement::sql("SELECT COUNT(*) FROM PUBLIC.EVENTS"),
            Statement::sql("USE DATABASE CLINICAL"),
            Statement::sql("SELECT * FROM EHR.VISITS /* tg_marker_use */"),
        ],
    )?;
    for r in &out[..6] {
        assert_eq!(r["ok"], true, "{r}\n{}", w.tollgate.log());
    }
    assert_eq!(out[2]["rows"], json!([[1, "x"]]));
    assert_eq!(out[4]["rows"], json!([[100_000]]));
    assert_eq!(out[6]["ok"], false, "{}", out[6]);
    assert!(out[6]["message"].as_str().unwrap().contains("deny-visits"));
    assert!(!w.standin_saw("tg_marker_use"));

    // One session, several connections at once (four cursors in parallel): every connection
    // carries the session's identity — without it the default-deny policy would refuse them.
    let mut env = w.via();
    env.concurrent = true;
    let before: Vec<String> = w
        .tollgate
        .records()
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    let out = run_python(
        &w.agents.path,
        env,
        &(1..=4)
            .map(|i| Statement::sql(&format!("SELECT /*standin:slow=1*/ {i} AS N")))
            .collect::<Vec<_>>(),
    )?;
    for (i, r) in out.iter().enumerate() {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["rows"], json!([[i + 1]]));
    }
    // Records are written as Tollgate sees each connection close, which may be just after the
    // driver has exited: wait for them.
    let busy = || {
        w.tollgate
            .records()
            .into_iter()
            .filter(|r| !before.iter().any(|b| r["id"] == b.as_str()))
            .filter(|r| r["decision"] == "intercept" && r["requests"].as_u64().unwrap_or(0) > 0)
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while busy() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let busy = busy();
    assert!(
        busy >= 2,
        "expected several connections for one session, saw {busy}"
    );
    Ok(())
}

#[test]
fn node_driver_through_tollgate() -> Result<()> {
    let w = world("enf-node")?;
    check_driver(&w, run_node, "OperationFailedError")
}

/// Raw requests to the intercepted Snowflake name with curl from the agents cgroup.
fn curl(w: &World, args: &[&str]) -> Result<(u16, String)> {
    let ca = w.scratch.join(&format!("curl-ca-{}.pem", unique_tag()));
    std::fs::write(&ca, std::fs::read(w.tollgate.ca_cert())?)?;
    let host = w.standin.account_host();
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("{host}:443:{}", w.standin.ip4))
        .args(args);
    tollgate_e2e::place_in_cgroup(&w.agents.path, &mut c);
    let out = c.output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
}

#[test]
fn bad_input_gets_a_clear_error_and_tollgate_carries_on() -> Result<()> {
    let w = world("enf-bad")?;
    let base = format!("https://{}", w.standin.account_host());
    let query = format!("{base}/queries/v1/query-request?requestId=1");

    // Malformed JSON.
    let (code, body) = curl(
        &w,
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "{not json",
            &query,
        ],
    )?;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(v["success"], false, "{body}");
    assert!(
        v["message"].as_str().unwrap().contains("Tollgate"),
        "{body}"
    );

    // A gzip bomb: 64 MiB of zeros, well past the ratio cap.
    let bomb = w.scratch.join("bomb.gz");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 67108864 /dev/zero | gzip -9 > {}",
            bomb.display()
        ))
        .status()?;
    assert!(out.success());
    let (code, body) = curl(
        &w,
        &[
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
            &format!("@{}", bomb.display()),
            &query,
        ],
    )?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Tollgate refused the request body"), "{body}");

    // An oversized body (17 MiB, over the 16 MiB default).
    let big = w.scratch.join("big.json");
    std::fs::write(&big, vec![b' '; 17 << 20])?;
    let (code, body) = curl(
        &w,
        &["--data-binary", &format!("@{}", big.display()), &query],
    )?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("larger than"), "{body}");

    // An unknown endpoint: denied by default, never forwarded.
    let (code, body) = curl(
        &w,
        &["-X", "POST", &format!("{base}/internal/tg_marker_unknown")],
    )?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("not understood"), "{body}");
    assert!(!w.standin.requests().iter().any(|r| r["path"]
        .as_str()
        .is_some_and(|p| p.contains("tg_marker_unknown"))));

    // Tollgate carries on: a real driver session works afterwards.
    let out = run_python(
        &w.agents.path,
        w.via(),
        &[Statement::sql("SELECT 1 AS ONE")],
    )?;
    assert_eq!(out[0]["ok"], true, "{:?}\n{}", out, w.tollgate.log());
    assert_eq!(out[0]["rows"], json!([[1]]));
    Ok(())
}
