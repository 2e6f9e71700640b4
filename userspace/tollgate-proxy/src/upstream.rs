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
    /// The root file could not be read.
    #[error("cannot read upstream root file {path}: {source}")]
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
    pub(crate) fn http1_only(&self) -> UpstreamTls {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        UpstreamTls {
            config: Arc::new(config),
            roots: self.roots.clone(),
        }
    }

    /// TLS handshake with the real server for `sni`, verifying its certificate.
    pub(crate) async fn handshake(
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
pub(crate) enum UpstreamFailure {
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
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            UpstreamFailure::Connect(_) => "upstream_connect",
            UpstreamFailure::Tls(_) => "upstream_tls",
            UpstreamFailure::Http(_) => "upstream_http",
        }
    }
}

/// Connects to `addr`, marking the socket with `mark` before the SYN so the redirect hooks
/// skip it; `timeout` bounds the whole attempt.
pub(crate) async fn connect(
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
