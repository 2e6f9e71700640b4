//! `tollgate policy check|explain`: validate policy files, and show what a policy decides for a
//! statement and an identity — without a running daemon.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tollgate_policy::{analyze, EvalInput, Identity, NameContext, Policy};

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
    /// Process uid.
    #[arg(long)]
    uid: Option<u32>,
    /// Process comm.
    #[arg(long)]
    comm: Option<String>,
    /// Process executable path.
    #[arg(long)]
    exe: Option<String>,
    /// Process cgroup path (relative to the cgroup2 mount, e.g. /agents.slice/job.scope).
    #[arg(long)]
    cgroup: Option<String>,
    /// Host name.
    #[arg(long)]
    host: Option<String>,
    /// OIDC claim, NAME=VALUE (repeatable).
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    claims: Vec<String>,
}

/// Loads a policy file with errors that name file, line and field.
pub fn load_policy(path: &Path) -> Result<Policy> {
    Ok(tollgate_policy::load(path)?)
}

/// The policy `tollgate run` enforces: the configured file, or the embedded default.
pub fn configured_policy(path: Option<&Path>) -> Result<Policy> {
    match path {
        Some(p) => load_policy(p),
        None => Policy::compile(DEFAULT_POLICY, "<embedded default policy>")
            .context("the embedded default policy does not compile (a build defect)"),
    }
}

/// Runs a `tollgate policy` command.
pub fn run(cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Check { files } => {
            let mut failed = 0;
            for f in &files {
                match load_policy(f) {
                    Ok(p) => println!("ok: {} ({} rules)", f.display(), p.rule_count()),
                    Err(e) => {
                        failed += 1;
                        eprintln!("error: {e:#}");
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
            let policy = load_policy(&a.policy)?;
            let mut claims = BTreeMap::new();
            for c in &a.claims {
                let (k, v) = c
                    .split_once('=')
                    .with_context(|| format!("--claim {c}: expected NAME=VALUE"))?;
                claims.insert(k.to_owned(), v.to_owned());
            }
            let identity = Identity {
                account: a.account,
                user: a.user,
                role: a.role,
                warehouse: a.warehouse,
                database: a.database,
                schema: a.schema,
                uid: a.uid,
                comm: a.comm,
                exe: a.exe,
                cgroup_path: a.cgroup,
                host: a.host,
                claims,
            };
            let ctx = NameContext {
                database: identity.database.clone(),
                schema: identity.schema.clone(),
            };
            let analysis = analyze(&a.sql, &ctx);
            let decision = policy.evaluate(&EvalInput {
                identity: &identity,
                analysis: analysis.as_ref(),
            });
            println!("{}", serde_json::to_string_pretty(&decision)?);
            Ok(())
        }
    }
}
