//! The kernel side of Tollgate's transparent interception, and the only crate that touches
//! aya.
//!
//! [`Redirector::attach`] loads the programs of `ebpf/tollgate-ebpf` (embedded at build time),
//! attaches `cgroup/connect4`, `cgroup/connect6` and `sockops` to every target cgroup and
//! `cgroup/getsockopt` to the proxy's cgroup, and pins links, programs and maps under a bpffs
//! directory so the redirect outlives the process: while the proxy is down, agents get
//! "connection refused", never a direct path. [`detach`] is the only way to remove it;
//! [`status`] reports it.
//!
//! What is redirected: TCP connects from the target cgroups (and their descendants) to any
//! port ([`TargetPorts::All`], the default) or to listed ports, except destinations that stay
//! direct ([`DirectDestinations`]: loopback, the host's own addresses, configured ranges) and
//! the proxy's own sockets. Connections opened before the attach would escape the hooks: the
//! attach destroys those it would now redirect and reports them ([`AttachReport`]).
//!
//! Once attached, the proxy gets the original destination of an accepted connection with
//! `getsockopt(SOL_IP | SOL_IPV6, SO_ORIGINAL_DST)` (emulated by the getsockopt program, so
//! the same call works behind an iptables/nft REDIRECT) and the connecting process's identity
//! with [`Redirector::lookup`]. This crate does not do that `getsockopt` call itself, and does
//! no networking.
#![deny(missing_docs)]

mod diag;
mod direct;
mod error;
mod existing;
mod host;
mod pins;
mod redirector;
mod status;
mod sys;

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::PathBuf,
};

use serde::Serialize;
use tollgate_common::{as_v4_mapped, ConnectRecord};

pub use diag::TcpState;
pub use direct::{DirectRange, DirectReason};
pub use error::BpfError;
pub use existing::{ExistingSocket, PreexistingConnections, UndestroyedSocket};
pub use host::{cgroup2_mount, cgroup_id, preflight};
pub use ipnet::IpNet;
pub use pins::Hook;
pub use redirector::{AttachReport, ConnectLookup, KernelLog, Redirector};
pub use status::{
    detach, status, ConfigStatus, DetachReport, KernelAttachment, LinkStatus, PreexistingStatus,
    Status,
};
pub use tollgate_common::DEFAULT_SOCKET_MARK;

/// The default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/tollgate";

/// Which destination ports of TCP connects are redirected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetPorts {
    /// Every port: a tunnel through an HTTP CONNECT or SOCKS proxy on any port reaches the
    /// proxy too. The default.
    #[default]
    All,
    /// Only these ports (at most 64).
    Only(Vec<u16>),
}

impl TargetPorts {
    /// Whether a connect to `port` is redirected.
    pub fn contains(&self, port: u16) -> bool {
        match self {
            TargetPorts::All => true,
            TargetPorts::Only(ports) => ports.contains(&port),
        }
    }
}

impl fmt::Display for TargetPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPorts::All => f.write_str("all"),
            TargetPorts::Only(ports) => {
                let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                write!(f, "[{}]", list.join(", "))
            }
        }
    }
}

/// Destinations that are never redirected, whatever the port.
///
/// Every range here is a way around the proxy for the target processes; keep it to what must
/// stay local. In particular a proxy running *outside* the target cgroups and listening on
/// loopback or a host address would relay for them unaudited: remove `loopback` /
/// `host_addresses` on such hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectDestinations {
    /// `127.0.0.0/8`, `::1` and `::ffff:127.0.0.0/104` stay direct (default true).
    pub loopback: bool,
    /// The host's own addresses, as `getifaddrs` lists them at attach (default true).
    /// Addresses added later are redirected until the next attach; removed ones stay direct.
    pub host_addresses: bool,
    /// Further ranges that stay direct (IPv4 ranges also match IPv4-mapped destinations).
    pub cidrs: Vec<IpNet>,
}

impl DirectDestinations {
    /// Nothing stays direct: every destination is redirected.
    pub fn none() -> Self {
        Self {
            loopback: false,
            host_addresses: false,
            cidrs: Vec::new(),
        }
    }
}

impl Default for DirectDestinations {
    fn default() -> Self {
        Self {
            loopback: true,
            host_addresses: true,
            cidrs: Vec::new(),
        }
    }
}

/// What to redirect, to where, and what never to redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectConfig {
    /// cgroup v2 directories whose processes are intercepted (their descendants too).
    pub cgroups: Vec<PathBuf>,
    /// Destination TCP ports to intercept (default: all).
    pub ports: TargetPorts,
    /// Destinations never redirected (default: loopback and the host's own addresses).
    pub direct: DirectDestinations,
    /// The proxy's listener port on `127.0.0.1` and `[::1]`.
    pub listen_port: u16,
    /// The cgroup of the process that creates the listening socket: `SO_ORIGINAL_DST` is
    /// emulated there, and connects from it are never redirected.
    pub proxy_cgroup: PathBuf,
    /// The proxy's pid (thread-group id): its connects are never redirected. 0: none.
    pub proxy_tgid: u32,
    /// The `SO_MARK` of the proxy's upstream sockets: never redirected. 0: no mark check.
    pub mark: u32,
    /// Where links, programs and maps are pinned (on bpffs).
    pub pin_dir: PathBuf,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        Self {
            cgroups: Vec::new(),
            ports: TargetPorts::All,
            direct: DirectDestinations::default(),
            listen_port: 15443,
            proxy_cgroup: PathBuf::new(),
            proxy_tgid: std::process::id(),
            mark: DEFAULT_SOCKET_MARK,
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
        }
    }
}

/// What the connect hook recorded about a redirected connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectInfo {
    /// Where the client meant to connect. An IPv4-mapped destination is reported as IPv4.
    pub orig_dst: SocketAddr,
    /// The connecting thread's id.
    pub pid: u32,
    /// The connecting process's id (thread-group id).
    pub tgid: u32,
    /// The caller's uid.
    pub uid: u32,
    /// The caller's gid.
    pub gid: u32,
    /// The caller's task name (`comm`, at most 15 bytes).
    pub comm: String,
    /// The caller's cgroup v2 id.
    pub cgroup_id: u64,
    /// The caller's network namespace cookie.
    pub netns_cookie: u64,
    /// The client socket's cookie.
    pub socket_cookie: u64,
    /// `CLOCK_MONOTONIC` nanoseconds at `connect()`.
    pub connected_at_ns: u64,
}

impl From<ConnectRecord> for ConnectInfo {
    fn from(r: ConnectRecord) -> Self {
        let orig_dst = match as_v4_mapped(&r.orig_ip6) {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(v4), r.orig_port)),
            None => SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(r.orig_ip6),
                r.orig_port,
                0,
                0,
            )),
        };
        let comm_len = r.comm.iter().position(|b| *b == 0).unwrap_or(r.comm.len());
        Self {
            orig_dst,
            pid: r.pid,
            tgid: r.tgid,
            uid: r.uid,
            gid: r.gid,
            comm: String::from_utf8_lossy(&r.comm[..comm_len]).into_owned(),
            cgroup_id: r.cgroup_id,
            netns_cookie: r.netns_cookie,
            socket_cookie: r.socket_cookie,
            connected_at_ns: r.timestamp_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redirector::{client_key, expected_map_shape};
    use tollgate_common::{v4_mapped, MAP_NAMES};

    #[test]
    fn v4_and_v4_mapped_clients_normalise_to_one_key() {
        let v4: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        let v6: SocketAddr = "[::1]:40000".parse().unwrap();
        assert_eq!(client_key(v4), client_key(mapped));
        assert_ne!(client_key(v4), client_key(v6));
        assert_eq!(client_key(v4).ip6, v4_mapped([127, 0, 0, 1]));
        assert_eq!(client_key(v4).port, 40000);
    }

    #[test]
    fn records_convert_to_connect_info() {
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"python");
        let rec = ConnectRecord {
            orig_ip6: v4_mapped([198, 18, 0, 1]),
            orig_port: 443,
            pid: 7,
            tgid: 7,
            comm,
            ..Default::default()
        };
        let info = ConnectInfo::from(rec);
        assert_eq!(info.orig_dst, "198.18.0.1:443".parse().unwrap());
        assert_eq!(info.comm, "python");
        let mut v6 = rec;
        v6.orig_ip6 = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(
            ConnectInfo::from(v6).orig_dst,
            "[fd00::1]:443".parse().unwrap()
        );
    }

    #[test]
    fn target_ports() {
        assert!(TargetPorts::All.contains(3128));
        assert!(TargetPorts::Only(vec![443]).contains(443));
        assert!(!TargetPorts::Only(vec![443]).contains(1080));
        assert_eq!(TargetPorts::All.to_string(), "all");
        assert_eq!(
            TargetPorts::Only(vec![443, 8443]).to_string(),
            "[443, 8443]"
        );
        assert_eq!(RedirectConfig::default().ports, TargetPorts::All);
        assert_eq!(
            RedirectConfig::default().direct,
            DirectDestinations::default()
        );
    }

    #[test]
    fn every_map_has_an_expected_shape() {
        for name in MAP_NAMES {
            assert!(expected_map_shape(name).is_some(), "{name}");
        }
    }
}
