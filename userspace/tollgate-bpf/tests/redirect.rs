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
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use tollgate_bpf::{cgroup_id, detach, status, RedirectConfig, Redirector, DEFAULT_SOCKET_MARK};

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
    sibling: PathBuf,
    proxy: PathBuf,
    pin_dir: PathBuf,
    server: Option<Child>,
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
            sibling: root.join("sibling"),
            proxy: root.join("proxy"),
            root,
            pin_dir: Path::new("/sys/fs/bpf").join(&unique),
            server: None,
        };
        for dir in [
            &fixture.root,
            &fixture.agents,
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
        if let Err(e) = detach(&self.pin_dir) {
            eprintln!("cleanup: detach {}: {e}", self.pin_dir.display());
        }
        for dir in [&self.agents, &self.sibling, &self.proxy, &self.root] {
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

    let cfg = RedirectConfig {
        cgroups: vec![fx.agents.clone()],
        ports: vec![target],
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
    let info = redirector.lookup(peer).expect("lookup v4 client");
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
    assert_eq!((report.links, report.programs, report.maps), (4, 4, 4));
    assert!(!fx.pin_dir.exists());
    let c = client(&fx.sibling, "4", "127.0.0.1", target, 0, listen);
    assert_eq!(c["peer_port"], target, "still redirected after detach: {c}");
    assert_eq!(
        detach(&fx.pin_dir).expect("detach again"),
        Default::default()
    );
    assert!(!status(&fx.pin_dir).expect("status").pinned);
}
