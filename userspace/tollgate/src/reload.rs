//! Policy reload: the daemon re-reads its policy file on SIGHUP; `tollgate policy reload`
//! signals it and reports the outcome.
//!
//! Once ready, `tollgate run` writes two files in its state directory:
//! - `tollgate.pid`: its pid (removed again at a clean exit);
//! - `policy.json`: the policy in force (file, digest, rule count, since when), the number of
//!   reload attempts, and the outcome of the last one ([`PolicyStatus`]); replaced atomically
//!   after every attempt.
//!
//! On SIGHUP the daemon reads and compiles the configured file again. A policy that compiles is
//! recorded in the audit trail (a signed `policy_reload` event, decision `ok`, with the new
//! digest and rule count) **before** it is swapped in, and logged; statements already decided
//! are not affected. A policy that does not compile, cannot be read, or whose reload cannot be
//! recorded is refused: the policy in force stays (fail closed — never the embedded default),
//! the errors are logged at error level with the file, and a `policy_reload` event with
//! decision `failed` and the errors as its reason is recorded.
//!
//! `tollgate policy reload` reads the attempt counter, checks that the pid file names a running
//! `tollgate run`, sends SIGHUP, and waits (with a deadline) until the counter moves; it prints
//! the outcome and exits 1 when the reload was refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use tollgate_audit::event::{format_us, now_us};
use tollgate_audit::{Event, EventKind, Spool};
use tollgate_policy::Policy;
use tracing::{error, info, warn};

use crate::config::{Config, DEFAULT_STATE_DIR};
use crate::output::error_chain;
use crate::policy_cmd::{load_policy_file, LoadedPolicy};

/// The daemon's pid file, in its state directory.
pub const PID_FILE: &str = "tollgate.pid";
/// The daemon's policy status file, in its state directory.
pub const STATUS_FILE: &str = "policy.json";

/// What `policy.json` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// The daemon's pid.
    pub pid: u32,
    /// Reload attempts since the daemon started.
    pub attempts: u64,
    /// The policy being enforced.
    pub in_force: PolicyInForce,
    /// The last reload attempt, if any.
    pub last_attempt: Option<ReloadAttempt>,
}

/// The policy being enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInForce {
    /// The file, or `<embedded default policy>`.
    pub policy: String,
    /// `sha256:<hex>` of its text.
    pub digest: String,
    /// Its number of rules.
    pub rules: usize,
    /// Since when it is enforced (RFC 3339, UTC).
    pub since: String,
}

/// One reload attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadAttempt {
    /// Whether the new policy is now in force.
    pub ok: bool,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// The file read.
    pub policy: String,
    /// Why it was refused (every compile error), when it was.
    pub errors: Option<String>,
}

impl PolicyInForce {
    fn of(p: &LoadedPolicy) -> Self {
        PolicyInForce {
            policy: p.name(),
            digest: p.digest.clone(),
            rules: p.policy.rule_count(),
            since: format_us(now_us()),
        }
    }
}

/// Writes `bytes` to `dir/name` through a temporary file and a rename, so a reader never
/// sees half of it.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// One line of a (possibly multi-line) error text, for a log field or an audit reason.
fn one_line(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(line);
    }
    out
}

/// The daemon's pid file.
#[derive(Debug, Clone)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Removes the pid file if it is still ours (a clean exit).
    pub fn withdraw(&self) {
        let ours =
            std::fs::read_to_string(&self.path).is_ok_and(|s| s.trim() == self.pid.to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// How the daemon swaps a policy in (the Snowflake layer's `set_policy`).
pub type ApplyPolicy = Box<dyn Fn(Arc<Policy>) + Send + Sync>;

/// The daemon's side: re-reads the policy on request, records and applies it, and keeps the
/// pid and status files.
pub struct Reloader {
    path: Option<PathBuf>,
    apply: ApplyPolicy,
    spool: Spool,
    state_dir: PathBuf,
    status: PolicyStatus,
}

impl Reloader {
    /// A reloader for the policy `loaded` (in force now), recording to `spool`.
    pub fn new(state_dir: &Path, loaded: &LoadedPolicy, spool: Spool, apply: ApplyPolicy) -> Self {
        Reloader {
            path: loaded.path.clone(),
            apply,
            spool,
            state_dir: state_dir.to_path_buf(),
            status: PolicyStatus {
                pid: std::process::id(),
                attempts: 0,
                in_force: PolicyInForce::of(loaded),
                last_attempt: None,
            },
        }
    }

    /// Writes the status and the pid file (the daemon is ready for `tollgate policy reload`).
    pub fn publish(&self) -> Result<()> {
        self.write_status()?;
        write_atomic(
            &self.state_dir,
            PID_FILE,
            format!("{}\n", self.status.pid).as_bytes(),
        )
        .with_context(|| {
            format!(
                "writing the pid file {}",
                self.state_dir.join(PID_FILE).display()
            )
        })
    }

    /// A handle that removes the pid file at a clean exit (the reloader itself moves into its
    /// task).
    pub fn files(&self) -> PidFile {
        PidFile {
            path: self.state_dir.join(PID_FILE),
            pid: self.status.pid,
        }
    }

    fn write_status(&self) -> Result<()> {
        let json = serde_json::to_vec_pretty(&self.status)?;
        write_atomic(&self.state_dir, STATUS_FILE, &json).with_context(|| {
            format!(
                "writing the policy status {}",
                self.state_dir.join(STATUS_FILE).display()
            )
        })
    }

    /// One reload: read and compile, record, swap in — or refuse and say why.
    pub async fn reload(&mut self) -> ReloadAttempt {
        let attempt = match self.path.clone() {
            None => {
                let why = "no policy file is configured, so there is nothing to reload (the embedded default stays in force); start tollgate with --policy FILE or `policy:` in its config";
                warn!("policy reload: {why}");
                self.refused(
                    crate::policy_cmd::EMBEDDED_POLICY_NAME.to_owned(),
                    why.to_owned(),
                )
                .await
            }
            Some(path) => {
                info!(policy = %path.display(), "policy reload requested");
                let read = path.clone();
                let loaded = tokio::task::spawn_blocking(move || load_policy_file(&read))
                    .await
                    .map_err(|e| format!("the policy loader failed: {e}"))
                    .and_then(|r| r.map_err(|e| one_line(&error_chain(&e))));
                match loaded {
                    Ok(new) => self.accept(new).await,
                    Err(errors) => {
                        error!(
                            policy = %path.display(),
                            errors = %errors,
                            in_force = %self.status.in_force.digest,
                            "policy reload failed: the new policy does not compile; the policy in force is unchanged"
                        );
                        self.refused(path.display().to_string(), errors).await
                    }
                }
            }
        };
        self.status.attempts += 1;
        self.status.last_attempt = Some(attempt.clone());
        if let Err(e) = self.write_status() {
            warn!(error = %error_chain(e.as_ref()), "policy status not written: `tollgate policy reload` will not see this outcome");
        }
        attempt
    }

    fn event(&self, decision: &str, policy: &str) -> Event {
        let mut e = Event::new(EventKind::PolicyReload, "");
        // Each reload is a chain of its own: one signed event.
        e.session_id = format!("policy:{}", e.event_id);
        e.decision = decision.to_owned();
        e.attr("policy", policy)
            .attr("in_force_digest", &self.status.in_force.digest)
            .attr("trigger", "sighup")
    }

    async fn accept(&mut self, new: LoadedPolicy) -> ReloadAttempt {
        let name = new.name();
        let rules = new.policy.rule_count();
        let event = self
            .event("ok", &name)
            .attr("digest", &new.digest)
            .attr("rules", rules);
        // Recorded before it is enforced, like every step the trail describes.
        if let Err(e) = self.spool.append(event).await {
            let errors = format!(
                "the audit spool cannot record the reload ({}); the policy in force is unchanged",
                error_chain(&e)
            );
            error!(policy = %name, errors = %errors, "policy reload refused");
            return self.attempt(false, name, Some(errors));
        }
        (self.apply)(Arc::new(new.policy.clone()));
        info!(
            policy = %name,
            digest = %new.digest,
            rules,
            previous = %self.status.in_force.digest,
            "policy reloaded"
        );
        self.status.in_force = PolicyInForce::of(&new);
        self.attempt(true, name, None)
    }

    async fn refused(&mut self, policy: String, errors: String) -> ReloadAttempt {
        let mut event = self.event("failed", &policy);
        event.reason.clone_from(&errors);
        if let Err(e) = self.spool.append(event).await {
            error!(error = %error_chain(&e), "the failed policy reload could not be recorded in the audit spool");
        }
        self.attempt(false, policy, Some(errors))
    }

    fn attempt(&self, ok: bool, policy: String, errors: Option<String>) -> ReloadAttempt {
        ReloadAttempt {
            ok,
            at: format_us(now_us()),
            policy,
            errors,
        }
    }
}

/// Serves reload requests until the signal stream ends.
pub async fn serve(mut hangup: tokio::signal::unix::Signal, mut reloader: Reloader) {
    while hangup.recv().await.is_some() {
        reloader.reload().await;
    }
}

/// `tollgate policy reload` arguments.
#[derive(Args, Debug)]
pub struct ReloadArgs {
    /// Tollgate's configuration file (for its state directory).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The daemon's state directory (default: the configuration's, else /var/lib/tollgate).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// How long to wait for the daemon's answer, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
}

impl ReloadArgs {
    fn state_dir(&self) -> Result<PathBuf> {
        if let Some(d) = &self.state_dir {
            return Ok(d.clone());
        }
        Ok(match &self.config {
            Some(c) => Config::from_file(c)?.state_dir,
            None => PathBuf::from(DEFAULT_STATE_DIR),
        })
    }
}

fn read_status(dir: &Path) -> Result<PolicyStatus> {
    let path = dir.join(STATUS_FILE);
    let text = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (is `tollgate run` running with --state-dir {}?)",
            path.display(),
            dir.display()
        )
    })?;
    serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a policy status", path.display()))
}

/// The pid in `dir/tollgate.pid`, if it names a running `tollgate run`.
fn daemon_pid(dir: &Path) -> Result<u32> {
    let path = dir.join(PID_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading the pid file {} (is `tollgate run` running with --state-dir {}?)",
            path.display(),
            dir.display()
        )
    })?;
    let pid: u32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a pid", path.display()))?;
    if !is_tollgate_run(pid) {
        bail!(
            "the pid file {} names pid {pid}, which is not a running `tollgate run` (a stale pid file: tollgate is not running)",
            path.display()
        );
    }
    Ok(pid)
}

/// Whether `pid` is alive and runs `tollgate … run …`.
fn is_tollgate_run(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty());
    let is_tollgate = args
        .next()
        .and_then(|a0| {
            Path::new(std::str::from_utf8(a0).ok()?)
                .file_name()
                .map(|n| n.to_owned())
        })
        .is_some_and(|n| n.to_string_lossy().starts_with("tollgate"));
    is_tollgate && args.any(|a| a == b"run")
}

/// `tollgate policy reload`.
pub fn reload_command(args: &ReloadArgs) -> Result<()> {
    let dir = args.state_dir()?;
    let pid = daemon_pid(&dir)?;
    let before = read_status(&dir)?;
    if before.pid != pid {
        bail!(
            "{} belongs to pid {}, the pid file names {pid}: two daemons share the state directory {}?",
            dir.join(STATUS_FILE).display(),
            before.pid,
            dir.display()
        );
    }
    let pid_t = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) with a pid checked above and a valid signal number.
    if unsafe { libc::kill(pid_t, libc::SIGHUP) } != 0 {
        let e = std::io::Error::last_os_error();
        bail!("cannot signal tollgate (pid {pid}): {e} (run as root or as the daemon's user)");
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let after = loop {
        match read_status(&dir) {
            Ok(s) if s.attempts > before.attempts => break s,
            _ => {}
        }
        if !is_tollgate_run(pid) {
            bail!("tollgate (pid {pid}) exited before answering the reload; see its log");
        }
        if Instant::now() > deadline {
            bail!(
                "no answer from tollgate (pid {pid}) within {} s; see its log",
                args.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let in_force = &after.in_force;
    match &after.last_attempt {
        Some(a) if a.ok => {
            outln!(
                "policy reloaded: {} ({} rules, {})",
                in_force.policy,
                in_force.rules,
                in_force.digest
            )?;
            Ok(())
        }
        Some(a) => bail!(
            "policy reload refused: {}\nthe policy in force is unchanged: {} ({} rules, {}, since {})",
            a.errors.as_deref().unwrap_or("no reason given"),
            in_force.policy,
            in_force.rules,
            in_force.digest,
            in_force.since
        ),
        None => bail!("tollgate (pid {pid}) counted a reload but reported none"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_line_error_becomes_one_line() {
        assert_eq!(
            one_line("p.yaml: invalid policy:\n  p.yaml:3: rules[0]: bad\n  p.yaml:9: x: worse\n"),
            "p.yaml: invalid policy: p.yaml:3: rules[0]: bad; p.yaml:9: x: worse"
        );
    }

    #[test]
    fn only_a_running_tollgate_run_is_signalled() {
        // This test binary is not `tollgate run`; a pid that cannot exist is nothing.
        assert!(!is_tollgate_run(std::process::id()));
        assert!(!is_tollgate_run(u32::MAX));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(PID_FILE),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        let e = daemon_pid(dir.path()).unwrap_err().to_string();
        assert!(e.contains("stale pid file"), "{e}");
    }
}
