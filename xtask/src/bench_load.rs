//! `cargo xtask bench --only concurrency`: many agent sessions at once through Tollgate.
//!
//! The real Node driver (`tests/drivers/node/agent.js` in its load mode) opens 1, 10, 50 and
//! 200 sessions at once; each runs point queries with a pause after each (think time, growing
//! with the session count so that the offered load stays the same) until the run's end. For each session count the same load runs first direct to the stand-in, then
//! through Tollgate (default settings: durable audit, policy on every statement); the report
//! gives errors, latency percentiles of both, Tollgate's CPU per statement and its resident
//! memory by quarter of the run (flat, or growing). The longest run is the 200-session one
//! (10 minutes by default).
//!
//! `TOLLGATE_BENCH_LOAD_SECONDS=S` runs every step for S seconds (a quick run).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use tollgate_e2e::snowflake::{run_node_load, AgentEnv, Load, Standin, StandinOpts, Statement};
use tollgate_e2e::{Cgroup, Scratch, TestHost, Tollgate, TollgateOpts};

use crate::bench::{cgroup_cpu_us, chrono_now, vm_kib, RssSampler};
use crate::bench_audit::{loadavg, machine, POINT_QUERY, POLICY};

/// Session counts, in order.
const SESSIONS: [u32; 4] = [1, 10, 50, 200];
/// Seconds of the direct runs and of the Tollgate runs below 200 sessions.
const SHORT_SECONDS: u64 = 60;
/// Seconds of the 200-session run through Tollgate.
const LONG_SECONDS: u64 = 600;
/// Think time after each statement, per session and per session open: `PAUSE_PER_SESSION_MS`
/// × sessions, so that every session count offers at most the same 40 statements a second —
/// about half of what the stand-in (one Python process) serves on this machine. What grows is
/// the number of sessions Tollgate holds, not the load on the stand-in.
const PAUSE_PER_SESSION_MS: u64 = 25;

/// One load run's figures.
struct Run {
    seconds: u64,
    summary: Value,
    /// Tollgate's CPU per statement, µs (through Tollgate only).
    cpu_us: Option<f64>,
    /// Tollgate's highest RSS in each quarter of the run, KiB (through Tollgate only).
    rss: Option<[u64; 4]>,
}

impl Run {
    fn ms(&self, p: &str) -> String {
        self.summary["latency_ms"][p]
            .as_f64()
            .map_or("–".into(), |v| format!("{v:.1}"))
    }
    fn n(&self, k: &str) -> u64 {
        self.summary[k].as_u64().unwrap_or(0)
    }
}

/// Runs the concurrency benchmark and writes `out`.
pub fn concurrency(root: &Path, out: &Path) -> Result<()> {
    std::env::set_var("TOLLGATE_BIN_DIR", root.join("target/release"));
    let quick: Option<u64> = std::env::var("TOLLGATE_BENCH_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok());
    let scratch = Scratch::new("bench-load")?;
    let policy = scratch.join("bench-load-policy.yaml");
    std::fs::write(&policy, POLICY)?;
    let host = TestHost::create()?;
    let standin = Standin::start(&host, &scratch, StandinOpts::default())?;
    let top = Cgroup::create(&format!("tollgate-bench-load-{}", std::process::id()))?;
    let direct = top.child("direct")?;
    let agents = top.child("agents")?;
    let tg_scratch = Scratch::new("bench-load-tollgate")?;
    let tg = Tollgate::start(
        &tg_scratch,
        TollgateOpts {
            cgroups: vec![agents.path.clone()],
            upstream_roots: Some(standin.ca_pem()),
            extra: [
                vec!["--policy".into(), policy.display().to_string()],
                standin.tollgate_args(),
            ]
            .concat(),
            ..TollgateOpts::default()
        },
    )?;
    let pid = tg.service.as_ref().map(|s| s.pid()).unwrap_or(0);
    let statements = [Statement::sql(POINT_QUERY)];
    let env = |ca: Option<&Path>, seconds: u64| -> AgentEnv {
        let mut e = standin.agent_env(&scratch);
        e.ca_roots.extend(ca.map(Path::to_path_buf));
        e.timeout = Duration::from_secs(seconds + 180);
        e
    };
    let rss_idle = vm_kib(pid, "VmRSS:");
    let mut rows = Vec::new();
    for sessions in SESSIONS {
        let short = quick.unwrap_or(SHORT_SECONDS);
        let long = quick.unwrap_or(if sessions == 200 {
            LONG_SECONDS
        } else {
            SHORT_SECONDS
        });
        let load = |seconds| Load {
            sessions,
            seconds,
            pause_ms: PAUSE_PER_SESSION_MS * u64::from(sessions),
        };
        eprintln!("bench: concurrency: {sessions} sessions direct for {short} s");
        let d = run_node_load(&direct.path, env(None, short), &statements, load(short))?;
        eprintln!("bench: concurrency: {sessions} sessions through Tollgate for {long} s");
        let cpu_before = cgroup_cpu_us(&tg.proxy_cgroup)?;
        let sampler = RssSampler::start(pid);
        let t = run_node_load(
            &agents.path,
            env(Some(&tg.ca_cert()), long),
            &statements,
            load(long),
        )?;
        let rss = sampler.quarters();
        let cpu = cgroup_cpu_us(&tg.proxy_cgroup)? - cpu_before;
        let stmts = t["statements"].as_u64().unwrap_or(0).max(1);
        rows.push((
            sessions,
            Run {
                seconds: short,
                summary: d,
                cpu_us: None,
                rss: None,
            },
            Run {
                seconds: long,
                summary: t,
                cpu_us: Some(cpu as f64 / stmts as f64),
                rss: Some(rss),
            },
        ));
        print_row(&rows[rows.len() - 1]);
    }
    let mut md = String::new();
    writeln!(md, "# Concurrency benchmark\n")?;
    writeln!(
        md,
        "`cargo xtask bench --only concurrency` (release build), {} on this machine ({}; load average before: {}).\n",
        chrono_now(),
        machine(),
        loadavg()
    )?;
    writeln!(
        md,
        "The real Node driver (snowflake-sdk, JSON results) in its load mode: N sessions at once, each running `{POINT_QUERY}` and pausing {PAUSE_PER_SESSION_MS} ms × N after each answer (so every N offers at most {} statements a second), until the run's end; first direct to the stand-in, then through Tollgate with its default settings (durable audit trail, one allow rule). Latency per statement as the driver sees it; Tollgate's CPU from its cgroup; its resident memory sampled every 250 ms (highest value per quarter of the run). Tollgate's RSS at idle before the first run: {:.1} MiB.\n",
        1000 / PAUSE_PER_SESSION_MS,
        rss_idle as f64 / 1024.0
    )?;
    writeln!(
        md,
        "| sessions | run | seconds | connected | statements | errors | p50 ms | p90 ms | p99 ms | max ms | Tollgate CPU per statement | Tollgate RSS by quarter (MiB) |"
    )?;
    writeln!(
        md,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )?;
    for (sessions, d, t) in &rows {
        for (name, r) in [("direct", d), ("via Tollgate", t)] {
            writeln!(
                md,
                "| {sessions} | {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.seconds,
                r.n("connected"),
                r.n("statements"),
                r.n("errors"),
                r.ms("p50"),
                r.ms("p90"),
                r.ms("p99"),
                r.ms("max"),
                r.cpu_us.map_or("".into(), |c| format!("{c:.0} µs")),
                r.rss.map_or("".into(), |q| q
                    .map(|k| format!("{:.1}", k as f64 / 1024.0))
                    .join(" / ")),
            )?;
        }
    }
    let errors: Vec<String> = rows
        .iter()
        .flat_map(|(n, d, t)| [(n, "direct", d), (n, "via Tollgate", t)])
        .filter(|(_, _, r)| r.n("errors") > 0)
        .map(|(n, name, r)| format!("- {n} sessions {name}: {}", r.summary["error_samples"]))
        .collect();
    if errors.is_empty() {
        writeln!(md, "\nNo errors in any run.")?;
    } else {
        writeln!(md, "\nErrors (samples):\n{}", errors.join("\n"))?;
    }
    if let Some(s) = quick {
        writeln!(
            md,
            "\nA quick run: every step {s} s (`TOLLGATE_BENCH_LOAD_SECONDS`)."
        )?;
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, &md)?;
    println!("{md}");
    Ok(())
}

fn print_row((sessions, d, t): &(u32, Run, Run)) {
    eprintln!(
        "bench: concurrency: {sessions} sessions: direct p50 {} ms p99 {} ms ({} statements, {} errors); \
         via Tollgate p50 {} ms p99 {} ms ({} statements, {} errors, CPU {:.0} µs per statement, RSS by quarter {:?} KiB)",
        d.ms("p50"),
        d.ms("p99"),
        d.n("statements"),
        d.n("errors"),
        t.ms("p50"),
        t.ms("p99"),
        t.n("statements"),
        t.n("errors"),
        t.cpu_us.unwrap_or(0.0),
        t.rss.unwrap_or_default(),
    );
}
