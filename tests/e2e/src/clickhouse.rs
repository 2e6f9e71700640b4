//! A real ClickHouse server (26.9) on loopback for the audit-trail suites and the demo.
//!
//! [`ClickHouse`] runs `tests/clickhouse/chserver.py` with the Python of a dedicated venv
//! ([`venv_dir`], made by `cargo xtask setup` from [`CHDB_PINS`]): the wheel `chdb-core` carries
//! the complete ClickHouse engine, and the script opens its real HTTP and native TCP listeners
//! on 127.0.0.1 (see that script and `tests/clickhouse/README.md` for how and why). The server
//! keeps everything in one data directory, so [`ClickHouse::kill`] (SIGKILL) then
//! [`ClickHouse::restart`] finds the same databases, rows and users again, on the same ports.
//!
//! Queries go over HTTP through `curl` (installed by set-up), one process per query: the SQL is
//! the POST body, settings are URL parameters, and any answer other than HTTP 200 is an error
//! carrying ClickHouse's message (`Code: NNN. DB::Exception: ...`).
//!
//! Users: this engine has no writable access storage, so `CREATE USER`/`GRANT` by SQL fail
//! (`Code: 514 ... ACCESS_STORAGE_FOR_INSERTION_NOT_FOUND`). Other users than `default` are
//! declared with [`ClickHouse::declare_user`] (a users.d file with the password's SHA-256 and
//! the grants, read at start-up; it stays in the data directory across restarts).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::snowflake::workspace_root;
use crate::{free_port, hex, retry_on_address_in_use, Service};

/// Where `cargo xtask setup` puts the venv holding chdb, unless `TOLLGATE_CHDB_VENV` says
/// otherwise.
pub const CLICKHOUSE_VENV: &str = "/opt/tollgate-test/chdb-venv";

/// Pinned packages of that venv (set-up installs exactly these; its marker file holds them).
pub const CHDB_PINS: &[&str] = &["chdb-core==26.9.0"];

/// How long a start may take: a cold start (the 555 MB engine library read from disk) takes
/// about 9 s, a warm one about 1 s.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The venv (`TOLLGATE_CHDB_VENV`, default [`CLICKHOUSE_VENV`]).
pub fn venv_dir() -> PathBuf {
    std::env::var_os("TOLLGATE_CHDB_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CLICKHOUSE_VENV))
}

/// The venv's Python interpreter.
pub fn python_bin() -> PathBuf {
    venv_dir().join("bin/python")
}

/// `tests/clickhouse/chserver.py` in the workspace.
pub fn chserver_script() -> PathBuf {
    workspace_root().join("tests/clickhouse/chserver.py")
}

/// How a request authenticates.
#[derive(Clone, Copy, Debug)]
pub enum Auth<'a> {
    /// As `default` (no password; allowed from loopback only).
    Default,
    /// `X-ClickHouse-User` / `X-ClickHouse-Key` headers: (user, password).
    Headers(&'a str, &'a str),
    /// HTTP basic authentication: (user, password).
    Basic(&'a str, &'a str),
}

/// A running (or killed) ClickHouse server on loopback; dropping it SIGKILLs the process.
pub struct ClickHouse {
    service: Option<Service>,
    /// The data directory (config, users, tables, logs): the same across restarts.
    pub data_dir: PathBuf,
    /// HTTP port on 127.0.0.1.
    pub http_port: u16,
    /// Native TCP port on 127.0.0.1.
    pub tcp_port: u16,
    /// `--user` specs passed at every start (users declared with [`ClickHouse::declare_user`]).
    users: Vec<String>,
    log: PathBuf,
}

impl ClickHouse {
    /// Starts a server keeping its state in `<scratch_dir>/clickhouse`, on two free loopback
    /// ports, and waits until it answers `SELECT 1` over HTTP. The ports are chosen here (a
    /// restart must find the same ones); when another process takes one before the server
    /// listens, the start is tried again on others.
    pub fn start(scratch_dir: &Path) -> Result<Self> {
        let data_dir = scratch_dir.join("clickhouse");
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let (http_port, tcp_port) = two_ports();
        let mut ch = ClickHouse {
            service: None,
            log: scratch_dir.join("clickhouse.stderr.log"),
            data_dir,
            http_port,
            tcp_port,
            users: Vec::new(),
        };
        let log = ch.log.clone();
        let ports = std::cell::Cell::new((http_port, tcp_port));
        retry_on_address_in_use(
            &log,
            || {
                (ch.http_port, ch.tcp_port) = ports.get();
                ch.start_once()
            },
            || ports.set(two_ports()),
        )?;
        Ok(ch)
    }

    /// (Re)starts the server on the same data directory and ports (killing it first if it
    /// runs) and waits until it answers over HTTP. The ports stay the same (clients keep their
    /// URL), so a port another process took meanwhile is an error here.
    pub fn restart(&mut self) -> Result<()> {
        self.start_once()
    }

    fn start_once(&mut self) -> Result<()> {
        self.kill();
        let python = python_bin();
        if !python.exists() {
            bail!(
                "no chdb venv at {}: run `cargo xtask setup` (or set TOLLGATE_CHDB_VENV)",
                venv_dir().display()
            );
        }
        let mut cmd = Command::new(python);
        cmd.arg(chserver_script())
            .arg("--data")
            .arg(&self.data_dir)
            .args(["--http-port", &self.http_port.to_string()])
            .args(["--tcp-port", &self.tcp_port.to_string()])
            .env("PYTHONUNBUFFERED", "1");
        for u in &self.users {
            cmd.arg("--user").arg(u);
        }
        let mut svc = Service::spawn(cmd, &self.log)?;
        let want = format!("ready http={} tcp={}", self.http_port, self.tcp_port);
        svc.wait_line(START_TIMEOUT, |l| l == want)
            .context("starting ClickHouse (chserver.py)")?;
        self.service = Some(svc);
        Ok(())
    }

    /// SIGKILLs the server (no shutdown of any kind) and waits for the process to be gone.
    /// Does nothing when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut s) = self.service.take() {
            s.signal(libc::SIGKILL);
            let _ = s.wait_exit(Duration::from_secs(10));
        }
    }

    /// Whether the server process is running (started and not killed).
    pub fn is_running(&self) -> bool {
        self.service.is_some()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.service.as_ref().map(Service::pid)
    }

    /// `http://127.0.0.1:<http_port>` (no trailing slash).
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The native protocol's address, `127.0.0.1:<tcp_port>`.
    pub fn tcp_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.tcp_port))
    }

    /// Declares a user with `password` (stored as its SHA-256) and `grants` (each the part of
    /// a GRANT statement before `TO`, e.g. `"INSERT ON tollgate.events"`), then restarts the
    /// server so that it takes effect. The declaration lives in the data directory's users.d,
    /// so it survives later restarts and kills.
    pub fn declare_user(&mut self, name: &str, password: &str, grants: &[&str]) -> Result<()> {
        use sha2::Digest;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("user name {name:?}: only [A-Za-z0-9_] is accepted");
        }
        let spec = format!(
            "{name}:{}:{}",
            hex(&sha2::Sha256::digest(password.as_bytes())),
            grants.join(";")
        );
        self.users.retain(|u| !u.starts_with(&format!("{name}:")));
        self.users.push(spec);
        self.restart()
    }

    /// Runs `sql` as `default`; the body of the answer (in ClickHouse's default format,
    /// TabSeparated, unless the SQL says `FORMAT ...`).
    pub fn query(&self, sql: &str) -> Result<String> {
        self.request(sql, &[], Auth::Default)
    }

    /// Runs `sql` as `user` (authenticated with the `X-ClickHouse-User`/`X-ClickHouse-Key`
    /// headers).
    pub fn query_as(&self, user: &str, password: &str, sql: &str) -> Result<String> {
        self.request(sql, &[], Auth::Headers(user, password))
    }

    /// Runs `sql` with query-level `settings` (URL parameters, e.g.
    /// `("insert_deduplication_token", "batch-1")`) and the given authentication. Any HTTP
    /// status other than 200 is an error whose text is ClickHouse's message.
    pub fn request(&self, sql: &str, settings: &[(&str, &str)], auth: Auth<'_>) -> Result<String> {
        let mut url = format!("{}/", self.http_url());
        for (i, (k, v)) in settings.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&percent_encode(k));
            url.push('=');
            url.push_str(&percent_encode(v));
        }
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "60", "--data-binary", "@-"])
            .args(["-w", "\n%{http_code}"]);
        match auth {
            Auth::Default => {}
            Auth::Headers(u, p) => {
                cmd.arg("-H").arg(format!("X-ClickHouse-User: {u}"));
                cmd.arg("-H").arg(format!("X-ClickHouse-Key: {p}"));
            }
            Auth::Basic(u, p) => {
                cmd.arg("-u").arg(format!("{u}:{p}"));
            }
        }
        cmd.arg(&url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running curl (is it installed?)")?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(sql.as_bytes())
            .context("writing the SQL to curl")?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "curl {url} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, status) = text
            .rsplit_once('\n')
            .context("curl printed no status line")?;
        if status != "200" {
            bail!("ClickHouse answered HTTP {status}: {}", body.trim());
        }
        Ok(body.to_owned())
    }

    /// Polls `sql` until its trimmed answer equals `want`, failing after `timeout` with the
    /// last answer.
    pub fn wait_for(&self, sql: &str, want: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.query(sql);
            if matches!(&got, Ok(s) if s.trim() == want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{sql:?} answered {got:?}, not {want:?}, within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the server's stderr (Python and engine start-up messages); the
    /// engine's own log is `<data_dir>/log/clickhouse.log`.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let engine =
            std::fs::read_to_string(self.data_dir.join("log/clickhouse.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().chain(engine.lines()).collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two distinct ports that were free a moment ago (HTTP, native TCP).
fn two_ports() -> (u16, u16) {
    let http = free_port();
    loop {
        let tcp = free_port();
        if tcp != http {
            return (http, tcp);
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::percent_encode;

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("batch-1_x.y~"), "batch-1_x.y~");
        assert_eq!(percent_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
