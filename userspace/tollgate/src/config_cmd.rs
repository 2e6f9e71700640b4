//! `tollgate config check FILE`: validate a configuration file and compile the policy it names,
//! without a daemon and without side effects.
//!
//! It runs exactly what `tollgate run --config FILE` runs before it changes anything
//! ([`Config::build`]): the value checks, then the files the settings name (policy, upstream
//! roots, ClickHouse password files, an existing masking key). Every problem is listed, each
//! named by its setting; the exit status is 1 when there is any. What it does not check is the
//! host (cgroups, privileges, bpffs): `tollgate run` checks that, also before creating anything.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::json;

use crate::config::{Config, ConfigError, ConfigErrors};
use crate::output::error_chain;

/// `tollgate config …`.
#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file and compile the policy it names, changing nothing.
    ///
    /// Every problem is listed, each with its setting path (`redirect.ports[1]`); the exit
    /// status is 1 when there is any. Flags of `tollgate run` are not applied: settings given
    /// only as flags (such as `--cgroup`) are reported missing.
    Check {
        /// The configuration file.
        file: PathBuf,
        /// Print the outcome as JSON on stdout: `{"file", "ok", "errors": [{"field",
        /// "message"}], "policy": {"file", "rules", "digest"} | null}`.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `tollgate config` command.
pub fn run(cmd: ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Check { file, json } => check(&file, json),
    }
}

fn check(file: &std::path::Path, json: bool) -> Result<()> {
    let built = Config::from_file(file)
        .map_err(ConfigErrors::from)
        .and_then(|c| c.build());
    let name = file.display().to_string();
    match built {
        Ok(settings) => {
            let p = &settings.policy;
            if json {
                let report = json!({
                    "file": name,
                    "ok": true,
                    "errors": [],
                    "policy": {
                        "file": p.name(),
                        "rules": p.policy.rule_count(),
                        "digest": p.digest,
                    },
                });
                outln!("{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                outln!("ok: {name}")?;
                outln!(
                    "  policy: {} ({} rules, {})",
                    p.name(),
                    p.policy.rule_count(),
                    p.digest
                )?;
            }
            Ok(())
        }
        Err(errors) => {
            if json {
                let list: Vec<_> = errors.iter().map(error_json).collect();
                let report = json!({ "file": name, "ok": false, "errors": list, "policy": null });
                outln!("{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                for e in errors.iter() {
                    errln!("error: {}", error_chain(e).replace('\n', "\n  "));
                }
            }
            bail!("{} problem(s) in {name}", errors.0.len())
        }
    }
}

fn error_json(e: &ConfigError) -> serde_json::Value {
    let message = match e {
        ConfigError::Invalid { message, .. } => message.clone(),
        other => error_chain(other),
    };
    json!({ "field": e.field(), "message": message })
}
