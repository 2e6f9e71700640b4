//! The real drivers against the Snowflake stand-in, direct (no Tollgate yet): real TLS, the real
//! hostname resolved to a test host, unmodified agents in a cgroup with a clean environment.
//! These pin what "direct" looks like, so later suites can compare "through Tollgate" with it.

use anyhow::Result;
use serde_json::{json, Value};
use tollgate_e2e::snowflake::{run_node, run_python, Standin, StandinOpts, Statement};
use tollgate_e2e::{unique_tag, Cgroup, Scratch, TestHost};

struct Fixture {
    standin: Standin,
    cgroup: Cgroup,
    scratch: Scratch,
    _host: TestHost,
}

fn fixture(what: &str) -> Result<Fixture> {
    let host = TestHost::create()?;
    let scratch = Scratch::new(what)?;
    let standin = Standin::start(&host, &scratch, StandinOpts::default())?;
    let cgroup = Cgroup::create(&format!("tollgate-test-{what}-{}", unique_tag()))?;
    Ok(Fixture {
        standin,
        cgroup,
        scratch,
        _host: host,
    })
}

/// Statements shared by both drivers; `db` keeps their tables apart.
fn script(db: &str) -> Vec<Statement> {
    vec![
        Statement::sql(&format!("CREATE DATABASE IF NOT EXISTS {db}")),
        Statement::sql(&format!("CREATE SCHEMA IF NOT EXISTS {db}.PUBLIC")),
        Statement::sql(&format!(
            "CREATE TABLE {db}.PUBLIC.T (ID INT, NAME VARCHAR, DOB DATE, BAL NUMBER(10,2), TS TIMESTAMP_NTZ, OK BOOLEAN, F FLOAT)"
        )),
        Statement::sql(&format!("INSERT INTO {db}.PUBLIC.T VALUES (?, ?, ?, ?, ?, ?, ?)"))
            .bindings(json!([1, "x", "2020-01-02", 1.25, "2024-05-06 07:08:09", true, 0.5])),
        Statement::sql(&format!("SELECT * FROM {db}.PUBLIC.T ORDER BY ID")),
        Statement::sql("SELECT ID, NAME, DOB, BALANCE, ADMITTED FROM CLINICAL.EHR.PATIENTS ORDER BY ID"),
        Statement::sql("SELECT * FROM NO_SUCH_TABLE"),
        Statement::sql("SELECT /*standin:slow=2*/ 7 AS X"),
        Statement::sql("SELECT /*standin:expire*/ 8 AS X"),
        Statement::sql("SELECT * FROM BULK.PUBLIC.EVENTS ORDER BY ID").digest(),
    ]
}

fn ok(v: &Value) -> &Value {
    assert_eq!(v["ok"], json!(true), "statement failed: {v}");
    v
}

/// What both drivers must have caused at "Snowflake": login, 333333 polling, renewal, chunks.
fn assert_protocol(requests: &[Value], client_app: &str, format: &str, storage_host: &str) {
    let login = requests
        .iter()
        .find(|r| r["path"] == "/session/v1/login-request")
        .expect("a login request");
    assert_eq!(login["client_app"], client_app);
    assert_eq!(login["authenticator"], "SNOWFLAKE");
    assert!(login["host"]
        .as_str()
        .unwrap()
        .ends_with(".snowflakecomputing.com"));

    let select = requests
        .iter()
        .find(|r| {
            r["sqlText"]
                .as_str()
                .is_some_and(|s| s.ends_with(".PUBLIC.T ORDER BY ID"))
        })
        .expect("the SELECT reached the stand-in");
    assert_eq!(select["result_format"], format);

    // 333333, then GET /queries/<qid>/result until the result is there.
    let slow = requests
        .iter()
        .find(|r| {
            r["sqlText"]
                .as_str()
                .is_some_and(|s| s.contains("standin:slow"))
        })
        .expect("the slow query");
    assert_eq!(slow["code"], "333333");
    let polls: Vec<&Value> = requests
        .iter()
        .filter(|r| r["method"] == "GET" && r["path"].as_str().unwrap().ends_with("/result"))
        .collect();
    assert!(
        polls.iter().any(|r| r["code"] == "333333"),
        "no 333333 poll: {polls:#?}"
    );
    assert!(
        polls.last().unwrap()["code"].is_null(),
        "last poll is not the result"
    );

    // 390112 → token-request → the same requestId again, answered.
    let expired: Vec<&Value> = requests
        .iter()
        .filter(|r| {
            r["sqlText"]
                .as_str()
                .is_some_and(|s| s.contains("standin:expire"))
        })
        .collect();
    assert_eq!(expired.len(), 2, "{expired:#?}");
    assert_eq!(expired[0]["code"], "390112");
    assert_eq!(expired[1]["requestId"], expired[0]["requestId"]);
    assert_eq!(expired[1]["repeated_request_id"], true);
    assert!(expired[1]["code"].is_null());
    assert!(requests
        .iter()
        .any(|r| r["path"] == "/session/token-request" && r["renewed"] == true));

    // The 100k-row result: first chunk inline, the rest fetched from the storage host with SSE-C.
    let bulk = requests
        .iter()
        .find(|r| {
            r["sqlText"]
                .as_str()
                .is_some_and(|s| s.contains("BULK.PUBLIC.EVENTS"))
        })
        .expect("the bulk query");
    let n_chunks = bulk["chunks"].as_u64().unwrap();
    assert!(n_chunks >= 9, "{bulk}");
    let fetched: Vec<&Value> = requests
        .iter()
        .filter(|r| r["path"].as_str().unwrap().starts_with("/results/"))
        .collect();
    assert_eq!(fetched.len() as u64, n_chunks);
    for f in fetched {
        assert_eq!(f["host"], storage_host);
        assert_eq!(f["status"], 200);
        assert!(f["headers"]["x-amz-server-side-encryption-customer-key"].is_string());
    }
}

#[test]
fn python_driver_direct_against_standin() -> Result<()> {
    let f = fixture("drv-py")?;
    let out = run_python(
        &f.cgroup.path,
        f.standin.agent_env(&f.scratch),
        &script("PYDB"),
    )?;
    assert_eq!(
        out.len(),
        10,
        "{out:#?}\nstand-in:\n{}",
        f.standin.log_tail()
    );
    ok(&out[3]);
    assert_eq!(out[3]["rows"], json!([[1]]));
    assert_eq!(
        ok(&out[4])["rows"],
        json!([[1, "x", {"date": "2020-01-02"}, {"decimal": "1.25"}, {"timestamp": "2024-05-06T07:08:09"}, true, 0.5]])
    );
    assert_eq!(
        ok(&out[5])["rows"],
        json!([
            [1, "Alice Synthetic", {"date": "1980-01-02"}, {"decimal": "10.50"}, {"timestamp": "2024-05-06T07:08:09.123456"}],
            [2, "Bob Synthetic", {"date": "1975-11-30"}, {"decimal": "0.00"}, {"timestamp": "2024-06-01T00:00:00"}],
            [3, "Carol Synthetic", {"date": "1990-03-04"}, {"decimal": "1.25"}, null]
        ])
    );
    assert_eq!(out[6]["ok"], false);
    assert_eq!(out[6]["error"], "ProgrammingError");
    assert_eq!(out[6]["errno"], 2003);
    assert_eq!(out[6]["sqlstate"], "42S02");
    assert!(out[6]["message"]
        .as_str()
        .unwrap()
        .contains("Table with name NO_SUCH_TABLE does not exist"));
    assert_eq!(ok(&out[7])["rows"], json!([[7]]));
    assert_eq!(ok(&out[8])["rows"], json!([[8]]));
    let bulk = ok(&out[9]);
    assert_eq!(bulk["nrows"], 100_000);
    assert_eq!(bulk["first"], json!([0, "event-0", {"decimal": "0.0"}]));
    assert_eq!(
        bulk["last"],
        json!([99999, "event-99999", {"decimal": "49999.5"}])
    );
    assert_protocol(
        &f.standin.requests(),
        "PythonConnector",
        "arrow",
        &f.standin.opts.storage_host,
    );

    // Two cursors of one session at once, and asyncExec (333334 → monitoring → result).
    let mut env = f.standin.agent_env(&f.scratch);
    env.concurrent = true;
    let out = run_python(
        &f.cgroup.path,
        env,
        &[
            Statement::sql(
                "SELECT /*standin:slow=1*/ NAME FROM CLINICAL.EHR.PATIENTS WHERE ID = 1",
            ),
            Statement::sql("SELECT COUNT(*) AS N FROM CLINICAL.EHR.VISITS"),
            Statement::sql("SELECT 9 AS Y").async_exec(),
        ],
    )?;
    assert_eq!(ok(&out[0])["rows"], json!([["Alice Synthetic"]]));
    assert_eq!(ok(&out[1])["rows"], json!([[2]]));
    assert_eq!(ok(&out[2])["rows"], json!([[9]]));
    let reqs = f.standin.requests();
    assert!(reqs.iter().any(|r| r["code"] == "333334"));
    let logins = reqs
        .iter()
        .filter(|r| r["path"] == "/session/v1/login-request")
        .count();
    assert_eq!(logins, 2, "one login per agent run");
    Ok(())
}

#[test]
fn node_driver_direct_against_standin() -> Result<()> {
    let f = fixture("drv-node")?;
    let out = run_node(
        &f.cgroup.path,
        f.standin.agent_env(&f.scratch),
        &script("NODEDB"),
    )?;
    assert_eq!(
        out.len(),
        10,
        "{out:#?}\nstand-in:\n{}",
        f.standin.log_tail()
    );
    assert_eq!(ok(&out[3])["rows"], json!([[1]]));
    assert_eq!(
        ok(&out[4])["rows"],
        json!([[1, "x", {"date": "2020-01-02T00:00:00Z"}, 1.25, {"timestamp_ntz": "2024-05-06T07:08:09Z"}, true, 0.5]])
    );
    let patients = ok(&out[5])["rows"].as_array().unwrap().clone();
    assert_eq!(patients.len(), 3);
    assert_eq!(
        patients[0],
        json!([1, "Alice Synthetic", {"date": "1980-01-02T00:00:00Z"}, 10.5, {"timestamp_ntz": "2024-05-06T07:08:09Z"}])
    );
    assert_eq!(patients[2][4], Value::Null);
    assert_eq!(out[6]["ok"], false);
    assert_eq!(out[6]["errno"], "002003");
    assert_eq!(out[6]["sqlstate"], "42S02");
    assert!(out[6]["message"]
        .as_str()
        .unwrap()
        .contains("Table with name NO_SUCH_TABLE does not exist"));
    assert_eq!(ok(&out[7])["rows"], json!([[7]]));
    assert_eq!(ok(&out[8])["rows"], json!([[8]]));
    let bulk = ok(&out[9]);
    assert_eq!(bulk["nrows"], 100_000);
    assert_eq!(bulk["first"], json!([0, "event-0", 0]));
    assert_eq!(bulk["last"], json!([99999, "event-99999", 49999.5]));
    assert_protocol(
        &f.standin.requests(),
        "JavaScript",
        "json",
        &f.standin.opts.storage_host,
    );

    // Two statements of one connection at once.
    let mut env = f.standin.agent_env(&f.scratch);
    env.concurrent = true;
    let out = run_node(
        &f.cgroup.path,
        env,
        &[
            Statement::sql(
                "SELECT /*standin:slow=1*/ NAME FROM CLINICAL.EHR.PATIENTS WHERE ID = 1",
            ),
            Statement::sql("SELECT COUNT(*) AS N FROM CLINICAL.EHR.VISITS"),
        ],
    )?;
    assert_eq!(ok(&out[0])["rows"], json!([["Alice Synthetic"]]));
    assert_eq!(ok(&out[1])["rows"], json!([[2]]));
    Ok(())
}
