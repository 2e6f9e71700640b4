//! The `tollgate` binary as a new user meets it: `config check`, a bad configuration refused
//! before anything is created, output into a closed pipe, error messages, log formats, and
//! `policy reload` against a running daemon.
//!
//! The daemon runs with `--no-ebpf` on a free loopback port, so these tests need no privilege;
//! the redirect itself is exercised by `tests/e2e` (`reload.rs` among them).

use std::io::{BufRead, BufReader};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn tollgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    c.env("RUST_LOG", "info");
    c
}

fn run(args: &[&str]) -> Output {
    tollgate().args(args).output().expect("running tollgate")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p)
}

/// Every path under `dir`, sorted.
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            all.push(p);
        }
    }
    all.sort();
    all
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// A PEM root file made by `tollgate ca init` (any certificate will do as an upstream root).
fn roots_pem(dir: &Path) -> PathBuf {
    let ca = dir.join("ca");
    let o = run(&["ca", "init", "--state-dir", ca.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    ca.join("ca.pem")
}

/// A good configuration file in `dir` (relative paths, resolved against `dir`).
fn good_config(dir: &Path) -> PathBuf {
    let roots = roots_pem(dir);
    std::fs::copy(repo("policies/demo.yaml"), dir.join("policy.yaml")).unwrap();
    let file = dir.join("tollgate.yaml");
    std::fs::write(
        &file,
        format!(
            "version: 1\nredirect:\n  cgroups: [agents]\nstate_dir: state\npolicy: policy.yaml\ntls:\n  upstream_roots: {}\n",
            roots.display()
        ),
    )
    .unwrap();
    file
}

#[test]
fn config_check_accepts_a_good_file_and_lists_every_problem_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_config(dir.path());
    let before = listing(dir.path());

    let o = run(&["config", "check", good.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with(&format!("ok: {}", good.display())), "{out}");
    assert!(
        out.contains(&dir.path().join("policy.yaml").display().to_string()),
        "{out}"
    );
    assert!(out.contains("rules, sha256:"), "{out}");

    let o = run(&["config", "check", "--json", good.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["policy"]["rules"].as_u64().unwrap() > 0, "{report}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 1\nredirect:\n  cgroups: [agents]\n  ports: [443, 0]\nlisten:\n  addresses: [0.0.0.0]\nstate_dir: state\npolicy: missing.yaml\nlimits:\n  max_connections: 0\n",
    )
    .unwrap();
    let o = run(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    for field in [
        "`redirect.ports[1]`",
        "`listen.addresses[0]`",
        "`limits.max_connections`",
        "`policy`",
    ] {
        assert!(err.contains(field), "{field} missing from:\n{err}");
    }
    assert!(err.contains("4 problem(s) in"), "{err}");
    assert!(
        err.contains(&dir.path().join("missing.yaml").display().to_string()),
        "{err}"
    );

    let o = run(&["config", "check", "--json", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let fields: Vec<&str> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "redirect.ports[1]",
            "listen.addresses[0]",
            "limits.max_connections",
            "policy"
        ]
    );

    let mut expected = before;
    expected.push(bad.clone());
    expected.sort();
    assert_eq!(listing(dir.path()), expected, "config check wrote to disk");
}

/// `run --help` sends a reader to the page that lists every setting (a file that exists), not
/// to a README that does not.
#[test]
fn run_help_points_at_the_settings_reference() {
    let o = run(&["run", "--help"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("docs/settings.md"), "{out}");
    assert!(!out.contains("README"), "{out}");
    assert!(repo("docs/settings.md").is_file());
}

/// A ClickHouse name the sink would refuse (it is written into SQL) is a configuration error
/// like any other: listed by `config check` with its setting, and refused by `run` before
/// anything exists, not found only when the shipper first talks to ClickHouse.
#[test]
fn a_bad_clickhouse_name_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_config(dir.path());
    let mut yaml = std::fs::read_to_string(&good).unwrap();
    yaml.push_str(
        "audit:\n  clickhouse:\n    url: http://127.0.0.1:8123\n    database: \"tollgate; DROP DATABASE tollgate\"\n    cluster: main\n",
    );
    let bad = dir.path().join("bad-clickhouse.yaml");
    std::fs::write(&bad, yaml).unwrap();
    let before = listing(dir.path());

    let o = run(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("error: config field `audit.clickhouse.database`: \"tollgate; DROP DATABASE tollgate\" is not a usable database name"),
        "{err}"
    );
    assert!(err.contains("1 problem(s) in"), "{err}");

    let o = run(&["config", "check", "--json", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        report["errors"][0]["field"], "audit.clickhouse.database",
        "{report}"
    );
    assert_eq!(
        report["errors"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );

    let o = run(&["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("`audit.clickhouse.database`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(listing(dir.path()), before, "something was created");
}

#[test]
fn run_refuses_a_bad_setting_before_creating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_config(dir.path());
    let roots = dir.path().join("ca/ca.pem");
    let proxy_cgroup = format!("tollgate-cli-test-proxy-{}", std::process::id());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "bad values",
            "version: 1\nredirect:\n  cgroups: [agents]\n  ports: [0]\nstate_dir: state\nrecords: records.jsonl\naudit:\n  spool_dir: spool\nlimits:\n  peek_timeout_ms: 0\n".into(),
            "`limits.peek_timeout_ms`",
        ),
        (
            "a policy that does not compile",
            "version: 1\nredirect:\n  cgroups: [agents]\nstate_dir: state\npolicy: broken-policy.yaml\n".into(),
            "`policy`",
        ),
        (
            // Valid settings, but the host check fails: no such cgroup.
            "a missing target cgroup",
            format!(
                "version: 1\nredirect:\n  cgroups: [/sys/fs/cgroup/unified/tollgate-cli-no-such-cgroup]\n  proxy_cgroup: {proxy_cgroup}\nstate_dir: state\npolicy: policy.yaml\ntls:\n  upstream_roots: {}\n",
                roots.display()
            ),
            "tollgate-cli-no-such-cgroup",
        ),
    ];
    std::fs::write(
        dir.path().join("broken-policy.yaml"),
        "version: 1\nrules:\n  - id: x\n    action: allow\n    match: { nonsense: 1 }\n",
    )
    .unwrap();
    let before = listing(dir.path());
    for (what, yaml, want) in cases {
        std::fs::write(&good, yaml).unwrap();
        let o = run(&["run", "--config", good.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        let err = stderr(&o);
        // A missing cgroup may also be reported as missing privileges (not root): either way it
        // is refused before anything exists.
        assert!(
            err.contains(want) || err.contains("CAP_BPF"),
            "{what}: {err}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert_eq!(listing(dir.path()), before, "{what}: something was created");
        assert!(
            !Path::new("/sys/fs/cgroup/unified")
                .join(&proxy_cgroup)
                .exists()
                && !Path::new("/sys/fs/cgroup").join(&proxy_cgroup).exists(),
            "{what}: tollgate's cgroup was created"
        );
    }
}

/// Runs `args` with stdout a pipe whose reader is already closed.
fn with_closed_stdout(args: &[&str]) -> Output {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two fds, which are owned right away.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds were just created and are owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    tollgate()
        .args(args)
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .expect("running tollgate")
}

#[test]
fn a_closed_stdout_ends_the_command_quietly_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_config(dir.path());
    let policy = repo("policies/demo.yaml");
    let cases: [&[&str]; 3] = [
        &[
            "policy",
            "explain",
            "--policy",
            policy.to_str().unwrap(),
            "--user",
            "agent1",
            "--sql",
            "SELECT NAME, SSN FROM CLINICAL.EHR.PATIENTS",
        ],
        &["policy", "check", policy.to_str().unwrap()],
        &["config", "check", "--json", good.to_str().unwrap()],
    ];
    for args in cases {
        let o = with_closed_stdout(args);
        let err = stderr(&o);
        assert_ne!(o.status.code(), Some(101), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(o.status.code(), Some(141), "{args:?}: {err}");
        assert_eq!(err, "", "{args:?}: a closed pipe is not worth a message");
    }
}

#[test]
fn a_missing_file_is_named_with_its_os_error_once() {
    let missing = "/nonexistent/tollgate-cli-test.yaml";
    for args in [
        vec!["policy", "check", missing],
        vec!["config", "check", missing],
        vec!["run", "--config", missing],
        vec![
            "policy", "explain", "--policy", missing, "--sql", "SELECT 1",
        ],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert!(err.contains(missing), "{args:?}: {err}");
        assert_eq!(err.matches("os error 2").count(), 1, "{args:?}: {err}");
    }
}

/// A `tollgate run --no-ebpf` on a free port with its state in `dir`; stderr goes to `log`.
struct Daemon {
    child: Child,
    state: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, policy: Option<&Path>, extra: &[&str]) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let state = dir.join("state");
        let log = dir.join(format!("tollgate-{}.log", free_port()));
        let roots = roots_pem(dir);
        let mut c = tollgate();
        c.args(extra)
            .arg("run")
            .arg("--no-ebpf")
            .arg("--state-dir")
            .arg(&state)
            .arg("--listen-port")
            .arg(free_port().to_string())
            .arg("--upstream-roots")
            .arg(&roots);
        if let Some(p) = policy {
            c.arg("--policy").arg(p);
        }
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning tollgate run");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let d = Daemon { child, state, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("tollgate ready") => return d,
                Ok(_) => {}
                Err(_) => panic!("tollgate did not get ready; its log:\n{}", d.log()),
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then the exit status within a deadline.
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "tollgate did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn logs_into_a_file_carry_no_colour_and_json_logs_are_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let text = Daemon::start(&dir.path().join("text"), None, &[]);
    let text_log = text.log.clone();
    assert!(text.stop().success());
    let log = std::fs::read_to_string(text_log).unwrap();
    assert!(log.contains("audit spool open"), "{log}");
    assert!(
        !log.contains("\x1b["),
        "ANSI escapes in a log file:\n{log:?}"
    );

    let json = Daemon::start(&dir.path().join("json"), None, &["--log-format", "json"]);
    let json_log = json.log.clone();
    assert!(json.stop().success());
    let log = std::fs::read_to_string(json_log).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "audit spool open"
                && l["level"] == "INFO"
                && l["fields"]["spool"].is_string()),
        "{log}"
    );
}

/// The spool's events (frames: u32 length, u32 checksum, JSON payload).
fn spool_events(spool: &Path) -> Vec<serde_json::Value> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(spool)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for p in names {
        let data = std::fs::read(&p).unwrap();
        let mut pos = 0usize;
        while pos + 8 <= data.len() {
            let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
            let Some(payload) = data.get(pos + 8..pos + 8 + len) else {
                break;
            };
            out.push(serde_json::from_slice(payload).unwrap());
            pos += 8 + len;
        }
    }
    out
}

#[test]
fn policy_reload_swaps_a_good_policy_and_keeps_the_old_one_when_the_new_does_not_compile() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::copy(repo("policies/demo.yaml"), &policy).unwrap();
    let mut d = Daemon::start(dir.path(), Some(&policy), &[]);
    let state = d.state.to_str().unwrap().to_owned();
    let status_file = d.state.join("policy.json");
    let status = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&status_file).unwrap()).unwrap()
    };
    let first = status();
    assert_eq!(first["attempts"], 0);
    let old_digest = first["in_force"]["digest"].as_str().unwrap().to_owned();
    assert_eq!(
        std::fs::read_to_string(d.state.join("tollgate.pid"))
            .unwrap()
            .trim(),
        d.child.id().to_string()
    );

    // A broken policy is refused; the old one stays in force and the daemon lives.
    std::fs::write(
        &policy,
        "version: 1\nrules:\n  - id: broken\n    match: { snowflake: { user: [agent1] } }\n    action: permit\n",
    )
    .unwrap();
    let o = run(&["policy", "reload", "--state-dir", &state]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("policy reload refused"), "{err}");
    assert!(err.contains("permit"), "the compile error is shown: {err}");
    assert!(
        err.contains(&old_digest),
        "the policy in force is named: {err}"
    );
    assert!(d.alive(), "the daemon died on a bad reload:\n{}", d.log());
    assert_eq!(status()["in_force"]["digest"], old_digest.as_str());
    let log = d.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("policy reload failed")
            && l.contains(policy.to_str().unwrap())
            && l.contains("permit")),
        "{log}"
    );

    // A good one is swapped in.
    std::fs::write(
        &policy,
        "version: 1\nrules:\n  - id: allow-agent1\n    match: { snowflake: { user: [agent1] } }\n    action: allow\n",
    )
    .unwrap();
    let o = run(&["policy", "reload", "--state-dir", &state]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("policy reloaded:") && out.contains("(1 rules, sha256:"),
        "{out}"
    );
    let now = status();
    assert_eq!(now["attempts"], 2);
    assert_ne!(now["in_force"]["digest"], old_digest.as_str());
    assert_eq!(now["in_force"]["rules"], 1);

    // Both attempts are in the audit trail, signed, and the trail verifies.
    let reloads: Vec<_> = spool_events(&d.state.join("spool"))
        .into_iter()
        .filter(|e| e["kind"] == "policy_reload")
        .collect();
    assert_eq!(reloads.len(), 2, "{reloads:#?}");
    assert_eq!(reloads[0]["decision"], "failed");
    assert!(reloads[0]["reason"].as_str().unwrap().contains("permit"));
    assert_eq!(reloads[1]["decision"], "ok");
    assert_eq!(reloads[1]["attrs"]["digest"], now["in_force"]["digest"]);
    assert_eq!(reloads[1]["attrs"]["rules"], "1");
    assert!(reloads
        .iter()
        .all(|e| !e["signature"].as_str().unwrap().is_empty()));
    let o = run(&["audit", "verify", "--state-dir", &state]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));

    let pid_file = d.state.join("tollgate.pid");
    assert!(d.stop().success());
    assert!(!pid_file.exists(), "the pid file outlived a clean exit");
    let o = run(&["policy", "reload", "--state-dir", &state]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("tollgate.pid"), "{}", stderr(&o));
}
