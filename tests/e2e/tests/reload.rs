//! Policy reload end to end: Tollgate intercepting the real Python driver in a redirected
//! cgroup against the stand-in, its policy file rewritten under it.
//!
//! - A policy that does not compile, signalled with SIGHUP, is refused: the daemon lives, says
//!   why in its log (error level, the file, the compile error) and in a signed `policy_reload`
//!   audit event, and the old policy still decides — what it allowed is allowed, what it denied
//!   is denied (and never reaches Snowflake).
//! - A good policy, reloaded with `tollgate policy reload`, decides from then on: the old
//!   policy's denial is gone, the new policy's denial holds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tollgate_e2e::snowflake::{run_python, AgentEnv, Standin, StandinOpts, Statement};
use tollgate_e2e::{unique_tag, Cgroup, Scratch, TestHost, Tollgate, TollgateOpts};

struct World {
    tollgate: Tollgate,
    standin: Standin,
    agents: Cgroup,
    _top: Cgroup,
    policy: PathBuf,
    scratch: Scratch,
    _host: TestHost,
}

/// The policy Tollgate starts with: the enforcement suite's (VISITS denied, agent1 allowed).
fn first_policy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies/enforcement.yaml")
}

fn world() -> Result<World> {
    let host = TestHost::create()?;
    let scratch = Scratch::new("reload")?;
    let standin = Standin::start(&host, &scratch, StandinOpts::default())?;
    let policy = scratch.join("policy.yaml");
    std::fs::copy(first_policy(), &policy)?;
    let top = Cgroup::create(&format!("tollgate-e2e-reload-{}", unique_tag()))?;
    let agents = top.child("agents")?;
    let tollgate = Tollgate::start(
        &scratch,
        TollgateOpts {
            cgroups: vec![agents.path.clone()],
            upstream_roots: Some(standin.ca_pem()),
            extra: [
                vec!["--policy".into(), policy.display().to_string()],
                standin.tollgate_args(),
            ]
            .concat(),
            ..TollgateOpts::default()
        },
    )?;
    Ok(World {
        tollgate,
        standin,
        agents,
        _top: top,
        policy,
        scratch,
        _host: host,
    })
}

impl World {
    fn env(&self) -> AgentEnv {
        let mut env = self.standin.agent_env(&self.scratch);
        env.ca_roots.push(self.tollgate.ca_cert());
        env
    }

    fn standin_saw(&self, needle: &str) -> bool {
        self.standin
            .requests()
            .iter()
            .any(|r| r["sqlText"].as_str().is_some_and(|s| s.contains(needle)))
    }

    fn alive(&mut self) -> Result<bool> {
        let svc = self
            .tollgate
            .service
            .as_mut()
            .context("tollgate was stopped")?;
        Ok(svc.wait_exit(Duration::ZERO)?.is_none())
    }

    fn sighup(&self) -> Result<()> {
        self.tollgate
            .service
            .as_ref()
            .context("tollgate was stopped")?
            .signal(libc::SIGHUP);
        Ok(())
    }

    /// Waits until the `n`-th `policy_reload` event (from 1) is in the spool.
    fn wait_reload_event(&self, n: usize, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let reloads: Vec<Value> = spool_events(&self.tollgate.state_dir.join("spool"))?
                .into_iter()
                .filter(|e| e["kind"] == "policy_reload")
                .collect();
            if let Some(e) = reloads.get(n - 1) {
                return Ok(e.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "no policy_reload event #{n} within {timeout:?} ({} so far); log:\n{}",
                    reloads.len(),
                    self.tollgate.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until a log line satisfies `pred`.
    fn wait_log_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.tollgate.log().lines().find(|l| pred(l)) {
                return Ok(l.to_owned());
            }
            if Instant::now() > deadline {
                bail!(
                    "no such log line within {timeout:?}; log:\n{}",
                    self.tollgate.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Every event in the spool (frames: u32 length, u32 checksum, JSON payload).
fn spool_events(dir: &Path) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort();
    for p in names {
        let data = std::fs::read(&p)?;
        let mut pos = 0usize;
        while pos + 8 <= data.len() {
            let len = u32::from_le_bytes(data[pos..pos + 4].try_into()?) as usize;
            let Some(payload) = data.get(pos + 8..pos + 8 + len) else {
                break;
            };
            out.push(serde_json::from_slice(payload)?);
            pos += 8 + len;
        }
    }
    Ok(out)
}

const PATIENTS: &str =
    "SELECT ID, NAME FROM CLINICAL.EHR.PATIENTS ORDER BY ID /* tg_reload_patients */";

fn visits(marker: &str) -> String {
    format!("SELECT ID, VISITED FROM CLINICAL.EHR.VISITS ORDER BY ID /* {marker} */")
}

fn assert_denied(r: &Value, rule: &str) {
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"], "ProgrammingError", "{r}");
    let msg = r["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("Tollgate denied") && msg.contains(rule),
        "{rule}: {r}"
    );
}

#[test]
fn a_broken_policy_keeps_the_old_one_in_force_and_a_good_one_takes_over() -> Result<()> {
    let mut w = world()?;

    // 1. A policy that does not compile, then SIGHUP.
    std::fs::write(
        &w.policy,
        "version: 1\nrules:\n  - id: allow-everything\n    match: { snowflake: { user: [agent1] } }\n    action: permit\n",
    )?;
    w.sighup()?;
    let failed = w.wait_reload_event(1, Duration::from_secs(30))?;
    assert_eq!(failed["decision"], "failed", "{failed}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("permit"),
        "the compile error is recorded: {failed}"
    );
    assert!(
        !failed["signature"].as_str().unwrap_or_default().is_empty(),
        "{failed}"
    );
    let policy_path = w.policy.display().to_string();
    let line = w.wait_log_line(Duration::from_secs(10), |l| {
        l.contains("policy reload failed")
    })?;
    assert!(
        line.contains("ERROR") && line.contains(&policy_path) && line.contains("permit"),
        "{line}"
    );
    assert!(w.alive()?, "tollgate died on SIGHUP:\n{}", w.tollgate.log());

    // The old policy still decides, for the real driver.
    let out = run_python(
        &w.agents.path,
        w.env(),
        &[
            Statement::sql(PATIENTS),
            Statement::sql(&visits("tg_reload_old")),
        ],
    )?;
    assert_eq!(out[0]["ok"], true, "{}\n{}", out[0], w.tollgate.log());
    assert!(
        !out[0]["rows"].as_array().unwrap_or(&vec![]).is_empty(),
        "{}",
        out[0]
    );
    assert_denied(&out[1], "deny-visits");
    assert!(w.standin_saw("tg_reload_patients"));
    assert!(
        !w.standin_saw("tg_reload_old"),
        "a statement the old policy denies reached Snowflake"
    );

    // 2. A good policy that turns the decisions around, reloaded with the CLI.
    std::fs::write(
        &w.policy,
        "version: 1\ndefaults:\n  no_rule_matched: deny\nrules:\n  - id: deny-patients-v2\n    match:\n      tables: [\"CLINICAL.EHR.PATIENTS\"]\n    action: deny\n    reason: \"patients are off limits since the reload\"\n  - id: allow-agent1-v2\n    match:\n      snowflake: { user: [agent1] }\n    action: allow\n",
    )?;
    let state = w.tollgate.state_dir.display().to_string();
    let o = Command::new(Tollgate::bin())
        .args(["policy", "reload", "--state-dir", &state])
        .output()?;
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        w.tollgate.log()
    );
    assert!(
        stdout.contains("policy reloaded") && stdout.contains("2 rules"),
        "{stdout}"
    );
    let ok = w.wait_reload_event(2, Duration::from_secs(30))?;
    assert_eq!(ok["decision"], "ok", "{ok}");
    assert_eq!(ok["attrs"]["rules"], "2", "{ok}");
    assert!(
        stdout.contains(ok["attrs"]["digest"].as_str().unwrap_or("?")),
        "{stdout} / {ok}"
    );
    w.wait_log_line(Duration::from_secs(10), |l| l.contains("policy reloaded"))?;
    assert!(w.alive()?);

    let out = run_python(
        &w.agents.path,
        w.env(),
        &[
            Statement::sql(&PATIENTS.replace("tg_reload_patients", "tg_reload_new_patients")),
            Statement::sql(&visits("tg_reload_new_visits")),
        ],
    )?;
    assert_denied(&out[0], "deny-patients-v2");
    assert_eq!(out[1]["ok"], true, "{}\n{}", out[1], w.tollgate.log());
    assert!(!w.standin_saw("tg_reload_new_patients"));
    assert!(w.standin_saw("tg_reload_new_visits"));

    // The trail, reload events included, is intact.
    let o = Command::new(Tollgate::bin())
        .args(["audit", "verify", "--state-dir", &state])
        .output()?;
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}
