//! `cargo xtask setup`: everything the build and the tests need on a Debian bookworm host, as
//! root, installed only when missing (a second run changes nothing).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::run;

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
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("this kernel exposes no BTF (/sys/kernel/btf/vmlinux): Tollgate needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's kernels are)");
    }
    Ok(())
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
