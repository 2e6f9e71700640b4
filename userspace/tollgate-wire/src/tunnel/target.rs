//! Tunnel destinations: a validated host (name or address) and a port.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const MAX_HOST_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A destination host, as a client named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name: ASCII, lowercased, without a trailing dot (IDNs arrive as `xn--` A-labels).
    Name(String),
    /// An address literal. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are given as the IPv4
    /// address they map to.
    Ip(IpAddr),
}

impl From<IpAddr> for Host {
    /// An address host; an IPv4-mapped IPv6 address becomes its IPv4 address.
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Host::Ip(IpAddr::V4(v4)),
                None => Host::Ip(IpAddr::V6(v6)),
            },
            v4 => Host::Ip(v4),
        }
    }
}

impl fmt::Display for Host {
    /// The name, or the address (IPv6 without brackets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(ip) => ip.fmt(f),
        }
    }
}

/// Where a tunnel goes: the destination of an HTTP `CONNECT` or a SOCKS request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TunnelTarget {
    /// The destination host.
    pub host: Host,
    /// The destination port (never 0).
    pub port: u16,
}

impl fmt::Display for TunnelTarget {
    /// `host:port`, with an IPv6 address in brackets (`[2001:db8::1]:443`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", self.port),
            host => write!(f, "{host}:{}", self.port),
        }
    }
}

/// Why a host, port or authority was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// No host at all (`:443`, an empty `Host` header, a zero-length SOCKS domain).
    #[error("empty host")]
    EmptyHost,
    /// Not an acceptable DNS host name: ASCII letters, digits, `-` and `_` in dot-separated
    /// labels of 1–63 bytes, 253 bytes in all.
    #[error("invalid host name: {why}")]
    InvalidName {
        /// What is wrong with it.
        why: &'static str,
    },
    /// A name whose last label is numeric (`127.1`, `0x7f.0.0.1`, `2130706433`, `010.0.0.1`)
    /// but which is not a plain dotted-quad IPv4 address: resolvers (`inet_aton`,
    /// `getaddrinfo`) read such names as addresses, so the destination is ambiguous.
    #[error("ambiguous IPv4 address spelling")]
    AmbiguousIpv4,
    /// Bracketed but not an IPv6 address (IPvFuture, a zone id, garbage, or no closing `]`).
    #[error("invalid IPv6 address literal")]
    InvalidIpv6,
    /// The unspecified address (`0.0.0.0`, `::`, `[::ffff:0.0.0.0]`), which Linux connects to
    /// the local host.
    #[error("unspecified destination address")]
    UnspecifiedAddress,
    /// No port where one is required (`CONNECT host HTTP/1.1`).
    #[error("missing port")]
    MissingPort,
    /// A port that is not 1–5 decimal digits with a value in 1–65535 (an empty port after `:`
    /// included).
    #[error("invalid port")]
    InvalidPort,
    /// `user@host`: user information in an authority (deprecated by RFC 9110 and a classic way
    /// to make a reader pick the wrong host).
    #[error("user information in the authority")]
    UserInfo,
}

/// Parses a host: a DNS name (lowercased, one trailing dot dropped), a dotted-quad IPv4 address
/// or a bracketed IPv6 address (`[::1]`). The unspecified address is refused.
pub fn parse_host(host: &str) -> Result<Host, TargetError> {
    if host.is_empty() {
        return Err(TargetError::EmptyHost);
    }
    if let Some(inner) = host.strip_prefix('[') {
        let v6 = inner
            .strip_suffix(']')
            .and_then(|s| s.parse::<Ipv6Addr>().ok())
            .ok_or(TargetError::InvalidIpv6)?;
        return ip_host(IpAddr::V6(v6));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err(TargetError::InvalidName { why: "empty label" });
    }
    if let Ok(v4) = name.parse::<Ipv4Addr>() {
        return ip_host(IpAddr::V4(v4));
    }
    if name.len() > MAX_HOST_NAME_LEN {
        return Err(TargetError::InvalidName {
            why: "longer than 253 bytes",
        });
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(TargetError::InvalidName { why: "empty label" });
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(TargetError::InvalidName {
                why: "label longer than 63 bytes",
            });
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TargetError::InvalidName {
                why: "character other than a letter, digit, '-' or '_'",
            });
        }
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || last.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("0x"))
            && last[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if numeric {
        return Err(TargetError::AmbiguousIpv4);
    }
    Ok(Host::Name(name.to_ascii_lowercase()))
}

/// An address host (IPv4-mapped IPv6 as IPv4), refusing the unspecified address.
pub(crate) fn ip_host(ip: IpAddr) -> Result<Host, TargetError> {
    let host = Host::from(ip);
    match &host {
        Host::Ip(ip) if ip.is_unspecified() => Err(TargetError::UnspecifiedAddress),
        _ => Ok(host),
    }
}

/// Parses a port: 1–5 decimal digits, 1–65535.
pub(crate) fn parse_port(port: &str) -> Result<u16, TargetError> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::InvalidPort);
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(TargetError::InvalidPort),
    }
}

/// Parses an authority without user information: `host`, `host:port`, `[v6]` or `[v6]:port`;
/// the port is `None` when absent.
pub fn parse_authority(authority: &str) -> Result<(Host, Option<u16>), TargetError> {
    if authority.contains('@') {
        return Err(TargetError::UserInfo);
    }
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => {
                let (host, rest) = authority.split_at(end + 1);
                match rest.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None if rest.is_empty() => (host, None),
                    None => return Err(TargetError::InvalidIpv6),
                }
            }
            None => return Err(TargetError::InvalidIpv6),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(TargetError::EmptyHost);
    }
    let port = port.map(parse_port).transpose()?;
    Ok((parse_host(host)?, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            parse_host("Acct.SnowflakeComputing.com.").unwrap(),
            Host::Name("acct.snowflakecomputing.com".into())
        );
        assert_eq!(
            parse_host("[::ffff:10.0.0.1]").unwrap(),
            Host::Ip("10.0.0.1".parse().unwrap())
        );
        for bad in [
            "127.1",
            "0x7f.0.0.1",
            "2130706433",
            "010.0.0.1",
            "a.0x",
            "1.2.3.256",
        ] {
            assert_eq!(parse_host(bad), Err(TargetError::AmbiguousIpv4), "{bad}");
        }
        assert_eq!(
            parse_host("[fe80::1%25eth0]"),
            Err(TargetError::InvalidIpv6)
        );
        assert!(parse_host("a..b").is_err());
        assert!(parse_host("a b").is_err());
        assert_eq!(
            parse_authority("h:+1"),
            Err(TargetError::InvalidPort),
            "u16::from_str accepts '+'"
        );
        assert_eq!(parse_authority("h:0"), Err(TargetError::InvalidPort));
        assert_eq!(parse_authority("u@h:1"), Err(TargetError::UserInfo));
        assert!(parse_authority("::1").is_err());
    }
}
