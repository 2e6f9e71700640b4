//! `cargo xtask bench --only audit`: the audit trail's figures, each against a baseline
//! measured in the same run.
//!
//! 1. Shipping: a spool filled with synthetic events shaped like a real session (per query one
//!    `query`, one `decision` and one `result` event with masked columns, redacted SQL of about
//!    150 characters) drained into a real ClickHouse by [`Shipper`], for several `batch_max`;
//!    baseline: the same rows inserted with the `clickhouse` client directly (no spool reading,
//!    no cursor), in batches of the same size.
//! 2. The durable audit trail on the request path: per-query latency with the real Python and
//!    Node drivers directly to the stand-in, through Tollgate with `audit.fsync: true` (the default) and
//!    through Tollgate with `audit.fsync: false` and through mitmproxy in transparent mode
//!    (the peer a user would pick instead), with each proxy's CPU per query; plus the library-level latency of
//!    [`Spool::append_many`] (2 events, then 1) with and without `fdatasync`.
//! 3. Spool growth per 1,000 queries (end to end) and per 1,000 synthetic events.
//!
//! The library-level parts run in this process, so they must be optimised: when started from a
//! debug build (`cargo xtask` is one), this re-runs itself from the release build of xtask that
//! `cargo xtask bench` has just built beside it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tollgate_audit::clickhouse::{migrate, ClickHouseConfig, EventRow, Shipper};
use tollgate_audit::{Event, EventKind, HostKey, MaskedCount, Spool, SpoolOptions};
use tollgate_e2e::clickhouse::ClickHouse;
use tollgate_e2e::snowflake::{run_node, run_python, AgentEnv, Standin, StandinOpts, Statement};
use tollgate_e2e::{Cgroup, Scratch, TestHost, Tollgate, TollgateOpts};

use crate::bench::{cgroup_cpu_us, chrono_now};
use crate::mitm::Mitm;

/// Set in the release re-run so that it does not re-run itself.
const INNER: &str = "TOLLGATE_BENCH_AUDIT_RELEASE";
/// Set to run part 2 only (end to end), printing a summary instead of the report.
const E2E_ONLY: &str = "TOLLGATE_BENCH_AUDIT_E2E_ONLY";

/// Synthetic queries in the spool (three events each).
const SHIP_QUERIES: usize = 40_000;
/// Queries per synthetic session (one chain).
const QUERIES_PER_SESSION: usize = 100;
/// `batch_max` values the shipper is measured with (the default is 5,000).
const BATCHES: [usize; 3] = [1000, 5000, 20_000];

/// Point queries per agent run, the first `WARMUP` not counted, `ROUNDS` runs per mode.
const QUERIES: usize = 300;
const WARMUP: usize = 20;
const ROUNDS: usize = 5;
pub(crate) const POINT_QUERY: &str = "SELECT ID, NAME FROM CLINICAL.EHR.PATIENTS WHERE ID = 1";

/// Iterations of the library-level append benchmark (per `sync` setting).
const APPEND_ITERS: usize = 2000;

pub(crate) const POLICY: &str = r#"version: 1
defaults:
  unparseable_sql: deny
  unknown_statement: deny
  unresolved_bindings: deny
  no_rule_matched: deny
rules:
  - id: bench-allow-agent1
    match:
      snowflake: { user: [agent1] }
    action: allow
"#;

/// Redacted statements (literals replaced by `?`), as the proxy stores them: about 150
/// characters each.
const SQL: [&str; 6] = [
    "SELECT p.ID, p.NAME, p.SSN, p.DOB, p.MRN FROM CLINICAL.EHR.PATIENTS p WHERE p.ID = ? AND p.STATUS IN (?, ?) ORDER BY p.ID LIMIT ?",
    "SELECT c.PATIENT_ID, c.EMAIL, c.PHONE, c.ZIP FROM CLINICAL.EHR.PATIENT_CONTACTS c WHERE c.ZIP LIKE ? AND c.UPDATED_AT > ? LIMIT ?",
    "SELECT p.NAME, p.DOB, COUNT(*) AS N FROM CLINICAL.EHR.PATIENTS p JOIN CLINICAL.EHR.PATIENT_CONTACTS c ON c.PATIENT_ID = p.ID GROUP BY ?, ?",
    "SELECT ID, NAME, SSN FROM CLINICAL.EHR.PATIENTS_BULK WHERE ID BETWEEN ? AND ? AND NAME IS NOT NULL ORDER BY ID DESC LIMIT ? OFFSET ?",
    "WITH recent AS (SELECT ID, NAME, SSN FROM CLINICAL.EHR.PATIENTS WHERE DOB > ?) SELECT ID, NAME, SSN FROM recent WHERE ID % ? = ? LIMIT ?",
    "SELECT p.ID, p.MRN, p.NAME, c.EMAIL FROM CLINICAL.EHR.PATIENTS p LEFT JOIN CLINICAL.EHR.PATIENT_CONTACTS c ON c.PATIENT_ID = p.ID WHERE p.ID = ?",
];

/// Runs the audit benchmarks and writes `out`.
pub fn audit(out: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("locating xtask")?;
    let profile_dir = exe.parent().context("xtask's directory")?;
    let release_dir = profile_dir
        .parent()
        .context("the target directory")?
        .join("release");
    if cfg!(debug_assertions) && std::env::var_os(INNER).is_none() {
        let release = release_dir.join("xtask");
        ensure!(
            release.exists(),
            "{} is missing: `cargo xtask bench` builds it (cargo build --workspace --bins --release)",
            release.display()
        );
        eprintln!(
            "bench: audit: re-running from the release build ({})",
            release.display()
        );
        let dir = out.parent().unwrap_or(Path::new("."));
        return crate::run(
            Command::new(&release)
                .args(["bench", "--only", "audit", "--out"])
                .arg(dir)
                .env(INNER, "1"),
        );
    }
    std::env::set_var("TOLLGATE_BIN_DIR", &release_dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let started = Instant::now();
    let load_before = loadavg();
    if std::env::var_os(E2E_ONLY).is_some() {
        // For profiling and quick comparisons: part 2 end to end only, a summary on stdout.
        let e2e = end_to_end()?;
        for d in &e2e.drivers {
            println!("{}", d.summary());
        }
        return Ok(());
    }
    let ship = shipping(&rt)?;
    eprintln!("bench: audit: shipping done ({:.0?})", started.elapsed());
    let append = append_latency(&rt)?;
    eprintln!(
        "bench: audit: append latency done ({:.0?})",
        started.elapsed()
    );
    let e2e = end_to_end()?;
    eprintln!("bench: audit: end to end done ({:.0?})", started.elapsed());

    let md = report(&ship, &append, &e2e, started.elapsed(), &load_before)?;
    println!("{md}");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, &md)?;
    eprintln!("bench: written to {}", out.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Synthetic events

/// The three events of synthetic query `i`: query, decision, result (masked columns).
fn synthetic(i: usize) -> [Event; 3] {
    let session = i / QUERIES_PER_SESSION;
    let session_id = format!("{}", 7_300_000_000_000u64 + session as u64);
    let sql = SQL[i % SQL.len()];
    let fingerprint = format!(
        "{:016x}",
        ((i % SQL.len()) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    );
    let tables = vec![
        "CLINICAL.EHR.PATIENTS".to_owned(),
        "CLINICAL.EHR.PATIENT_CONTACTS".to_owned(),
    ];
    let base = |kind| {
        let mut e = Event::new(kind, session_id.clone());
        e.connection_id = format!("c{:08x}", session);
        e.pid = Some(40_000 + session as u32 % 20_000);
        e.uid = Some(1000);
        e.comm = "python3".into();
        e.exe = "/usr/bin/python3.11".into();
        e.cgroup = "/agents/clinical-summariser".into();
        e.sf_account = "demo-acct".into();
        e.sf_user = "AGENT1".into();
        e.sf_role = "ANALYST".into();
        e.sf_warehouse = "WH".into();
        e.sf_database = "CLINICAL".into();
        e.sf_schema = "EHR".into();
        e
    };
    let mut q = base(EventKind::Query);
    q.sql = sql.to_owned();
    q.sql_fingerprint.clone_from(&fingerprint);
    q.statement_kind = "select".into();
    q.tables.clone_from(&tables);
    let mut d = base(EventKind::Decision);
    d.rule_id = "agent1-patients-masked".into();
    d.decision = "mask".into();
    d.statement_kind = "select".into();
    d.tables = tables;
    d.sql_fingerprint = fingerprint;
    d.attrs.insert("max_rows".into(), "50000".into());
    let rows = 1 + (i as u64 * 7) % 50;
    let mut r = base(EventKind::Result);
    r.query_id = format!("01b8c3d4-0000-4a2b-0000-{:012x}", i);
    r.decision = "ok".into();
    r.rule_id = "agent1-patients-masked".into();
    r.rows = rows;
    r.bytes = rows * 180;
    r.duration_us = 14_000 + (i as u64 * 37) % 9_000;
    r.attrs.insert("chunks".into(), "0".into());
    r.masked = [
        ("NAME", "redact"),
        ("SSN", "partial"),
        ("DOB", "generalize"),
    ]
    .iter()
    .map(|(column, method)| MaskedCount {
        column: (*column).into(),
        rule_id: "agent1-patients-masked".into(),
        method: (*method).into(),
        values: rows,
    })
    .collect();
    [q, d, r]
}

/// Apparent size of every file under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// 1. Shipping

struct ShipRun {
    batch_max: usize,
    raw_secs: f64,
    ship_secs: f64,
    batches: u64,
    /// Time to read the whole spool in batches of `batch_max` as the shipper does.
    read_secs: f64,
}

struct Shipping {
    events: usize,
    fill_secs: f64,
    spool_bytes: u64,
    sql_len: f64,
    runs: Vec<ShipRun>,
    ch_bytes_per_1000: f64,
}

fn shipping(rt: &tokio::runtime::Runtime) -> Result<Shipping> {
    let scratch = Scratch::new("bench-audit-ship")?;
    let spool_dir = scratch.join("spool");
    let n = SHIP_QUERIES * 3;
    eprintln!("bench: audit: filling a spool with {n} synthetic events");
    let (spool, fill_secs) = rt.block_on(async {
        let (spool, _) = Spool::open(
            SpoolOptions::new(&spool_dir, "bench-host-01"),
            HostKey::generate(),
        )?;
        let t = Instant::now();
        for start in (0..SHIP_QUERIES).step_by(300) {
            let events: Vec<Event> = (start..(start + 300).min(SHIP_QUERIES))
                .flat_map(synthetic)
                .collect();
            spool.append_many(events).await?;
        }
        anyhow::Ok((spool, t.elapsed().as_secs_f64()))
    })?;
    ensure!(
        *spool.durable().borrow() == n as u64,
        "the spool holds {} events, not {n}",
        *spool.durable().borrow()
    );
    let spool_bytes = dir_size(&spool_dir);
    let events = tollgate_audit::spool::read_all(&spool_dir)?;
    ensure!(events.len() == n, "read back {} events", events.len());
    let sql_len = SQL.iter().map(|s| s.len()).sum::<usize>() as f64 / SQL.len() as f64;

    eprintln!("bench: audit: starting ClickHouse");
    let ch = ClickHouse::start(&scratch.join("ch"))?;
    let count = |db: &str| -> Result<u64> {
        Ok(ch
            .query(&format!("SELECT count() FROM {db}.events"))?
            .trim()
            .parse()?)
    };
    let mut runs = Vec::new();
    let mut ch_bytes_per_1000 = f64::NAN;
    for batch_max in BATCHES {
        // The shipper's reading alone: the whole spool in batches of batch_max through the
        // reader it uses, the position carried from one batch to the next.
        let t = Instant::now();
        let mut pos = tollgate_audit::spool::ReadPos {
            next: 0,
            segment: u64::MAX,
            offset: 0,
        };
        let mut read = 0;
        loop {
            let (got, after) = tollgate_audit::spool::read_at(&spool_dir, &pos, batch_max)?;
            if got.is_empty() {
                break;
            }
            read += got.len();
            pos = after;
        }
        ensure!(read == n, "read {read} events back, not {n}");
        let read_secs = t.elapsed().as_secs_f64();
        // Baseline: the same rows straight into ClickHouse, batches of the same size.
        let raw_db = format!("bench_raw_{batch_max}");
        let mut cfg = ClickHouseConfig::new(ch.http_url());
        cfg.database.clone_from(&raw_db);
        cfg.batch_max = batch_max;
        eprintln!("bench: audit: raw insert, batches of {batch_max}");
        let raw_secs = rt.block_on(async {
            migrate(&cfg).await?;
            let client = cfg.writer();
            let t = Instant::now();
            for chunk in events.chunks(batch_max) {
                let mut ins = client.insert::<EventRow>("events").await?;
                for e in chunk {
                    ins.write(&EventRow::from(e)).await?;
                }
                ins.end().await?;
            }
            anyhow::Ok(t.elapsed().as_secs_f64())
        })?;
        ensure!(count(&raw_db)? == n as u64, "{raw_db} is missing rows");
        ch.query(&format!("DROP DATABASE {raw_db} SYNC"))?;

        // The shipper, from the start of the spool (no cursor), into a fresh database.
        let db = format!("bench_ship_{batch_max}");
        let mut cfg = ClickHouseConfig::new(ch.http_url());
        cfg.database.clone_from(&db);
        cfg.batch_max = batch_max;
        let _ = std::fs::remove_file(spool_dir.join("shipped.json"));
        eprintln!("bench: audit: shipper, batch_max {batch_max}");
        let (ship_secs, batches) = rt.block_on(async {
            migrate(&cfg).await?;
            let shipper = Shipper::new(cfg.clone(), spool_dir.clone(), spool.durable());
            let stats = shipper.stats();
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let t = Instant::now();
            let task = tokio::spawn(shipper.run(stop_rx));
            loop {
                if stats.shipped.load(Ordering::Relaxed) >= n as u64 {
                    break;
                }
                if t.elapsed() > Duration::from_secs(600) {
                    bail!(
                        "the shipper shipped {} of {n} events in 600 s; last error: {:?}",
                        stats.shipped.load(Ordering::Relaxed),
                        stats
                            .last_error
                            .lock()
                            .map(|e| e.clone())
                            .unwrap_or_default()
                    );
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let secs = t.elapsed().as_secs_f64();
            let _ = stop_tx.send(true);
            task.await?;
            let failures = stats.failures.load(Ordering::Relaxed);
            ensure!(
                failures == 0,
                "the shipper failed {failures} times: {:?}",
                stats
                    .last_error
                    .lock()
                    .map(|e| e.clone())
                    .unwrap_or_default()
            );
            anyhow::Ok((secs, stats.batches.load(Ordering::Relaxed)))
        })?;
        let cursor = tollgate_audit::clickhouse::Cursor::load(&spool_dir)?;
        ensure!(
            cursor.next == n as u64 && cursor.inflight.is_none(),
            "cursor {cursor:?}"
        );
        ensure!(count(&db)? == n as u64, "{db} is missing rows");
        if batch_max == 5000 {
            let bytes: f64 = ch
                .query(&format!(
                    "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = '{db}' AND table = 'events' AND active"
                ))?
                .trim()
                .parse()?;
            ch_bytes_per_1000 = bytes / n as f64 * 1000.0;
        }
        ch.query(&format!("DROP DATABASE {db} SYNC"))?;
        runs.push(ShipRun {
            batch_max,
            raw_secs,
            ship_secs,
            batches,
            read_secs,
        });
    }
    drop(spool);
    Ok(Shipping {
        events: n,
        fill_secs,
        spool_bytes,
        sql_len,
        runs,
        ch_bytes_per_1000,
    })
}

// ---------------------------------------------------------------------------------------------
// 2b. Library-level append latency

struct Pcts {
    p50: f64,
    p90: f64,
    p99: f64,
}

fn pcts(mut v: Vec<f64>) -> Pcts {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Pcts {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
    }
}

/// Per `sync` setting: (2-event group durable, 1 event durable, both, 2-event group written)
/// latencies in µs.
struct Append {
    sync: [Pcts; 4],
    nosync: [Pcts; 4],
    fs: String,
}

fn append_latency(rt: &tokio::runtime::Runtime) -> Result<Append> {
    let scratch = Scratch::new("bench-audit-append")?;
    let fs = Command::new("findmnt")
        .args(["-no", "SOURCE,FSTYPE", "-T"])
        .arg(&scratch.path)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    eprintln!(
        "bench: audit: Spool::append_many latency, fsync on and off ({APPEND_ITERS} each, {})",
        scratch.path.display()
    );
    let (sync, nosync) = rt.block_on(async {
        let open = |name: &str, sync: bool| {
            let mut o = SpoolOptions::new(scratch.join(name), "bench-host-01");
            o.sync = sync;
            Spool::open(o, HostKey::generate()).map(|(s, _)| s)
        };
        let spools = [open("sync", true)?, open("nosync", false)?];
        let mut lat: [[Vec<f64>; 4]; 2] = Default::default();
        // Alternate the two spools so drift on a shared machine hits both alike.
        for i in 0..APPEND_ITERS + 50 {
            for (s, spool) in spools.iter().enumerate() {
                let [q, d, r] = synthetic(i);
                let t0 = Instant::now();
                let written = spool.append_written(vec![q, d]).await?;
                let tw = Instant::now();
                written.durable().await?;
                let t1 = Instant::now();
                spool.append(r).await?;
                let t2 = Instant::now();
                if i >= 50 {
                    lat[s][0].push((t1 - t0).as_secs_f64() * 1e6);
                    lat[s][1].push((t2 - t1).as_secs_f64() * 1e6);
                    lat[s][2].push((t2 - t0).as_secs_f64() * 1e6);
                    lat[s][3].push((tw - t0).as_secs_f64() * 1e6);
                }
            }
        }
        let [a, b] = lat;
        anyhow::Ok((a.map(pcts), b.map(pcts)))
    })?;
    Ok(Append { sync, nosync, fs })
}

// ---------------------------------------------------------------------------------------------
// 2a and 3. End to end

/// One driver's runs: (a) direct, (b) Tollgate fsync on, (c) Tollgate fsync off, (d)
/// mitmproxy in transparent mode.
struct DriverRuns {
    name: &'static str,
    direct: Pcts,
    fsync: Pcts,
    nofsync: Pcts,
    mitm: Pcts,
    /// The proxy's CPU per query in (b), (c) and (d), µs (its cgroup's usage over the runs,
    /// divided by the queries; logins and session set-up included).
    cpu: [f64; 3],
}

impl DriverRuns {
    /// What the runs say, in one sentence (the report's and the quick run's).
    fn summary(&self) -> String {
        format!(
            "{}: Tollgate with the durable audit trail adds **{:.0} µs** per query at p50 over direct ((b) − (a)); durability costs {:.0} µs of it ((b) − (c)); mitmproxy adds {:.0} µs ((d) − (a)). Proxy CPU per query: Tollgate {:.0} µs with the durable audit, {:.0} µs without fsync; mitmproxy {:.0} µs.",
            self.name,
            self.fsync.p50 - self.direct.p50,
            self.fsync.p50 - self.nofsync.p50,
            self.mitm.p50 - self.direct.p50,
            self.cpu[0],
            self.cpu[1],
            self.cpu[2]
        )
    }
}

struct EndToEnd {
    drivers: Vec<DriverRuns>,
    queries_b: usize,
    growth_b: u64,
    events_b: BTreeMap<String, u64>,
    fsync_off_logged: bool,
}

fn latencies(results: &[Value]) -> Result<Vec<f64>> {
    ensure!(
        results.len() == QUERIES,
        "the agent returned {} results, not {QUERIES}: {:?}",
        results.len(),
        results.first()
    );
    results
        .iter()
        .skip(WARMUP)
        .map(|r| {
            ensure!(r["ok"] == true, "a benchmark query failed: {r}");
            r["elapsed_us"]
                .as_f64()
                .with_context(|| format!("no elapsed_us in {r}"))
        })
        .collect()
}

fn kinds(spool: &Path) -> Result<BTreeMap<String, u64>> {
    let mut m = BTreeMap::new();
    for e in tollgate_audit::spool::read_all(spool)? {
        *m.entry(e.kind.as_str().to_owned()).or_insert(0) += 1;
    }
    Ok(m)
}

/// Waits until the spool's size stops changing (detached events of a closed connection).
fn settled_size(dir: &Path) -> u64 {
    let mut last = dir_size(dir);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let now = dir_size(dir);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

fn end_to_end() -> Result<EndToEnd> {
    let scratch = Scratch::new("bench-audit-e2e")?;
    let policy = scratch.join("bench-audit-policy.yaml");
    std::fs::write(&policy, POLICY)?;
    let host = TestHost::create()?;
    let standin = Standin::start(&host, &scratch, StandinOpts::default())?;
    let top = Cgroup::create(&format!("tollgate-bench-audit-{}", std::process::id()))?;
    let direct = top.child("direct")?;
    let cg_fsync = top.child("fsync")?;
    let cg_nofsync = top.child("nofsync")?;
    let cg_mitm = top.child("mitm-agents")?;
    let mitm = Mitm::start(
        &scratch,
        &cg_mitm,
        top.child("mitm-proxy")?,
        &standin.ca_pem(),
    )?;
    // Two Tollgates side by side (own state dirs, pins, listeners, target cgroups), the same
    // policy, differing only in `audit.fsync`.
    let start = |what: &str, cg: &Cgroup, fsync: bool| -> Result<(Scratch, Tollgate)> {
        let sc = Scratch::new(what)?;
        let config = sc.join("tollgate.yaml");
        std::fs::write(&config, format!("version: 1\naudit:\n  fsync: {fsync}\n"))?;
        let tg = Tollgate::start(
            &sc,
            TollgateOpts {
                cgroups: vec![cg.path.clone()],
                upstream_roots: Some(standin.ca_pem()),
                extra: [
                    vec![
                        "--config".into(),
                        config.display().to_string(),
                        "--policy".into(),
                        policy.display().to_string(),
                    ],
                    standin.tollgate_args(),
                ]
                .concat(),
                ..TollgateOpts::default()
            },
        )?;
        Ok((sc, tg))
    };
    let (_sc_b, tg_b) = start("bench-audit-fsync", &cg_fsync, true)?;
    let (_sc_c, tg_c) = start("bench-audit-nofsync", &cg_nofsync, false)?;
    let fsync_off_logged = tg_c.log().contains("audit.fsync is off");
    ensure!(
        !tg_b.log().contains("audit.fsync is off"),
        "the fsync Tollgate says fsync is off"
    );
    let spool_b = tg_b.state_dir.join("spool");
    let statements: Vec<Statement> = (0..QUERIES).map(|_| Statement::sql(POINT_QUERY)).collect();
    let env = |ca: Option<PathBuf>| -> AgentEnv {
        let mut e = standin.agent_env(&scratch);
        if let Some(ca) = ca {
            e.ca_roots.push(ca);
        }
        e.timeout = Duration::from_secs(300);
        e
    };
    type Agent = fn(&Path, AgentEnv, &[Statement]) -> Result<Vec<Value>>;
    let agents: [(&'static str, Agent); 2] =
        [("python (Arrow)", run_python), ("node (JSON)", run_node)];
    let mut runs: Vec<[Vec<f64>; 4]> = agents.iter().map(|_| Default::default()).collect();
    let mut cpu: Vec<[u64; 3]> = agents.iter().map(|_| Default::default()).collect();
    // One agent run through a proxy, its CPU (the proxy's cgroup) added to `used`.
    let through = |agent: Agent,
                   agents_cg: &Path,
                   proxy_cg: &Path,
                   ca: PathBuf,
                   used: &mut u64|
     -> Result<Vec<f64>> {
        let before = cgroup_cpu_us(proxy_cg)?;
        let lat = latencies(&agent(agents_cg, env(Some(ca)), &statements)?)?;
        *used += cgroup_cpu_us(proxy_cg)? - before;
        Ok(lat)
    };
    let before_b = settled_size(&spool_b);
    let kinds_before = kinds(&spool_b)?;
    for round in 0..ROUNDS {
        for (((name, agent), [a, b, c, d]), [cb, cc, cd]) in
            agents.iter().zip(runs.iter_mut()).zip(cpu.iter_mut())
        {
            eprintln!(
                "bench: audit: round {}/{ROUNDS}, {name}: direct, fsync on, fsync off, mitmproxy",
                round + 1
            );
            a.extend(latencies(&agent(&direct.path, env(None), &statements)?)?);
            b.extend(through(
                *agent,
                &cg_fsync.path,
                &tg_b.proxy_cgroup,
                tg_b.ca_cert(),
                cb,
            )?);
            c.extend(through(
                *agent,
                &cg_nofsync.path,
                &tg_c.proxy_cgroup,
                tg_c.ca_cert(),
                cc,
            )?);
            d.extend(through(
                *agent,
                &cg_mitm.path,
                &mitm.cgroup.path,
                mitm.ca.clone(),
                cd,
            )?);
        }
    }
    let after_b = settled_size(&spool_b);
    let mut events_b = kinds(&spool_b)?;
    for (k, v) in kinds_before {
        if let Some(n) = events_b.get_mut(&k) {
            *n -= v;
        }
    }
    let queries_b = events_b.get("query").copied().unwrap_or(0) as usize;
    ensure!(
        queries_b == ROUNDS * QUERIES * agents.len(),
        "the fsync Tollgate recorded {queries_b} query events, not {}",
        ROUNDS * QUERIES * agents.len()
    );
    let drivers = agents
        .iter()
        .zip(runs)
        .zip(cpu)
        .map(|(((name, _), [a, b, c, d]), used)| DriverRuns {
            name,
            direct: pcts(a),
            fsync: pcts(b),
            nofsync: pcts(c),
            mitm: pcts(d),
            cpu: used.map(|us| us as f64 / (ROUNDS * QUERIES) as f64),
        })
        .collect();
    Ok(EndToEnd {
        drivers,
        queries_b,
        growth_b: after_b - before_b,
        events_b,
        fsync_off_logged,
    })
}

// ---------------------------------------------------------------------------------------------
// Report

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{} cores ({cpu})",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    )
}

/// `/proc/loadavg`'s first three fields.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn report(
    s: &Shipping,
    ap: &Append,
    e: &EndToEnd,
    took: Duration,
    load_before: &str,
) -> Result<String> {
    let mb = |b: f64| b / 1e6;
    let mut md = String::new();
    writeln!(md, "# Audit trail benchmarks\n")?;
    writeln!(
        md,
        "`cargo xtask bench --only audit` (release build), {} on this machine: {}; spool and state directories on `{}`. Whole run {:.0} s; load average {load_before} before it, {} after (the machine is shared with builds: compare tails with care). Baselines in the same run.\n",
        chrono_now(),
        machine(),
        ap.fs,
        took.as_secs_f64(),
        loadavg()
    )?;

    writeln!(md, "## 1. Shipping the spool to ClickHouse\n")?;
    writeln!(
        md,
        "{} synthetic events ({} queries × query + decision + result; sessions of {QUERIES_PER_SESSION} queries; redacted SQL of {:.0} characters on average; three masked columns per result), {:.1} MB of spool. Filling it (`append_many` of 900 events at a time, fsync on) took {:.2} s: {:.0} events/s. ClickHouse: 26.9 (chdb's engine, `tests/clickhouse/`), on loopback, same machine.\n",
        s.events,
        s.events / 3,
        s.sql_len,
        mb(s.spool_bytes as f64),
        s.fill_secs,
        s.events as f64 / s.fill_secs
    )?;
    writeln!(
        md,
        "Baseline: the same rows (read from the spool beforehand, not timed) inserted with the `clickhouse` client directly, one INSERT per batch of the same size, no deduplication token, no cursor. Shipper: `Shipper::run` from an empty cursor to the last event acknowledged (a backlog drained, as after an outage), into a fresh database per run. MB/s counts spool bytes (the JSON frames) moved. Spool reads alone: the whole spool read in batches of batch_max through the shipper's reader (`spool::read_at`, position carried over), no ClickHouse.\n"
    )?;
    writeln!(
        md,
        "| batch_max | raw insert | raw MB/s | shipper | shipper MB/s | shipper / raw (time) | batches | spool reads alone | per batch |"
    )?;
    writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for r in &s.runs {
        let n = s.events as f64;
        writeln!(
            md,
            "| {} | {:.0} events/s ({:.2} s) | {:.1} | {:.0} events/s ({:.2} s) | {:.1} | {:.2}× | {} | {:.1} s | {:.0} ms |",
            r.batch_max,
            n / r.raw_secs,
            r.raw_secs,
            mb(s.spool_bytes as f64) / r.raw_secs,
            n / r.ship_secs,
            r.ship_secs,
            mb(s.spool_bytes as f64) / r.ship_secs,
            r.ship_secs / r.raw_secs,
            r.batches,
            r.read_secs,
            r.read_secs / r.batches.max(1) as f64 * 1e3
        )?;
    }
    writeln!(md)?;

    writeln!(
        md,
        "## 2. Added latency and CPU per query, audit trail durable\n"
    )?;
    writeln!(
        md,
        "Real drivers (snowflake-connector-python with Arrow results, snowflake-sdk for Node with JSON results), `{POINT_QUERY}`, {QUERIES} queries per run on one connection (first {WARMUP} not counted), {ROUNDS} rounds, each of (a) direct to the stand-in, (b) through Tollgate with `audit.fsync: true` (the default), (c) through Tollgate with `audit.fsync: false`, (d) through mitmproxy 11 in transparent mode (an nftables redirect of port 443 from the agents' cgroup; it verifies the stand-in with its CA as Tollgate does); one allow rule. Proxy CPU per query: the proxy's cgroup `cpu.stat` usage over the runs divided by the queries (logins included). Per query Tollgate writes query + decision before the statement goes upstream, and releases the answer once they are durable (their `fdatasync` runs while the stand-in works) and the result event is written. Target: (b) − (a) ≤ 300 µs at p50.\n"
    )?;
    let ratio = |x: &Pcts, y: &Pcts| {
        format!(
            "{:.3}× | {:.3}× | {:.3}×",
            x.p50 / y.p50,
            x.p90 / y.p90,
            x.p99 / y.p99
        )
    };
    for d in &e.drivers {
        writeln!(md, "{}:\n", d.name)?;
        writeln!(md, "| | p50 | p90 | p99 | proxy CPU per query |")?;
        writeln!(md, "|---|---:|---:|---:|---:|")?;
        for (name, p, cpu) in [
            ("(a) direct", &d.direct, None),
            ("(b) Tollgate, fsync on", &d.fsync, Some(d.cpu[0])),
            ("(c) Tollgate, fsync off", &d.nofsync, Some(d.cpu[1])),
            ("(d) mitmproxy, transparent", &d.mitm, Some(d.cpu[2])),
        ] {
            let cpu = cpu.map_or("–".to_owned(), |us| format!("{us:.0} µs"));
            writeln!(
                md,
                "| {name} | {:.0} µs | {:.0} µs | {:.0} µs | {cpu} |",
                p.p50, p.p90, p.p99
            )?;
        }
        writeln!(
            md,
            "| (b)/(c): cost of fsync | {} |",
            ratio(&d.fsync, &d.nofsync)
        )?;
        writeln!(
            md,
            "| (b)/(a): Tollgate with audit vs no Tollgate | {} |",
            ratio(&d.fsync, &d.direct)
        )?;
        writeln!(
            md,
            "| (c)/(a): Tollgate without fsync vs no Tollgate | {} |",
            ratio(&d.nofsync, &d.direct)
        )?;
        writeln!(
            md,
            "| (b)/(d): Tollgate with audit vs mitmproxy | {} | {:.2}× |",
            ratio(&d.fsync, &d.mitm),
            d.cpu[0] / d.cpu[2]
        )?;
        writeln!(md, "\n{}\n", d.summary())?;
    }
    if !e.fsync_off_logged {
        writeln!(
            md,
            "Note: Tollgate (c) did not log `audit.fsync is off`; check that the config file was applied.\n"
        )?;
    }
    writeln!(
        md,
        "Library level: `Spool::append_written` of query + decision (written: what a statement waits for before it goes upstream), then `Written::durable`, then `Spool::append` of the result, {APPEND_ITERS} times (after 50 not counted), the two spools alternating, synthetic events as in 1:\n"
    )?;
    writeln!(
        md,
        "| SpoolOptions.sync | 2 events written p50 | p99 | 2 events durable p50 | p99 | 1 event p50 | p99 | per query (3 events) p50 | p90 | p99 |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for (name, p) in [("true (fdatasync)", &ap.sync), ("false", &ap.nosync)] {
        writeln!(
            md,
            "| {name} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs |",
            p[3].p50, p[3].p99, p[0].p50, p[0].p99, p[1].p50, p[1].p99, p[2].p50, p[2].p90, p[2].p99
        )?;
    }
    writeln!(
        md,
        "| ratio | {:.1}× | {:.1}× | {:.1}× | {:.1}× | {:.1}× | {:.1}× | {:.1}× | {:.1}× | {:.1}× |",
        ap.sync[3].p50 / ap.nosync[3].p50,
        ap.sync[3].p99 / ap.nosync[3].p99,
        ap.sync[0].p50 / ap.nosync[0].p50,
        ap.sync[0].p99 / ap.nosync[0].p99,
        ap.sync[1].p50 / ap.nosync[1].p50,
        ap.sync[1].p99 / ap.nosync[1].p99,
        ap.sync[2].p50 / ap.nosync[2].p50,
        ap.sync[2].p90 / ap.nosync[2].p90,
        ap.sync[2].p99 / ap.nosync[2].p99
    )?;
    writeln!(md)?;

    writeln!(md, "## 3. Spool growth\n")?;
    let total_b: u64 = e.events_b.values().sum();
    let kinds: Vec<String> = e.events_b.iter().map(|(k, v)| format!("{k} {v}")).collect();
    writeln!(
        md,
        "| | per 1,000 queries | per 1,000 events | events per query |"
    )?;
    writeln!(md, "|---|---:|---:|---:|")?;
    writeln!(
        md,
        "| end to end, run (b): {} queries, {} events ({}) | {:.1} KiB | {:.1} KiB | {:.2} |",
        e.queries_b,
        total_b,
        kinds.join(", "),
        e.growth_b as f64 / e.queries_b as f64 * 1000.0 / 1024.0,
        e.growth_b as f64 / total_b.max(1) as f64 * 1000.0 / 1024.0,
        total_b as f64 / e.queries_b as f64
    )?;
    writeln!(
        md,
        "| synthetic (1): {} events | {:.1} KiB | {:.1} KiB | 3 |",
        s.events,
        s.spool_bytes as f64 / (s.events / 3) as f64 * 1000.0 / 1024.0,
        s.spool_bytes as f64 / s.events as f64 * 1000.0 / 1024.0
    )?;
    writeln!(
        md,
        "| the synthetic events in ClickHouse (after shipping, `system.parts` bytes on disk, batch_max 5000) | {:.1} KiB | {:.1} KiB | 3 |",
        s.ch_bytes_per_1000 * 3.0 / 1024.0,
        s.ch_bytes_per_1000 / 1024.0
    )?;
    writeln!(md)?;

    let per_query = total_b as f64 / e.queries_b as f64;
    let default = s
        .runs
        .iter()
        .find(|r| r.batch_max == 5000)
        .context("no batch_max 5000 run")?;
    let ship_rate = |r: &ShipRun| s.events as f64 / r.ship_secs;
    let rates: Vec<String> = s
        .runs
        .iter()
        .map(|r| format!("{}: {:.0}/s", r.batch_max, ship_rate(r)))
        .collect();
    let lib_fsync = ap.sync[2].p50 - ap.nosync[2].p50;
    let growth_kib = e.growth_b as f64 / e.queries_b as f64 * 1000.0 / 1024.0;
    writeln!(md, "## What it means\n")?;
    // Whether reading a batch costs about the same whatever its size (the cost follows the
    // segment, not the batch) or follows the batch.
    let per_batch: Vec<f64> = s
        .runs
        .iter()
        .map(|r| r.read_secs / r.batches.max(1) as f64)
        .collect();
    let flat = per_batch.iter().copied().fold(f64::INFINITY, f64::min)
        > 0.5 * per_batch.iter().copied().fold(0.0, f64::max);
    let read_share = format!(
        "Reading the spool as the shipper does takes {:.1} s of the shipper's {:.1} s at the default batch_max (by batch_max: {}).",
        default.read_secs,
        default.ship_secs,
        s.runs
            .iter()
            .map(|r| format!("{}: {:.1} s of {:.1} s", r.batch_max, r.read_secs, r.ship_secs))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let why = if flat {
        format!(
            "{read_share} A batch's read costs about the same whatever its size ({:.0}–{:.0} ms), so it scales with the spool segment (up to 64 MiB) rather than with the batch, and the shipper's rate follows the number of batches ({}) more than ClickHouse.",
            per_batch.iter().copied().fold(f64::INFINITY, f64::min) * 1e3,
            per_batch.iter().copied().fold(0.0, f64::max) * 1e3,
            rates.join(", ")
        )
    } else {
        format!(
            "{read_share} Shipper rate by batch_max: {}.",
            rates.join(", ")
        )
    };
    writeln!(
        md,
        "**Shipping.** With the default batch_max (5,000) the shipper drains a backlog at {:.0} events/s ({:.1} MB/s of spool), {:.1}× the time bare inserts of the same rows take ({:.0} events/s). {why} At {:.2} events per query the default setting drains about {:.0} queries/s worth of audit trail per host on this machine.\n",
        ship_rate(default),
        mb(s.spool_bytes as f64) / default.ship_secs,
        default.ship_secs / default.raw_secs,
        s.events as f64 / default.raw_secs,
        per_query,
        ship_rate(default) / per_query
    )?;
    let per_driver: Vec<String> = e
        .drivers
        .iter()
        .map(|d| {
            format!(
                "{} {:.0} µs over a direct query of {:.0} µs ((b)/(a) = {:.3}×; durability {:.0} µs of it)",
                d.name,
                d.fsync.p50 - d.direct.p50,
                d.direct.p50,
                d.fsync.p50 / d.direct.p50,
                d.fsync.p50 - d.nofsync.p50
            )
        })
        .collect();
    writeln!(
        md,
        "**Latency.** A statement waits for the write of its query and decision events (not their sync) before it goes upstream; the sync runs while the stand-in works, and the answer waits for it only if it has not finished by then; the result event is written before the answer goes back and made durable by the next sync. At p50 Tollgate with its durable audit trail adds: {}. At library level a sync costs {:.0} µs at p50 (the appends with and without `fdatasync`).\n",
        per_driver.join("; "),
        lib_fsync,
    )?;
    writeln!(
        md,
        "**Storage.** The spool grows by {:.0} KiB per 1,000 queries end to end ({:.0} bytes per event, frames and heads files included), about {:.1} GB per million queries; the synthetic events, with longer SQL and masked columns, take {:.0} KiB per 1,000 queries. ClickHouse stores the same events in {:.0}% of the spool's bytes (compressed columns).",
        growth_kib,
        e.growth_b as f64 / total_b.max(1) as f64,
        e.growth_b as f64 / e.queries_b as f64 * 1e6 / 1e9,
        s.spool_bytes as f64 / (s.events / 3) as f64 * 1000.0 / 1024.0,
        s.ch_bytes_per_1000 / (s.spool_bytes as f64 / s.events as f64 * 1000.0) * 100.0
    )?;
    Ok(md)
}
