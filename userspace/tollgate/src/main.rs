//! `tollgate`: the appliance's binary — CLI, configuration, and the wiring of the redirect
//! (eBPF), the proxy (TLS interception) and the connection records.
//!
//! Exit status: 0 on success; 1 on any error (printed once on stderr as `tollgate: …`, each
//! cause once); 2 for a command line clap refuses; 141 when stdout's reader went away before
//! the output was complete (`tollgate replay S | head`), with nothing printed — see
//! [`output`].

#[macro_use]
mod output;
mod audit_cmd;
mod config;
mod config_cmd;
mod logging;
mod policy_cmd;
mod reload;
mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use config::{Config, OtherTraffic, UnknownEndpoints, DEFAULT_PIN_DIR, DEFAULT_STATE_DIR};
use logging::LogFormat;

/// Tollgate: transparent, policy-enforcing interception of agents' Snowflake connections.
#[derive(Parser)]
#[command(name = "tollgate", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr: `text` (coloured only on a terminal) or `json` (one object per
    /// line). `RUST_LOG` sets the level (default `info` for `run`, `warn` otherwise).
    #[arg(long, global = true, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the redirect and run the proxy until SIGTERM/SIGINT.
    ///
    /// The redirect stays pinned in the kernel after tollgate exits (agents then get
    /// "connection refused", never a direct path); `tollgate detach` removes it.
    Run(Box<RunArgs>),
    /// Manage the interception CA that agents' hosts trust.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Show what is pinned and attached in the kernel.
    Status {
        /// bpffs directory of the pins.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check policy files, explain decisions, reload the running daemon's policy.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Check configuration files.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Print an audited session as it happened (from the spool or ClickHouse).
    Replay(audit_cmd::ReplayArgs),
    /// Verify and follow the audit trail.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Remove the redirect: every pinned link, program and map. Agents connect directly again.
    Detach {
        /// bpffs directory of the pins.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the CA in the state dir if it does not exist yet (idempotent).
    Init {
        /// State directory holding ca.pem and ca.key.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Print the CA certificate's path and PEM.
    Show {
        /// State directory holding ca.pem and ca.key.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

/// `tollgate run` flags; each overrides the matching config-file setting.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// YAML configuration file (every setting, its default and flag: docs/settings.md); flags
    /// override its settings. Relative paths in the file are relative to the file's directory;
    /// relative paths given as flags, to the working directory.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// cgroup v2 directory whose processes are redirected (repeatable; replaces the file's list).
    #[arg(long = "cgroup", value_name = "PATH")]
    cgroups: Vec<PathBuf>,
    /// Destination TCP port to redirect (repeatable; replaces the file's setting), or `all`.
    #[arg(long = "port", value_name = "N|all", value_parser = parse_port)]
    ports: Vec<PortArg>,
    /// SNI pattern to intercept (repeatable; replaces the file's or default list).
    #[arg(long = "intercept", value_name = "PATTERN")]
    intercept: Vec<String>,
    /// What to do with TLS to names that are not intercepted: passthrough or block.
    #[arg(long, value_name = "MODE")]
    other_traffic: Option<OtherTraffic>,
    /// What to do with connections that are not TLS and not for Snowflake: passthrough or block.
    #[arg(long, value_name = "MODE")]
    other_protocols: Option<OtherTraffic>,
    /// PEM file of roots trusted for upstream servers (default: the system store).
    #[arg(long, value_name = "FILE")]
    upstream_roots: Option<PathBuf>,
    /// State directory (CA key and certificate, default record file).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// bpffs directory for pinned programs, links and maps.
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
    /// Connection record file (JSON lines), or `-` for stdout.
    #[arg(long, value_name = "FILE")]
    records: Option<String>,
    /// Loopback port of the proxy listeners.
    #[arg(long, value_name = "N")]
    listen_port: Option<u16>,
    /// The cgroup tollgate moves itself into (never redirected).
    #[arg(long, value_name = "PATH")]
    proxy_cgroup: Option<PathBuf>,
    /// Do not load eBPF: rely on an external REDIRECT rule (no process identity then).
    #[arg(long)]
    no_ebpf: bool,
    /// Policy file enforced on Snowflake statements.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Snowflake endpoints Tollgate does not understand: deny or forward.
    #[arg(long, value_name = "MODE")]
    unknown_endpoints: Option<UnknownEndpoints>,
    /// Address of a cloud-storage host serving result chunks, `HOST=IP` (repeatable), for
    /// hosts the system resolver does not know.
    #[arg(long = "storage-resolve", value_name = "HOST=IP", value_parser = parse_resolve)]
    storage_resolve: Vec<(String, std::net::IpAddr)>,
    /// Key file for `token` masking (default `<state-dir>/mask.key`, created on first start).
    #[arg(long, value_name = "FILE")]
    mask_key: Option<PathBuf>,
    /// Audit spool directory (default `<state-dir>/spool`).
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// Ship the audit trail to ClickHouse at this HTTP(S) URL.
    #[arg(long, value_name = "URL")]
    clickhouse: Option<String>,
    /// ClickHouse database (default `tollgate`).
    #[arg(long, value_name = "NAME")]
    clickhouse_database: Option<String>,
    /// ClickHouse writer user (default `default`).
    #[arg(long, value_name = "NAME")]
    clickhouse_user: Option<String>,
    /// File holding the ClickHouse writer's password.
    #[arg(long, value_name = "FILE")]
    clickhouse_password_file: Option<PathBuf>,
}

/// One `--port` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortArg {
    All,
    Port(u16),
}

fn parse_port(s: &str) -> Result<PortArg, String> {
    if s == "all" {
        return Ok(PortArg::All);
    }
    s.parse()
        .map(PortArg::Port)
        .map_err(|e| format!("`{s}`: expected a TCP port or `all` ({e})"))
}

fn parse_resolve(s: &str) -> Result<(String, std::net::IpAddr), String> {
    let (host, ip) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected HOST=IP"))?;
    let ip = ip
        .parse()
        .map_err(|e| format!("`{s}`: `{ip}` is not an IP address ({e})"))?;
    Ok((host.to_ascii_lowercase(), ip))
}

impl RunArgs {
    /// The runtime settings: file (or defaults), then flags, then [`Config::build`] (every
    /// problem reported at once; nothing written).
    fn settings(&self) -> Result<config::Settings> {
        Ok(self.config()?.build()?)
    }

    /// The effective configuration: file (or defaults), then flags. Not yet validated.
    fn config(&self) -> Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        if !self.cgroups.is_empty() {
            c.redirect.cgroups = self.cgroups.clone();
        }
        if !self.ports.is_empty() {
            c.redirect.ports = if self.ports.contains(&PortArg::All) {
                config::PortSelection::All
            } else {
                config::PortSelection::List(
                    self.ports
                        .iter()
                        .filter_map(|p| match p {
                            PortArg::Port(n) => Some(*n),
                            PortArg::All => None,
                        })
                        .collect(),
                )
            };
        }
        if !self.intercept.is_empty() {
            c.intercept.patterns = self.intercept.clone();
        }
        if let Some(o) = self.other_traffic {
            c.intercept.other_traffic = o;
        }
        if let Some(o) = self.other_protocols {
            c.intercept.other_protocols = o;
        }
        if let Some(r) = &self.upstream_roots {
            c.tls.upstream_roots = Some(absolute(r)?);
        }
        if let Some(s) = &self.state_dir {
            c.state_dir = absolute(s)?;
        }
        if let Some(p) = &self.pin_dir {
            c.redirect.pin_dir = absolute(p)?;
        }
        if let Some(r) = &self.records {
            c.records = Some(if r == "-" {
                r.clone()
            } else {
                absolute(Path::new(r))?.display().to_string()
            });
        }
        if let Some(p) = self.listen_port {
            c.listen.port = p;
        }
        if let Some(p) = &self.proxy_cgroup {
            c.redirect.proxy_cgroup = p.clone();
        }
        if let Some(p) = &self.policy {
            c.policy = Some(absolute(p)?);
        }
        if let Some(u) = self.unknown_endpoints {
            c.snowflake.unknown_endpoints = u;
        }
        for (host, ip) in &self.storage_resolve {
            c.snowflake.storage_resolve.insert(host.clone(), *ip);
        }
        if let Some(k) = &self.mask_key {
            c.masking.key_file = Some(absolute(k)?);
        }
        if let Some(d) = &self.spool {
            c.audit.spool_dir = Some(absolute(d)?);
        }
        if let Some(url) = &self.clickhouse {
            c.audit.clickhouse.get_or_insert_with(Default::default).url = url.clone();
        }
        if let Some(ch) = c.audit.clickhouse.as_mut() {
            if let Some(d) = &self.clickhouse_database {
                ch.database = d.clone();
            }
            if let Some(u) = &self.clickhouse_user {
                ch.user = u.clone();
            }
            if let Some(p) = &self.clickhouse_password_file {
                ch.password_file = Some(absolute(p)?);
            }
        }
        if self.no_ebpf {
            c.redirect.mode = config::RedirectMode::None;
        }
        Ok(c)
    }
}

/// A flag's path against the working directory.
fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving the relative path {}", p.display()))
}

/// Tunes glibc's allocator for a long-running proxy, before any thread starts: buffers of
/// 256 KiB and more (result chunks, slices of big record batches) are mapped and unmapped on
/// their own, so their memory goes back to the system when freed instead of staying in the
/// heap, and at most two arenas are kept (the blocking workers that mask results are many
/// short-lived threads, each of which would otherwise get an arena of its own).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, Command::Run(_)) {
        tune_allocator();
    }
    let default_filter = match cli.cmd {
        Command::Run(_) => "info",
        _ => "warn",
    };
    logging::init(cli.log_format, default_filter);
    let result = match cli.cmd {
        Command::Run(args) => args.settings().and_then(run::run),
        Command::Ca(CaCommand::Init { state_dir }) => run::ca_init(&state_dir),
        Command::Ca(CaCommand::Show { state_dir }) => run::ca_show(&state_dir),
        Command::Status { pin_dir, json } => run::status(&pin_dir, json),
        Command::Detach { pin_dir } => run::detach(&pin_dir),
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Config(cmd) => config_cmd::run(cmd),
        Command::Replay(args) => audit_cmd::replay(&args),
        Command::Audit(cmd) => audit_cmd::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader has all it wanted; saying so would only add noise to its pipeline.
        Err(e) if output::is_broken_stdout(&e) => ExitCode::from(output::BROKEN_PIPE_EXIT),
        Err(e) => {
            errln!("tollgate: {}", output::anyhow_chain(&e));
            ExitCode::FAILURE
        }
    }
}
