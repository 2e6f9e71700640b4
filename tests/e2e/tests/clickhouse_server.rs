//! The test ClickHouse server (`tests/clickhouse/chserver.py` through
//! `tollgate_e2e::clickhouse`), and the facts the audit sink relies on, each asserted against
//! the real engine (ClickHouse 26.9 from `chdb-core`):
//!
//! - it starts on loopback and reports version ≥ 26;
//! - the audit table's types and clauses are accepted and round-trip: DateTime64(6),
//!   LowCardinality(String), Map(String, String), UUID, Array(String), ReplacingMergeTree with
//!   a monthly partition, a 6-year TTL and `non_replicated_deduplication_window`;
//! - the same INSERT sent twice with the same `insert_deduplication_token` is stored once
//!   (`count()` without FINAL), also after a kill -9 and restart;
//! - access management by SQL is unavailable in this engine (`CREATE USER` → code 514), while a
//!   declared insert-only user can INSERT over HTTP (headers or basic auth) and is refused
//!   SELECT, DROP and ALTER (code 497, ACCESS_DENIED);
//! - after kill -9 and restart on the same data directory, rows and users are still there;
//! - the sink's own statements (`tollgate_audit::clickhouse`: migrations, the reader) send
//!   values as server-side query parameters, so values with quotes, backslashes, braces or
//!   newlines are stored and matched unchanged;
//! - the analysts' `sessions` view lists session and connection chains, never a policy
//!   reload's chain (`policy:<id>`), also after an upgrade from a schema whose view did.
//!
//! Needs the chdb venv from `cargo xtask setup` and `curl`; nothing here is skipped.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use tollgate_e2e::clickhouse::{Auth, ClickHouse};
use tollgate_e2e::Scratch;

/// The audit table shape the sink will use (names here are the test's own).
const CREATE_EVENTS: &str = "CREATE TABLE audit.events (
    ts DateTime64(6, 'UTC'),
    event_id UUID,
    kind LowCardinality(String),
    principal LowCardinality(String),
    attrs Map(String, String),
    tables Array(String),
    sql String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (kind, ts, event_id)
TTL toDateTime(ts) + INTERVAL 6 YEAR
SETTINGS non_replicated_deduplication_window = 1000";

/// Two rows as JSONEachRow (one INSERT = one block).
const BATCH_1: &str = r#"INSERT INTO audit.events FORMAT JSONEachRow
{"ts":"2026-05-01 12:00:00.123456","event_id":"11111111-1111-4111-8111-111111111111","kind":"query","principal":"ALICE","attrs":{"warehouse":"WH1","role":"ANALYST"},"tables":["DB.S.T1","DB.S.T2"],"sql":"select * from t1 join t2"}
{"ts":"2026-05-01 12:00:01.000001","event_id":"22222222-2222-4222-8222-222222222222","kind":"login","principal":"BOB","attrs":{},"tables":[],"sql":""}
"#;

/// Two other rows.
const BATCH_2: &str = r#"INSERT INTO audit.events FORMAT JSONEachRow
{"ts":"2026-06-02 08:30:00.000002","event_id":"33333333-3333-4333-8333-333333333333","kind":"query","principal":"ALICE","attrs":{"k":"v"},"tables":["DB.S.T3"],"sql":"select 3"}
{"ts":"2026-06-02 08:30:00.999999","event_id":"44444444-4444-4444-8444-444444444444","kind":"block","principal":"EVE","attrs":{"rule":"r1"},"tables":["DB.S.T4"],"sql":"drop table t4"}
"#;

const WRITER: &str = "tollgate_writer";
const WRITER_PASSWORD: &str = "writer-pw-Xq7";

fn count(ch: &ClickHouse) -> Result<u64> {
    Ok(ch
        .query("SELECT count() FROM audit.events")?
        .trim()
        .parse()?)
}

fn start(what: &str) -> Result<(Scratch, ClickHouse)> {
    let scratch = Scratch::new(what)?;
    let t = Instant::now();
    let ch = ClickHouse::start(&scratch.path)?;
    eprintln!("[{what}] ClickHouse started in {:?}", t.elapsed());
    Ok((scratch, ch))
}

fn with_events_table(ch: &ClickHouse) -> Result<()> {
    ch.query("CREATE DATABASE audit")?;
    ch.query(CREATE_EVENTS)?;
    Ok(())
}

#[test]
fn starts_on_loopback_with_a_modern_version_and_accepts_the_audit_table() -> Result<()> {
    let (_scratch, ch) = start("ch-types")?;
    let version = ch.query("SELECT version()")?;
    let major: u32 = version.trim().split('.').next().unwrap_or("0").parse()?;
    assert!(major >= 26, "version {version:?}");
    // Only loopback listeners, on the two ports asked for.
    assert!(ch.http_url().starts_with("http://127.0.0.1:"));
    assert!(std::net::TcpStream::connect(ch.tcp_addr()).is_ok());
    // `default` is password-less and restricted to loopback (ClickHouse shows 127.0.0.1 + ::1
    // as host name `localhost`).
    assert_eq!(
        ch.query("SELECT auth_type, host_ip, host_names FROM system.users WHERE name = 'default'")?
            .trim(),
        "['no_password']\t[]\t['localhost']"
    );

    with_events_table(&ch)?;
    let ddl = ch.query("SHOW CREATE TABLE audit.events FORMAT TSVRaw")?;
    for part in [
        "`ts` DateTime64(6, 'UTC')",
        "`event_id` UUID",
        "`kind` LowCardinality(String)",
        "`attrs` Map(String, String)",
        "`tables` Array(String)",
        "ENGINE = ReplacingMergeTree",
        "PARTITION BY toYYYYMM(ts)",
        "TTL toDateTime(ts) + toIntervalYear(6)",
        "non_replicated_deduplication_window = 1000",
    ] {
        assert!(ddl.contains(part), "{part:?} missing from:\n{ddl}");
    }

    ch.query(BATCH_1)?;
    ch.query(BATCH_2)?;
    let rows = ch.query(
        "SELECT toString(ts), event_id, kind, principal, attrs['warehouse'], length(attrs), \
         tables, toTypeName(kind) FROM audit.events ORDER BY ts",
    )?;
    let rows: Vec<&str> = rows.lines().collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(
        rows[0],
        "2026-05-01 12:00:00.123456\t11111111-1111-4111-8111-111111111111\tquery\tALICE\tWH1\t2\t\
         ['DB.S.T1','DB.S.T2']\tLowCardinality(String)"
    );
    // Microseconds survive at both ends of the second.
    assert!(rows[1].starts_with("2026-05-01 12:00:01.000001\t"));
    assert!(rows[3].starts_with("2026-06-02 08:30:00.999999\t"));
    // Two months → two partitions.
    assert_eq!(
        ch.query(
            "SELECT groupArray(partition) FROM (SELECT DISTINCT partition FROM system.parts \
             WHERE database = 'audit' AND table = 'events' AND active ORDER BY partition)"
        )?
        .trim(),
        "['202605','202606']"
    );
    Ok(())
}

/// Values that break SQL built from strings, and would be altered by any escaping that
/// does not match the server's.
const AWKWARD: &[&str] = &[
    "it's",
    r"back\slash",
    r"a'b\'c",
    "{session:String}",
    "{x:Identifier}",
    "?",
    "?fields",
    "'; DROP TABLE tollgate.events; --",
    "line\nbreak\ttab",
    "\u{fc}n\u{ef}c\u{f6}d\u{e9} \u{2603}",
    r"\N",
    "",
];

#[test]
fn the_sinks_parameterised_statements_carry_awkward_values_unchanged() -> Result<()> {
    use tollgate_audit::clickhouse::{fetch, migrate, ClickHouseConfig, Selection};
    let (_scratch, ch) = start("ch-params")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut cfg = ClickHouseConfig::new(ch.http_url());
    // The migrations record their descriptions through parameters.
    assert_eq!(rt.block_on(migrate(&cfg))?, vec![1, 2, 4]);
    assert_eq!(
        ch.query("SELECT version, description FROM tollgate.schema_migrations ORDER BY version")?,
        "1\tevents table\n2\tanalyst views\n4\tsessions view: session chains only\n"
    );
    assert_eq!(
        rt.block_on(migrate(&cfg))?,
        Vec::<u32>::new(),
        "applied once"
    );

    // One event per awkward value (as its session and its host), one microsecond apart, and a
    // decoy that a sloppy match (a prefix, an unescaped quote) would also find.
    let mut rows = String::from("INSERT INTO tollgate.events FORMAT JSONEachRow\n");
    let row = |i: usize, value: &str| {
        serde_json::json!({
            "event_id": format!("00000000-0000-4000-8000-{i:012}"),
            "session_id": value,
            "host": value,
            "seq": 0,
            "host_seq": i,
            "ts": format!("2026-05-01 12:00:00.{i:06}"),
            "kind": "login",
        })
        .to_string()
    };
    for (i, v) in AWKWARD.iter().enumerate() {
        rows.push_str(&row(i + 1, v));
        rows.push('\n');
    }
    rows.push_str(&row(999, "it's a decoy"));
    rows.push('\n');
    ch.query(&rows)?;

    for (i, v) in AWKWARD.iter().enumerate() {
        let by_session = rt.block_on(fetch(
            &cfg,
            &Selection {
                session: Some((*v).to_owned()),
                ..Selection::default()
            },
        ))?;
        assert_eq!(by_session.len(), 1, "session {v:?}: {by_session:?}");
        assert_eq!(by_session[0].session_id, *v);
        assert_eq!(by_session[0].host, *v);
        assert_eq!(by_session[0].host_seq, i as u64 + 1);
        let by_host = rt.block_on(fetch(
            &cfg,
            &Selection {
                host: Some((*v).to_owned()),
                since_us: Some(by_session[0].ts_us),
                until_us: Some(by_session[0].ts_us + 1),
                ..Selection::default()
            },
        ))?;
        assert_eq!(by_host.len(), 1, "host {v:?}: {by_host:?}");
        assert_eq!(by_host[0].event_id, by_session[0].event_id);
    }
    // The time range alone: exactly the events inside it.
    let mut all = rt.block_on(fetch(&cfg, &Selection::default()))?;
    assert_eq!(all.len(), AWKWARD.len() + 1);
    all.sort_by_key(|e| e.host_seq);
    let mut window = rt.block_on(fetch(
        &cfg,
        &Selection {
            since_us: Some(all[1].ts_us),
            until_us: Some(all[3].ts_us),
            ..Selection::default()
        },
    ))?;
    window.sort_by_key(|e| e.host_seq);
    assert_eq!(
        window.iter().map(|e| e.host_seq).collect::<Vec<_>>(),
        vec![2, 3],
        "{window:?}"
    );

    // The writer's password is a parameter too: the statement parses and reaches the access
    // storage, which this engine does not have (code 514), whatever the password holds.
    cfg.create_writer = true;
    cfg.admin_user = Some("default".into());
    cfg.user = "tollgate_writer".into();
    cfg.password = Some(r"pa'ss\{word:String}".into());
    let err = rt
        .block_on(migrate(&cfg))
        .expect_err("CREATE USER is unavailable here");
    assert!(err.to_string().contains("Code: 514"), "{err}");
    // A name that is not a plain identifier is refused before anything is sent.
    cfg.database = "tollgate`; DROP DATABASE tollgate; --".into();
    let err = rt.block_on(migrate(&cfg)).expect_err("bad database name");
    assert!(
        err.to_string().contains("not a usable database name"),
        "{err}"
    );
    assert_eq!(
        ch.query("SELECT count() FROM tollgate.events")?.trim(),
        (AWKWARD.len() + 1).to_string()
    );
    Ok(())
}

/// The events of four chains as the sink stores them (JSONEachRow into `tollgate.events`): a
/// closed Snowflake session, an open one, an intercepted connection, and a policy reload.
const CHAINS: &[(&str, &str, &str)] = &[
    // (session_id, kind, decision)
    ("1f2e3d4c5b6a-0", "login", "ok"),
    ("1f2e3d4c5b6a-0", "query", ""),
    ("1f2e3d4c5b6a-0", "decision", "allow"),
    ("1f2e3d4c5b6a-0", "result", "allow"),
    ("1f2e3d4c5b6a-0", "session_end", ""),
    ("1f2e3d4c5b6a-1", "login", "ok"),
    ("1f2e3d4c5b6a-1", "query", ""),
    ("1f2e3d4c5b6a-1", "decision", "deny"),
    ("conn:7", "connection", "intercept"),
    ("conn:7", "disconnect", ""),
    (
        "policy:0b6c2f7e-3d1a-4c55-9a0e-5f4d3c2b1a09",
        "policy_reload",
        "ok",
    ),
];

/// `tollgate.sessions` as TSV: session, user, queries, denied, rows, closed.
fn sessions(ch: &ClickHouse) -> Result<String> {
    ch.query(
        "SELECT session_id, sf_user, queries, denied, rows_returned, closed \
         FROM tollgate.sessions ORDER BY session_id",
    )
}

#[test]
fn a_policy_reload_is_not_a_session_in_the_sessions_view() -> Result<()> {
    use tollgate_audit::clickhouse::{migrate, ClickHouseConfig};
    let (_scratch, ch) = start("ch-sessions")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cfg = ClickHouseConfig::new(ch.http_url());
    rt.block_on(migrate(&cfg))?;

    let mut rows = String::from("INSERT INTO tollgate.events FORMAT JSONEachRow\n");
    let mut seq = std::collections::HashMap::new();
    for (i, (session, kind, decision)) in CHAINS.iter().enumerate() {
        let n = seq.entry(*session).or_insert(0u64);
        let login = *kind == "login";
        rows.push_str(
            &serde_json::json!({
                "event_id": format!("00000000-0000-4000-8000-{i:012}"),
                "session_id": session,
                "seq": *n,
                "host_seq": i,
                "ts": format!("2026-05-01 12:00:00.{i:06}"),
                "kind": kind,
                "host": "agent-host-1",
                "decision": decision,
                "sf_user": if login { "AGENT1" } else { "" },
                "comm": if login { "python3" } else { "" },
                "rows": if *kind == "result" { 3 } else { 0 },
            })
            .to_string(),
        );
        rows.push('\n');
        *n += 1;
    }
    ch.query(&rows)?;

    let expected = "1f2e3d4c5b6a-0\tAGENT1\t1\t0\t3\t1\n\
                    1f2e3d4c5b6a-1\tAGENT1\t1\t1\t0\t0\n\
                    conn:7\t\t0\t0\t0\t1\n";
    assert_eq!(sessions(&ch)?, expected);
    // What the documented question "which sessions never ended cleanly?" finds.
    assert_eq!(
        ch.query("SELECT session_id FROM tollgate.sessions WHERE NOT closed")?,
        "1f2e3d4c5b6a-1\n"
    );

    // A schema migrated by an older build has the version-2 view, which lists the reload as
    // an open session; migrating replaces it.
    ch.query("DELETE FROM tollgate.schema_migrations WHERE version = 4")?;
    ch.query(
        "CREATE OR REPLACE VIEW tollgate.sessions AS
SELECT session_id, host, min(ts) AS started, max(ts) AS last_event,
       anyIf(sf_user, kind = 'login') AS sf_user, anyIf(sf_role, kind = 'login') AS sf_role,
       anyIf(comm, kind = 'login') AS comm, countIf(kind = 'query') AS queries,
       countIf(kind = 'decision' AND decision = 'deny') AS denied,
       sumIf(rows, kind = 'result') AS rows_returned,
       countIf(kind IN ('session_end', 'disconnect')) > 0 AS closed
FROM tollgate.events FINAL
GROUP BY session_id, host",
    )?;
    assert_eq!(
        ch.query("SELECT session_id FROM tollgate.sessions WHERE NOT closed ORDER BY session_id")?,
        "1f2e3d4c5b6a-1\npolicy:0b6c2f7e-3d1a-4c55-9a0e-5f4d3c2b1a09\n",
        "the old view, as the finding describes it"
    );
    assert_eq!(rt.block_on(migrate(&cfg))?, vec![4]);
    assert_eq!(sessions(&ch)?, expected);
    Ok(())
}

#[test]
fn same_insert_with_same_deduplication_token_is_stored_once() -> Result<()> {
    let (_scratch, mut ch) = start("ch-dedup")?;
    with_events_table(&ch)?;
    let token = |t| [("insert_deduplication_token", t)];

    ch.request(BATCH_1, &token("batch-1"), Auth::Default)?;
    assert_eq!(count(&ch)?, 2);
    // THE key fact: the retried INSERT (same token) is accepted (HTTP 200) and stores nothing.
    ch.request(BATCH_1, &token("batch-1"), Auth::Default)?;
    assert_eq!(count(&ch)?, 2, "same token must not store the rows twice");
    // A different token with different rows is stored.
    ch.request(BATCH_2, &token("batch-2"), Auth::Default)?;
    assert_eq!(count(&ch)?, 4);
    // The token decides, not the content: the same rows under a new token are stored again
    // (ReplacingMergeTree would fold them only at merge time or with FINAL).
    ch.request(BATCH_1, &token("batch-1-again"), Auth::Default)?;
    assert_eq!(count(&ch)?, 6);
    assert_eq!(
        ch.query("SELECT count() FROM audit.events FINAL")?.trim(),
        "4"
    );

    // The deduplication log lives with the table: it survives kill -9 and restart.
    ch.kill();
    ch.restart()?;
    ch.request(BATCH_2, &token("batch-2"), Auth::Default)?;
    assert_eq!(count(&ch)?, 6, "token remembered across kill -9 + restart");

    // Without a token, an identical block is deduplicated by its content hash (the window is
    // on for the table), so distinct events must never be byte-identical batches.
    let t = "INSERT INTO audit.events FORMAT JSONEachRow\n\
             {\"ts\":\"2026-07-01 00:00:00.000000\",\"event_id\":\"55555555-5555-4555-8555-555555555555\",\"kind\":\"query\",\"principal\":\"X\",\"attrs\":{},\"tables\":[],\"sql\":\"\"}\n";
    ch.query(t)?;
    ch.query(t)?;
    assert_eq!(count(&ch)?, 7);
    Ok(())
}

#[test]
fn sql_user_management_is_unavailable_and_a_declared_insert_only_user_can_only_insert() -> Result<()>
{
    let (_scratch, mut ch) = start("ch-users")?;
    with_events_table(&ch)?;

    // This engine (LocalServer) has only the read-only users.xml access storage.
    let err = ch
        .query(&format!(
            "CREATE USER {WRITER} IDENTIFIED WITH sha256_password BY '{WRITER_PASSWORD}'"
        ))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Code: 514") && err.contains("ACCESS_STORAGE_FOR_INSERTION_NOT_FOUND"),
        "{err}"
    );
    let err = ch
        .query(&format!("GRANT INSERT ON audit.events TO {WRITER}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("UNKNOWN_ROLE"), "{err}");

    // Declared users (users.d, read at start-up) work like SQL-created ones would.
    let t = Instant::now();
    ch.declare_user(WRITER, WRITER_PASSWORD, &["INSERT ON audit.events"])?;
    eprintln!("[ch-users] restart with a declared user: {:?}", t.elapsed());
    assert_eq!(
        ch.query(&format!("SHOW GRANTS FOR {WRITER}"))?.trim(),
        format!("GRANT INSERT ON audit.events TO {WRITER}")
    );
    assert_eq!(
        ch.query(&format!(
            "SELECT auth_type, host_names FROM system.users WHERE name = '{WRITER}'"
        ))?
        .trim(),
        "['sha256_password']\t['localhost']"
    );

    // INSERT works with either way of passing credentials over HTTP.
    ch.request(BATCH_1, &[], Auth::Headers(WRITER, WRITER_PASSWORD))?;
    ch.request(BATCH_2, &[], Auth::Basic(WRITER, WRITER_PASSWORD))?;
    assert_eq!(count(&ch)?, 4);
    // ... and with a deduplication token (a query-level setting the user may set).
    ch.request(
        BATCH_1,
        &[("insert_deduplication_token", "w-1")],
        Auth::Headers(WRITER, WRITER_PASSWORD),
    )?;
    ch.request(
        BATCH_1,
        &[("insert_deduplication_token", "w-1")],
        Auth::Headers(WRITER, WRITER_PASSWORD),
    )?;
    assert_eq!(count(&ch)?, 6);

    // Everything else is refused with ACCESS_DENIED (HTTP 403).
    for sql in [
        "SELECT count() FROM audit.events",
        "SELECT * FROM audit.events",
        "DROP TABLE audit.events",
        "TRUNCATE TABLE audit.events",
        "ALTER TABLE audit.events DELETE WHERE 1",
        "ALTER TABLE audit.events DROP PARTITION 202605",
        "ALTER TABLE audit.events MODIFY TTL toDateTime(ts) + INTERVAL 1 DAY",
        "DELETE FROM audit.events WHERE 1",
        "CREATE TABLE audit.other (a UInt8) ENGINE = MergeTree ORDER BY a",
    ] {
        let err = ch
            .query_as(WRITER, WRITER_PASSWORD, sql)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("HTTP 403") && err.contains("Code: 497") && err.contains("ACCESS_DENIED"),
            "{sql}: {err}"
        );
        eprintln!("[ch-users] {sql} → {err}");
    }
    assert_eq!(count(&ch)?, 6, "nothing was dropped or deleted");

    // A wrong password is refused.
    let err = ch
        .query_as(
            WRITER,
            "wrong",
            "INSERT INTO audit.events FORMAT JSONEachRow {}",
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Code: 516") && err.contains("AUTHENTICATION_FAILED"),
        "{err}"
    );
    Ok(())
}

#[test]
fn kill_9_then_restart_keeps_rows_users_and_ports() -> Result<()> {
    let (_scratch, mut ch) = start("ch-kill")?;
    with_events_table(&ch)?;
    ch.declare_user(WRITER, WRITER_PASSWORD, &["INSERT ON audit.events"])?;
    ch.query_as(WRITER, WRITER_PASSWORD, BATCH_1)?;
    let (http, tcp) = (ch.http_port, ch.tcp_port);
    let pid = ch.pid().expect("running");

    ch.kill();
    assert!(!ch.is_running());
    assert!(
        ch.query("SELECT 1").is_err(),
        "nothing listens after kill -9"
    );
    // The process is gone, not just unresponsive.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

    let t = Instant::now();
    ch.restart()?;
    eprintln!("[ch-kill] restart after kill -9: {:?}", t.elapsed());
    assert_eq!((ch.http_port, ch.tcp_port), (http, tcp));
    assert_eq!(count(&ch)?, 2, "rows inserted before kill -9 are there");
    assert_eq!(
        ch.query("SELECT event_id FROM audit.events ORDER BY ts LIMIT 1")?
            .trim(),
        "11111111-1111-4111-8111-111111111111"
    );
    // The declared user still exists and still can only insert.
    ch.query_as(WRITER, WRITER_PASSWORD, BATCH_2)?;
    assert_eq!(count(&ch)?, 4);
    assert!(ch
        .query_as(WRITER, WRITER_PASSWORD, "SELECT 1 FROM audit.events")
        .is_err());

    // Kill in the middle of a stream of inserts (another thread, its own curl processes):
    // every acknowledged insert survives; the one cut off may or may not have landed.
    let url = ch.http_url();
    let acked_so_far = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = acked_so_far.clone();
    let inserter = std::thread::spawn(move || {
        let mut acked = 0u64;
        for i in 0..2000u32 {
            let row = format!(
                "INSERT INTO audit.events FORMAT JSONEachRow\n{{\"ts\":\"2026-08-01 00:00:00.{i:06}\",\"event_id\":\"00000000-0000-4000-8000-{i:012}\",\"kind\":\"query\",\"principal\":\"K\",\"attrs\":{{}},\"tables\":[],\"sql\":\"\"}}\n"
            );
            let out = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", "--max-time", "10", "-u"])
                .arg(format!("{WRITER}:{WRITER_PASSWORD}"))
                .args(["--data-binary", &row, &url])
                .status();
            if !out.is_ok_and(|s| s.success()) {
                break;
            }
            acked += 1;
            progress.store(acked, std::sync::atomic::Ordering::SeqCst);
        }
        acked
    });
    // Kill once the stream is flowing (a few inserts acknowledged), well before its end.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked_so_far.load(std::sync::atomic::Ordering::SeqCst) < 20 {
        assert!(
            Instant::now() < deadline && !inserter.is_finished(),
            "the inserts did not get going: {} acknowledged",
            acked_so_far.load(std::sync::atomic::Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    ch.kill();
    let acked = inserter.join().expect("inserter thread");
    eprintln!("[ch-kill] {acked} inserts acknowledged before kill -9");
    assert!(
        acked > 0 && acked < 2000,
        "the kill must land mid-stream ({acked})"
    );
    ch.restart()?;
    let after = count(&ch)?;
    assert!(
        after == 4 + acked || after == 4 + acked + 1,
        "{after} rows after restart, {acked} acknowledged inserts (+4 earlier)"
    );
    ch.wait_for("SELECT 1", "1", Duration::from_secs(5))?;
    Ok(())
}
