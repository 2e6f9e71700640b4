//! `cargo xtask bench --only masking`: result masking's figures.
//!
//! - Masking throughput per core (the mask crate's harness): Arrow with column rules, JSON
//!   rows, detector scanning of free text, each against pass-through of the same result in the
//!   same run.
//! - End to end: a chunked result of more than 1 GB (Arrow, uncompressed) read by the real
//!   Python driver, directly from the stand-in and through Tollgate with two PHI columns
//!   masked; wall time of both, and Tollgate's peak RSS against a result four times smaller, to
//!   show that memory does not grow with the result.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tollgate_e2e::snowflake::{run_python, AgentEnv, Standin, StandinOpts, Statement};
use tollgate_e2e::{Cgroup, Scratch, TestHost, Tollgate, TollgateOpts};

use crate::bench::{chrono_now, vm_kib, RssSampler};

/// Rows of the big table: about 120 bytes each in Arrow.
const BIG_ROWS: u64 = 10_800_000;
/// Rows per chunk the stand-in serves.
const CHUNK_ROWS: u64 = 200_000;
/// Rows it serves inline, in the query's answer (Snowflake's inline part is small; an inline
/// result is read whole, up to `max_inspected_response_bytes`, and is measured by the
/// foundation bench).
const FIRST_CHUNK_ROWS: u64 = 2_000;

const POLICY: &str = r#"version: 1
classifications:
  - { columns: ["BENCH.PUBLIC.PHI_BIG.NAME"], tags: [phi.name] }
  - { columns: ["BENCH.PUBLIC.PHI_BIG.SSN"], tags: [phi.ssn] }
rules:
  - id: bench-masked
    match: { statements: [select], tables: ["BENCH.PUBLIC.*"] }
    action: mask
    mask:
      - { tags: [phi.name], method: redact }
      - { tags: [phi.ssn], method: partial, keep_last: 4 }
"#;

fn seed(rows: u64) -> String {
    format!(
        "CREATE DATABASE IF NOT EXISTS BENCH;\n\
         CREATE SCHEMA IF NOT EXISTS BENCH.PUBLIC;\n\
         CREATE TABLE BENCH.PUBLIC.PHI_BIG AS SELECT range AS ID, 'Bench Person ' || range AS NAME, \
         TO_VARCHAR(100 + MOD(range, 800)) || '-' || LPAD(TO_VARCHAR(1 + MOD(range, 98)), 2, '0') || '-' || TO_VARCHAR(1000 + MOD(range, 8999)) AS SSN, \
         'visit note ' || range || ' routine follow-up, no findings' AS NOTE, MOD(range * 13, 100000) / 4 AS AMOUNT FROM range({rows});\n\
         CREATE TABLE BENCH.PUBLIC.PHI_SMALL AS SELECT * FROM BENCH.PUBLIC.PHI_BIG WHERE ID < {};\n",
        rows / 4
    )
}

fn cargo_bench(bench: &str) -> Result<String> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["bench", "-q", "-p", "tollgate-mask", "--bench", bench])
        .output()
        .with_context(|| format!("running cargo bench -p tollgate-mask --bench {bench}"))?;
    anyhow::ensure!(
        out.status.success(),
        "cargo bench -p tollgate-mask --bench {bench} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sum of `chunk_bytes` over the log's "result rewritten" lines.
fn chunk_bytes(log: &str) -> u64 {
    log.lines()
        .map(crate::demo::strip_ansi)
        .filter(|l| l.contains("result rewritten"))
        .filter_map(|l| {
            let i = l.find("chunk_bytes=")? + "chunk_bytes=".len();
            l[i..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Runs the masking benchmarks and writes `out`.
pub fn masking(root: &Path, out: &Path) -> Result<()> {
    std::env::set_var("TOLLGATE_BIN_DIR", root.join("target/release"));
    // `TOLLGATE_BENCH_MASKING_QUICK=1`: only Tollgate's memory over a quarter of the big result,
    // for working on memory (no harness, no direct run, nothing written).
    let quick = std::env::var_os("TOLLGATE_BENCH_MASKING_QUICK").is_some();
    let big_rows = if quick { BIG_ROWS / 4 } else { BIG_ROWS };
    let (rowset, detect) = if quick {
        (String::new(), String::new())
    } else {
        eprintln!("bench: masking throughput (tollgate-mask harness)");
        (cargo_bench("rowset")?, cargo_bench("detect")?)
    };

    let scratch = Scratch::new("bench-mask")?;
    let seed_path = scratch.join("seed-big.sql");
    std::fs::write(&seed_path, seed(big_rows))?;
    let policy_path = scratch.join("bench-masking.yaml");
    std::fs::write(&policy_path, POLICY)?;
    let host = TestHost::create()?;
    eprintln!("bench: seeding {big_rows} rows into the stand-in");
    let standin = Standin::start(
        &host,
        &scratch,
        StandinOpts {
            seed_sql: Some(seed_path),
            chunk_rows: Some(CHUNK_ROWS as u32),
            first_chunk_rows: Some(FIRST_CHUNK_ROWS as u32),
            ..StandinOpts::default()
        },
    )?;
    let top = Cgroup::create(&format!("tollgate-bench-mask-{}", std::process::id()))?;
    let agents = top.child("agents")?;
    let direct = top.child("direct")?;
    let tg = Tollgate::start(
        &scratch,
        TollgateOpts {
            cgroups: vec![agents.path.clone()],
            upstream_roots: Some(standin.ca_pem()),
            extra: [
                vec!["--policy".into(), policy_path.display().to_string()],
                standin.tollgate_args(),
            ]
            .concat(),
            ..TollgateOpts::default()
        },
    )?;
    let pid = tg.service.as_ref().map(|s| s.pid()).unwrap_or(0);
    let env = |via: bool| -> AgentEnv {
        let mut e = standin.agent_env(&scratch);
        if via {
            e.ca_roots.push(tg.ca_cert());
        }
        e.timeout = Duration::from_secs(1800);
        e
    };
    let count = |table: &str| {
        Statement::sql(&format!(
            "SELECT ID, NAME, SSN, NOTE, AMOUNT FROM BENCH.PUBLIC.{table}"
        ))
        .count()
    };
    let timed = |cg: &Path, via: bool, table: &str| -> Result<(f64, u64)> {
        let t = Instant::now();
        let r = run_python(cg, env(via), &[count(table)])?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(r[0]["ok"] == true, "{table} via={via}: {}", r[0]);
        Ok((secs, r[0]["nrows"].as_u64().unwrap_or(0)))
    };
    let idle = vm_kib(pid, "VmRSS:");
    eprintln!("bench: small result through Tollgate");
    let (_, small_rows) = timed(&agents.path, true, "PHI_SMALL")?;
    let hwm_small = vm_kib(pid, "VmHWM:");
    let small_bytes = chunk_bytes(&tg.log());
    let mib_q = |q: [u64; 4]| q.map(|k| format!("{:.1}", k as f64 / 1024.0)).join(" / ");
    if quick {
        let t = Instant::now();
        let sampler = RssSampler::start(pid);
        let (_, rows) = timed(&agents.path, true, "PHI_BIG")?;
        let q = sampler.quarters();
        println!(
            "quick: RSS before {:.1} MiB; peak after {small_rows} rows ({:.0} MiB of chunks) {:.1} MiB; \
             peak after {rows} more rows in {:.1} s {:.1} MiB (by quarter {} MiB); RSS now {:.1} MiB",
            idle as f64 / 1024.0,
            small_bytes as f64 / (1 << 20) as f64,
            hwm_small as f64 / 1024.0,
            t.elapsed().as_secs_f64(),
            vm_kib(pid, "VmHWM:") as f64 / 1024.0,
            mib_q(q),
            vm_kib(pid, "VmRSS:") as f64 / 1024.0,
        );
        return Ok(());
    }
    eprintln!("bench: big result direct");
    let (direct_secs, direct_rows) = timed(&direct.path, false, "PHI_BIG")?;
    eprintln!("bench: big result through Tollgate");
    let sampler = RssSampler::start(pid);
    let (via_secs, via_rows) = timed(&agents.path, true, "PHI_BIG")?;
    let quarters = sampler.quarters();
    let hwm_big = vm_kib(pid, "VmHWM:");
    let big_bytes = chunk_bytes(&tg.log()) - small_bytes;
    anyhow::ensure!(
        direct_rows == BIG_ROWS && via_rows == BIG_ROWS,
        "row counts {direct_rows} / {via_rows}"
    );

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut md = String::new();
    writeln!(md, "# Masking benchmarks\n")?;
    writeln!(
        md,
        "`cargo xtask bench --only masking` (release build), {} on this machine ({} cores).\n",
        chrono_now(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    )?;
    writeln!(
        md,
        "## Masking throughput, one core (`cargo bench -p tollgate-mask --bench rowset`)\n"
    )?;
    writeln!(md, "{}\n", rowset.trim())?;
    writeln!(
        md,
        "## Detector scanning of free text (`cargo bench -p tollgate-mask --bench detect`)\n"
    )?;
    writeln!(md, "{}\n", detect.trim())?;
    writeln!(
        md,
        "## Streaming a chunked result of more than 1 GB through Tollgate\n"
    )?;
    writeln!(
        md,
        "Real Python driver (Arrow), `SELECT ID, NAME, SSN, NOTE, AMOUNT` over {BIG_ROWS} rows: {FIRST_CHUNK_ROWS} inline, the rest in chunks of {CHUNK_ROWS} rows (gzip'd by the stand-in); NAME redacted and SSN partially masked in every chunk by Tollgate. Direct = the same agent from a cgroup that is not redirected.\n"
    )?;
    writeln!(
        md,
        "| | rows | chunk bytes (uncompressed) | wall time | MB/s |"
    )?;
    writeln!(md, "|---|---|---|---|---|")?;
    writeln!(
        md,
        "| direct | {direct_rows} | {:.0} MiB | {direct_secs:.1} s | {:.0} |",
        mib(big_bytes),
        big_bytes as f64 / 1e6 / direct_secs
    )?;
    writeln!(
        md,
        "| via Tollgate, masked | {via_rows} | {:.0} MiB | {via_secs:.1} s ({:.2}×) | {:.0} |",
        mib(big_bytes),
        via_secs / direct_secs,
        big_bytes as f64 / 1e6 / via_secs
    )?;
    writeln!(md, "\nTollgate memory:\n")?;
    writeln!(md, "| | value |")?;
    writeln!(md, "|---|---|")?;
    writeln!(md, "| RSS before | {:.1} MiB |", idle as f64 / 1024.0)?;
    writeln!(
        md,
        "| peak RSS after a {small_rows}-row result ({:.0} MiB of chunks) | {:.1} MiB |",
        mib(small_bytes),
        hwm_small as f64 / 1024.0
    )?;
    writeln!(
        md,
        "| peak RSS after the {BIG_ROWS}-row result ({:.0} MiB of chunks) | {:.1} MiB |",
        mib(big_bytes),
        hwm_big as f64 / 1024.0
    )?;
    writeln!(
        md,
        "| highest RSS in each quarter of the {BIG_ROWS}-row result (sampled every 250 ms) | {} MiB |",
        mib_q(quarters)
    )?;
    println!("{md}");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, &md)?;
    eprintln!("bench: written to {}", out.display());
    drop(tg);
    Ok(())
}
