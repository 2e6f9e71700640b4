//! Destinations that are never redirected: what goes into the DIRECT map (loopback, the
//! host's own addresses, configured ranges), the host's addresses from `getifaddrs`, and the
//! userspace mirror of the kernel's longest-prefix match (used to judge connections that
//! existed before the redirect).
//!
//! Every range lives in one IPv6 key space, IPv4 as IPv4-mapped (`10.0.0.0/8` is
//! `::ffff:10.0.0.0/104`), exactly as the connect hooks look destinations up.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use tollgate_common::{
    as_v4_mapped, v4_mapped, DIRECT_CONFIGURED, DIRECT_HOST_ADDRESS, DIRECT_KEY_BITS,
    DIRECT_LOOPBACK, DIRECT_MAX_ENTRIES,
};

use crate::DirectDestinations;

/// Why a destination range stays direct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectReason {
    /// `127.0.0.0/8` or `::1`.
    Loopback,
    /// One of the host's own addresses, as found at attach.
    HostAddress,
    /// Listed in the configuration (`redirect.direct_cidrs`).
    Configured,
}

impl DirectReason {
    pub(crate) const fn code(self) -> u32 {
        match self {
            DirectReason::Loopback => DIRECT_LOOPBACK,
            DirectReason::HostAddress => DIRECT_HOST_ADDRESS,
            DirectReason::Configured => DIRECT_CONFIGURED,
        }
    }

    pub(crate) const fn from_code(code: u32) -> Option<Self> {
        match code {
            DIRECT_LOOPBACK => Some(DirectReason::Loopback),
            DIRECT_HOST_ADDRESS => Some(DirectReason::HostAddress),
            DIRECT_CONFIGURED => Some(DirectReason::Configured),
            _ => None,
        }
    }
}

impl std::fmt::Display for DirectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DirectReason::Loopback => "loopback",
            DirectReason::HostAddress => "host address",
            DirectReason::Configured => "configured",
        })
    }
}

/// One range of the DIRECT map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DirectRange {
    /// The range (IPv4 ranges as IPv4).
    pub net: IpNet,
    /// Why it is direct.
    pub reason: DirectReason,
}

/// The DIRECT map key of a range: (prefix length in the 128-bit key space, address).
pub(crate) fn lpm_key(net: &IpNet) -> (u32, [u8; 16]) {
    match net.trunc() {
        IpNet::V4(n) => (
            DIRECT_KEY_BITS - 32 + u32::from(n.prefix_len()),
            v4_mapped(n.network().octets()),
        ),
        IpNet::V6(n) => (u32::from(n.prefix_len()), n.network().octets()),
    }
}

/// The range of a DIRECT map key; IPv4-mapped ranges of /96 or longer are shown as IPv4.
pub(crate) fn from_lpm_key(prefix_len: u32, addr: [u8; 16]) -> Option<IpNet> {
    let prefix_len = u8::try_from(prefix_len).ok()?;
    if prefix_len >= 96 {
        if let Some(v4) = as_v4_mapped(&addr) {
            return Ipv4Net::new(Ipv4Addr::from(v4), prefix_len - 96)
                .ok()
                .map(IpNet::V4);
        }
    }
    Ipv6Net::new(Ipv6Addr::from(addr), prefix_len)
        .ok()
        .map(IpNet::V6)
}

/// An address in the key space: IPv4 as IPv4-mapped.
fn key_addr(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || as_v4_mapped(&v6.octets()).is_some_and(|v4| v4[0] == 127)
        }
    }
}

/// The ranges `cfg` asks for, given the host's addresses: loopback first, then configured
/// ranges, then host addresses (loopback and unspecified ones skipped: `loopback` alone
/// decides those), each key once, at most [`DIRECT_MAX_ENTRIES`]. Host addresses beyond the
/// capacity are left out — redirected, the safe side — and reported in the second value.
pub(crate) fn direct_ranges(
    cfg: &DirectDestinations,
    host_addresses: &[IpAddr],
) -> (Vec<DirectRange>, usize) {
    let mut wanted: Vec<DirectRange> = Vec::new();
    if cfg.loopback {
        for net in [
            IpNet::V4(Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("valid")),
            IpNet::V6(Ipv6Net::new(Ipv6Addr::LOCALHOST, 128).expect("valid")),
        ] {
            wanted.push(DirectRange {
                net,
                reason: DirectReason::Loopback,
            });
        }
    }
    for net in &cfg.cidrs {
        wanted.push(DirectRange {
            net: net.trunc(),
            reason: DirectReason::Configured,
        });
    }
    if cfg.host_addresses {
        for ip in host_addresses {
            let ip = match ip {
                IpAddr::V6(v6) => as_v4_mapped(&v6.octets())
                    .map(|v4| IpAddr::V4(Ipv4Addr::from(v4)))
                    .unwrap_or(*ip),
                IpAddr::V4(_) => *ip,
            };
            if is_loopback(ip) || ip.is_unspecified() {
                continue;
            }
            wanted.push(DirectRange {
                net: IpNet::from(ip),
                reason: DirectReason::HostAddress,
            });
        }
    }
    let mut out: Vec<DirectRange> = Vec::with_capacity(wanted.len());
    let mut dropped = 0;
    for r in wanted {
        if out.iter().any(|o| lpm_key(&o.net) == lpm_key(&r.net)) {
            continue;
        }
        if out.len() >= DIRECT_MAX_ENTRIES as usize {
            dropped += 1;
            continue;
        }
        out.push(r);
    }
    (out, dropped)
}

/// The userspace twin of the DIRECT map's lookup.
#[derive(Debug, Clone, Default)]
pub(crate) struct DirectSet {
    keys: Vec<(u32, [u8; 16], DirectReason)>,
}

impl DirectSet {
    pub(crate) fn new(ranges: &[DirectRange]) -> Self {
        Self {
            keys: ranges
                .iter()
                .map(|r| {
                    let (len, addr) = lpm_key(&r.net);
                    (len, addr, r.reason)
                })
                .collect(),
        }
    }

    /// The reason of the longest range containing `ip`, as the kernel's LPM trie would find.
    pub(crate) fn lookup(&self, ip: IpAddr) -> Option<DirectReason> {
        let addr = u128::from_be_bytes(key_addr(ip));
        self.keys
            .iter()
            .filter(|(len, net, _)| {
                let mask = if *len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                addr & mask == u128::from_be_bytes(*net) & mask
            })
            .max_by_key(|(len, _, _)| *len)
            .map(|(_, _, reason)| *reason)
    }
}

/// Every address assigned to an interface of this network namespace (`getifaddrs`).
pub(crate) fn host_addresses() -> io::Result<Vec<IpAddr>> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: `ifa_addr` points at a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            let ip = match family {
                libc::AF_INET => {
                    // SAFETY: AF_INET: a sockaddr_in.
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    Some(IpAddr::V4(Ipv4Addr::from(
                        sin.sin_addr.s_addr.to_ne_bytes(),
                    )))
                }
                libc::AF_INET6 => {
                    // SAFETY: AF_INET6: a sockaddr_in6.
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                }
                _ => None,
            };
            if let Some(ip) = ip {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(ifap) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keys_put_ipv4_in_the_mapped_space() {
        let net: IpNet = "10.1.2.3/8".parse().unwrap();
        assert_eq!(lpm_key(&net), (104, v4_mapped([10, 0, 0, 0])));
        let net: IpNet = "fd00::1/16".parse().unwrap();
        let (len, addr) = lpm_key(&net);
        assert_eq!(len, 16);
        assert_eq!(Ipv6Addr::from(addr), "fd00::".parse::<Ipv6Addr>().unwrap());
        for s in ["10.0.0.0/8", "192.0.2.7/32", "fd00::/16", "::1/128", "::/0"] {
            let net: IpNet = s.parse().unwrap();
            let (len, addr) = lpm_key(&net);
            assert_eq!(from_lpm_key(len, addr), Some(net), "{s}");
        }
        assert_eq!(from_lpm_key(129, [0; 16]), None);
    }

    #[test]
    fn default_ranges_keep_loopback_and_host_addresses_direct() {
        let host = [
            ip("127.0.0.1"),
            ip("::1"),
            ip("10.0.2.15"),
            ip("fe80::1"),
            ip("::ffff:192.0.2.1"),
            ip("10.0.2.15"),
            ip("0.0.0.0"),
        ];
        let (ranges, dropped) = direct_ranges(&DirectDestinations::default(), &host);
        assert_eq!(dropped, 0);
        let shown: Vec<(String, DirectReason)> = ranges
            .iter()
            .map(|r| (r.net.to_string(), r.reason))
            .collect();
        use DirectReason::*;
        assert_eq!(
            shown,
            vec![
                ("127.0.0.0/8".into(), Loopback),
                ("::1/128".into(), Loopback),
                ("10.0.2.15/32".into(), HostAddress),
                ("fe80::1/128".into(), HostAddress),
                ("192.0.2.1/32".into(), HostAddress),
            ]
        );
        let set = DirectSet::new(&ranges);
        assert_eq!(set.lookup(ip("127.3.4.5")), Some(Loopback));
        assert_eq!(set.lookup(ip("::ffff:127.0.0.1")), Some(Loopback));
        assert_eq!(set.lookup(ip("::1")), Some(Loopback));
        assert_eq!(set.lookup(ip("10.0.2.15")), Some(HostAddress));
        assert_eq!(set.lookup(ip("::ffff:10.0.2.15")), Some(HostAddress));
        assert_eq!(set.lookup(ip("10.0.2.16")), None);
        assert_eq!(set.lookup(ip("198.18.0.1")), None);
        assert_eq!(set.lookup(ip("::2")), None);
    }

    #[test]
    fn switches_and_configured_ranges() {
        let host = [ip("10.0.2.15"), ip("127.0.0.1")];
        let none = DirectDestinations::none();
        assert!(direct_ranges(&none, &host).0.is_empty());
        // Without `loopback`, the host's loopback addresses do not sneak in as host addresses.
        let host_only = DirectDestinations {
            loopback: false,
            ..DirectDestinations::default()
        };
        let (ranges, _) = direct_ranges(&host_only, &host);
        assert_eq!(ranges.len(), 1);
        assert_eq!(DirectSet::new(&ranges).lookup(ip("127.0.0.1")), None);

        let cfg = DirectDestinations {
            loopback: true,
            host_addresses: false,
            cidrs: vec![
                "10.0.0.0/8".parse().unwrap(),
                "10.9.9.9/8".parse().unwrap(), // same range, untruncated
                "fd00:7467::/32".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(), // already loopback
            ],
        };
        let (ranges, _) = direct_ranges(&cfg, &host);
        assert_eq!(ranges.len(), 4, "{ranges:?}");
        let set = DirectSet::new(&ranges);
        assert_eq!(set.lookup(ip("10.200.0.1")), Some(DirectReason::Configured));
        assert_eq!(
            set.lookup(ip("fd00:7467:1::2")),
            Some(DirectReason::Configured)
        );
        assert_eq!(set.lookup(ip("fd00:7468::2")), None);
        assert_eq!(set.lookup(ip("127.0.0.1")), Some(DirectReason::Loopback));
    }

    #[test]
    fn longest_prefix_wins_and_capacity_is_respected() {
        let cfg = DirectDestinations {
            loopback: false,
            host_addresses: true,
            cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        };
        let (ranges, _) = direct_ranges(&cfg, &[ip("10.0.2.15")]);
        let set = DirectSet::new(&ranges);
        assert_eq!(set.lookup(ip("10.0.2.15")), Some(DirectReason::HostAddress));
        assert_eq!(set.lookup(ip("10.0.2.16")), Some(DirectReason::Configured));
        let all: Vec<IpNet> = vec!["::/0".parse().unwrap()];
        let set = DirectSet::new(
            &direct_ranges(
                &DirectDestinations {
                    cidrs: all,
                    ..DirectDestinations::none()
                },
                &[],
            )
            .0,
        );
        assert!(
            set.lookup(ip("1.2.3.4")).is_some(),
            "::/0 covers v4-mapped, as in the kernel"
        );

        let many: Vec<IpAddr> = (0..DIRECT_MAX_ENTRIES + 10)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        let (ranges, dropped) = direct_ranges(&DirectDestinations::default(), &many);
        assert_eq!(ranges.len(), DIRECT_MAX_ENTRIES as usize);
        assert_eq!(dropped, 12, "2 loopback ranges come first");
    }

    #[test]
    fn host_addresses_include_loopback() {
        let addrs = host_addresses().unwrap();
        assert!(addrs.contains(&ip("127.0.0.1")), "{addrs:?}");
    }
}
