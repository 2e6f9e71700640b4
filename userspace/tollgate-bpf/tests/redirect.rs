//! Privileged end-to-end test of the redirect on the real kernel: real cgroups, real pins,
//! real sockets. Runs as root in CI and is never skipped.
//!
//! Processes are placed in cgroups by small `sh` wrappers that write their own pid to
//! `cgroup.procs` and `exec python3`, so the test process itself never changes cgroup:
//! - a proxy stand-in in `proxy/` listening on 127.0.0.1:L and [::1]:L that answers each
//!   accepted connection with its peer and both `SO_ORIGINAL_DST` answers, as JSON;
//! - clients in `agents/` (target), `sibling/` (not a target) and `proxy/`.
//!
//! Everything (cgroups, pins, children) is removed by `Fixture::drop`, also on failure.

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use tollgate_bpf::{
    cgroup_id, detach, status, DirectDestinations, DirectReason, RedirectConfig, Redirector,
    TargetPorts, TcpState, DEFAULT_SOCKET_MARK,
};

const CGROUP2: &str = "/sys/fs/cgroup/unified";

const SERVER: &str = r#"
import json, selectors, socket, struct
s4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s4.bind(("127.0.0.1", 0))
port = s4.getsockname()[1]
s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s6.bind(("::1", port))
s4.listen(128)
s6.listen(128)
print(port, flush=True)

def orig_dst(conn, level, size):
    try:
        raw = conn.getsockopt(level, 80, size)
    except OSError as e:
        return "errno %d" % e.errno
    family = struct.unpack("=H", raw[0:2])[0]
    port = struct.unpack("!H", raw[2:4])[0]
    if family == socket.AF_INET:
        return "%s:%d" % (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    return "[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port)

sel = selectors.DefaultSelector()
sel.register(s4, selectors.EVENT_READ)
sel.register(s6, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        conn, peer = key.fileobj.accept()
        host = peer[0] if conn.family == socket.AF_INET else "[%s]" % peer[0]
        reply = {
            "peer": "%s:%d" % (host, peer[1]),
            "sol_ip": orig_dst(conn, socket.SOL_IP, 16),
            "sol_ipv6": orig_dst(conn, socket.IPPROTO_IPV6, 28),
        }
        conn.sendall((json.dumps(reply) + "\n").encode())
        conn.close()
"#;

const CLIENT: &str = r#"
import json, os, socket, sys
family, host, port, mark, listen_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET6 if family == "6" else socket.AF_INET, socket.SOCK_STREAM)
if mark:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
s.settimeout(5)
out = {"pid": os.getpid()}
try:
    s.connect((host, port))
    out["peer_port"] = s.getpeername()[1]
    if out["peer_port"] == listen_port:
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        out["reply"] = json.loads(data) if data else None
except OSError as e:
    out["errno"] = e.errno
print(json.dumps(out))
"#;

/// The test's cgroups, pin dir and children; all removed on drop.
struct Fixture {
    root: PathBuf,
    agents: PathBuf,
    /// `agents/nested`: a descendant of the target cgroup (redirected like it).
    nested: PathBuf,
    sibling: PathBuf,
    proxy: PathBuf,
    pin_dir: PathBuf,
    server: Option<Child>,
    /// Other long-lived children, killed on drop.
    children: Vec<Child>,
}

impl Fixture {
    fn new() -> Self {
        let unique = format!(
            "tollgate-test-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let root = Path::new(CGROUP2).join(&unique);
        let fixture = Fixture {
            agents: root.join("agents"),
            nested: root.join("agents/nested"),
            sibling: root.join("sibling"),
            proxy: root.join("proxy"),
            root,
            pin_dir: Path::new("/sys/fs/bpf").join(&unique),
            server: None,
            children: Vec::new(),
        };
        for dir in [
            &fixture.root,
            &fixture.agents,
            &fixture.nested,
            &fixture.sibling,
            &fixture.proxy,
        ] {
            std::fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        fixture
    }

    /// Starts the proxy stand-in in `proxy/`; returns its listener port and pid.
    fn start_server(&mut self) -> (u16, u32) {
        let mut child = in_cgroup(&self.proxy, SERVER, &[])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("server port");
        let pid = child.id();
        self.server = Some(child);
        (line.trim().parse().expect("server printed its port"), pid)
    }

    fn stop_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop_server();
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = detach(&self.pin_dir) {
            eprintln!("cleanup: detach {}: {e}", self.pin_dir.display());
        }
        for dir in [
            &self.nested,
            &self.agents,
            &self.sibling,
            &self.proxy,
            &self.root,
        ] {
            // Exited children may take a moment to leave their cgroup.
            for _ in 0..50 {
                if !dir.exists() || std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// `sh` that moves itself into `cgroup` and execs `python3 -c script args...`.
fn in_cgroup(cgroup: &Path, script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec python3 "$@""#)
        .arg(cgroup)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Runs one client connect in `cgroup` and returns what it printed.
fn client(cgroup: &Path, family: &str, host: &str, port: u16, mark: u32, listen: u16) -> Value {
    let out = in_cgroup(
        cgroup,
        CLIENT,
        &[
            family,
            host,
            &port.to_string(),
            &mark.to_string(),
            &listen.to_string(),
        ],
    )
    .output()
    .expect("run client");
    assert!(out.status.success(), "client failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("client JSON")
}

fn free_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind decoy")
}

#[test]
fn redirect_end_to_end() {
    let mut fx = Fixture::new();
    let (listen, server_pid) = fx.start_server();
    // Target port T and a non-target port N, both with a "decoy" listener on 127.0.0.1 so a
    // connect that is *not* redirected visibly lands there instead of failing.
    let decoy_target = free_listener();
    let decoy_other = free_listener();
    let target = decoy_target.local_addr().unwrap().port();
    let other = decoy_other.local_addr().unwrap().port();

    // Listed ports and nothing direct: this test reaches its decoys on 127.0.0.1, which must
    // be redirected like any other destination (see `all_ports_*` for the direct defaults).
    let cfg = RedirectConfig {
        cgroups: vec![fx.agents.clone()],
        ports: TargetPorts::Only(vec![target]),
        direct: DirectDestinations::none(),
        listen_port: listen,
        proxy_cgroup: fx.proxy.clone(),
        proxy_tgid: server_pid,
        mark: DEFAULT_SOCKET_MARK,
        pin_dir: fx.pin_dir.clone(),
    };
    let redirector = Redirector::attach(&cfg).expect("attach");
    let agents_id = cgroup_id(&fx.agents).unwrap();

    // IPv4: redirected, SO_ORIGINAL_DST answers, identity recorded.
    let c = client(&fx.agents, "4", "198.18.0.1", target, 0, listen);
    let reply = &c["reply"];
    assert_eq!(c["peer_port"], listen, "v4 connect not redirected: {c}");
    let want = format!("198.18.0.1:{target}");
    assert_eq!(reply["sol_ip"], want, "{c}");
    assert_eq!(
        reply["sol_ipv6"],
        format!("[::ffff:198.18.0.1]:{target}"),
        "{c}"
    );
    let peer: SocketAddr = reply["peer"].as_str().unwrap().parse().unwrap();
    // The accept path's handle: no lock, usable from another thread.
    let lookup = redirector.connect_lookup();
    let info = std::thread::spawn(move || lookup.lookup(peer))
        .join()
        .unwrap()
        .expect("lookup v4 client through the connect_lookup handle");
    assert_eq!(info.orig_dst, want.parse::<SocketAddr>().unwrap());
    assert_eq!(u64::from(info.tgid), c["pid"].as_u64().unwrap());
    assert_eq!(info.pid, info.tgid);
    // SAFETY: getuid/getgid have no preconditions.
    assert_eq!(info.uid, unsafe { libc::getuid() });
    assert_eq!(info.gid, unsafe { libc::getgid() });
    assert_eq!(info.comm, "python3");
    assert_eq!(info.cgroup_id, agents_id);
    assert_ne!(info.netns_cookie, 0);
    assert!(
        redirector.lookup(peer).is_none(),
        "lookup must consume the record"
    );

    // IPv6 destination → [::1]:L.
    let c = client(&fx.agents, "6", "fd00::1", target, 0, listen);
    assert_eq!(c["peer_port"], listen, "v6 connect not redirected: {c}");
    assert_eq!(c["reply"]["sol_ipv6"], format!("[fd00::1]:{target}"), "{c}");
    assert!(
        c["reply"]["sol_ip"].as_str().unwrap().starts_with("errno"),
        "{c}"
    );
    let peer: SocketAddr = c["reply"]["peer"].as_str().unwrap().parse().unwrap();
    let info = redirector.lookup(peer).expect("lookup v6 client");
    assert_eq!(
        info.orig_dst,
        format!("[fd00::1]:{target}").parse().unwrap()
    );

    // IPv4-mapped destination on an AF_INET6 socket → ::ffff:127.0.0.1:L (the v4 listener).
    let c = client(&fx.agents, "6", "::ffff:198.18.0.1", target, 0, listen);
    assert_eq!(
        c["peer_port"], listen,
        "v4-mapped connect not redirected: {c}"
    );
    assert_eq!(c["reply"]["sol_ip"], want, "{c}");
    let peer: SocketAddr = c["reply"]["peer"].as_str().unwrap().parse().unwrap();
    assert!(
        peer.is_ipv4(),
        "mapped client accepted on the v4 listener: {c}"
    );
    let info = redirector.lookup(peer).expect("lookup v4-mapped client");
    assert_eq!(info.orig_dst, want.parse::<SocketAddr>().unwrap());

    // Not redirected: a non-target port, a sibling cgroup, the proxy's cgroup, the proxy's mark.
    let c = client(&fx.agents, "4", "127.0.0.1", other, 0, listen);
    assert_eq!(c["peer_port"], other, "non-target port was redirected: {c}");
    let c = client(&fx.sibling, "4", "127.0.0.1", target, 0, listen);
    assert_eq!(c["peer_port"], target, "sibling cgroup was redirected: {c}");
    let c = client(&fx.proxy, "4", "127.0.0.1", target, 0, listen);
    assert_eq!(c["peer_port"], target, "proxy cgroup was redirected: {c}");
    let c = client(
        &fx.agents,
        "4",
        "127.0.0.1",
        target,
        DEFAULT_SOCKET_MARK,
        listen,
    );
    assert_eq!(c["peer_port"], target, "marked socket was redirected: {c}");

    let st = status(&fx.pin_dir).expect("status");
    assert_eq!(st.links.len(), 4, "{st:#?}");
    assert!(st.links.iter().all(|l| l.attached), "{st:#?}");
    let cfg_status = st.config.as_ref().expect("config pinned");
    assert_eq!(cfg_status.listen_port, listen);
    assert_eq!(cfg_status.target_ports, vec![target]);
    assert!(cfg_status.proxy_alive);
    let json = serde_json::to_value(&st).expect("status serialises");
    assert_eq!(json["links"][0]["attached"], true, "{json}");
    eprintln!("{}", serde_json::to_string_pretty(&json).unwrap());

    // Leave one record unclaimed, then drop the loader: the redirect and its state persist.
    let unclaimed = client(&fx.agents, "4", "198.18.0.1", target, 0, listen);
    let unclaimed_peer: SocketAddr = unclaimed["reply"]["peer"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    drop(redirector);
    let c = client(&fx.agents, "4", "198.18.0.1", target, 0, listen);
    assert_eq!(
        c["peer_port"], listen,
        "redirect lost when the loader exited: {c}"
    );

    // Restart: same configuration, no duplicate links, maps (and their entries) reused.
    let redirector = Redirector::attach(&cfg).expect("re-attach");
    let st = status(&fx.pin_dir).expect("status");
    assert_eq!(st.links.len(), 4, "{st:#?}");
    assert_eq!(st.kernel_attachments.len(), 4, "{st:#?}");
    for a in &st.kernel_attachments {
        assert_eq!(
            a.tollgate_programs,
            Some(1),
            "duplicate or missing program: {st:#?}"
        );
    }
    let info = redirector
        .lookup(unclaimed_peer)
        .expect("record survived the restart");
    assert_eq!(u64::from(info.tgid), unclaimed["pid"].as_u64().unwrap());
    drop(redirector);

    // With the proxy gone, agents get "connection refused", never a direct path.
    fx.stop_server();
    let c = client(&fx.agents, "4", "127.0.0.1", target, 0, listen);
    assert_eq!(
        c["errno"],
        libc::ECONNREFUSED,
        "fail-open while proxy down: {c}"
    );

    // Reconfigure to the sibling only: the agents' links go, the sibling's come.
    let moved = RedirectConfig {
        cgroups: vec![fx.sibling.clone()],
        ..cfg.clone()
    };
    drop(Redirector::attach(&moved).expect("attach to sibling"));
    let st = status(&fx.pin_dir).expect("status");
    let sibling_id = cgroup_id(&fx.sibling).unwrap();
    assert_eq!(st.links.len(), 4, "{st:#?}");
    assert!(st.links.iter().all(|l| l.cgroup_id != agents_id), "{st:#?}");
    let c = client(&fx.agents, "4", "127.0.0.1", target, 0, listen);
    assert_eq!(
        c["peer_port"], target,
        "agents still redirected after reconfigure: {c}"
    );
    let c = client(&fx.sibling, "4", "127.0.0.1", target, 0, listen);
    assert_eq!(
        c["errno"],
        libc::ECONNREFUSED,
        "sibling not redirected: {c}"
    );
    assert!(st.links.iter().any(|l| l.cgroup_id == sibling_id));

    // Detach removes everything, and is idempotent.
    let report = detach(&fx.pin_dir).expect("detach");
    assert_eq!((report.links, report.programs, report.maps), (4, 4, 5));
    assert!(!fx.pin_dir.exists());
    let c = client(&fx.sibling, "4", "127.0.0.1", target, 0, listen);
    assert_eq!(c["peer_port"], target, "still redirected after detach: {c}");
    assert_eq!(
        detach(&fx.pin_dir).expect("detach again"),
        Default::default()
    );
    assert!(!status(&fx.pin_dir).expect("status").pinned);
}

// ---------------------------------------------------------------------------------------------
// All ports, direct destinations, and connections older than the redirect.
// ---------------------------------------------------------------------------------------------

/// A TCP server that greets every connection with `{"server": NAME, "port": P}` and echoes
/// lines; binds each `ADDR:PORT` argument (port 0: any), prints the bound ports as a JSON list,
/// then one JSON line per event (`accepted`, `reset`, `eof`, with the peer).
const GREETER: &str = r#"
import json, selectors, socket, sys
name = sys.argv[1]
sel = selectors.DefaultSelector()
ports = []
for spec in sys.argv[2:]:
    host, port = spec.rsplit(":", 1)
    host = host.strip("[]")
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, int(port)))
    s.listen(128)
    ports.append(s.getsockname()[1])
    sel.register(s, selectors.EVENT_READ, None)
print(json.dumps(ports), flush=True)

def fmt(conn, addr):
    return ("[%s]:%d" if conn.family == socket.AF_INET6 else "%s:%d") % (addr[0], addr[1])

while True:
    for key, _ in sel.select():
        sock = key.fileobj
        if key.data is None:
            conn, peer = sock.accept()
            conn.sendall((json.dumps({"server": name, "port": conn.getsockname()[1]}) + "\n").encode())
            sel.register(conn, selectors.EVENT_READ, fmt(conn, peer))
            print(json.dumps({"event": "accepted", "peer": fmt(conn, peer)}), flush=True)
            continue
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            data = None
        if data:
            sock.sendall(data)
            continue
        print(json.dumps({"event": "reset" if data is None else "eof", "peer": key.data}), flush=True)
        sel.unregister(sock)
        sock.close()
"#;

/// One connect (`tcp`) or UDP `connect()` (`udp`); prints where it ended up and, for TCP, the
/// first line the server sent.
const PROBE: &str = r#"
import json, os, socket, sys
family, host, port, kind = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
fam = socket.AF_INET6 if family == "6" else socket.AF_INET
out = {"pid": os.getpid()}
if kind == "udp":
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.connect((host, port))
    out["peer_port"] = s.getpeername()[1]
    print(json.dumps(out))
    sys.exit(0)
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect((host, port))
    out["peer_port"] = s.getpeername()[1]
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    out["reply"] = json.loads(data) if data.strip() else None
except OSError as e:
    out["errno"] = e.errno
print(json.dumps(out))
"#;

/// Opens one TCP connection, reads the greeting, exchanges a line and reports
/// `{"pid", "src", "dst", "greeting", "first"}`; then exchanges one line per stdin line and
/// reports `{"ok": echo}`, `{"eof": true}` or `{"errno": N}` for each.
const HOLD: &str = r#"
import json, os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(5)

def fmt(addr):
    return ("[%s]:%d" if fam == socket.AF_INET6 else "%s:%d") % (addr[0], addr[1])

def line():
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise EOFError
        data += chunk
    return data.decode().strip()

def exchange(msg):
    try:
        s.sendall(msg.encode() + b"\n")
        return {"ok": line()}
    except EOFError:
        return {"eof": True}
    except OSError as e:
        return {"errno": e.errno}

s.connect((host, port))
greeting = json.loads(line())
print(json.dumps({"pid": os.getpid(), "src": fmt(s.getsockname()), "dst": fmt(s.getpeername()),
                  "greeting": greeting, "first": exchange("one")}), flush=True)
for cmd in sys.stdin:
    print(json.dumps(exchange(cmd.strip())), flush=True)
"#;

/// A network namespace joined to this one by a veth pair: `host_ip` is one of the host's own
/// addresses (on the host side), `peer_ip` a "remote" host inside the namespace. Addresses
/// come from 198.19.248.0/21 (benchmarking range, above what the e2e harness uses).
struct TestNet {
    name: String,
    host_if: String,
    host_ip: Ipv4Addr,
    peer_ip: Ipv4Addr,
}

fn ip_cmd(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

impl TestNet {
    fn new(n: u32) -> Self {
        let idx = (std::process::id().wrapping_mul(4).wrapping_add(n)) % 512;
        let base = u32::from(Ipv4Addr::new(198, 19, 248, 0)) + idx * 4;
        let tag = format!("tgb{}{n}", std::process::id() % 100_000);
        let net = TestNet {
            name: format!("{tag}-ns"),
            host_if: format!("{tag}h"),
            host_ip: Ipv4Addr::from(base + 1),
            peer_ip: Ipv4Addr::from(base + 2),
        };
        let peer_if = format!("{tag}p");
        ip_cmd(&["netns", "add", &net.name]);
        ip_cmd(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
        ]);
        ip_cmd(&["link", "set", &peer_if, "netns", &net.name]);
        ip_cmd(&[
            "addr",
            "add",
            &format!("{}/30", net.host_ip),
            "dev",
            &net.host_if,
        ]);
        ip_cmd(&["link", "set", &net.host_if, "up"]);
        let ns = |args: &[&str]| ip_cmd(&[&["-n", net.name.as_str()], args].concat());
        ns(&[
            "addr",
            "add",
            &format!("{}/30", net.peer_ip),
            "dev",
            &peer_if,
        ]);
        ns(&["link", "set", &peer_if, "up"]);
        ns(&["link", "set", "lo", "up"]);
        net
    }

    fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Like [`in_cgroup`], and in the network namespace at `netns` when given.
fn in_cgroup_netns(cgroup: &Path, netns: Option<&str>, script: &str, args: &[&str]) -> Command {
    let Some(netns) = netns else {
        return in_cgroup(cgroup, script, args);
    };
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && ns="$1" && shift && exec nsenter --net="$ns" python3 "$@""#)
        .arg(cgroup)
        .arg(netns)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// A child printing JSON lines, read on a thread into a channel.
struct Lines {
    rx: mpsc::Receiver<Value>,
}

impl Lines {
    fn spawn(mut cmd: Command, fx: &mut Fixture, stdin: bool) -> (Lines, Option<ChildStdin>) {
        if stdin {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn child");
        let stdout = child.stdout.take().unwrap();
        let input = child.stdin.take();
        fx.children.push(child);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("child printed {line:?}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        (Lines { rx }, input)
    }

    fn next(&self, what: &str) -> Value {
        self.rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{what}: no line in 10 s ({e})"))
    }
}

/// Starts a [`GREETER`] named `name` on `binds`; returns its events and bound ports.
fn greeter(fx: &mut Fixture, netns: Option<&str>, name: &str, binds: &[&str]) -> (Lines, Vec<u16>) {
    let mut args = vec![name];
    args.extend_from_slice(binds);
    let sibling = fx.sibling.clone();
    let (lines, _) = Lines::spawn(in_cgroup_netns(&sibling, netns, GREETER, &args), fx, false);
    let ports: Vec<u16> = serde_json::from_value(lines.next(name)).expect("ports");
    (lines, ports)
}

/// One [`PROBE`] run in `cgroup`.
fn probe(cgroup: &Path, family: &str, host: &str, port: u16, kind: &str) -> Value {
    let out = in_cgroup(cgroup, PROBE, &[family, host, &port.to_string(), kind])
        .output()
        .expect("run probe");
    assert!(out.status.success(), "probe failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("probe JSON")
}

/// A [`HOLD`] connection: its first report and a handle to drive it.
struct Held {
    lines: Lines,
    stdin: ChildStdin,
    hello: Value,
}

impl Held {
    fn open(fx: &mut Fixture, cgroup: &Path, netns: Option<&str>, host: &str, port: u16) -> Held {
        let port = port.to_string();
        let (lines, stdin) = Lines::spawn(
            in_cgroup_netns(cgroup, netns, HOLD, &[host, &port]),
            fx,
            true,
        );
        let hello = lines.next("hold client");
        assert_eq!(hello["first"]["ok"], "one", "{hello}");
        Held {
            lines,
            stdin: stdin.expect("piped stdin"),
            hello,
        }
    }

    fn exchange(&mut self, msg: &str) -> Value {
        writeln!(self.stdin, "{msg}").expect("write to hold client");
        self.stdin.flush().unwrap();
        self.lines.next("hold client exchange")
    }

    fn src(&self) -> SocketAddr {
        self.hello["src"].as_str().unwrap().parse().unwrap()
    }

    fn dst(&self) -> SocketAddr {
        self.hello["dst"].as_str().unwrap().parse().unwrap()
    }

    fn pid(&self) -> u32 {
        self.hello["pid"].as_u64().unwrap() as u32
    }
}

/// With `ports: all`, TCP connects to any port are redirected and recover their destination;
/// loopback and the host's own addresses stay direct; UDP is untouched; configured ranges,
/// "nothing direct" and switching back to a port list all take effect on re-attach.
#[test]
fn all_ports_redirect_except_direct_destinations() {
    let net = TestNet::new(0);
    let mut fx = Fixture::new();
    let (listen, server_pid) = fx.start_server();
    let netns = net.netns_path();
    let peer = net.peer_ip.to_string();
    let host_ip = net.host_ip.to_string();
    let (_remote, remote_ports) = greeter(
        &mut fx,
        Some(&netns),
        "remote",
        &["0.0.0.0:3128", "0.0.0.0:1080", "0.0.0.0:8080"],
    );
    assert_eq!(remote_ports, vec![3128, 1080, 8080]);
    let (_local, local_ports) = greeter(&mut fx, None, "local", &["0.0.0.0:0", "[::1]:0"]);
    let (local4, local6) = (local_ports[0], local_ports[1]);

    let cfg = RedirectConfig {
        cgroups: vec![fx.agents.clone()],
        ports: TargetPorts::All,
        direct: DirectDestinations::default(),
        listen_port: listen,
        proxy_cgroup: fx.proxy.clone(),
        proxy_tgid: server_pid,
        mark: DEFAULT_SOCKET_MARK,
        pin_dir: fx.pin_dir.clone(),
    };
    let redirector = Redirector::attach(&cfg).expect("attach");
    let report = redirector.attach_report().clone();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report.links, 4);
    assert!(report.preexisting.destroyed.is_empty(), "{report:#?}");
    assert!(report.preexisting.is_clean(), "{report:#?}");
    let has = |net: &str, reason: DirectReason| {
        report
            .direct
            .iter()
            .any(|r| r.net.to_string() == net && r.reason == reason)
    };
    assert!(has("127.0.0.0/8", DirectReason::Loopback), "{report:#?}");
    assert!(has("::1/128", DirectReason::Loopback), "{report:#?}");
    assert!(
        has(&format!("{host_ip}/32"), DirectReason::HostAddress),
        "{report:#?}"
    );
    let agents_id = cgroup_id(&fx.agents).unwrap();

    // Proxies on other ports: every port goes to the listener, with its destination.
    for port in [3128u16, 1080, 8080] {
        let c = probe(&fx.agents, "4", &peer, port, "tcp");
        assert_eq!(c["peer_port"], listen, "port {port} not redirected: {c}");
        let want = format!("{peer}:{port}");
        assert_eq!(c["reply"]["sol_ip"], want, "{c}");
        let client: SocketAddr = c["reply"]["peer"].as_str().unwrap().parse().unwrap();
        let info = redirector.lookup(client).expect("record of the redirect");
        assert_eq!(info.orig_dst, want.parse::<SocketAddr>().unwrap());
        assert_eq!(info.cgroup_id, agents_id);
        assert_eq!(u64::from(info.tgid), c["pid"].as_u64().unwrap());
        // The destination is real: from outside the target cgroups it answers itself.
        let c = probe(&fx.sibling, "4", &peer, port, "tcp");
        assert_eq!(c["reply"]["server"], "remote", "{c}");
        assert_eq!(c["reply"]["port"], port, "{c}");
    }
    // Descendants of a target cgroup, and v4-mapped destinations, are redirected too.
    let c = probe(&fx.nested, "4", &peer, 1080, "tcp");
    assert_eq!(c["peer_port"], listen, "nested cgroup not redirected: {c}");
    let c = probe(&fx.agents, "6", &format!("::ffff:{peer}"), 8080, "tcp");
    assert_eq!(c["peer_port"], listen, "v4-mapped not redirected: {c}");
    assert_eq!(c["reply"]["sol_ip"], format!("{peer}:8080"), "{c}");

    // Direct: loopback (v4, v6, v4-mapped) and the host's own non-loopback address.
    for (family, host, port) in [
        ("4", "127.0.0.1", local4),
        ("4", "127.1.2.3", local4),
        ("6", "::1", local6),
        ("6", "::ffff:127.0.0.1", local4),
        ("4", host_ip.as_str(), local4),
    ] {
        let c = probe(&fx.agents, family, host, port, "tcp");
        assert_eq!(c["peer_port"], port, "{host}:{port} was redirected: {c}");
        assert_eq!(c["reply"]["server"], "local", "{c}");
    }
    // UDP is never touched.
    let c = probe(&fx.agents, "4", &peer, 3128, "udp");
    assert_eq!(c["peer_port"], 3128, "UDP was redirected: {c}");

    let st = status(&fx.pin_dir).expect("status");
    let cs = st.config.as_ref().expect("config pinned");
    assert!(cs.all_ports, "{st:#?}");
    assert!(cs.target_ports.is_empty(), "{st:#?}");
    assert_eq!(cs.direct.len(), report.direct.len(), "{st:#?}");
    assert_eq!(cs.preexisting, Default::default(), "{st:#?}");
    drop(redirector);

    // A configured range stays direct.
    let with_cidr = RedirectConfig {
        direct: DirectDestinations {
            cidrs: vec![format!("{peer}/30").parse().unwrap()],
            ..DirectDestinations::default()
        },
        ..cfg.clone()
    };
    drop(Redirector::attach(&with_cidr).expect("attach with a direct range"));
    let c = probe(&fx.agents, "4", &peer, 3128, "tcp");
    assert_eq!(
        c["reply"]["server"], "remote",
        "configured range redirected: {c}"
    );
    let st = status(&fx.pin_dir).expect("status");
    let direct = &st.config.as_ref().unwrap().direct;
    let base = Ipv4Addr::from(u32::from(net.peer_ip) & !3);
    assert!(
        direct
            .iter()
            .any(|r| r.reason == DirectReason::Configured
                && r.net.to_string() == format!("{base}/30")),
        "{direct:#?}"
    );

    // Nothing direct: loopback is redirected too, stale ranges are gone, and a connect to the
    // listener itself is left alone (no record) instead of looping.
    let nothing_direct = RedirectConfig {
        direct: DirectDestinations::none(),
        ..cfg.clone()
    };
    let redirector = Redirector::attach(&nothing_direct).expect("attach, nothing direct");
    assert!(redirector.attach_report().direct.is_empty());
    let st = status(&fx.pin_dir).expect("status");
    assert!(st.config.as_ref().unwrap().direct.is_empty(), "{st:#?}");
    let c = probe(&fx.agents, "4", "127.0.0.1", local4, "tcp");
    assert_eq!(c["peer_port"], listen, "loopback not redirected: {c}");
    assert_eq!(c["reply"]["sol_ip"], format!("127.0.0.1:{local4}"), "{c}");
    let c = probe(&fx.agents, "4", "127.0.0.1", listen, "tcp");
    assert!(
        c["reply"]["sol_ip"].as_str().unwrap().starts_with("errno"),
        "a connect to the listener was redirected to itself: {c}"
    );
    drop(redirector);

    // Back to a port list: only listed ports are redirected.
    let listed = RedirectConfig {
        ports: TargetPorts::Only(vec![8080]),
        ..cfg.clone()
    };
    drop(Redirector::attach(&listed).expect("attach with a port list"));
    let c = probe(&fx.agents, "4", &peer, 8080, "tcp");
    assert_eq!(c["peer_port"], listen, "{c}");
    let c = probe(&fx.agents, "4", &peer, 3128, "tcp");
    assert_eq!(
        c["reply"]["server"], "remote",
        "unlisted port redirected: {c}"
    );
    let st = status(&fx.pin_dir).expect("status");
    let cs = st.config.as_ref().unwrap();
    assert!(!cs.all_ports);
    assert_eq!(cs.target_ports, vec![8080]);
}

/// Connections a target process opened before the attach are destroyed by it (the peer sees a
/// reset, the client's next exchange fails) — from a nested cgroup and from another network
/// namespace too — while connections from outside the target cgroups and to direct
/// destinations survive, and the report lists exactly the destroyed ones.
#[test]
fn preexisting_connections_are_destroyed_at_attach() {
    let net = TestNet::new(1);
    let mut fx = Fixture::new();
    let (listen, server_pid) = fx.start_server();
    let netns = net.netns_path();
    let peer = net.peer_ip.to_string();
    let host_ip = net.host_ip.to_string();
    let (remote, _) = greeter(&mut fx, Some(&netns), "remote", &["0.0.0.0:8080"]);
    let (_local, local_ports) = greeter(&mut fx, None, "local", &["0.0.0.0:0"]);
    let local = local_ports[0];

    let (agents, nested, sibling) = (fx.agents.clone(), fx.nested.clone(), fx.sibling.clone());
    // Doomed: a target process, one in a nested cgroup, one in another network namespace.
    let mut doomed = vec![
        Held::open(&mut fx, &agents, None, &peer, 8080),
        Held::open(&mut fx, &nested, None, &peer, 8080),
        Held::open(&mut fx, &agents, Some(&netns), &peer, 8080),
    ];
    // Survivors: outside the target cgroups; to loopback; to the host's own address.
    let mut survivors = vec![
        Held::open(&mut fx, &sibling, None, &peer, 8080),
        Held::open(&mut fx, &agents, None, "127.0.0.1", local),
        Held::open(&mut fx, &agents, None, &host_ip, local),
    ];
    for _ in 0..4 {
        let e = remote.next("accepted");
        assert_eq!(e["event"], "accepted", "{e}");
    }

    let cfg = RedirectConfig {
        cgroups: vec![fx.agents.clone()],
        ports: TargetPorts::All,
        direct: DirectDestinations::default(),
        listen_port: listen,
        proxy_cgroup: fx.proxy.clone(),
        proxy_tgid: server_pid,
        mark: DEFAULT_SOCKET_MARK,
        pin_dir: fx.pin_dir.clone(),
    };
    let redirector = Redirector::attach(&cfg).expect("attach");
    let report = redirector.attach_report().preexisting.clone();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(report.failed.is_empty(), "{report:#?}");
    assert!(report.scan_errors.is_empty(), "{report:#?}");

    // The report lists exactly the doomed connections, with their owners.
    let mut got: Vec<(SocketAddr, SocketAddr, Option<u32>)> = report
        .destroyed
        .iter()
        .map(|s| (s.src, s.dst, s.pid))
        .collect();
    let mut want: Vec<(SocketAddr, SocketAddr, Option<u32>)> = doomed
        .iter()
        .map(|h| (h.src(), h.dst(), Some(h.pid())))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{report:#?}");
    let agents_id = cgroup_id(&fx.agents).unwrap();
    let nested_id = cgroup_id(&fx.nested).unwrap();
    let by_pid = |pid: u32| {
        report
            .destroyed
            .iter()
            .find(|s| s.pid == Some(pid))
            .unwrap()
    };
    let (a, n, ns) = (
        by_pid(doomed[0].pid()),
        by_pid(doomed[1].pid()),
        by_pid(doomed[2].pid()),
    );
    assert_eq!(
        (a.cgroup_id, n.cgroup_id, ns.cgroup_id),
        (agents_id, nested_id, agents_id)
    );
    assert_eq!(n.cgroup_path.as_deref(), Some(fx.nested.as_path()));
    assert_eq!(a.comm.as_deref(), Some("python3"));
    assert_eq!(a.state, TcpState::Established);
    assert_eq!(a.netns, n.netns);
    assert_ne!(
        a.netns, ns.netns,
        "the other namespace's connection was found there"
    );

    // The peer sees each doomed connection reset; the client's next exchange fails.
    let mut peers_reset: Vec<String> = Vec::new();
    while peers_reset.len() < doomed.len() {
        let e = remote.next("reset of a destroyed connection");
        assert_eq!(e["event"], "reset", "{e}");
        peers_reset.push(e["peer"].as_str().unwrap().to_owned());
    }
    peers_reset.sort();
    let mut doomed_srcs: Vec<String> = doomed.iter().map(|h| h.src().to_string()).collect();
    doomed_srcs.sort();
    assert_eq!(peers_reset, doomed_srcs);
    for h in &mut doomed {
        // The kernel aborted it: the owner's next call fails with ECONNABORTED (or EPIPE).
        let r = h.exchange("two");
        let errno = r["errno"].as_i64().map(|e| e as i32);
        assert!(
            errno == Some(libc::ECONNABORTED) || errno == Some(libc::EPIPE),
            "destroyed connection did not fail: {r}"
        );
    }
    for h in &mut survivors {
        let r = h.exchange("two");
        assert_eq!(r["ok"], "two", "survivor broken: {r} ({})", h.hello);
    }

    let st = status(&fx.pin_dir).expect("status");
    let pre = st.config.as_ref().unwrap().preexisting;
    assert_eq!(
        (pre.destroyed, pre.failed, pre.unchecked),
        (3, 0, false),
        "{st:#?}"
    );
    drop(redirector);

    // A restart finds nothing more to destroy, and the survivors survive it too.
    let redirector = Redirector::attach(&cfg).expect("re-attach");
    let again = &redirector.attach_report().preexisting;
    assert!(again.destroyed.is_empty() && again.is_clean(), "{again:#?}");
    for h in &mut survivors {
        let r = h.exchange("three");
        assert_eq!(r["ok"], "three", "survivor broken by the restart: {r}");
    }
    let st = status(&fx.pin_dir).expect("status");
    assert_eq!(st.config.as_ref().unwrap().preexisting.destroyed, 0);
}
