//! `cargo xtask bench`: the foundation's figures, each against a baseline measured in the same
//! run on the same test host:
//!
//! - connect() latency in the target cgroup without the programs, then with them attached, to a
//!   port that is not redirected and to one that is;
//! - pass-through throughput vs a direct connection;
//! - intercepted HTTPS request latency vs direct (one kept-alive connection);
//! - TLS handshakes per second through Tollgate (cached leaf) vs direct;
//! - Tollgate's peak RSS while holding 1,000 concurrent intercepted connections.
//!
//! Release builds; results printed and written as markdown.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use tollgate_e2e::snowflake::{run_node, run_python, AgentEnv, Standin, StandinOpts, Statement};
use tollgate_e2e::{place_in_cgroup, Cgroup, Scratch, Service, TestHost, Tollgate, TollgateOpts};

const SF_NAME: &str = "bench.snowflakecomputing.com";
const OTHER_NAME: &str = "bulk.example.test";

struct Kit {
    bin: PathBuf,
}

impl Kit {
    fn run(&self, cg: &Path, args: &[&str]) -> Result<Value> {
        let mut c = Command::new(&self.bin);
        c.args(args);
        place_in_cgroup(cg, &mut c);
        let out = c.output().context("running the testkit")?;
        let s = String::from_utf8_lossy(&out.stdout);
        let line = s.lines().last().unwrap_or_default();
        serde_json::from_str(line).with_context(|| {
            format!(
                "testkit {args:?} printed {s:?}; stderr {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

pub(crate) fn vm_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Samples a process's resident memory every 250 ms on a thread of its own, until stopped.
pub(crate) struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

impl RssSampler {
    /// Starts sampling `pid`'s `VmRSS`.
    pub(crate) fn start(pid: u32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push(vm_kib(pid, "VmRSS:"));
                // A sampling period, not a synchronisation.
                std::thread::park_timeout(std::time::Duration::from_millis(250));
            }
            samples.push(vm_kib(pid, "VmRSS:"));
            samples
        });
        RssSampler { stop, thread }
    }

    /// Stops and returns the highest sample (KiB) of each quarter of the run.
    pub(crate) fn quarters(self) -> [u64; 4] {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.thread().unpark();
        let samples = self.thread.join().unwrap_or_default();
        let mut q = [0u64; 4];
        for (i, v) in samples.iter().enumerate() {
            let k = (i * 4 / samples.len().max(1)).min(3);
            q[k] = q[k].max(*v);
        }
        q
    }
}

/// CPU time used so far by the processes of the cgroup at `path` (`cpu.stat` `usage_usec`:
/// user and system, every thread, kept by the kernel for every cgroup2 cgroup).
pub fn cgroup_cpu_us(path: &Path) -> Result<u64> {
    let stat = std::fs::read_to_string(path.join("cpu.stat"))
        .with_context(|| format!("reading {}/cpu.stat", path.display()))?;
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
        .with_context(|| format!("no usage_usec in {}/cpu.stat", path.display()))
}

/// Runs the benchmarks.
pub fn bench(root: &Path, out: &Path) -> Result<()> {
    let bins = root.join("target/release");
    std::env::set_var("TOLLGATE_BIN_DIR", &bins);
    let kit = Kit {
        bin: bins.join("tollgate-testkit"),
    };
    let scratch = Scratch::new("bench")?;
    let host = TestHost::create()?;
    let pki = scratch.join("pki");
    tollgate_e2e::run(Command::new(&kit.bin).args([
        "gen-ca",
        "--dir",
        pki.to_str().unwrap(),
        "--names",
        &format!("{SF_NAME},{OTHER_NAME}"),
    ]))?;
    let serve = |mode: &str, ports: &[u16], extra: &[&str]| -> Result<Service> {
        let mut c = host.command(&kit.bin);
        c.args(["serve", "--mode", mode])
            .arg("--cert")
            .arg(pki.join("server.pem"))
            .arg("--key")
            .arg(pki.join("server.key"))
            .args(extra);
        for p in ports {
            c.arg("--listen").arg(host.v4(*p).to_string());
        }
        let mut s = Service::spawn(c, &scratch.join(&format!("serve-{mode}.log")))?;
        for _ in ports {
            s.wait_line(Duration::from_secs(10), |l| l.contains("listening"))?;
        }
        Ok(s)
    };
    let stream_bytes: u64 = 512 * 1024 * 1024;
    let stream_s = stream_bytes.to_string();
    let _https = serve("https", &[443, 8080], &[])?;
    let _stream = serve("stream", &[9443], &["--send-bytes", &stream_s])?;
    let top = Cgroup::create(&format!("tollgate-bench-{}", std::process::id()))?;
    let agents = top.child("agents")?;
    let sibling = top.child("sibling")?;
    let test_ca = pki.join("ca.pem");
    let test_ca = test_ca.to_str().unwrap();
    let a443 = host.v4(443).to_string();
    let a8080 = host.v4(8080).to_string();
    let a9443 = host.v4(9443).to_string();
    let n_connect = "2000";

    // The same measurements before Tollgate (from the agents cgroup for connect(), from the
    // sibling cgroup for the rest) and through it (from the agents cgroup).
    let connects = |cg: &Path| -> Result<(Value, Value)> {
        let other = kit.run(
            cg,
            &["connect-bench", "--connect", &a8080, "--count", n_connect],
        )?;
        let target = kit.run(
            cg,
            &["connect-bench", "--connect", &a443, "--count", n_connect],
        )?;
        Ok((other, target))
    };
    let traffic = |cg: &Path, sf_ca: &str| -> Result<(Value, Value, Value)> {
        let stream = kit.run(
            cg,
            &[
                "client",
                "--connect",
                &a9443,
                "--sni",
                OTHER_NAME,
                "--ca",
                test_ca,
                "--send-bytes",
                &stream_s,
                "--timeout-ms",
                "300000",
            ],
        )?;
        let http = kit.run(
            cg,
            &[
                "http-bench",
                "--connect",
                &a443,
                "--sni",
                SF_NAME,
                "--ca",
                sf_ca,
                "--count",
                "2000",
            ],
        )?;
        let hs = kit.run(
            cg,
            &[
                "handshake-bench",
                "--connect",
                &a443,
                "--sni",
                SF_NAME,
                "--ca",
                sf_ca,
                "--count",
                "2000",
            ],
        )?;
        Ok((stream, http, hs))
    };

    eprintln!("bench: connect() without programs");
    let (c_plain_other, c_plain_target) = connects(&agents.path)?;
    eprintln!("bench: direct baselines");
    let (direct_stream, direct_http, direct_hs) = traffic(&sibling.path, test_ca)?;

    let tg = Tollgate::start(
        &scratch,
        TollgateOpts {
            cgroups: vec![agents.path.clone()],
            ports: vec![443, 9443],
            upstream_roots: Some(pki.join("ca.pem")),
            // The relay itself is measured here: the benchmark's requests are not Snowflake's.
            extra: vec!["--unknown-endpoints".into(), "forward".into()],
            ..TollgateOpts::default()
        },
    )?;
    let tg_pid = tg.service.as_ref().unwrap().pid();
    let tg_ca = tg.ca_cert();
    let tg_ca = tg_ca.to_str().unwrap();
    let rss_idle = vm_kib(tg_pid, "VmRSS:");

    eprintln!("bench: connect() with programs attached");
    let (c_hook_other, c_hook_target) = connects(&agents.path)?;
    eprintln!("bench: through tollgate");
    let (via_stream, via_http, via_hs) = traffic(&agents.path, tg_ca)?;

    eprintln!("bench: 1,000 concurrent intercepted connections");
    let mut hold = Command::new(&kit.bin);
    hold.args([
        "hold",
        "--connect",
        &a443,
        "--sni",
        SF_NAME,
        "--ca",
        tg_ca,
        "--count",
        "1000",
        "--hold-ms",
        "3000",
    ]);
    place_in_cgroup(&agents.path, &mut hold);
    let mut holder = Service::spawn(hold, &scratch.join("hold.log"))?;
    let held: Value =
        serde_json::from_str(&holder.wait_line(Duration::from_secs(120), |l| l.contains("held"))?)?;
    let rss_held = vm_kib(tg_pid, "VmRSS:");
    let hwm = vm_kib(tg_pid, "VmHWM:");
    holder.wait_exit(Duration::from_secs(30))?;

    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let mbps = |v: &Value| 2.0 * stream_bytes as f64 / 1048576.0 / (f(v, "elapsed_ms") / 1000.0);
    let mut md = String::new();
    writeln!(md, "# Foundation benchmarks\n")?;
    writeln!(
        md,
        "`cargo xtask bench` (release build), {} on this machine ({} cores). Baselines in the same run, same test host.\n",
        chrono_now(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    )?;
    writeln!(md, "| figure | baseline | with Tollgate | ratio |")?;
    writeln!(md, "|---|---|---|---|")?;
    let row = |md: &mut String, name: &str, base: f64, with: f64, unit: &str| {
        let _ = writeln!(
            md,
            "| {name} | {base:.1} {unit} | {with:.1} {unit} | {:.2}× |",
            with / base
        );
    };
    let rows: [(&str, f64, f64, &str); 8] = [
        (
            "connect() p50, port not redirected (no programs → programs attached)",
            f(&c_plain_other, "p50_us"),
            f(&c_hook_other, "p50_us"),
            "µs",
        ),
        (
            "connect() p99, port not redirected",
            f(&c_plain_other, "p99_us"),
            f(&c_hook_other, "p99_us"),
            "µs",
        ),
        (
            "connect() p50, redirected port (direct to test host → redirected to proxy)",
            f(&c_plain_target, "p50_us"),
            f(&c_hook_target, "p50_us"),
            "µs",
        ),
        (
            "connect() p99, redirected port",
            f(&c_plain_target, "p99_us"),
            f(&c_hook_target, "p99_us"),
            "µs",
        ),
        (
            "pass-through throughput (512 MiB each way, TLS end to end)",
            mbps(&direct_stream),
            mbps(&via_stream),
            "MiB/s",
        ),
        (
            "HTTPS request latency p50 (kept-alive, intercepted)",
            f(&direct_http, "p50_us"),
            f(&via_http, "p50_us"),
            "µs",
        ),
        (
            "HTTPS request latency p99",
            f(&direct_http, "p99_us"),
            f(&via_http, "p99_us"),
            "µs",
        ),
        (
            "TLS handshakes per second (8 in flight; cached leaf)",
            f(&direct_hs, "per_second"),
            f(&via_hs, "per_second"),
            "/s",
        ),
    ];
    for (name, base, with, unit) in rows {
        row(&mut md, name, base, with, unit);
    }
    writeln!(md)?;
    writeln!(
        md,
        "Memory: Tollgate RSS idle {:.1} MiB; holding {} concurrent intercepted TLS connections ({} failed) {:.1} MiB; peak (VmHWM) {:.1} MiB — {:.1} KiB per connection.",
        rss_idle as f64 / 1024.0,
        held["open"],
        held["failed"],
        rss_held as f64 / 1024.0,
        hwm as f64 / 1024.0,
        (rss_held.saturating_sub(rss_idle)) as f64 / held["open"].as_f64().unwrap_or(1.0)
    )?;
    writeln!(
        md,
        "\nAdded latency per intercepted request (p50): {:.0} µs.",
        f(&via_http, "p50_us") - f(&direct_http, "p50_us")
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

pub(crate) fn chrono_now() -> String {
    let out = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Per-query latency percentiles (µs) of an agent run, skipping the first `warmup` statements.
fn query_latency(results: &[Value], warmup: usize) -> Result<(f64, f64)> {
    let mut us: Vec<f64> = results
        .iter()
        .skip(warmup)
        .map(|r| {
            anyhow::ensure!(r["ok"] == true, "a benchmark query failed: {r}");
            Ok(r["elapsed_us"].as_f64().unwrap_or(f64::NAN))
        })
        .collect::<Result<_>>()?;
    us.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| us[((us.len() as f64 - 1.0) * q).round() as usize];
    Ok((at(0.5), at(0.99)))
}

/// `cargo xtask bench --only enforcement`: the Snowflake layer's figures — policy evaluation
/// and SQL analysis (the policy crate's harness), and the latency Tollgate adds per query with
/// the real drivers, against the stand-in directly in the same run.
pub fn enforcement(root: &Path, out: &Path) -> Result<()> {
    std::env::set_var("TOLLGATE_BIN_DIR", root.join("target/release"));
    eprintln!("bench: policy evaluation and SQL analysis");
    let policy_out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["bench", "-q", "-p", "tollgate-policy", "--bench", "policy"])
        .output()
        .context("running cargo bench -p tollgate-policy")?;
    anyhow::ensure!(
        policy_out.status.success(),
        "cargo bench -p tollgate-policy failed: {}",
        String::from_utf8_lossy(&policy_out.stderr)
    );
    let policy_figures = String::from_utf8_lossy(&policy_out.stdout).into_owned();

    let scratch = Scratch::new("bench-enf")?;
    let host = TestHost::create()?;
    let standin = Standin::start(&host, &scratch, StandinOpts::default())?;
    let top = Cgroup::create(&format!("tollgate-bench-enf-{}", std::process::id()))?;
    let agents = top.child("agents")?;
    let direct = top.child("direct")?;
    let tg = Tollgate::start(
        &scratch,
        TollgateOpts {
            cgroups: vec![agents.path.clone()],
            upstream_roots: Some(standin.ca_pem()),
            extra: [
                vec![
                    "--policy".into(),
                    root.join("policies/demo.yaml").display().to_string(),
                ],
                standin.tollgate_args(),
            ]
            .concat(),
            ..TollgateOpts::default()
        },
    )?;
    let n = 300;
    let warmup = 20;
    let statements: Vec<Statement> = (0..n)
        .map(|i| {
            Statement::sql(&format!(
                "SELECT ID, NAME FROM CLINICAL.EHR.PATIENTS WHERE ID = {}",
                1 + i % 3
            ))
        })
        .collect();
    let via_env = || -> AgentEnv {
        let mut e = standin.agent_env(&scratch);
        e.ca_roots.push(tg.ca_cert());
        e.timeout = Duration::from_secs(300);
        e
    };
    let direct_env = || -> AgentEnv {
        let mut e = standin.agent_env(&scratch);
        e.timeout = Duration::from_secs(300);
        e
    };
    let mut md = String::new();
    writeln!(md, "# Enforcement benchmarks\n")?;
    writeln!(
        md,
        "`cargo xtask bench --only enforcement` (release build), {} on this machine ({} cores).\n",
        chrono_now(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    )?;
    writeln!(
        md,
        "## Policy evaluation and SQL analysis (`cargo bench -p tollgate-policy`)\n"
    )?;
    writeln!(md, "{}", policy_figures.trim())?;
    writeln!(
        md,
        "\n## Added latency per query, real drivers, stand-in on a test host\n"
    )?;
    writeln!(
        md,
        "{n} point queries per run (first {warmup} not counted), one session; direct = the same agent from a cgroup that is not redirected.\n"
    )?;
    writeln!(
        md,
        "| driver | direct p50 | via Tollgate p50 | added p50 | ratio | direct p99 | via p99 |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    for (name, run) in [
        (
            "python (Arrow)",
            run_python as fn(&Path, AgentEnv, &[Statement]) -> Result<Vec<Value>>,
        ),
        ("node (JSON)", run_node),
    ] {
        eprintln!("bench: {name} direct and via tollgate");
        // Interleave two rounds of each so drift on a shared machine hits both sides.
        let mut d = Vec::new();
        let mut v = Vec::new();
        for _ in 0..2 {
            d.extend(
                run(&direct.path, direct_env(), &statements)?
                    .into_iter()
                    .skip(warmup),
            );
            v.extend(
                run(&agents.path, via_env(), &statements)?
                    .into_iter()
                    .skip(warmup),
            );
        }
        let (d50, d99) = query_latency(&d, 0)?;
        let (v50, v99) = query_latency(&v, 0)?;
        writeln!(
            md,
            "| {name} | {d50:.0} µs | {v50:.0} µs | {:.0} µs | {:.2}× | {d99:.0} µs | {v99:.0} µs |",
            v50 - d50,
            v50 / d50
        )?;
    }
    println!("{md}");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, &md)?;
    eprintln!("bench: written to {}", out.display());
    drop(tg);
    Ok(())
}
