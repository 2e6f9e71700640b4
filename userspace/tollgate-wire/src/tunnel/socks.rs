//! SOCKS5 (RFC 1928, no authentication, `CONNECT` only) and SOCKS4/4a (`CONNECT` only): the
//! client's messages, a small server-side handshake state machine, and the replies.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::target::{ip_host, parse_host, Host, TargetError, TunnelTarget};

/// The SOCKS5 method "no authentication required".
pub const SOCKS5_NO_AUTH: u8 = 0x00;
/// The SOCKS5 method reply "no acceptable methods" (the client must close).
pub const SOCKS5_NO_ACCEPTABLE_METHODS: u8 = 0xff;
/// Longest SOCKS4 user id and SOCKS4a host name accepted (NUL excluded).
pub const SOCKS4_MAX_FIELD_LEN: usize = 255;

const SOCKS5_VERSION: u8 = 0x05;
const SOCKS4_VERSION: u8 = 0x04;
const CMD_CONNECT: u8 = 0x01;
const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// Why a SOCKS parser returned no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SocksError {
    /// The bytes so far are a valid prefix of the message; read more and call again.
    /// `needed` is a lower bound on the number of additional bytes, when known.
    #[error("incomplete SOCKS message: read more bytes and parse again")]
    Incomplete {
        /// At least this many more bytes are required before the answer can change.
        needed: Option<usize>,
    },
    /// The version byte is not the expected one (5, or 4 for SOCKS4).
    #[error("SOCKS version {version} where another was expected")]
    BadVersion {
        /// The version byte found.
        version: u8,
    },
    /// A SOCKS5 greeting offering no authentication method at all.
    #[error("SOCKS5 greeting offers no method")]
    NoMethods,
    /// A command other than `CONNECT` (`BIND`, `UDP ASSOCIATE` or unknown): answer with
    /// [`Socks5Reply::CommandNotSupported`] (SOCKS5) or a rejection (SOCKS4).
    #[error("unsupported SOCKS command {command}")]
    UnsupportedCommand {
        /// The command byte (2 = BIND, 3 = UDP ASSOCIATE).
        command: u8,
    },
    /// The reserved byte of a SOCKS5 request is not 0.
    #[error("non-zero reserved byte in a SOCKS5 request")]
    NonZeroReserved,
    /// A SOCKS5 address type other than 1 (IPv4), 3 (domain) and 4 (IPv6): answer with
    /// [`Socks5Reply::AddressTypeNotSupported`].
    #[error("unsupported SOCKS5 address type {atyp}")]
    UnsupportedAddressType {
        /// The address type byte.
        atyp: u8,
    },
    /// The destination host or port is invalid (port 0, the unspecified address, a name that is
    /// not a host name, …).
    #[error("invalid SOCKS destination: {0}")]
    InvalidTarget(TargetError),
    /// A NUL-terminated SOCKS4 field longer than [`SOCKS4_MAX_FIELD_LEN`].
    #[error("SOCKS4 {field} longer than {max} bytes")]
    FieldTooLong {
        /// The field (`user id` or `host name`).
        field: &'static str,
        /// The limit.
        max: usize,
    },
    /// [`Socks5Server::advance`] was called after the handshake ended.
    #[error("the SOCKS5 handshake is over")]
    HandshakeOver,
}

impl From<TargetError> for SocksError {
    fn from(e: TargetError) -> Self {
        SocksError::InvalidTarget(e)
    }
}

impl SocksError {
    /// The SOCKS5 reply that tells the client about this error.
    pub fn socks5_reply(&self) -> Socks5Reply {
        match self {
            SocksError::UnsupportedCommand { .. } => Socks5Reply::CommandNotSupported,
            SocksError::UnsupportedAddressType { .. } => Socks5Reply::AddressTypeNotSupported,
            _ => Socks5Reply::GeneralFailure,
        }
    }
}

fn incomplete(needed: usize) -> SocksError {
    SocksError::Incomplete {
        needed: Some(needed),
    }
}

/// A SOCKS5 greeting: the authentication methods the client offers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Socks5Greeting {
    /// The offered methods, in the client's order (0 = none, 2 = username/password, …).
    pub methods: Vec<u8>,
    /// Bytes of the greeting; a client may pipeline its request behind it.
    pub consumed: usize,
}

impl Socks5Greeting {
    /// Whether the client offers "no authentication required".
    pub fn offers_no_auth(&self) -> bool {
        self.methods.contains(&SOCKS5_NO_AUTH)
    }
}

/// Parses a SOCKS5 greeting (`05 n methods[n]`) from the start of `buf`.
pub fn parse_socks5_greeting(buf: &[u8]) -> Result<Socks5Greeting, SocksError> {
    let version = *buf.first().ok_or(incomplete(2))?;
    if version != SOCKS5_VERSION {
        return Err(SocksError::BadVersion { version });
    }
    let n = usize::from(*buf.get(1).ok_or(incomplete(1))?);
    if n == 0 {
        return Err(SocksError::NoMethods);
    }
    let end = 2 + n;
    let methods = buf.get(2..end).ok_or_else(|| incomplete(end - buf.len()))?;
    Ok(Socks5Greeting {
        methods: methods.to_vec(),
        consumed: end,
    })
}

/// The method selection reply to a greeting: `05 method` ([`SOCKS5_NO_AUTH`], or
/// [`SOCKS5_NO_ACCEPTABLE_METHODS`] to refuse).
pub fn socks5_method_reply(method: u8) -> [u8; 2] {
    [SOCKS5_VERSION, method]
}

/// A SOCKS5 `CONNECT` request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Socks5Request {
    /// Where the client wants to go.
    pub target: TunnelTarget,
    /// Bytes of the request; anything after them is tunnel payload.
    pub consumed: usize,
}

/// Parses a SOCKS5 request (`05 01 00 ATYP addr port`) from the start of `buf`: ATYP 1 (IPv4),
/// 3 (length-prefixed domain) or 4 (IPv6). Commands other than `CONNECT` are
/// [`SocksError::UnsupportedCommand`].
pub fn parse_socks5_request(buf: &[u8]) -> Result<Socks5Request, SocksError> {
    const HEADER: usize = 4;
    let version = *buf.first().ok_or(incomplete(HEADER + 3))?;
    if version != SOCKS5_VERSION {
        return Err(SocksError::BadVersion { version });
    }
    if let Some(&command) = buf.get(1) {
        if command != CMD_CONNECT {
            return Err(SocksError::UnsupportedCommand { command });
        }
    }
    if buf.get(2).is_some_and(|&r| r != 0) {
        return Err(SocksError::NonZeroReserved);
    }
    let Some(&atyp) = buf.get(3) else {
        return Err(incomplete(HEADER + 3 - buf.len()));
    };
    let (addr_start, addr_len) = match atyp {
        ATYP_IPV4 => (HEADER, 4),
        ATYP_IPV6 => (HEADER, 16),
        ATYP_DOMAIN => {
            let len = usize::from(*buf.get(HEADER).ok_or(incomplete(4))?);
            if len == 0 {
                return Err(TargetError::EmptyHost.into());
            }
            (HEADER + 1, len)
        }
        atyp => return Err(SocksError::UnsupportedAddressType { atyp }),
    };
    let end = addr_start + addr_len + 2;
    if buf.len() < end {
        return Err(incomplete(end - buf.len()));
    }
    let addr = &buf[addr_start..addr_start + addr_len];
    let host = match atyp {
        ATYP_IPV4 => {
            let v4 = Ipv4Addr::from(<[u8; 4]>::try_from(addr).unwrap_or_default());
            ip_host(IpAddr::V4(v4))?
        }
        ATYP_IPV6 => {
            let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(addr).unwrap_or_default());
            ip_host(IpAddr::V6(v6))?
        }
        _ => name_host(addr)?,
    };
    let port = port(&buf[end - 2..end])?;
    Ok(Socks5Request {
        target: TunnelTarget { host, port },
        consumed: end,
    })
}

/// A SOCKS5 reply code (RFC 1928 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Socks5Reply {
    /// 0x00: succeeded; the tunnel is open.
    Succeeded = 0x00,
    /// 0x01: general SOCKS server failure.
    GeneralFailure = 0x01,
    /// 0x02: connection not allowed by ruleset (a policy refusal).
    NotAllowed = 0x02,
    /// 0x03: network unreachable.
    NetworkUnreachable = 0x03,
    /// 0x04: host unreachable.
    HostUnreachable = 0x04,
    /// 0x05: connection refused.
    ConnectionRefused = 0x05,
    /// 0x06: TTL expired.
    TtlExpired = 0x06,
    /// 0x07: command not supported.
    CommandNotSupported = 0x07,
    /// 0x08: address type not supported.
    AddressTypeNotSupported = 0x08,
}

/// A SOCKS5 reply (`05 REP 00 ATYP addr port`) with the given bound address, `0.0.0.0:0` when
/// `None` (what failures, and proxies that do not disclose their address, send).
pub fn socks5_reply(reply: Socks5Reply, bound: Option<SocketAddr>) -> Vec<u8> {
    let bound = bound.unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let mut out = vec![SOCKS5_VERSION, reply as u8, 0x00];
    match bound.ip() {
        IpAddr::V4(v4) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&v6.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

/// What the server side of a SOCKS5 handshake must do next (see [`Socks5Server`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Socks5Event {
    /// The greeting offered "no authentication": send `reply` (`05 00`), drop `consumed` bytes
    /// and call [`Socks5Server::advance`] again with the rest (the client may have pipelined
    /// its request).
    MethodSelected {
        /// The method selection reply to send.
        reply: [u8; 2],
        /// Bytes of the greeting.
        consumed: usize,
    },
    /// The greeting offered only methods this server does not do: send `reply` (`05 FF`) and
    /// close the connection.
    NoAcceptableMethod {
        /// The reply to send.
        reply: [u8; 2],
    },
    /// The `CONNECT` request: decide on its target, then send a [`socks5_reply`]
    /// ([`Socks5Reply::Succeeded`] or, for a refusal, [`Socks5Reply::NotAllowed`]).
    Connect(Socks5Request),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Socks5State {
    Greeting,
    Request,
    Over,
}

/// The server side of a SOCKS5 handshake, without I/O: greeting → method selection (`05 00`,
/// no authentication) → `CONNECT` request. Feed it the unconsumed bytes after every read.
///
/// On an error, reply with [`socks5_reply`]`(`[`SocksError::socks5_reply`]`, None)` once the
/// greeting is done (before that, close), then close.
#[derive(Debug, Clone)]
pub struct Socks5Server {
    state: Socks5State,
}

impl Default for Socks5Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Socks5Server {
    /// A handshake waiting for the greeting.
    pub fn new() -> Self {
        Self {
            state: Socks5State::Greeting,
        }
    }

    /// Whether the greeting is done and the request is awaited.
    pub fn awaits_request(&self) -> bool {
        self.state == Socks5State::Request
    }

    /// Parses the next client message from `buf` (the bytes not consumed yet). `Incomplete`
    /// leaves the state unchanged; any other error, [`Socks5Event::NoAcceptableMethod`] and
    /// [`Socks5Event::Connect`] end the handshake.
    pub fn advance(&mut self, buf: &[u8]) -> Result<Socks5Event, SocksError> {
        let result = match self.state {
            Socks5State::Greeting => parse_socks5_greeting(buf).map(|g| {
                if g.offers_no_auth() {
                    Socks5Event::MethodSelected {
                        reply: socks5_method_reply(SOCKS5_NO_AUTH),
                        consumed: g.consumed,
                    }
                } else {
                    Socks5Event::NoAcceptableMethod {
                        reply: socks5_method_reply(SOCKS5_NO_ACCEPTABLE_METHODS),
                    }
                }
            }),
            Socks5State::Request => parse_socks5_request(buf).map(Socks5Event::Connect),
            Socks5State::Over => return Err(SocksError::HandshakeOver),
        };
        self.state = match &result {
            Err(SocksError::Incomplete { .. }) => self.state,
            Ok(Socks5Event::MethodSelected { .. }) => Socks5State::Request,
            _ => Socks5State::Over,
        };
        result
    }
}

/// A SOCKS4 or SOCKS4a `CONNECT` request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Socks4Request {
    /// Where the client wants to go: the address, or (SOCKS4a) the host name.
    pub target: TunnelTarget,
    /// Whether the request named a host (SOCKS4a, address `0.0.0.x` with x ≠ 0).
    pub is_4a: bool,
    /// Whether the user id field was non-empty (its value is never kept).
    pub has_user_id: bool,
    /// Bytes of the request; anything after them is tunnel payload.
    pub consumed: usize,
}

/// Parses a SOCKS4 / 4a request (`04 01 port ip userid\0 [host\0]`) from the start of `buf`.
/// `BIND` (and any other command) is [`SocksError::UnsupportedCommand`].
pub fn parse_socks4_request(buf: &[u8]) -> Result<Socks4Request, SocksError> {
    const FIXED: usize = 8;
    let version = *buf.first().ok_or(incomplete(FIXED + 1))?;
    if version != SOCKS4_VERSION {
        return Err(SocksError::BadVersion { version });
    }
    if let Some(&command) = buf.get(1) {
        if command != CMD_CONNECT {
            return Err(SocksError::UnsupportedCommand { command });
        }
    }
    if let Some(p) = buf.get(2..4) {
        port(p)?;
    }
    if buf.len() < FIXED {
        return Err(incomplete(FIXED + 1 - buf.len()));
    }
    let port = port(&buf[2..4])?;
    let ip = Ipv4Addr::new(buf[4], buf[5], buf[6], buf[7]);
    let is_4a = ip.octets()[..3] == [0, 0, 0] && ip.octets()[3] != 0;
    // After the user id's NUL, a 4a request needs at least one host byte and its NUL.
    let after_user = if is_4a { 2 } else { 0 };
    let user_len = nul_terminated(&buf[FIXED..], "user id", after_user)?;
    let user_end = FIXED + user_len + 1;
    let (host, consumed) = if is_4a {
        let host_len = nul_terminated(&buf[user_end..], "host name", 0)?;
        if host_len == 0 {
            return Err(TargetError::EmptyHost.into());
        }
        let host = name_host(&buf[user_end..user_end + host_len])?;
        (host, user_end + host_len + 1)
    } else {
        (ip_host(IpAddr::V4(ip))?, user_end)
    };
    Ok(Socks4Request {
        target: TunnelTarget { host, port },
        is_4a,
        has_user_id: user_len > 0,
        consumed,
    })
}

/// A SOCKS4 reply: `00 5A` (request granted) or `00 5B` (rejected or failed), port and address
/// zero.
pub fn socks4_reply(granted: bool) -> [u8; 8] {
    [0x00, if granted { 0x5a } else { 0x5b }, 0, 0, 0, 0, 0, 0]
}

/// The length of the NUL-terminated field at the start of `buf` (NUL excluded); `after` is how
/// many bytes at least must follow the NUL (for the `needed` hint).
fn nul_terminated(buf: &[u8], field: &'static str, after: usize) -> Result<usize, SocksError> {
    let window = &buf[..buf.len().min(SOCKS4_MAX_FIELD_LEN + 1)];
    match window.iter().position(|&b| b == 0) {
        Some(len) => Ok(len),
        None if window.len() > SOCKS4_MAX_FIELD_LEN => Err(SocksError::FieldTooLong {
            field,
            max: SOCKS4_MAX_FIELD_LEN,
        }),
        None => Err(incomplete(1 + after)),
    }
}

fn port(bytes: &[u8]) -> Result<u16, SocksError> {
    match u16::from_be_bytes([bytes[0], bytes[1]]) {
        0 => Err(TargetError::InvalidPort.into()),
        p => Ok(p),
    }
}

fn name_host(name: &[u8]) -> Result<Host, SocksError> {
    let name = std::str::from_utf8(name)
        .ok()
        .filter(|n| n.is_ascii())
        .ok_or(TargetError::InvalidName {
            why: "non-ASCII host",
        })?;
    Ok(parse_host(name)?)
}
