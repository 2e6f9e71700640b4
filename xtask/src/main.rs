//! `cargo xtask`: set-up, demo, test and benchmark orchestration for Tollgate.
//!
//! - `setup`: installs, idempotently, what the build and the tests need on a Debian bookworm
//!   host as root (LLVM 22, bpf-linker 0.13.0 built for it, rust-src, iproute2, bpffs, cgroup2).
//! - `demo`: the appliance's main job on embedded defaults (see `demo.rs`).
//! - `test`: set-up, format and lint checks, then the whole test suite (what CI runs).
//! - `bench`: the foundation benchmarks; prints figures and writes them to `tests/bench/`.

mod bench;
mod bench_audit;
mod bench_load;
mod bench_masking;
mod demo;
mod mitm;
mod setup;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain pieces and kernel mounts the build and tests need (idempotent).
    Setup,
    /// Build everything (userspace and the eBPF object).
    Build {
        /// Release profile.
        #[arg(long)]
        release: bool,
    },
    /// Run the demo: a stand-in on a test host, an unmodified agent, Tollgate in between.
    Demo,
    /// Set up, check formatting and lints, and run the whole test suite.
    Test {
        /// Skip fmt/clippy (faster local iteration).
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments passed to `cargo test` (after `--` for filters).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Run the benchmarks and record the figures (markdown under tests/bench/).
    Bench {
        /// Directory for the results.
        #[arg(long, default_value = "tests/bench")]
        out: PathBuf,
        /// Only this part: `foundation`, `enforcement`, `masking`, `audit` or `concurrency`.
        #[arg(long)]
        only: Option<String>,
    },
}

fn main() -> Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match Cli::parse().cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Build { release } => {
            setup::setup()?;
            build(release)
        }
        Cmd::Demo => {
            setup::setup()?;
            build(false)?;
            demo::demo(&root)
        }
        Cmd::Test {
            no_lint,
            cargo_args,
        } => {
            setup::setup()?;
            test(no_lint, &cargo_args)
        }
        Cmd::Bench { out, only } => {
            setup::setup()?;
            setup::bench_setup()?;
            build(true)?;
            if only.as_deref().is_none_or(|o| o == "foundation") {
                bench::bench(&root, &out.join("foundation.md"))?;
            }
            if only.as_deref().is_none_or(|o| o == "enforcement") {
                bench::enforcement(&root, &out.join("enforcement.md"))?;
            }
            if only.as_deref().is_none_or(|o| o == "masking") {
                bench_masking::masking(&root, &out.join("masking.md"))?;
            }
            if only.as_deref().is_none_or(|o| o == "audit") {
                bench_audit::audit(&out.join("audit.md"))?;
            }
            if only.as_deref().is_none_or(|o| o == "concurrency") {
                bench_load::concurrency(&root, &out.join("concurrency.md"))?;
            }
            Ok(())
        }
    }
}

/// The workspace root (the parent of this crate).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// A `cargo` command with the environment the eBPF build needs.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // The eBPF object is built by aya-build with `-Z build-std=core`, which stable rustc
    // accepts only with RUSTC_BOOTSTRAP (docs/design.md, "Facts measured here").
    c.env("RUSTC_BOOTSTRAP", "1");
    c
}

/// Runs a command, failing when it does.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn build(release: bool) -> Result<()> {
    let mut c = cargo();
    c.args(["build", "--workspace", "--bins"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)
}

fn test(no_lint: bool, cargo_args: &[String]) -> Result<()> {
    if !no_lint {
        run(cargo().args(["fmt", "--all", "--", "--check"]))?;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    build(false)?;
    let mut c = cargo();
    c.args(["test", "--workspace"]);
    c.args(cargo_args);
    run_tests(&mut c)
}

/// Runs `cargo test`, passing its output through, and closes with one summary line over all
/// test binaries (`tests: N passed, N failed`), so the last line speaks for the whole suite.
fn run_tests(cmd: &mut Command) -> Result<()> {
    use std::io::{BufRead, BufReader};
    eprintln!("+ {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
