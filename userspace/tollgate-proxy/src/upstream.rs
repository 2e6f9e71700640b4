//! Connections to the real server: TCP with `SO_MARK` (so the eBPF hooks let them through) and
//! TLS that always verifies the server certificate against the configured roots.

use std::fmt;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::sockopt;

/// Failures building the upstream TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamTlsError {
    /// The root file could not be read (the I/O error is the source, not in the message, so
    /// that a printed chain carries it once).
    #[error("cannot read upstream root file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The root file holds no usable certificate.
    #[error("{path} holds no usable PEM certificate ({why}); give a PEM file with one or more `BEGIN CERTIFICATE` blocks")]
    NoCertificates {
        /// The file.
        path: PathBuf,
        /// Details.
        why: String,
    },
    /// The system trust store is empty or unreadable.
    #[error("no usable system root certificates ({0}); install ca-certificates or configure an upstream root file")]
    NoSystemRoots(String),
}

/// How the proxy verifies real servers: a rustls client configuration with mandatory
/// certificate verification (there is deliberately no way to turn it off).
#[derive(Clone)]
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    roots: String,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("roots", &self.roots)
            .finish()
    }
}

impl UpstreamTls {
    /// Trusts the operating system's roots (rustls-native-certs).
    pub fn system_roots() -> Result<Self, UpstreamTlsError> {
        let loaded = rustls_native_certs::load_native_certs();
        let mut store = RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
        if added == 0 {
            let why = loaded
                .errors
                .first()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no certificates found".into());
            return Err(UpstreamTlsError::NoSystemRoots(why));
        }
        Ok(Self::from_root_store(
            store,
            format!("system ({added} roots)"),
        ))
    }

    /// Trusts only the certificates in a PEM file (how tests trust their own servers, and how
    /// a private CA is configured).
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, UpstreamTlsError> {
        let path = path.as_ref();
        let pem = fs::read(path).map_err(|source| UpstreamTlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let no_certs = |why: String| UpstreamTlsError::NoCertificates {
            path: path.to_path_buf(),
            why,
        };
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| no_certs(e.to_string()))?;
        let mut store = RootCertStore::empty();
        let (added, ignored) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(no_certs(format!("{ignored} unparsable")));
        }
        Ok(Self::from_root_store(store, path.display().to_string()))
    }

    /// Trusts the given roots.
    pub fn from_root_store(roots: RootCertStore, description: String) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        UpstreamTls {
            config: Arc::new(config),
            roots: description,
        }
    }

    /// The same trust, offering only HTTP/1.1 (for fetches Tollgate makes itself).
    pub fn http1_only(&self) -> UpstreamTls {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        UpstreamTls {
            config: Arc::new(config),
            roots: self.roots.clone(),
        }
    }

    /// TLS handshake with the real server for `sni`, verifying its certificate.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        sni: &str,
    ) -> Result<TlsStream<TcpStream>, UpstreamFailure> {
        let name = ServerName::try_from(sni.to_string())
            .map_err(|e| UpstreamFailure::Tls(format!("invalid server name {sni:?}: {e}")))?;
        TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| UpstreamFailure::Tls(e.to_string()))
    }
}

/// Why no usable upstream connection could be made (recorded as the close reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamFailure {
    /// TCP connect failed or timed out, or the mark could not be set.
    #[error("upstream_connect: {0}")]
    Connect(String),
    /// TLS handshake failed, including certificate verification.
    #[error("upstream_tls: {0}")]
    Tls(String),
    /// The HTTP exchange with the real server failed.
    #[error("upstream_http: {0}")]
    Http(String),
}

impl UpstreamFailure {
    /// Value of the `x-tollgate-error` header.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamFailure::Connect(_) => "upstream_connect",
            UpstreamFailure::Tls(_) => "upstream_tls",
            UpstreamFailure::Http(_) => "upstream_http",
        }
    }
}

/// Connects to `addr`, marking the socket with `mark` before the SYN so the redirect hooks
/// skip it; `timeout` bounds the whole attempt.
pub async fn connect(
    addr: SocketAddr,
    mark: Option<u32>,
    timeout: Duration,
) -> Result<TcpStream, UpstreamFailure> {
    let fail = |what: &str, e: io::Error| UpstreamFailure::Connect(format!("{what} {addr}: {e}"));
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| fail("socket for", e))?;
    if let Some(mark) = mark {
        sockopt::set_mark(socket.as_fd(), mark).map_err(|e| {
            UpstreamFailure::Connect(format!(
                "setting SO_MARK {mark:#x} failed: {e} (tollgate needs CAP_NET_ADMIN)"
            ))
        })?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| {
            UpstreamFailure::Connect(format!("connect to {addr} timed out after {timeout:?}"))
        })?
        .map_err(|e| fail("connect to", e))?;
    // Interactive request/response traffic: never wait to coalesce.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// How Tollgate reaches the server a client meant: directly, or through the proxy the client
/// was tunnelling through (HTTP CONNECT, SOCKS5, SOCKS4a), so an egress proxy a host relies on
/// keeps working and sees the same tunnel it would have seen.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// A TCP connection to the original destination.
    Direct(SocketAddr),
    /// A tunnel through the proxy at `via` to `target`.
    Tunnel {
        /// The proxy (the client's original destination).
        via: SocketAddr,
        /// The tunnel protocol.
        kind: TunnelKind,
        /// Where the tunnel goes.
        target: tollgate_wire::tunnel::TunnelTarget,
    },
}

/// A tunnel protocol the gate understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    /// `CONNECT host:port HTTP/1.1`.
    HttpConnect,
    /// SOCKS5 `CONNECT` (RFC 1928), no authentication.
    Socks5,
    /// SOCKS4 / 4a `CONNECT`.
    Socks4,
}

impl TunnelKind {
    /// A short stable name for records and logs.
    pub fn name(self) -> &'static str {
        match self {
            TunnelKind::HttpConnect => "http_connect",
            TunnelKind::Socks5 => "socks5",
            TunnelKind::Socks4 => "socks4",
        }
    }
}

/// Longest tunnel reply head accepted from a proxy.
const MAX_PROXY_REPLY: usize = 16 * 1024;

impl Route {
    /// The first hop: the address Tollgate connects to.
    pub fn first_hop(&self) -> SocketAddr {
        match self {
            Route::Direct(addr) | Route::Tunnel { via: addr, .. } => *addr,
        }
    }

    /// The tunnel's target, if this is a tunnel.
    pub fn target(&self) -> Option<&tollgate_wire::tunnel::TunnelTarget> {
        match self {
            Route::Direct(_) => None,
            Route::Tunnel { target, .. } => Some(target),
        }
    }

    /// Opens the route: TCP to the first hop (marked), then the tunnel handshake if any.
    pub(crate) async fn connect(
        &self,
        mark: Option<u32>,
        timeout: Duration,
    ) -> Result<TcpStream, UpstreamFailure> {
        let mut tcp = connect(self.first_hop(), mark, timeout).await?;
        if let Route::Tunnel { via, kind, target } = self {
            tokio::time::timeout(timeout, open_tunnel(&mut tcp, *kind, target))
                .await
                .map_err(|_| {
                    UpstreamFailure::Connect(format!(
                        "the {} proxy at {via} did not open the tunnel to {target} within {timeout:?}",
                        kind.name()
                    ))
                })?
                .map_err(|e| {
                    UpstreamFailure::Connect(format!(
                        "the {} proxy at {via} refused the tunnel to {target}: {e}",
                        kind.name()
                    ))
                })?;
        }
        Ok(tcp)
    }
}

/// The client side of a tunnel handshake on `tcp`.
async fn open_tunnel(
    tcp: &mut TcpStream,
    kind: TunnelKind,
    target: &tollgate_wire::tunnel::TunnelTarget,
) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tollgate_wire::tunnel::Host;
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    match kind {
        TunnelKind::HttpConnect => {
            tcp.write_all(
                format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
            )
            .await?;
            // Byte by byte up to the blank line: nothing after the head may be consumed (the
            // server speaks only after the client's first TLS flight).
            let mut head = Vec::with_capacity(128);
            while !head.ends_with(b"\r\n\r\n") {
                if head.len() >= MAX_PROXY_REPLY {
                    return Err(bad("reply head too long".into()));
                }
                let b = tcp.read_u8().await?;
                head.push(b);
            }
            let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line).trim().to_owned();
            let status = line.split_whitespace().nth(1).unwrap_or("");
            if !line.starts_with("HTTP/1.") || status != "200" {
                return Err(bad(format!("answered {line:?}")));
            }
        }
        TunnelKind::Socks5 => {
            tcp.write_all(&[5, 1, 0]).await?;
            let mut choice = [0u8; 2];
            tcp.read_exact(&mut choice).await?;
            if choice != [5, 0] {
                return Err(bad(format!(
                    "no usable authentication method ({choice:02x?})"
                )));
            }
            let mut req = vec![5, 1, 0];
            match &target.host {
                Host::Ip(std::net::IpAddr::V4(v4)) => {
                    req.push(1);
                    req.extend_from_slice(&v4.octets());
                }
                Host::Ip(std::net::IpAddr::V6(v6)) => {
                    req.push(4);
                    req.extend_from_slice(&v6.octets());
                }
                Host::Name(name) => {
                    let len = u8::try_from(name.len()).map_err(|_| bad("name too long".into()))?;
                    req.push(3);
                    req.push(len);
                    req.extend_from_slice(name.as_bytes());
                }
            }
            req.extend_from_slice(&target.port.to_be_bytes());
            tcp.write_all(&req).await?;
            let mut reply = [0u8; 4];
            tcp.read_exact(&mut reply).await?;
            if reply[0] != 5 || reply[1] != 0 {
                return Err(bad(format!("reply code {:#04x}", reply[1])));
            }
            let rest = match reply[3] {
                1 => 4 + 2,
                4 => 16 + 2,
                3 => usize::from(tcp.read_u8().await?) + 2,
                other => return Err(bad(format!("unknown address type {other}"))),
            };
            let mut skip = vec![0u8; rest];
            tcp.read_exact(&mut skip).await?;
        }
        TunnelKind::Socks4 => {
            let mut req = vec![4, 1];
            req.extend_from_slice(&target.port.to_be_bytes());
            match &target.host {
                Host::Ip(std::net::IpAddr::V4(v4)) => {
                    req.extend_from_slice(&v4.octets());
                    req.push(0);
                }
                Host::Name(name) => {
                    // SOCKS4a: 0.0.0.1, then the name after the (empty) user id.
                    req.extend_from_slice(&[0, 0, 0, 1, 0]);
                    req.extend_from_slice(name.as_bytes());
                    req.push(0);
                }
                Host::Ip(std::net::IpAddr::V6(_)) => {
                    return Err(bad("SOCKS4 cannot carry an IPv6 destination".into()))
                }
            }
            tcp.write_all(&req).await?;
            let mut reply = [0u8; 8];
            tcp.read_exact(&mut reply).await?;
            if reply[1] != 0x5a {
                return Err(bad(format!("reply code {:#04x}", reply[1])));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chain as a reporter prints it (anyhow's `{:#}`: each message, then its source's),
    /// with no de-duplication: the os error must be in it once, after the file.
    #[test]
    fn a_missing_root_file_prints_its_os_error_once_in_the_chain() {
        let Err(e) = UpstreamTls::from_pem_file("/nonexistent/roots.pem") else {
            panic!("a missing file was read");
        };
        assert!(matches!(e, UpstreamTlsError::Read { .. }), "{e:?}");
        let chain: Vec<String> =
            std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                .map(ToString::to_string)
                .collect();
        let text = chain.join(": ");
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
        assert!(
            text.starts_with("cannot read upstream root file /nonexistent/roots.pem: No such file"),
            "{text}"
        );
    }
}
