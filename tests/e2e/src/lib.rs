//! Fixtures for Tollgate's privileged end-to-end suites and the demo.
//!
//! Everything here builds real parts on the real kernel: test hosts are network namespaces joined
//! to the host by a veth pair (addresses from the benchmarking range 198.18.0.0/15 and the ULA
//! prefix fd00:7467::/32, never anything routed), agents are processes placed in a cgroup v2
//! directory of their own, and Tollgate is the real binary started as a child process. Each
//! fixture removes what it created when dropped, so a failing test leaves nothing behind.
//!
//! The fixtures need root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF). They are not a mock of
//! anything: when a privilege is missing they fail with a message saying which.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub mod clickhouse;
pub mod faultfs;
pub mod snowflake;
pub mod tap;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short tag unique within this machine for the life of a test run (pid + counter), usable in
/// interface names (which the kernel caps at 15 bytes).
pub fn unique_tag() -> String {
    tag_of(COUNTER.fetch_add(1, Ordering::SeqCst))
}

fn tag_of(n: u32) -> String {
    format!("{:x}{:x}", std::process::id() % 0xfffff, n)
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on a pure v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, path, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(path))
        })
        .next()
        .context("no cgroup2 filesystem is mounted; mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`")
}

/// A TCP port on loopback that was free a moment ago (bound to port 0, then released).
///
/// Another process may take it before the component that is to listen on it does: start that
/// component with [`retry_on_address_in_use`], which picks another port when the listen fails.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// How many ports a start tries before giving up.
const PORT_ATTEMPTS: usize = 8;

/// Runs `start` until it does not fail because its listening address is taken, at most
/// [`PORT_ATTEMPTS`] times: before each retry `next_ports` chooses new ports. A start that
/// fails for another reason fails at once. `log` is the file the component writes its errors
/// to: only what a failed attempt added to it is searched for `EADDRINUSE`, so an old message
/// cannot cause a retry.
///
/// This is for components that must be told their ports (the kernel redirect needs Tollgate's
/// listener port before it listens; ClickHouse keeps its ports across restarts): those that can
/// bind port 0 and report what they got need no retry.
pub fn retry_on_address_in_use<T>(
    log: &Path,
    mut start: impl FnMut() -> Result<T>,
    mut next_ports: impl FnMut(),
) -> Result<T> {
    let mut attempt = 1;
    loop {
        let seen = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let err = match start() {
            Ok(t) => return Ok(t),
            Err(e) => e,
        };
        let added = fs::read(log)
            .ok()
            .and_then(|b| {
                b.get(seen as usize..)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .unwrap_or_default();
        if attempt >= PORT_ATTEMPTS || !is_address_in_use(&format!("{added}\n{err:#}")) {
            return Err(err);
        }
        eprintln!("port taken before the start ({attempt}/{PORT_ATTEMPTS}): trying others");
        next_ports();
        attempt += 1;
    }
}

/// Whether an error text says `EADDRINUSE`.
fn is_address_in_use(text: &str) -> bool {
    text.contains("Address already in use") || text.contains("os error 98")
}

/// A test host: a network namespace joined to the host namespace by a veth pair, with an IPv4
/// and an IPv6 address on each end. Servers started with [`TestHost::command`] run inside it.
pub struct TestHost {
    /// Namespace name (under /run/netns).
    pub name: String,
    host_if: String,
    /// The test host's IPv4 address.
    pub ip4: Ipv4Addr,
    /// The test host's IPv6 address.
    pub ip6: Ipv6Addr,
    /// The host-side IPv4 address (where connections from the host namespace come from).
    pub gateway4: Ipv4Addr,
}

impl TestHost {
    /// Creates a fresh test host.
    pub fn create() -> Result<Self> {
        // One counter value names the host and picks its /30 inside 198.18.0.0/15, so hosts
        // created at once by parallel tests never share addresses.
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = tag_of(n);
        let idx = (std::process::id().wrapping_mul(64).wrapping_add(n)) % 32000;
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + idx * 4;
        let gateway4 = Ipv4Addr::from(base + 1);
        let ip4 = Ipv4Addr::from(base + 2);
        let ip6: Ipv6Addr = format!("fd00:7467:{:x}::2", idx).parse()?;
        let gw6: Ipv6Addr = format!("fd00:7467:{:x}::1", idx).parse()?;
        let name = format!("tg-{tag}");
        let host_if = format!("tgh{tag}");
        let peer_if = format!("tgp{tag}");
        let host = TestHost {
            name: name.clone(),
            host_if: host_if.clone(),
            ip4,
            ip6,
            gateway4,
        };
        ip(&["netns", "add", &name])?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ])?;
        ip(&["link", "set", &peer_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{gateway4}/30"), "dev", &host_if])?;
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{gw6}/64"),
            "dev",
            &host_if,
            "nodad",
        ])?;
        ip(&["link", "set", &host_if, "up"])?;
        let ns = ["-n", name.as_str()];
        let nsip = |args: &[&str]| ip(&[&ns[..], args].concat());
        nsip(&["addr", "add", &format!("{ip4}/30"), "dev", &peer_if])?;
        nsip(&[
            "-6",
            "addr",
            "add",
            &format!("{ip6}/64"),
            "dev",
            &peer_if,
            "nodad",
        ])?;
        nsip(&["link", "set", &peer_if, "up"])?;
        nsip(&["link", "set", "lo", "up"])?;
        nsip(&["route", "add", "default", "via", &gateway4.to_string()])?;
        nsip(&["-6", "route", "add", "default", "via", &gw6.to_string()])?;
        Ok(host)
    }

    /// A command that runs inside the test host's network namespace (`nsenter --net`, which,
    /// unlike `ip netns exec`, leaves /sys and the cgroup2 mount alone).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }

    /// `addr:port` on the test host's IPv4 address.
    pub fn v4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip4), port)
    }

    /// `[addr]:port` on the test host's IPv6 address.
    pub fn v6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ip6), port)
    }

    /// `[::ffff:addr]:port`: the test host's IPv4 address as an IPv4-mapped IPv6 address.
    pub fn v4_mapped(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ip4.to_ipv6_mapped()), port)
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A cgroup v2 directory created for a test; processes spawned through [`Cgroup::spawn`] start
/// inside it. Dropping it kills what is left in it and removes it.
pub struct Cgroup {
    /// Absolute path of the cgroup directory.
    pub path: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup2 mount>/<name>` (parents included).
    pub fn create(name: &str) -> Result<Self> {
        let path = cgroup2_mount()?.join(name);
        fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup { path })
    }

    /// Creates a child cgroup.
    pub fn child(&self, name: &str) -> Result<Self> {
        let path = self.path.join(name);
        fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup { path })
    }

    /// Makes `cmd` start inside this cgroup: the child writes itself into `cgroup.procs`
    /// between fork and exec, so every socket it opens belongs to this cgroup.
    pub fn place(&self, cmd: &mut Command) {
        place_in_cgroup(&self.path, cmd)
    }

    /// PIDs currently in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..100 {
            let has_children = fs::read_dir(&self.path)
                .map(|d| d.flatten().any(|e| e.path().is_dir()))
                .unwrap_or(false);
            if !has_children && self.pids().is_empty() && fs::remove_dir(&self.path).is_ok() {
                return;
            }
            if has_children {
                // Children are dropped by their own guards; wait for them.
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Makes `cmd` start inside the cgroup at `path` (see [`Cgroup::place`]).
pub fn place_in_cgroup(path: &Path, cmd: &mut Command) {
    let procs = path.join("cgroup.procs");
    // SAFETY: the closure only opens and writes a file through std's thin syscall wrappers;
    // `procs` was built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let mut f = fs::OpenOptions::new().write(true).open(&procs)?;
            f.write_all(b"0\n")
        });
    }
}

/// A child process killed when dropped, whose stdout lines are collected for the test to read.
pub struct Service {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    log: PathBuf,
}

impl Service {
    /// Spawns `cmd` with stdout captured line by line and stderr appended to `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> Result<Self> {
        let err = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdout(Stdio::piped()).stderr(err).stdin(Stdio::null());
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped stdout");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                sink.lock().unwrap().push(line);
            }
        });
        Ok(Service {
            child,
            lines,
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a stdout line satisfies `pred`, failing after `timeout` with the log's tail.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return Ok(l);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "process exited ({status}) before the expected line; its log:\n{}",
                    tail(&self.log)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for a line; its log:\n{}",
                    tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain syscall on a pid we own.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for exit (up to `timeout`), returning whether it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The stderr log's last lines.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Finds a sibling binary of the running test executable (`target/<profile>/<name>`), building
/// nothing: `cargo xtask test` builds the binaries first.
pub fn workspace_bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("TOLLGATE_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// Reads a JSON-lines file (missing file → no lines).
pub fn read_json_lines(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A scratch directory removed when dropped.
pub struct Scratch {
    /// Its path.
    pub path: PathBuf,
}

impl Scratch {
    /// Creates `/tmp/tollgate-test-<tag>`.
    pub fn new(what: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("tollgate-{what}-{}", unique_tag()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)?;
        Ok(Scratch { path })
    }

    /// A path inside the directory.
    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("TOLLGATE_KEEP_SCRATCH").is_none() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// How a test starts Tollgate: the real binary, its own cgroup, pin dir, state dir and listener
/// port, so tests run side by side without touching each other or a system install.
pub struct TollgateOpts {
    /// Target cgroups (absolute paths).
    pub cgroups: Vec<PathBuf>,
    /// Redirected destination ports.
    pub ports: Vec<u16>,
    /// Intercept patterns (empty: Tollgate's defaults).
    pub intercept: Vec<String>,
    /// `passthrough` or `block`.
    pub other_traffic: String,
    /// PEM roots Tollgate trusts upstream (a test host's CA).
    pub upstream_roots: Option<PathBuf>,
    /// The cgroup Tollgate moves itself into (default: a fresh one beside the test's cgroups).
    pub proxy_cgroup: Option<PathBuf>,
    /// Extra arguments appended to `tollgate run`.
    pub extra: Vec<String>,
}

impl Default for TollgateOpts {
    fn default() -> Self {
        TollgateOpts {
            cgroups: vec![],
            ports: vec![443],
            intercept: vec![],
            other_traffic: "passthrough".into(),
            upstream_roots: None,
            proxy_cgroup: None,
            extra: vec![],
        }
    }
}

/// A running `tollgate run`, with the paths a test inspects.
pub struct Tollgate {
    /// The daemon (None after [`Tollgate::kill`]).
    pub service: Option<Service>,
    /// Its options, kept for restarts.
    pub opts: TollgateOpts,
    /// `--state-dir` (CA lives here).
    pub state_dir: PathBuf,
    /// bpffs pin directory.
    pub pin_dir: PathBuf,
    /// Connection record file.
    pub records: PathBuf,
    /// Proxy listener port on loopback.
    pub listen_port: u16,
    /// The cgroup Tollgate moves itself into.
    pub proxy_cgroup: PathBuf,
    log: PathBuf,
}

impl Tollgate {
    /// Starts Tollgate in `scratch` and waits until it reports ready.
    pub fn start(scratch: &Scratch, opts: TollgateOpts) -> Result<Self> {
        let tag = unique_tag();
        let proxy_cgroup = match &opts.proxy_cgroup {
            Some(p) => p.clone(),
            None => cgroup2_mount()?.join(format!("tollgate-test-proxy-{tag}")),
        };
        let mut t = Tollgate {
            service: None,
            opts,
            state_dir: scratch.join("state"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/tollgate-test-{tag}")),
            records: scratch.join("records.jsonl"),
            listen_port: free_port(),
            proxy_cgroup,
            log: scratch.join("tollgate.log"),
        };
        // The listener port goes into the redirect before Tollgate listens, so it is chosen
        // here; when another process took it meanwhile, another one is.
        let log = t.log.clone();
        let port = std::cell::Cell::new(t.listen_port);
        retry_on_address_in_use(
            &log,
            || {
                t.listen_port = port.get();
                t.restart()
            },
            || port.set(free_port()),
        )?;
        Ok(t)
    }

    /// The `tollgate` binary.
    pub fn bin() -> PathBuf {
        workspace_bin("tollgate")
    }

    /// Common arguments for commands that address this instance's pins.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(Self::bin());
        c.env("RUST_LOG", "info");
        c
    }

    /// (Re)starts the daemon with the same options and waits for readiness.
    pub fn restart(&mut self) -> Result<()> {
        let mut c = self.cli();
        c.arg("run")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--records")
            .arg(&self.records)
            .arg("--listen-port")
            .arg(self.listen_port.to_string())
            .arg("--proxy-cgroup")
            .arg(&self.proxy_cgroup)
            .arg("--other-traffic")
            .arg(&self.opts.other_traffic);
        for cg in &self.opts.cgroups {
            c.arg("--cgroup").arg(cg);
        }
        for p in &self.opts.ports {
            c.arg("--port").arg(p.to_string());
        }
        for i in &self.opts.intercept {
            c.arg("--intercept").arg(i);
        }
        if let Some(r) = &self.opts.upstream_roots {
            c.arg("--upstream-roots").arg(r);
        }
        c.args(&self.opts.extra);
        let mut svc = Service::spawn(c, &self.log)?;
        svc.wait_line(Duration::from_secs(30), |l| l.starts_with("tollgate ready"))?;
        self.service = Some(svc);
        Ok(())
    }

    /// SIGKILLs the daemon (pins stay in the kernel: the redirect must stay in force).
    pub fn kill(&mut self) {
        if let Some(mut s) = self.service.take() {
            s.signal(libc::SIGKILL);
            let _ = s.wait_exit(Duration::from_secs(10));
        }
    }

    /// Connection records written so far.
    pub fn records(&self) -> Vec<serde_json::Value> {
        read_json_lines(&self.records)
    }

    /// Waits until a record satisfies `pred`.
    pub fn wait_record(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.records().into_iter().find(|r| pred(r)) {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!(
                    "no matching connection record within {timeout:?}; records: {:#?}\nlog:\n{}",
                    self.records(),
                    tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `tollgate status --json` for this instance's pins.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = run(self
            .cli()
            .arg("status")
            .arg("--json")
            .arg("--pin-dir")
            .arg(&self.pin_dir))?;
        Ok(serde_json::from_str(&out)?)
    }

    /// The CA certificate agents must trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.state_dir.join("ca.pem")
    }

    /// The daemon's stderr log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        if let Some(s) = self.service.take() {
            s.signal(libc::SIGTERM);
            drop(s);
        }
        let _ = Command::new(Self::bin())
            .arg("detach")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir(&self.proxy_cgroup);
    }
}

/// The deterministic byte pattern the testkit streams: splitmix64 output, little-endian.
pub struct Pattern {
    state: u64,
}

impl Pattern {
    /// A pattern seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Pattern { state: seed }
    }

    /// Fills `buf` with the next bytes of the pattern (`buf.len()` must be a multiple of 8).
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }

    /// SHA-256 (hex) of the first `len` bytes of the pattern for `seed`.
    pub fn sha256(seed: u64, len: u64) -> String {
        use sha2::Digest;
        let mut p = Pattern::new(seed);
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            p.fill(&mut buf);
            let n = left.min(buf.len() as u64) as usize;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        hex(&h.finalize())
    }
}

/// Lower-case hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
