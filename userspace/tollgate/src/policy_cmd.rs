//! `tollgate policy check|explain|reload`: validate policy files, show what a policy decides for
//! a statement and an identity (without a running daemon), and make the running daemon reload
//! its policy ([`crate::reload`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use sha2::{Digest as _, Sha256};
use tollgate_policy::{
    analyze, Claims, EvalInput, Identity, NameContext, Policy, PolicyError, ProcessIdentity,
    SnowflakeIdentity,
};

use crate::output::error_chain;

/// The embedded policy used when none is configured: every statement is refused, with a
/// message that says how to configure one.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/default.yaml");

/// `tollgate policy …`.
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Load and validate policy files; errors name the file, line and field.
    Check {
        /// Policy files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the decision for a statement as JSON (decision, rule, tables, columns, mask plan).
    Explain(Box<ExplainArgs>),
    /// Make the running daemon re-read and compile its policy file (SIGHUP), and report.
    ///
    /// Reads the daemon's pid from `<state-dir>/tollgate.pid`, sends SIGHUP, and waits until
    /// the daemon reports the outcome in `<state-dir>/policy.json`. A policy that does not
    /// compile is refused: the policy in force stays, the errors are printed, and the exit
    /// status is 1. Either way the daemon logs it and records a `policy_reload` audit event.
    Reload(crate::reload::ReloadArgs),
}

/// `tollgate policy explain` arguments: the statement and who runs it.
#[derive(Args)]
pub struct ExplainArgs {
    /// Policy file.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// The SQL text (may hold several statements).
    #[arg(long)]
    sql: String,
    /// Snowflake account.
    #[arg(long)]
    account: Option<String>,
    /// Snowflake user (login name).
    #[arg(long)]
    user: Option<String>,
    /// Current role.
    #[arg(long)]
    role: Option<String>,
    /// Current warehouse.
    #[arg(long)]
    warehouse: Option<String>,
    /// Current database (unqualified names resolve against it).
    #[arg(long)]
    database: Option<String>,
    /// Current schema.
    #[arg(long)]
    schema: Option<String>,
    /// Process uid (with --comm: a process is known with both, or not at all).
    #[arg(long, requires = "comm")]
    uid: Option<u32>,
    /// Process comm (with --uid).
    #[arg(long, requires = "uid")]
    comm: Option<String>,
    /// Process executable path (with --uid and --comm).
    #[arg(long, requires_all = ["uid", "comm"])]
    exe: Option<String>,
    /// Process cgroup path (relative to the cgroup2 mount, e.g. /agents.slice/job.scope; with
    /// --uid and --comm).
    #[arg(long, requires_all = ["uid", "comm"])]
    cgroup: Option<String>,
    /// Host name.
    #[arg(long)]
    host: Option<String>,
    /// OIDC claim, NAME=VALUE (repeatable).
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    claims: Vec<String>,
}

/// What an embedded-default policy is called in messages.
pub const EMBEDDED_POLICY_NAME: &str = "<embedded default policy>";

/// A compiled policy, where it came from, and the digest of the text it was compiled from.
#[derive(Debug, Clone)]
pub struct LoadedPolicy {
    /// The policy file; `None` for the embedded default.
    pub path: Option<PathBuf>,
    /// The compiled policy.
    pub policy: Policy,
    /// `sha256:<hex>` of the policy text as read.
    pub digest: String,
}

impl LoadedPolicy {
    /// The file name, or [`EMBEDDED_POLICY_NAME`].
    pub fn name(&self) -> String {
        self.path.as_ref().map_or_else(
            || EMBEDDED_POLICY_NAME.to_owned(),
            |p| p.display().to_string(),
        )
    }
}

/// `sha256:<hex>` of a policy text.
pub fn policy_digest(text: &str) -> String {
    let hash = Sha256::digest(text.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Reads and compiles a policy file; errors name the file, line and field (all of them).
pub fn load_policy_file(path: &Path) -> Result<LoadedPolicy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(LoadedPolicy {
        path: Some(path.to_owned()),
        policy: Policy::compile(&text, &path.display().to_string())?,
        digest: policy_digest(&text),
    })
}

/// The policy `tollgate run` enforces: the configured file, or the embedded default.
pub fn load_configured(path: Option<&Path>) -> Result<LoadedPolicy, PolicyError> {
    match path {
        Some(p) => load_policy_file(p),
        // Compiled by the unit tests too: a failure here is a build defect.
        None => Ok(LoadedPolicy {
            path: None,
            policy: Policy::compile(DEFAULT_POLICY, EMBEDDED_POLICY_NAME)?,
            digest: policy_digest(DEFAULT_POLICY),
        }),
    }
}

/// Runs a `tollgate policy` command.
pub fn run(cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Check { files } => {
            let mut failed = 0;
            for f in &files {
                match load_policy_file(f) {
                    Ok(p) => outln!(
                        "ok: {} ({} rules, {})",
                        f.display(),
                        p.policy.rule_count(),
                        p.digest
                    )?,
                    Err(e) => {
                        failed += 1;
                        errln!("error: {}", error_chain(&e));
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} policy file(s) failed", files.len());
            }
            Ok(())
        }
        PolicyCommand::Explain(a) => {
            let a = *a;
            let policy = load_policy_file(&a.policy)?.policy;
            let mut claims = Claims::default();
            for c in &a.claims {
                let (k, v) = c
                    .split_once('=')
                    .with_context(|| format!("--claim {c}: expected NAME=VALUE"))?;
                claims.insert(k, v);
            }
            // clap makes --uid and --comm come together, and --exe and --cgroup need both.
            let process = match (a.uid, a.comm) {
                (Some(uid), Some(comm)) => Some(ProcessIdentity {
                    uid,
                    comm,
                    exe: a.exe,
                    cgroup_path: a.cgroup,
                    ..ProcessIdentity::default()
                }),
                _ => None,
            };
            let identity = Identity {
                snowflake: SnowflakeIdentity {
                    account: a.account,
                    user: a.user,
                    role: a.role,
                    warehouse: a.warehouse,
                    database: a.database,
                    schema: a.schema,
                    ..SnowflakeIdentity::default()
                },
                process,
                host: a.host,
                claims,
            };
            let ctx = NameContext {
                database: identity.snowflake.database.clone(),
                schema: identity.snowflake.schema.clone(),
            };
            let analysis = analyze(&a.sql, &ctx);
            let decision = policy.evaluate(&EvalInput {
                identity: &identity,
                analysis: analysis.as_ref(),
            });
            outln!("{}", serde_json::to_string_pretty(&decision)?)?;
            Ok(())
        }
        PolicyCommand::Reload(args) => crate::reload::reload_command(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_compiles_and_refuses() {
        let p = load_configured(None).unwrap();
        assert_eq!(p.path, None);
        assert_eq!(p.name(), EMBEDDED_POLICY_NAME);
        assert!(p.digest.starts_with("sha256:") && p.digest.len() == 7 + 64);
    }

    #[test]
    fn a_missing_policy_names_the_file_and_the_os_error_once() {
        let e = load_configured(Some(Path::new("/nonexistent/tollgate-policy.yaml"))).unwrap_err();
        let text = error_chain(&e);
        assert!(text.contains("/nonexistent/tollgate-policy.yaml"), "{text}");
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
    }
}
