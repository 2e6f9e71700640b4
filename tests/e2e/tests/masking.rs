//! Result masking end to end: the real Python (Arrow) and Node (JSON) drivers as unmodified
//! agents, redirected by eBPF and intercepted by Tollgate, against the stand-in.
//!
//! - PHI values never appear in any byte an agent receives (a tap records every decrypted byte
//!   the driver reads; bodies are decoded and searched), non-PHI columns are unchanged, masked
//!   columns still decode, tokens are stable across queries and drivers.
//! - Masking follows column lineage (aliases, functions, concatenation, CTEs, UNION, joins,
//!   `SELECT *`); predicates on masked columns and untraceable lineage are refused.
//! - Chunked results (≥100k rows) are fetched, masked and served by Tollgate: the agent never
//!   sees a storage URL, and a chunk URL is refused to another workload and once the session has
//!   ended.
//! - Row caps hold across inline rows and chunks.
//! - Broken results (malformed Arrow, truncated chunks, bad gzip) reach the driver as errors,
//!   leak nothing, and Tollgate carries on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use regex::bytes::Regex;
use serde_json::Value;
use tollgate_e2e::snowflake::{run_node, run_python, AgentEnv, Standin, StandinOpts, Statement};
use tollgate_e2e::tap;
use tollgate_e2e::{unique_tag, Cgroup, Scratch, TestHost, Tollgate, TollgateOpts};

struct World {
    tollgate: Tollgate,
    standin: Standin,
    agents: Cgroup,
    others: Cgroup,
    direct: Cgroup,
    _top: Cgroup,
    scratch: Scratch,
    _host: TestHost,
}

fn policy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies/masking.yaml")
}

fn world(what: &str) -> Result<World> {
    let host = TestHost::create()?;
    let scratch = Scratch::new(what)?;
    let standin = Standin::start(&host, &scratch, StandinOpts::default())?;
    let top = Cgroup::create(&format!("tollgate-e2e-{what}-{}", unique_tag()))?;
    let agents = top.child("agents")?;
    let others = top.child("others")?;
    let direct = top.child("direct")?;
    let tollgate = Tollgate::start(
        &scratch,
        TollgateOpts {
            cgroups: vec![agents.path.clone(), others.path.clone()],
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
        others,
        direct,
        _top: top,
        scratch,
        _host: host,
    })
}

impl World {
    /// Through Tollgate, with every received byte tapped into `tap`.
    fn via(&self, tap: &Path) -> AgentEnv {
        let mut env = self.standin.agent_env(&self.scratch);
        env.ca_roots.push(self.tollgate.ca_cert());
        env.tap = Some(tap.to_path_buf());
        env.timeout = Duration::from_secs(240);
        env
    }

    fn direct_env(&self) -> AgentEnv {
        let mut env = self.standin.agent_env(&self.scratch);
        env.timeout = Duration::from_secs(240);
        env
    }

    fn tap_dir(&self, name: &str) -> PathBuf {
        let d = self.scratch.join(&format!("tap-{name}-{}", unique_tag()));
        std::fs::create_dir_all(&d).expect("tap dir");
        d
    }

    fn standin_saw(&self, needle: &str) -> bool {
        self.standin
            .requests()
            .iter()
            .any(|r| r["sqlText"].as_str().is_some_and(|s| s.contains(needle)))
    }
}

type Runner = fn(&Path, AgentEnv, &[Statement]) -> Result<Vec<Value>>;

const PATIENTS: &str =
    "SELECT ID, NAME, SSN, DOB, BALANCE, ADMITTED, ACTIVE FROM CLINICAL.EHR.PATIENTS ORDER BY ID";
const CONTACTS: &str =
    "SELECT PATIENT_ID, MRN, EMAIL, PHONE, ZIP, NOTES, PROFILE FROM CLINICAL.EHR.PATIENT_CONTACTS ORDER BY PATIENT_ID";
const LINEAGE: &str = "SELECT UPPER(SSN) AS U, HEX_ENCODE(SSN) AS H, SUBSTR(SSN, 1, 3) AS S3, NAME || SSN AS C, CONCAT(NAME, 'x') AS C2 FROM CLINICAL.EHR.PATIENTS ORDER BY ID";
const STAR: &str = "SELECT * FROM CLINICAL.EHR.PATIENTS ORDER BY ID";
const CTE_UNION: &str = "WITH p AS (SELECT ID, SSN AS X FROM CLINICAL.EHR.PATIENTS) SELECT X FROM p UNION ALL SELECT NAME FROM CLINICAL.EHR.PATIENTS";
const JOIN: &str = "SELECT v.ID, q.NAME, q.SSN, v.NOTE FROM CLINICAL.EHR.VISITS v JOIN (SELECT ID, NAME, SSN FROM CLINICAL.EHR.PATIENTS) q ON v.PATIENT_ID = q.ID ORDER BY v.ID";
const BULK: &str =
    "SELECT ID, NAME, SSN, DOB, MRN, AMOUNT FROM CLINICAL.EHR.PATIENTS_BULK ORDER BY ID";

fn statements() -> Vec<Statement> {
    vec![
        Statement::sql(PATIENTS),
        Statement::sql(CONTACTS),
        Statement::sql(CONTACTS),
        Statement::sql(LINEAGE),
        Statement::sql(STAR),
        Statement::sql(CTE_UNION),
        Statement::sql(JOIN),
        Statement::sql(BULK).digest(),
        // Refused before Snowflake: a predicate that would reveal a masked column, and a
        // projection whose lineage cannot be traced.
        Statement::sql("SELECT ID FROM CLINICAL.EHR.PATIENTS WHERE SSN LIKE '900%' /* tg_marker_pred */"),
        Statement::sql("SELECT f.value FROM CLINICAL.EHR.PATIENT_CONTACTS c, LATERAL FLATTEN(input => c.PROFILE) f /* tg_marker_flatten */"),
    ]
}

fn rows(r: &Value) -> &Vec<Value> {
    r["rows"].as_array().expect("rows")
}

fn col(r: &Value, name: &str) -> usize {
    r["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .position(|c| c.as_str().is_some_and(|c| c.eq_ignore_ascii_case(name)))
        .unwrap_or_else(|| panic!("no column {name} in {}", r["columns"]))
}

fn text(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a text value, got {v}"))
}

/// `900-00-0001` → `***-**-0001`.
fn partial_ssn(ssn: &str) -> String {
    let keep = ssn.len() - 4;
    ssn.char_indices()
        .map(|(i, c)| {
            if i < keep && c.is_ascii_digit() {
                '*'
            } else {
                c
            }
        })
        .collect()
}

fn is_token(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.starts_with("tok_") && s.len() > 8)
}

fn check_masked(direct: &[Value], via: &[Value], driver: &str) {
    let ok = |i: usize| {
        assert_eq!(
            via[i]["ok"], true,
            "{driver}: statement {i} failed: {}",
            via[i]
        );
    };
    // Typed clinical read: PHI masked, the rest unchanged.
    ok(0);
    let (d, v) = (&direct[0], &via[0]);
    assert_eq!(rows(d).len(), rows(v).len(), "{driver}: row count");
    for (dr, vr) in rows(d).iter().zip(rows(v)) {
        for c in ["ID", "ACTIVE"] {
            assert_eq!(dr[col(d, c)], vr[col(v, c)], "{driver}: column {c} changed");
        }
        // NUMBER(10,2) tokenised: the column became TEXT for the driver.
        assert!(
            is_token(&vr[col(v, "BALANCE")]),
            "{driver}: BALANCE {}",
            vr[col(v, "BALANCE")]
        );
        // TIMESTAMP_NTZ generalised to its year; NULL stays NULL.
        match &dr[col(d, "ADMITTED")] {
            Value::Null => assert!(vr[col(v, "ADMITTED")].is_null(), "{driver}: NULL kept"),
            ts => {
                let year = ts
                    .to_string()
                    .chars()
                    .filter(|c| c.is_ascii_digit())
                    .take(4)
                    .collect::<String>();
                assert_eq!(
                    text(&vr[col(v, "ADMITTED")]),
                    year,
                    "{driver}: ADMITTED → year"
                );
            }
        }
        assert_eq!(text(&vr[col(v, "NAME")]), "***", "{driver}: NAME");
        let ssn = text(&dr[col(d, "SSN")]);
        assert_eq!(text(&vr[col(v, "SSN")]), partial_ssn(ssn), "{driver}: SSN");
        let dob = match &dr[col(d, "DOB")] {
            Value::Object(o) => o["date"].as_str().unwrap_or_default().to_owned(),
            other => other.as_str().unwrap_or_default().to_owned(),
        };
        assert_eq!(text(&vr[col(v, "DOB")]), &dob[..4], "{driver}: DOB → year");
    }
    // Contacts: tokens stable across two queries; the rest redacted or generalised.
    ok(1);
    ok(2);
    assert_eq!(
        via[1]["rows"], via[2]["rows"],
        "{driver}: tokens not stable"
    );
    for (dr, vr) in rows(&direct[1]).iter().zip(rows(&via[1])) {
        let (d1, v1) = (&direct[1], &via[1]);
        assert_eq!(dr[col(d1, "PATIENT_ID")], vr[col(v1, "PATIENT_ID")]);
        assert!(
            is_token(&vr[col(v1, "MRN")]),
            "{driver}: MRN {}",
            vr[col(v1, "MRN")]
        );
        for c in ["EMAIL", "PHONE", "NOTES", "PROFILE"] {
            assert_eq!(text(&vr[col(v1, c)]), "***", "{driver}: {c}");
        }
        let zip = text(&vr[col(v1, "ZIP")]);
        assert_ne!(zip, text(&dr[col(d1, "ZIP")]), "{driver}: ZIP kept");
        assert!(zip.ends_with("00"), "{driver}: ZIP {zip}");
    }
    // Lineage through functions and concatenation: redacted (partial would leak).
    ok(3);
    for r in rows(&via[3]) {
        for v in r.as_array().unwrap() {
            assert_eq!(text(v), "***", "{driver}: lineage row {r}");
        }
    }
    // SELECT *: columns by name.
    ok(4);
    let v4 = &via[4];
    for r in rows(v4) {
        assert_eq!(text(&r[col(v4, "NAME")]), "***", "{driver}: * NAME");
        assert!(
            text(&r[col(v4, "SSN")]).starts_with("***-**-"),
            "{driver}: * SSN"
        );
    }
    assert_eq!(rows(v4).len(), rows(&direct[4]).len());
    // CTE + UNION: one column fed by SSN and NAME → the strictest method.
    ok(5);
    assert_eq!(rows(&via[5]).len(), 6);
    for r in rows(&via[5]) {
        assert_eq!(text(&r[0]), "***", "{driver}: union row {r}");
    }
    // Join with a subquery.
    ok(6);
    let (d6, v6) = (&direct[6], &via[6]);
    for (dr, vr) in rows(d6).iter().zip(rows(v6)) {
        assert_eq!(dr[col(d6, "ID")], vr[col(v6, "ID")]);
        assert_eq!(dr[col(d6, "NOTE")], vr[col(v6, "NOTE")]);
        assert_eq!(text(&vr[col(v6, "NAME")]), "***");
        assert!(text(&vr[col(v6, "SSN")]).starts_with("***-**-"));
    }
    // 120k rows, chunked: every chunk masked (the tap proves no value got through).
    ok(7);
    assert_eq!(via[7]["nrows"], 120_000, "{driver}: bulk rows");
    assert_eq!(via[7]["nrows"], direct[7]["nrows"]);
    let first = via[7]["first"].as_array().expect("first row");
    assert_eq!(first[0], direct[7]["first"][0], "{driver}: ID kept");
    assert_eq!(text(&first[1]), "***");
    assert!(text(&first[2]).starts_with("***-**-"));
    assert!(is_token(&first[4]));
    // Refused.
    for (i, marker) in [(8, "masked column"), (9, "lineage")] {
        assert_eq!(
            via[i]["ok"], false,
            "{driver}: statement {i} allowed: {}",
            via[i]
        );
        let msg = via[i]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("Tollgate") && msg.contains(marker),
            "{driver}: {msg}"
        );
    }
}

/// Values that must never reach an agent through this policy.
fn phi_needles(direct: &[Value]) -> Vec<String> {
    let mut n = vec![
        "Synthetic".to_owned(),
        "Bulk Person".to_owned(),
        "MRN-".to_owned(),
        "example.org".to_owned(),
        "sfc-results".to_owned(),
    ];
    for r in rows(&direct[1]) {
        for c in ["EMAIL", "PHONE", "NOTES"] {
            if let Some(s) = r[col(&direct[1], c)].as_str() {
                n.push(s.to_owned());
            }
        }
    }
    n
}

fn check_tap(w: &World, dir: &Path, needles: &[String], driver: &str) -> Result<()> {
    let payloads = tap::received_payloads(dir)?;
    let total = tap::tapped_bytes(dir)?;
    assert!(
        total > 1 << 20,
        "{driver}: the tap saw only {total} bytes: it is not recording"
    );
    let n: Vec<&[u8]> = needles.iter().map(|s| s.as_bytes()).collect();
    let found = tap::find_needles(&payloads, &n);
    assert!(
        found.is_empty(),
        "{driver}: PHI reached the agent: {found:?}\nTollgate log:\n{}",
        w.tollgate.log()
    );
    let ssn = Regex::new(r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b").unwrap();
    let found = tap::find_regex(&payloads, &ssn);
    assert!(
        found.is_empty(),
        "{driver}: SSNs reached the agent: {found:?}"
    );
    // Every chunk URL the agent saw points at Tollgate's path on the account host.
    let urls = tap::find_urls(&payloads);
    let chunk_urls: Vec<&String> = urls
        .iter()
        .filter(|u| u.contains("/tollgate/chunks/"))
        .collect();
    assert!(
        !chunk_urls.is_empty(),
        "{driver}: no rewritten chunk URL seen"
    );
    assert!(
        urls.iter()
            .all(|u| !u.contains("X-Amz") && !u.contains("/results/")),
        "{driver}: a storage URL reached the agent: {urls:?}"
    );
    Ok(())
}

fn run_both(w: &World, runner: Runner, driver: &str, direct: &[Value]) -> Result<()> {
    let dir = w.tap_dir(driver);
    let via = runner(&w.agents.path, w.via(&dir), &statements())?;
    check_masked(direct, &via, driver);
    check_tap(w, &dir, &phi_needles(direct), driver)?;
    assert!(
        !w.standin_saw("tg_marker_pred"),
        "refused predicate reached the stand-in"
    );
    assert!(
        !w.standin_saw("tg_marker_flatten"),
        "refused FLATTEN reached the stand-in"
    );
    Ok(())
}

#[test]
fn drivers_receive_masked_results_only() -> Result<()> {
    let w = world("mask")?;
    let direct_py = run_python(&w.direct.path, w.direct_env(), &statements()[..8])?;
    for (i, r) in direct_py.iter().enumerate() {
        assert_eq!(r["ok"], true, "direct statement {i}: {r}");
    }
    // The seeded PHI is really there without Tollgate (the checks below are not vacuous).
    assert!(direct_py[0]["rows"].to_string().contains("Synthetic"));
    run_both(&w, run_python, "python", &direct_py)?;
    let direct_node = run_node(&w.direct.path, w.direct_env(), &statements()[..8])?;
    run_both(&w, run_node, "node", &direct_node)?;
    // Tokens agree across drivers (same key, same value).
    let dir = w.tap_dir("tokens");
    let py = run_python(&w.agents.path, w.via(&dir), &[Statement::sql(CONTACTS)])?;
    let node = run_node(&w.agents.path, w.via(&dir), &[Statement::sql(CONTACTS)])?;
    let mrn = |r: &Value| -> Vec<Value> {
        rows(r)
            .iter()
            .map(|row| row[col(r, "MRN")].clone())
            .collect()
    };
    assert_eq!(mrn(&py[0]), mrn(&node[0]), "tokens differ between drivers");
    // Masked counts are reported per column and rule.
    let log = w.tollgate.log();
    assert!(
        log.contains("result rewritten") && log.contains("analysts-masked"),
        "no masking report in the log:\n{log}"
    );
    Ok(())
}

/// Fetches `url` from `cgroup` (redirected to Tollgate) trusting Tollgate's CA; returns the HTTP
/// status.
fn curl_status(w: &World, cgroup: &Cgroup, url: &str) -> Result<u16> {
    let host = w.standin.account_host();
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "20",
    ])
    .arg("--cacert")
    .arg(w.tollgate.ca_cert())
    .arg("--resolve")
    .arg(format!("{host}:443:{}", w.standin.ip4))
    .arg(url);
    cgroup.place(&mut cmd);
    let out = cmd.output()?;
    let code = String::from_utf8_lossy(&out.stdout).trim().parse::<u16>()?;
    Ok(code)
}

#[test]
fn chunk_urls_are_bound_to_the_live_session() -> Result<()> {
    let w = world("tickets")?;
    let dir = w.tap_dir("tickets");
    let env = w.via(&dir);
    let agents = w.agents.path.clone();
    // The agent reads a chunked masked result, then holds its session open for a while.
    let agent = std::thread::spawn(move || {
        run_python(
            &agents,
            env,
            &[
                Statement::sql(BULK).digest(),
                Statement::sql("SELECT /*standin:slow=6*/ COUNT(*) FROM BULK.PUBLIC.EVENTS"),
            ],
        )
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let url = loop {
        let urls = tap::find_urls(&tap::received_payloads(&dir).unwrap_or_default());
        if let Some(u) = urls.into_iter().find(|u| u.contains("/tollgate/chunks/")) {
            break u;
        }
        if Instant::now() > deadline {
            bail!("no chunk URL reached the agent\n{}", w.tollgate.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Live session, another workload (a sibling cgroup): refused.
    assert_eq!(
        curl_status(&w, &w.others, &url)?,
        403,
        "another workload got the chunk"
    );
    let out = agent.join().expect("agent thread")?;
    assert_eq!(out[0]["ok"], true, "{}", out[0]);
    assert_eq!(out[0]["nrows"], 120_000);
    // The session has ended (the agent logged out): its tickets are forgotten, even for the
    // same workload.
    assert_eq!(
        curl_status(&w, &w.agents, &url)?,
        404,
        "chunk served after logout"
    );
    // A made-up ticket.
    let host = w.standin.account_host();
    let fake = format!("https://{host}/tollgate/chunks/{}", "0".repeat(32));
    assert_eq!(curl_status(&w, &w.agents, &fake)?, 404);
    Ok(())
}

#[test]
fn row_and_byte_caps_hold_across_inline_rows_and_chunks() -> Result<()> {
    let w = world("caps")?;
    let capped = |mut env: AgentEnv| {
        env.user = "capped".into();
        env
    };
    let all = Statement::sql("SELECT * FROM BULK.PUBLIC.EVENTS ORDER BY ID").digest();
    let limited =
        Statement::sql("SELECT * FROM BULK.PUBLIC.EVENTS ORDER BY ID LIMIT 25000").digest();
    for (runner, driver) in [
        (run_python as Runner, "python"),
        (run_node as Runner, "node"),
    ] {
        let expect = runner(
            &w.direct.path,
            capped(w.direct_env()),
            std::slice::from_ref(&limited),
        )?;
        let dir = w.tap_dir(driver);
        let got = runner(
            &w.agents.path,
            capped(w.via(&dir)),
            std::slice::from_ref(&all),
        )?;
        assert_eq!(got[0]["ok"], true, "{driver}: {}", got[0]);
        assert_eq!(got[0]["nrows"], 25_000, "{driver}: cap not applied");
        assert_eq!(
            got[0]["rows_sha256"], expect[0]["rows_sha256"],
            "{driver}: capped rows differ from the first 25,000"
        );
        // User `bytecapped`: at most 1 MiB of the result (by its uncompressed size), i.e. the
        // inline rows, whole chunks, and the share of the crossing chunk's rows that fits.
        let dir = w.tap_dir(&format!("{driver}-bytes"));
        let mut env = w.via(&dir);
        env.user = "bytecapped".into();
        let got = runner(&w.agents.path, env, std::slice::from_ref(&all))?;
        assert_eq!(got[0]["ok"], true, "{driver}: {}", got[0]);
        let n = got[0]["nrows"].as_u64().expect("nrows");
        eprintln!("{driver}: 1 MiB byte cap kept {n} rows");
        assert!(
            (10_000..100_000).contains(&n),
            "{driver}: byte cap kept {n} of 100,000 rows"
        );
        let mut env = w.direct_env();
        env.user = "bytecapped".into();
        let expect = runner(
            &w.direct.path,
            env,
            &[Statement::sql(&format!(
                "SELECT * FROM BULK.PUBLIC.EVENTS ORDER BY ID LIMIT {n}"
            ))
            .digest()],
        )?;
        assert_eq!(
            got[0]["rows_sha256"], expect[0]["rows_sha256"],
            "{driver}: byte-capped rows differ from the first {n}"
        );
    }
    let log = w.tollgate.log();
    assert!(
        log.lines().any(|l| l.contains("result rewritten")
            && l.contains("byte-capped-bulk")
            && l.contains("\"max_bytes\"")),
        "Tollgate's log does not say the byte cap cut the result"
    );
    Ok(())
}

#[test]
fn broken_results_fail_closed_and_tollgate_carries_on() -> Result<()> {
    let w = world("broken")?;
    let chunked = |mode: &str| {
        format!("SELECT /*standin:corrupt_chunks={mode}*/ /*standin:chunk_rows=60000*/ ID, NAME, SSN FROM CLINICAL.EHR.PATIENTS_BULK ORDER BY ID")
    };
    let inline =
        "SELECT /*standin:corrupt_inline*/ ID, NAME, SSN FROM CLINICAL.EHR.PATIENTS ORDER BY ID"
            .to_owned();
    // Drivers retry a failing chunk download about ten times with back-off (Node for about two
    // minutes), so the chunk cases run with Python, in Arrow and in JSON result format.
    let cases: Vec<(Runner, &str, bool, String)> = vec![
        (run_python, "python", false, chunked("truncate")),
        (run_python, "python", false, chunked("garbage")),
        (run_python, "python", true, chunked("badgzip")),
        (run_python, "python", true, chunked("garbage")),
        (run_python, "python", false, inline.clone()),
        (run_node, "node", false, inline),
    ];
    let ssn = Regex::new(r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b").unwrap();
    for (runner, driver, json, sql) in cases {
        let dir = w.tap_dir(driver);
        let started = Instant::now();
        let mut env = w.via(&dir);
        if json {
            env.session_params
                .push(("PYTHON_CONNECTOR_QUERY_RESULT_FORMAT".into(), "JSON".into()));
        }
        let out = runner(
            &w.agents.path,
            env,
            &[Statement::sql(&sql).digest(), Statement::sql(PATIENTS)],
        )?;
        eprintln!("{driver}: {sql}: {:?}: {}", started.elapsed(), out[0]);
        assert_eq!(
            out[0]["ok"], false,
            "{driver}: broken result accepted: {sql}: {}",
            out[0]
        );
        // The daemon carries on: the next statement of the same agent works, masked.
        assert_eq!(out[1]["ok"], true, "{driver}: after {sql}: {}", out[1]);
        assert_eq!(
            out[1]["rows"][0][1], "***",
            "{driver}: after {sql}: {}",
            out[1]
        );
        let payloads = tap::received_payloads(&dir)?;
        let found = tap::find_needles(&payloads, &[b"Synthetic", b"Bulk Person"]);
        assert!(found.is_empty(), "{driver}: {sql}: leaked {found:?}");
        assert!(
            tap::find_regex(&payloads, &ssn).is_empty(),
            "{driver}: {sql}: SSN leaked"
        );
    }
    let log = w.tollgate.log();
    assert!(
        log.contains("chunk failed") || log.contains("result withheld"),
        "{log}"
    );
    Ok(())
}
