//! Connections opened before the redirect: the connect hooks only see new `connect()` calls,
//! so a TCP connection a target process opened earlier would keep going straight to its
//! destination, unaudited. At every attach, after the links are in place, each one that the
//! hooks *would* redirect now is destroyed with `SOCK_DESTROY` (what `ss -K` does): its owner
//! gets `ECONNABORTED`, the peer a reset, and a reconnect goes through the proxy.
//!
//! Which sockets: TCP, in a connecting or established state (`SYN_SENT`, `ESTABLISHED`,
//! `FIN_WAIT1/2`, `CLOSE_WAIT`: any state that can still carry data), whose cgroup (the
//! kernel's `INET_DIAG_CGROUP_ID`) is a target cgroup or a descendant of one, except the
//! proxy's cgroup and sockets with the proxy's mark, whose destination port is intercepted,
//! whose destination is not direct and not the proxy's listener, and that are not the accepted
//! end of an inbound connection (their local address is served by a listening socket: the
//! hooks never touch those either — think of an sshd in a whole-host target). Every network
//! namespace a target process lives in is examined, each from a thread that joined it.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use serde::Serialize;
use tollgate_common::as_v4_mapped;

use crate::{
    diag::{cgroup_bytecode, DiagNetlink, DiagSocket, TcpState},
    direct::{DirectReason, DirectSet},
    host::cgroup_id,
    TargetPorts,
};

/// A TCP connection that existed before the redirect was attached and would now be
/// redirected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExistingSocket {
    /// The local end (IPv4-mapped addresses shown as IPv4).
    pub src: SocketAddr,
    /// The destination.
    pub dst: SocketAddr,
    /// Its TCP state when found.
    pub state: TcpState,
    /// The cgroup v2 id of the socket (the cgroup of the process that created it).
    pub cgroup_id: u64,
    /// That cgroup's directory, when it is in a target subtree.
    pub cgroup_path: Option<PathBuf>,
    /// The socket owner's uid.
    pub uid: u32,
    /// The socket's inode (as in `/proc/PID/fd` links `socket:[INODE]`).
    pub inode: u32,
    /// The inode of the network namespace it lives in (`/proc/PID/ns/net`).
    pub netns: u64,
    /// A process of the target cgroups holding it, when one was found.
    pub pid: Option<u32>,
    /// That process's `comm`.
    pub comm: Option<String>,
}

/// A pre-existing connection that could not be destroyed: it still bypasses the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UndestroyedSocket {
    /// The connection.
    pub socket: ExistingSocket,
    /// What the kernel answered.
    pub error: String,
    /// The errno (`EOPNOTSUPP`: the kernel lacks `CONFIG_INET_DIAG_DESTROY`).
    pub errno: Option<i32>,
}

/// What the attach did about connections opened before it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PreexistingConnections {
    /// Destroyed: the owner saw `ECONNABORTED`, the peer a reset.
    pub destroyed: Vec<ExistingSocket>,
    /// Found but not destroyed: these still reach their destination directly.
    pub failed: Vec<UndestroyedSocket>,
    /// Places that could not be examined at all (a network namespace, a dump), each with the
    /// error: connections there, if any, were neither found nor destroyed.
    pub scan_errors: Vec<String>,
}

impl PreexistingConnections {
    /// Whether every pre-existing connection that needed it was destroyed and nothing was
    /// left unexamined.
    pub fn is_clean(&self) -> bool {
        self.failed.is_empty() && self.scan_errors.is_empty()
    }
}

/// The TCP states of a connection that can still carry data, initiated by this host.
const LIVE_STATES: [TcpState; 5] = [
    TcpState::SynSent,
    TcpState::Established,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::CloseWait,
];

/// Why a dumped socket is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    State,
    NoCgroupId,
    OtherCgroup,
    ProxyCgroup,
    Marked,
    Port,
    Listener,
    Direct(DirectReason),
    Inbound,
}

/// The redirect's rules, applied to a socket that already exists.
#[derive(Debug, Clone)]
pub(crate) struct Selector {
    /// Every cgroup id of the target subtrees.
    pub(crate) cgroups: HashSet<u64>,
    pub(crate) proxy_cgroup_id: u64,
    pub(crate) mark: u32,
    pub(crate) ports: TargetPorts,
    pub(crate) direct: DirectSet,
    pub(crate) listen_port: u16,
}

/// IPv4-mapped IPv6 as IPv4; everything else unchanged.
pub(crate) fn normalise(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match as_v4_mapped(&v6.ip().octets()) {
            Some(v4) => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(v4)), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

impl Selector {
    /// `Ok(())` when the hooks would redirect this connection now (so it must go), else why
    /// not. `listeners`: the listening sockets of the same network namespace, normalised.
    pub(crate) fn verdict(&self, s: &DiagSocket, listeners: &[SocketAddr]) -> Result<(), Keep> {
        if !LIVE_STATES.contains(&s.state) {
            return Err(Keep::State);
        }
        let cgroup = s.cgroup_id.ok_or(Keep::NoCgroupId)?;
        if self.proxy_cgroup_id != 0 && cgroup == self.proxy_cgroup_id {
            return Err(Keep::ProxyCgroup);
        }
        if !self.cgroups.contains(&cgroup) {
            return Err(Keep::OtherCgroup);
        }
        if self.mark != 0 && s.mark == Some(self.mark) {
            return Err(Keep::Marked);
        }
        let dst = normalise(s.dst);
        if !self.ports.contains(dst.port()) {
            return Err(Keep::Port);
        }
        let listener_ip = matches!(dst.ip(), IpAddr::V4(v4) if v4 == Ipv4Addr::LOCALHOST)
            || dst.ip() == IpAddr::V6(Ipv6Addr::LOCALHOST);
        if listener_ip && dst.port() == self.listen_port {
            return Err(Keep::Listener);
        }
        if let Some(reason) = self.direct.lookup(dst.ip()) {
            return Err(Keep::Direct(reason));
        }
        let src = normalise(s.src);
        if listeners
            .iter()
            .any(|l| l.port() == src.port() && (l.ip().is_unspecified() || l.ip() == src.ip()))
        {
            return Err(Keep::Inbound);
        }
        Ok(())
    }
}

/// The cgroup directories of the target subtrees (id → path) and the processes in them.
pub(crate) fn cgroup_subtree(roots: &[PathBuf]) -> (HashMap<u64, PathBuf>, Vec<u32>) {
    let mut ids = HashMap::new();
    let mut pids = Vec::new();
    let mut stack: Vec<(PathBuf, u32)> = roots.iter().map(|r| (r.clone(), 0)).collect();
    while let Some((dir, depth)) = stack.pop() {
        let Ok(id) = cgroup_id(&dir) else { continue };
        if ids.insert(id, dir.clone()).is_some() {
            continue; // listed twice, or nested roots
        }
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if depth >= 64 {
            continue;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    (ids, pids)
}

/// Socket inode → (pid, comm) over the fds of `pids`.
fn socket_owners(pids: &[u32]) -> HashMap<u32, (u32, String)> {
    let mut owners = HashMap::new();
    for pid in pids {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_default();
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.parse::<u32>().ok())
            {
                owners.entry(inode).or_insert_with(|| (*pid, comm.clone()));
            }
        }
    }
    owners
}

fn netns_inode(path: &Path) -> io::Result<u64> {
    Ok(fs::metadata(path)?.ino())
}

/// What one network namespace yielded.
#[derive(Default)]
struct NetnsOutcome {
    destroyed: Vec<ExistingSocket>,
    failed: Vec<UndestroyedSocket>,
}

/// Dumps, judges and destroys in the calling thread's network namespace.
fn sweep_netns(
    sel: &Selector,
    bytecode: Option<&[u8]>,
    netns: u64,
    paths: &HashMap<u64, PathBuf>,
    pids: &[u32],
) -> io::Result<NetnsOutcome> {
    let mut nl = DiagNetlink::open()?;
    let states = LIVE_STATES
        .iter()
        .fold(TcpState::Listen.bit(), |m, s| m | s.bit());
    let mut sockets = match nl.dump(libc::AF_INET as u8, states, bytecode) {
        Ok(v4) => v4,
        // Kernels before 5.9 know no CGROUP_COND: dump everything, judge each socket here.
        Err(e) if bytecode.is_some() && e.raw_os_error() == Some(libc::EINVAL) => {
            return sweep_netns(sel, None, netns, paths, pids);
        }
        Err(e) => return Err(e),
    };
    match nl.dump(libc::AF_INET6 as u8, states, bytecode) {
        Ok(v6) => sockets.extend(v6),
        // No IPv6 in this kernel or namespace: nothing to find there.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EAFNOSUPPORT)) => {}
        Err(e) => return Err(e),
    }
    let listeners: Vec<SocketAddr> = sockets
        .iter()
        .filter(|s| s.state == TcpState::Listen)
        .map(|s| normalise(s.src))
        .collect();
    let doomed: Vec<DiagSocket> = sockets
        .into_iter()
        .filter(|s| sel.verdict(s, &listeners).is_ok())
        .collect();
    let mut out = NetnsOutcome::default();
    if doomed.is_empty() {
        return Ok(out);
    }
    // Owners first: once destroyed, a process may close the socket and exit.
    let owners = socket_owners(pids);
    for s in doomed {
        let owner = owners.get(&s.inode);
        let cgroup = s.cgroup_id.unwrap_or_default();
        let existing = ExistingSocket {
            src: normalise(s.src),
            dst: normalise(s.dst),
            state: s.state,
            cgroup_id: cgroup,
            cgroup_path: paths.get(&cgroup).cloned(),
            uid: s.uid,
            inode: s.inode,
            netns,
            pid: owner.map(|o| o.0),
            comm: owner.map(|o| o.1.clone()),
        };
        match nl.destroy(&s) {
            Ok(()) => out.destroyed.push(existing),
            // Closed between the dump and now: nothing left to do.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => out.failed.push(UndestroyedSocket {
                socket: existing,
                errno: e.raw_os_error(),
                error: e.to_string(),
            }),
        }
    }
    Ok(out)
}

/// Finds and destroys every pre-existing connection of the target cgroups (`roots` and their
/// descendants) that the redirect would now take, in every network namespace their
/// processes use, and logs each one. Never fails: what could not be done is in the report.
pub(crate) fn close_preexisting(
    roots: &[PathBuf],
    proxy_cgroup_id: u64,
    mark: u32,
    ports: &TargetPorts,
    direct: DirectSet,
    listen_port: u16,
) -> PreexistingConnections {
    let (paths, pids) = cgroup_subtree(roots);
    let mut ids: Vec<u64> = paths.keys().copied().collect();
    ids.sort_unstable();
    let bytecode = cgroup_bytecode(&ids);
    let sel = Selector {
        cgroups: ids.into_iter().collect(),
        proxy_cgroup_id,
        mark,
        ports: ports.clone(),
        direct,
        listen_port,
    };
    let mut report = PreexistingConnections::default();

    // Our own namespace, then one per other namespace a target process lives in.
    let own = netns_inode(Path::new("/proc/thread-self/ns/net")).unwrap_or(0);
    let mut namespaces: Vec<(u64, Option<u32>)> = vec![(own, None)];
    for pid in &pids {
        let Ok(ns) = netns_inode(Path::new(&format!("/proc/{pid}/ns/net"))) else {
            continue; // exited meanwhile
        };
        if !namespaces.iter().any(|(n, _)| *n == ns) {
            namespaces.push((ns, Some(*pid)));
        }
    }
    for (ns, pid) in namespaces {
        let outcome = match pid {
            None => sweep_netns(&sel, bytecode.as_deref(), ns, &paths, &pids),
            Some(pid) => in_netns_of(pid, || {
                sweep_netns(&sel, bytecode.as_deref(), ns, &paths, &pids)
            }),
        };
        match outcome {
            Ok(o) => {
                report.destroyed.extend(o.destroyed);
                report.failed.extend(o.failed);
            }
            Err(e) => {
                let place = match pid {
                    None => format!("network namespace {ns} (tollgate's own)"),
                    Some(pid) => format!("network namespace {ns} (of pid {pid})"),
                };
                log::warn!(
                    "could not look for pre-existing connections in {place}: {e}; connections opened there before the redirect may still bypass it"
                );
                report.scan_errors.push(format!("{place}: {e}"));
            }
        }
    }
    for s in &report.destroyed {
        log::info!(
            "destroyed a pre-existing connection {} -> {} ({:?}) of pid {} ({}) in cgroup {}: it predates the redirect",
            s.src,
            s.dst,
            s.state,
            s.pid.map_or("?".into(), |p| p.to_string()),
            s.comm.as_deref().unwrap_or("?"),
            s.cgroup_id
        );
    }
    for f in &report.failed {
        let s = &f.socket;
        log::warn!(
            "pre-existing connection {} -> {} of pid {} ({}) in cgroup {} could NOT be destroyed ({}): it still bypasses tollgate until it closes{}",
            s.src,
            s.dst,
            s.pid.map_or("?".into(), |p| p.to_string()),
            s.comm.as_deref().unwrap_or("?"),
            s.cgroup_id,
            f.error,
            if f.errno == Some(libc::EOPNOTSUPP) {
                "; this kernel lacks CONFIG_INET_DIAG_DESTROY: restart the process, or kill it"
            } else {
                ""
            }
        );
    }
    report
}

/// Runs `f` in a new thread that joined the network namespace of `pid` (a thread's namespace
/// is its own: the caller's is untouched).
fn in_netns_of<T: Send>(pid: u32, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on an open namespace fd; it affects only this thread, which
                // ends with `f`.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("network namespace sweep panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::direct::{direct_ranges, DirectSet};
    use crate::DirectDestinations;

    fn sock(state: TcpState, cgroup: u64, src: &str, dst: &str) -> DiagSocket {
        let src: SocketAddr = src.parse().unwrap();
        DiagSocket {
            family: if src.is_ipv4() { 2 } else { 10 },
            state,
            src,
            dst: dst.parse().unwrap(),
            uid: 0,
            inode: 1,
            cgroup_id: Some(cgroup),
            mark: Some(0),
            id: [0; crate::diag::SOCKID_LEN],
        }
    }

    fn selector(ports: TargetPorts) -> Selector {
        let host: IpAddr = "10.0.2.15".parse().unwrap();
        let (ranges, _) = direct_ranges(
            &DirectDestinations {
                cidrs: vec!["192.168.0.0/16".parse().unwrap()],
                ..DirectDestinations::default()
            },
            &[host],
        );
        Selector {
            cgroups: [10, 11, 99].into_iter().collect(),
            proxy_cgroup_id: 99,
            mark: 0x746f_6c6c,
            ports,
            direct: DirectSet::new(&ranges),
            listen_port: 15443,
        }
    }

    #[test]
    fn only_what_the_hooks_would_redirect_is_destroyed() {
        let sel = selector(TargetPorts::All);
        let none: &[SocketAddr] = &[];
        let est = TcpState::Established;
        let v = |s: &DiagSocket| sel.verdict(s, none);
        assert_eq!(
            v(&sock(est, 10, "10.0.2.15:40000", "198.18.0.1:3128")),
            Ok(())
        );
        assert_eq!(
            v(&sock(
                TcpState::SynSent,
                11,
                "10.0.2.15:40000",
                "198.18.0.1:1080"
            )),
            Ok(())
        );
        assert_eq!(
            v(&sock(
                TcpState::CloseWait,
                11,
                "[fd00::2]:4",
                "[fd00::1]:443"
            )),
            Ok(())
        );
        assert_eq!(
            v(&sock(
                est,
                10,
                "[::ffff:10.0.2.15]:4",
                "[::ffff:198.18.0.1]:8080"
            )),
            Ok(()),
            "v4-mapped on an AF_INET6 socket"
        );
        assert_eq!(
            v(&sock(TcpState::TimeWait, 10, "10.0.2.15:1", "1.1.1.1:443")),
            Err(Keep::State)
        );
        assert_eq!(
            v(&sock(TcpState::Listen, 10, "0.0.0.0:80", "0.0.0.0:0")),
            Err(Keep::State)
        );
        assert_eq!(
            v(&sock(est, 12, "10.0.2.15:1", "1.1.1.1:443")),
            Err(Keep::OtherCgroup)
        );
        assert_eq!(
            v(&sock(est, 99, "10.0.2.15:1", "1.1.1.1:443")),
            Err(Keep::ProxyCgroup)
        );
        let mut marked = sock(est, 10, "10.0.2.15:1", "1.1.1.1:443");
        marked.mark = Some(0x746f_6c6c);
        assert_eq!(v(&marked), Err(Keep::Marked));
        let mut unknown = marked.clone();
        unknown.cgroup_id = None;
        assert_eq!(v(&unknown), Err(Keep::NoCgroupId));
        use DirectReason::*;
        assert_eq!(
            v(&sock(est, 10, "127.0.0.1:1", "127.0.0.1:5432")),
            Err(Keep::Direct(Loopback))
        );
        assert_eq!(
            v(&sock(est, 10, "[::1]:1", "[::ffff:127.0.0.1]:5432")),
            Err(Keep::Direct(Loopback))
        );
        assert_eq!(
            v(&sock(est, 10, "10.0.2.15:1", "10.0.2.15:22")),
            Err(Keep::Direct(HostAddress))
        );
        assert_eq!(
            v(&sock(est, 10, "10.0.2.15:1", "192.168.7.7:80")),
            Err(Keep::Direct(Configured))
        );
        assert_eq!(
            v(&sock(est, 10, "127.0.0.1:1", "127.0.0.1:15443")),
            Err(Keep::Listener)
        );
        assert_eq!(
            v(&sock(est, 10, "[::1]:1", "[::1]:15443")),
            Err(Keep::Listener)
        );

        let only = selector(TargetPorts::Only(vec![443]));
        assert_eq!(
            only.verdict(&sock(est, 10, "10.0.2.15:1", "1.1.1.1:443"), none),
            Ok(())
        );
        assert_eq!(
            only.verdict(&sock(est, 10, "10.0.2.15:1", "1.1.1.1:3128"), none),
            Err(Keep::Port)
        );
    }

    #[test]
    fn accepted_ends_of_inbound_connections_are_kept() {
        let sel = selector(TargetPorts::All);
        let listeners: Vec<SocketAddr> = vec![
            "0.0.0.0:22".parse().unwrap(),
            "10.0.2.15:8080".parse().unwrap(),
            "[::]:9000".parse().unwrap(),
        ];
        let est = TcpState::Established;
        let v = |s: &DiagSocket| sel.verdict(s, &listeners);
        assert_eq!(
            v(&sock(est, 10, "10.0.2.15:22", "203.0.113.9:51000")),
            Err(Keep::Inbound)
        );
        assert_eq!(
            v(&sock(est, 10, "10.0.2.15:8080", "203.0.113.9:51000")),
            Err(Keep::Inbound)
        );
        assert_eq!(
            v(&sock(
                est,
                10,
                "[::ffff:10.0.2.15]:9000",
                "[::ffff:203.0.113.9]:51000"
            )),
            Err(Keep::Inbound),
            "dual-stack listener"
        );
        assert_eq!(
            v(&sock(est, 10, "10.0.2.16:8080", "203.0.113.9:51000")),
            Ok(()),
            "other address"
        );
        assert_eq!(
            v(&sock(est, 10, "10.0.2.15:40000", "203.0.113.9:22")),
            Ok(())
        );
    }

    #[test]
    fn subtree_walk_finds_descendants() {
        let dir = std::env::temp_dir().join(format!("tollgate-subtree-{}", std::process::id()));
        let child = dir.join("a/b");
        fs::create_dir_all(&child).unwrap();
        fs::write(dir.join("cgroup.procs"), "12\n7\n").unwrap();
        fs::write(child.join("cgroup.procs"), "7\n30\n").unwrap();
        let (ids, pids) = cgroup_subtree(&[dir.clone(), child.clone()]);
        assert_eq!(ids.len(), 3);
        assert_eq!(ids.get(&cgroup_id(&child).unwrap()), Some(&child));
        assert_eq!(pids, vec![7, 12, 30]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn normalises_v4_mapped_addresses() {
        assert_eq!(
            normalise("[::ffff:1.2.3.4]:5".parse().unwrap()),
            "1.2.3.4:5".parse::<SocketAddr>().unwrap()
        );
        let v6: SocketAddr = "[fd00::1]:5".parse().unwrap();
        assert_eq!(normalise(v6), v6);
    }
}
