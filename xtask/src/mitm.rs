//! The peer a user would pick instead of Tollgate, for the benchmarks: mitmproxy as a
//! transparent interceptor (PyPI `mitmproxy`, pinned in [`MITM_PINS`]), with an nftables rule
//! that redirects port 443 from one cgroup to it — the same agents, the same stand-in, the
//! same kind of redirect by cgroup that Tollgate's eBPF programs apply.
//!
//! mitmproxy verifies the stand-in with the stand-in's CA (as Tollgate does) and mints its own
//! leaf certificates from a CA in its own configuration directory, which the agents trust.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use tollgate_e2e::{cgroup2_mount, place_in_cgroup, Cgroup, Scratch, Service};

/// Where `cargo xtask bench` installs mitmproxy.
pub const MITM_VENV: &str = "/opt/tollgate-test/mitmproxy";

/// The pinned mitmproxy (the last release for the machine's Python 3.11).
pub const MITM_PINS: &[&str] = &["mitmproxy==11.0.2"];

/// The local port mitmproxy listens on.
const PORT: u16 = 18443;

/// A running mitmproxy in transparent mode, its nftables redirect installed.
pub struct Mitm {
    _service: Service,
    table: String,
    /// The CA that signs mitmproxy's leaves (for the agents to trust).
    pub ca: PathBuf,
    /// The cgroup mitmproxy runs in (its CPU is read from here).
    pub cgroup: Cgroup,
}

impl Mitm {
    /// Starts mitmproxy in `proxy_cgroup`, trusting `upstream_ca` for upstream verification,
    /// and redirects TCP port 443 from the `agents` cgroup to it.
    pub fn start(
        scratch: &Scratch,
        agents: &Cgroup,
        proxy_cgroup: Cgroup,
        upstream_ca: &Path,
    ) -> Result<Self> {
        let confdir = scratch.join("mitmproxy");
        std::fs::create_dir_all(&confdir)?;
        let mut cmd = Command::new(Path::new(MITM_VENV).join("bin/mitmdump"));
        cmd.args(["--mode", "transparent", "--listen-host", "127.0.0.1"])
            .args(["--listen-port", &PORT.to_string()])
            .arg("--set")
            .arg(format!("confdir={}", confdir.display()))
            .arg("--set")
            .arg(format!(
                "ssl_verify_upstream_trusted_ca={}",
                upstream_ca.display()
            ))
            .args(["--set", "flow_detail=0", "--set", "termlog_verbosity=info"]);
        place_in_cgroup(&proxy_cgroup.path, &mut cmd);
        let mut service =
            Service::spawn(cmd, &scratch.join("mitmproxy.log")).with_context(|| {
                format!("starting mitmdump from {MITM_VENV} (`cargo xtask bench` installs it)")
            })?;
        service.wait_line(Duration::from_secs(60), |l| l.contains("listening at"))?;
        let table = format!("tollgate_bench_mitm_{}", std::process::id());
        let mount = cgroup2_mount()?;
        let relative = agents
            .path
            .strip_prefix(&mount)
            .context("the agents' cgroup is not under the cgroup2 mount")?;
        // nft names a cgroup by its path under /sys/fs/cgroup; the level is its depth in the
        // cgroup2 hierarchy.
        let nft_path = agents
            .path
            .strip_prefix("/sys/fs/cgroup")
            .context("nft finds cgroups under /sys/fs/cgroup only")?;
        let rules = format!(
            "table inet {table} {{\n  chain out {{\n    type nat hook output priority -100;\n    socket cgroupv2 level {} \"{}\" tcp dport 443 redirect to :{PORT}\n  }}\n}}\n",
            relative.components().count(),
            nft_path.display()
        );
        let rules_file = scratch.join("mitmproxy.nft");
        std::fs::write(&rules_file, rules)?;
        crate::run(Command::new("nft").arg("-f").arg(&rules_file))
            .context("installing the nftables redirect to mitmproxy (`nft`, package nftables)")?;
        Ok(Mitm {
            _service: service,
            table,
            ca: confdir.join("mitmproxy-ca-cert.pem"),
            cgroup: proxy_cgroup,
        })
    }
}

impl Drop for Mitm {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}
