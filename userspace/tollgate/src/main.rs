//! `tollgate`: the appliance's binary — CLI, configuration, and the wiring of the redirect
//! (eBPF), the proxy (TLS interception) and the connection records.

mod audit_cmd;
mod config;
mod policy_cmd;
mod run;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use config::{Config, OtherTraffic, UnknownEndpoints, DEFAULT_PIN_DIR, DEFAULT_STATE_DIR};

/// Tollgate: transparent, policy-enforcing interception of agents' Snowflake connections.
#[derive(Parser)]
#[command(name = "tollgate", version, about, long_about = None)]
struct Cli {
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
    /// Check policy files and explain decisions.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
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
    /// YAML configuration file (see README); flags override its settings.
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
    /// The effective configuration: file (or defaults), then flags, then validation.
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
            c.tls.upstream_roots = Some(r.clone());
        }
        if let Some(s) = &self.state_dir {
            c.state_dir = absolute(s)?;
        }
        if let Some(p) = &self.pin_dir {
            c.redirect.pin_dir = absolute(p)?;
        }
        if let Some(r) = &self.records {
            c.records = Some(r.clone());
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
        c.validate()?;
        Ok(c)
    }
}

fn absolute(p: &std::path::Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .context("resolving a relative path")?
            .join(p)
    })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Command::Run(args) => args.config().and_then(run::run),
        Command::Ca(CaCommand::Init { state_dir }) => run::ca_init(&state_dir),
        Command::Ca(CaCommand::Show { state_dir }) => run::ca_show(&state_dir),
        Command::Status { pin_dir, json } => run::status(&pin_dir, json),
        Command::Detach { pin_dir } => run::detach(&pin_dir),
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Replay(args) => audit_cmd::replay(&args),
        Command::Audit(cmd) => audit_cmd::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
