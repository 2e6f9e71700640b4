//! [`ProxyConfig`]: the proxy's settings as a plain struct (the binary maps its YAML onto it).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::gate::{GateAction, SniGate};

/// Listening port of the default listeners.
pub const DEFAULT_PORT: u16 = 15443;
/// Default `SO_MARK` on upstream sockets: the one the eBPF hooks skip, defined with the
/// kernel/user ABI (`tollgate-common`).
pub use tollgate_common::DEFAULT_SOCKET_MARK;
/// Default [`ProxyConfig::other_protocols`]: passed through (what `intercept.other_protocols`
/// promises in docs/settings.md).
pub const DEFAULT_OTHER_PROTOCOLS: GateAction = GateAction::Passthrough;
/// Default [`ProxyConfig::shutdown_grace`]: 10 s (`limits.shutdown_grace_ms`).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Settings of a [`crate::Proxy`]. Every field has a documented default ([`Default`]).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Addresses to listen on; port 0 picks a free port. Default `127.0.0.1:15443` and
    /// `[::1]:15443` (the IPv6 socket is `IPV6_V6ONLY`).
    pub listen: Vec<SocketAddr>,
    /// Which SNIs are intercepted, passed through or blocked. Default: the Snowflake patterns
    /// intercepted, everything else passed through.
    pub gate: SniGate,
    /// Address ranges where Snowflake lives (PrivateLink endpoints, published ranges): TLS
    /// there that is not for an intercepted name is blocked. Addresses of intercepted names
    /// are learned on top. Default none.
    pub snowflake_ranges: Vec<ipnet::IpNet>,
    /// What happens to connections that are not TLS (plain HTTP, other protocols, silent
    /// server-first clients) and not for Snowflake: passed through or blocked. Tunnels (HTTP
    /// CONNECT, SOCKS) are always opened and judged by what they carry. Default
    /// [`DEFAULT_OTHER_PROTOCOLS`] (pass-through).
    pub other_protocols: GateAction,
    /// How long a client may stay silent before it is taken for a server-first protocol
    /// (only when `other_protocols` passes through; bounded by `peek_timeout`). Default 1 s.
    pub server_first_after: Duration,
    /// Connections served at once; further clients wait in the accept backlog. Default 4096.
    pub max_connections: usize,
    /// Longest wait for a complete ClientHello; expiry closes the connection
    /// (`peek_timeout`, fail closed). Default 5 s.
    pub peek_timeout: Duration,
    /// Largest ClientHello accepted, in bytes. Default 16 KiB.
    pub max_client_hello_len: usize,
    /// Longest wait for the client to finish the TLS handshake with the minted certificate.
    /// Default 10 s.
    pub client_handshake_timeout: Duration,
    /// Bound on TCP connect, and separately on the TLS handshake, to the real server.
    /// Default 10 s.
    pub upstream_connect_timeout: Duration,
    /// `SO_MARK` set on upstream sockets before connecting (needs CAP_NET_ADMIN); `None`
    /// disables marking (only for tests and hosts without the eBPF hooks).
    /// Default [`DEFAULT_SOCKET_MARK`].
    pub upstream_mark: Option<u32>,
    /// After the shutdown signal, how long open connections may drain before they are
    /// aborted. Default [`DEFAULT_SHUTDOWN_GRACE`] (10 s).
    pub shutdown_grace: Duration,
    /// Whether to complete process identities from `/proc` (exe, cgroup path). Default true.
    pub enrich_identity: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: vec![
                SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_PORT)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, DEFAULT_PORT)),
            ],
            gate: SniGate::default(),
            snowflake_ranges: Vec::new(),
            other_protocols: DEFAULT_OTHER_PROTOCOLS,
            server_first_after: Duration::from_secs(1),
            max_connections: 4096,
            peek_timeout: Duration::from_secs(5),
            max_client_hello_len: tollgate_wire::DEFAULT_MAX_CLIENT_HELLO_LEN,
            client_handshake_timeout: Duration::from_secs(10),
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_mark: Some(DEFAULT_SOCKET_MARK),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            enrich_identity: true,
        }
    }
}

impl ProxyConfig {
    /// Checks the settings; the error names the field and what is expected.
    pub fn validate(&self) -> Result<(), String> {
        if self.listen.is_empty() {
            return Err("listen: at least one address is required".into());
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err("max_connections: must be between 1 and 1000000".into());
        }
        if self.max_client_hello_len < 512 {
            return Err("max_client_hello_len: must be at least 512 bytes".into());
        }
        for (name, value) in [
            ("peek_timeout", self.peek_timeout),
            ("client_handshake_timeout", self.client_handshake_timeout),
            ("upstream_connect_timeout", self.upstream_connect_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("{name}: must be greater than zero"));
            }
        }
        Ok(())
    }
}
