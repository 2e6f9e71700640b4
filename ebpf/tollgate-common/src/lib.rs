//! The kernel/user ABI of Tollgate's eBPF programs.
//!
//! Everything the eBPF programs (`ebpf/tollgate-ebpf`) and the loader (`userspace/tollgate-bpf`)
//! must agree on lives here: map names, map keys and values, and the socket-level constants the
//! programs emulate. Types are `#[repr(C)]` with fixed-width integers and explicit padding
//! fields (the kernel hashes and copies every byte of a key or value, so no byte may be left
//! uninitialised), and carry no `bool`, `Option` or enum. The `user` feature adds `aya::Pod`
//! impls; without it the crate is `no_std` and has no dependencies.
//!
//! This crate does no I/O and has no logic beyond address normalisation helpers.
#![cfg_attr(not(feature = "user"), no_std)]
#![deny(missing_docs)]

/// Name of the one-slot `Array<ProxyConfig>` map holding the proxy's listener and loop-avoidance
/// identities.
pub const MAP_CONFIG: &str = "CONFIG";
/// Name of the `HashMap<u16, u8>` map of destination ports (host order) to intercept.
pub const MAP_TARGET_PORTS: &str = "TARGET_PORTS";
/// Name of the LRU map `socket cookie (u64) → ConnectRecord` written at connect time.
pub const MAP_PENDING: &str = "PENDING";
/// Name of the LRU map `ClientKey → ConnectRecord` written once the client's source port is
/// known (sockops `TCP_CONNECT_CB`).
pub const MAP_ORIG_DST: &str = "ORIG_DST";
/// Name of the LPM trie of destinations that are never redirected ("direct"): key
/// `Key<[u8; 16]>` (a `u32` prefix length in bits, then an IPv6 address in network order, IPv4
/// as IPv4-mapped with the prefix length counted from bit 0 of the mapped address, so
/// `10.0.0.0/8` is `::ffff:10.0.0.0/104`), value a `DIRECT_*` reason (`u32`).
pub const MAP_DIRECT: &str = "DIRECT";
/// Every map, in the order the loader pins and reports them.
pub const MAP_NAMES: [&str; 5] = [
    MAP_CONFIG,
    MAP_TARGET_PORTS,
    MAP_DIRECT,
    MAP_PENDING,
    MAP_ORIG_DST,
];

/// Capacity of [`MAP_TARGET_PORTS`].
pub const TARGET_PORTS_MAX_ENTRIES: u32 = 64;
/// Capacity of [`MAP_DIRECT`]: loopback, the host's own addresses and configured ranges.
pub const DIRECT_MAX_ENTRIES: u32 = 4096;
/// Capacity of [`MAP_PENDING`]: connects in flight between `connect()` and the SYN.
pub const PENDING_MAX_ENTRIES: u32 = 16_384;
/// Capacity of [`MAP_ORIG_DST`]: redirected connections not yet claimed by the proxy.
pub const ORIG_DST_MAX_ENTRIES: u32 = 65_536;

/// Program (function) names in the eBPF object, as the loader looks them up and pins them.
///
/// The kernel keeps only 15 bytes of a program's name (`BPF_OBJ_NAME_LEN`), and `status` finds
/// attached programs by that name: keep every name at most 15 bytes and unique.
pub mod prog {
    /// `cgroup/connect4`: rewrites IPv4 TCP connects to the listener.
    pub const CONNECT4: &str = "tg_connect4";
    /// `cgroup/connect6`: rewrites IPv6 (and IPv4-mapped) TCP connects to the listener.
    pub const CONNECT6: &str = "tg_connect6";
    /// `sockops`: re-keys the pending record by the client's (ip, port) at `TCP_CONNECT_CB`.
    pub const SOCKOPS: &str = "tg_sockops";
    /// `cgroup/getsockopt`: emulates `SO_ORIGINAL_DST` for the proxy's accepted sockets.
    pub const GETSOCKOPT: &str = "tg_getsockopt";
}

/// `SO_ORIGINAL_DST` (`linux/netfilter_ipv4.h`); `IP6T_SO_ORIGINAL_DST` has the same value.
pub const SO_ORIGINAL_DST: i32 = 80;
/// `SOL_IP` (= `IPPROTO_IP`).
pub const SOL_IP: i32 = 0;
/// `SOL_IPV6` (= `IPPROTO_IPV6`).
pub const SOL_IPV6: i32 = 41;
/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;
/// `SOCK_STREAM`.
pub const SOCK_STREAM: u32 = 1;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u32 = 6;
/// Size of `struct sockaddr_in`.
pub const SOCKADDR_IN_LEN: usize = 16;
/// Size of `struct sockaddr_in6`.
pub const SOCKADDR_IN6_LEN: usize = 28;

/// The `SO_MARK` Tollgate's upstream sockets carry by default ("toll" in ASCII); the connect
/// hooks never redirect a socket with this mark.
pub const DEFAULT_SOCKET_MARK: u32 = 0x746f_6c6c;

/// [`ProxyConfig::flags`] bit: redirection is enabled. Without it every hook lets connects pass.
pub const CONFIG_FLAG_ENABLED: u32 = 1;
/// [`ProxyConfig::flags`] bit: every destination port is intercepted and [`MAP_TARGET_PORTS`]
/// is ignored. Without it only the ports in that map are.
pub const CONFIG_FLAG_ALL_PORTS: u32 = 1 << 1;
/// [`ProxyConfig::flags`] bit, written by the loader for `status` and ignored by the programs:
/// the last attach could not look for connections opened before it (see
/// [`ProxyConfig::preexisting_failed`]).
pub const CONFIG_FLAG_PREEXISTING_UNCHECKED: u32 = 1 << 2;

/// [`MAP_DIRECT`] value: a loopback range (`127.0.0.0/8`, `::1`).
pub const DIRECT_LOOPBACK: u32 = 1;
/// [`MAP_DIRECT`] value: one of the host's own addresses, as found at attach.
pub const DIRECT_HOST_ADDRESS: u32 = 2;
/// [`MAP_DIRECT`] value: a range configured to stay direct.
pub const DIRECT_CONFIGURED: u32 = 3;
/// Bits of a [`MAP_DIRECT`] key's address: an IPv4 prefix length `n` is stored as `96 + n`.
pub const DIRECT_KEY_BITS: u32 = 128;

/// The value of the one-slot [`MAP_CONFIG`] array.
///
/// Addresses and ports are stored exactly as `struct bpf_sock_addr` wants them written
/// (`user_ip4`, `user_ip6`, `user_port`: network byte order, the port in the low 16 bits of a
/// `u32` field), so the connect hooks copy them without conversion.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// IPv4 listener address, network order (`127.0.0.1`).
    pub listen_ip4: u32,
    /// IPv4 listener port, network order in the low 16 bits.
    pub listen_port4: u32,
    /// IPv6 listener address, four network-order words (`::1`).
    pub listen_ip6: [u32; 4],
    /// IPv6 listener port, network order in the low 16 bits.
    pub listen_port6: u32,
    /// Thread-group id (userspace pid) of the proxy; its connects are never redirected.
    pub proxy_tgid: u32,
    /// cgroup v2 id (inode) of the proxy's cgroup; its connects are never redirected.
    pub proxy_cgroup_id: u64,
    /// `SO_MARK` of the proxy's upstream sockets; `0` disables the mark check.
    pub mark: u32,
    /// `CONFIG_FLAG_*` bits.
    pub flags: u32,
    /// Loader-only, for `status` (the programs ignore it): connections opened before the last
    /// attach that it destroyed.
    pub preexisting_destroyed: u32,
    /// Loader-only, for `status` (the programs ignore it): connections opened before the last
    /// attach that would now be redirected but could not be destroyed, so they still bypass
    /// the proxy.
    pub preexisting_failed: u32,
}

impl ProxyConfig {
    /// Fills the listener fields from a port, with the fixed loopback addresses `127.0.0.1`
    /// and `::1`.
    pub fn with_loopback_listener(mut self, port: u16) -> Self {
        self.listen_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
        self.listen_port4 = u32::from(port.to_be());
        self.listen_ip6 = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
        self.listen_port6 = u32::from(port.to_be());
        self
    }

    /// Whether every destination port is intercepted ([`CONFIG_FLAG_ALL_PORTS`]).
    pub fn all_ports(&self) -> bool {
        self.flags & CONFIG_FLAG_ALL_PORTS != 0
    }

    /// The listener port in host order.
    pub fn listen_port(&self) -> u16 {
        // The low 16 bits hold the port's network-order bytes (see the field docs).
        u16::from_be(self.listen_port4 as u16)
    }
}

/// Key of [`MAP_ORIG_DST`]: the client end of a redirected connection as the proxy sees it
/// when it accepts.
///
/// IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`) so that a client seen through an
/// IPv4 socket and through a dual-stack IPv6 socket has one key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// Client address, network order; IPv4 as IPv4-mapped IPv6.
    pub ip6: [u8; 16],
    /// Client port, host order.
    pub port: u16,
    /// Explicit padding; always zero.
    pub _pad: u16,
}

impl ClientKey {
    /// Key for an IPv4 client given its address bytes (network order) and host-order port.
    pub const fn from_v4(octets: [u8; 4], port: u16) -> Self {
        Self {
            ip6: v4_mapped(octets),
            port,
            _pad: 0,
        }
    }

    /// Key for an IPv6 client; an IPv4-mapped address is kept as is, which is exactly the
    /// normalised form of the same IPv4 client.
    pub const fn from_v6(octets: [u8; 16], port: u16) -> Self {
        Self {
            ip6: octets,
            port,
            _pad: 0,
        }
    }
}

/// Returns `::ffff:a.b.c.d` for `a.b.c.d`.
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Returns the IPv4 address if `ip6` is IPv4-mapped (`::ffff:a.b.c.d`).
pub fn as_v4_mapped(ip6: &[u8; 16]) -> Option<[u8; 4]> {
    if ip6[..10].iter().all(|b| *b == 0) && ip6[10] == 0xff && ip6[11] == 0xff {
        Some([ip6[12], ip6[13], ip6[14], ip6[15]])
    } else {
        None
    }
}

/// What the connect hooks remember about a redirected connect: the original destination and
/// the identity of the caller, captured in the caller's own context (the only point where it
/// exists).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectRecord {
    /// Original destination address, network order; an IPv4 destination is IPv4-mapped.
    pub orig_ip6: [u8; 16],
    /// Original destination port, host order.
    pub orig_port: u16,
    /// Family of the socket that connected (`AF_INET` or `AF_INET6`); an `AF_INET6` socket may
    /// still have connected to an IPv4-mapped destination.
    pub family: u16,
    /// Thread id of the caller (kernel `pid`).
    pub pid: u32,
    /// Thread-group id of the caller (userspace pid).
    pub tgid: u32,
    /// Caller's uid (in the initial user namespace).
    pub uid: u32,
    /// Caller's gid (in the initial user namespace).
    pub gid: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
    /// cgroup v2 id of the caller.
    pub cgroup_id: u64,
    /// Cookie of the caller's network namespace (`bpf_get_netns_cookie`).
    pub netns_cookie: u64,
    /// Cookie of the connecting socket (`bpf_get_socket_cookie`).
    pub socket_cookie: u64,
    /// `bpf_ktime_get_ns()` at connect (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// Caller's `comm` (task name), NUL padded.
    pub comm: [u8; 16],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and integer arrays, with
    // every padding byte an explicit field, so any bit pattern is valid and no byte is
    // uninitialised.
    unsafe impl aya::Pod for super::ProxyConfig {}
    unsafe impl aya::Pod for super::ClientKey {}
    unsafe impl aya::Pod for super::ConnectRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn abi_sizes_and_alignments_are_pinned() {
        assert_eq!(
            (size_of::<ProxyConfig>(), align_of::<ProxyConfig>()),
            (56, 8)
        );
        assert_eq!(offset_of!(ProxyConfig, proxy_cgroup_id), 32);
        assert_eq!(offset_of!(ProxyConfig, flags), 44);
        assert_eq!(offset_of!(ProxyConfig, preexisting_failed), 52);
        assert_eq!((size_of::<ClientKey>(), align_of::<ClientKey>()), (20, 2));
        assert_eq!(
            (size_of::<ConnectRecord>(), align_of::<ConnectRecord>()),
            (88, 8)
        );
        assert_eq!(offset_of!(ConnectRecord, orig_port), 16);
        assert_eq!(offset_of!(ConnectRecord, cgroup_id), 40);
        assert_eq!(offset_of!(ConnectRecord, comm), 72);
    }

    #[test]
    fn config_flags_are_distinct_bits() {
        let flags = [
            CONFIG_FLAG_ENABLED,
            CONFIG_FLAG_ALL_PORTS,
            CONFIG_FLAG_PREEXISTING_UNCHECKED,
        ];
        for (i, a) in flags.iter().enumerate() {
            assert_eq!(a.count_ones(), 1);
            for b in &flags[i + 1..] {
                assert_eq!(a & b, 0);
            }
        }
        let cfg = ProxyConfig {
            flags: CONFIG_FLAG_ENABLED | CONFIG_FLAG_ALL_PORTS,
            ..ProxyConfig::default()
        };
        assert!(cfg.all_ports());
        assert!(!ProxyConfig::default().all_ports());
    }

    #[test]
    fn program_names_fit_the_kernel_name_field() {
        for name in [
            prog::CONNECT4,
            prog::CONNECT6,
            prog::SOCKOPS,
            prog::GETSOCKOPT,
        ] {
            assert!(name.len() <= 15, "{name} would be truncated by the kernel");
        }
    }

    #[test]
    fn v4_and_v4_mapped_clients_share_a_key() {
        let v4 = ClientKey::from_v4([127, 0, 0, 1], 40000);
        let mapped = ClientKey::from_v6(v4_mapped([127, 0, 0, 1]), 40000);
        assert_eq!(v4, mapped);
        assert_eq!(as_v4_mapped(&v4.ip6), Some([127, 0, 0, 1]));
        let mut loopback6 = [0u8; 16];
        loopback6[15] = 1;
        assert_eq!(as_v4_mapped(&loopback6), None);
    }

    #[test]
    fn listener_is_stored_in_network_order() {
        let cfg = ProxyConfig::default().with_loopback_listener(0x1234);
        assert_eq!(cfg.listen_ip4.to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!((cfg.listen_port4 as u16).to_ne_bytes(), [0x12, 0x34]);
        assert_eq!(cfg.listen_ip6[3].to_ne_bytes(), [0, 0, 0, 1]);
        assert_eq!(cfg.listen_port(), 0x1234);
    }
}
