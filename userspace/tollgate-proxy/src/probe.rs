//! The destination probe: which certificate does the original destination present for the name
//! the client sent (or for no name)? The gate uses the answer to tell domain fronting — a
//! Snowflake or storage certificate behind another name — from honest pass-through.
//!
//! The probe opens its own (marked) connection, sends a ClientHello with the client's SNI,
//! reads the certificate and aborts the handshake: its verifier records the certificate and
//! **always refuses it**, so no data ever flows on a probe connection and nothing is trusted.
//! Results are cached per (route, SNI) for [`PROBE_TTL`]. Through a tunnel the probe goes the
//! same way the client's connection would.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_rustls::TlsConnector;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::gate::DestinationCertificate;
use crate::upstream::Route;

/// How long a probe's answer is reused for the same destination and SNI.
pub const PROBE_TTL: Duration = Duration::from_secs(600);
/// Cached answers kept at most; the cache is cleared when full.
const MAX_CACHED: usize = 16_384;

type ProbeResult = Result<DestinationCertificate, String>;
/// Cached answers by (destination, SNI), with the time they were probed.
type ProbeCache = HashMap<(Route, Option<String>), (ProbeResult, Instant)>;

/// Probes destinations' certificates, with a cache.
#[derive(Debug)]
pub(crate) struct Prober {
    mark: Option<u32>,
    timeout: Duration,
    config: Arc<rustls::ClientConfig>,
    cache: Mutex<ProbeCache>,
}

impl Prober {
    pub(crate) fn new(mark: Option<u32>, timeout: Duration) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RecordingRefusal { provider }))
            .with_no_client_auth();
        Prober {
            mark,
            timeout,
            config: Arc::new(config),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The certificate `dst` presents for `sni`; `Err` says why none could be read.
    pub(crate) async fn certificate(&self, route: &Route, sni: Option<&str>) -> ProbeResult {
        let key = (route.clone(), sni.map(str::to_owned));
        if let Some((result, at)) = self.lock().get(&key) {
            if at.elapsed() < PROBE_TTL {
                return result.clone();
            }
        }
        let result = self.probe(route, sni).await;
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, (result.clone(), Instant::now()));
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProbeCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn probe(&self, route: &Route, sni: Option<&str>) -> ProbeResult {
        let tcp = route
            .connect(self.mark, self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        let dst = route.first_hop();
        // Without an SNI, rustls sends none when the server name is an IP address.
        let name = match sni {
            Some(host) => ServerName::try_from(host.to_owned())
                .map_err(|e| format!("invalid server name {host:?}: {e}"))?,
            None => ServerName::IpAddress(dst.ip().into()),
        };
        let connector = TlsConnector::from(self.config.clone());
        let outcome = tokio::time::timeout(self.timeout, connector.connect(name, tcp)).await;
        let error = match outcome {
            Err(_) => return Err(format!("no certificate within {:?}", self.timeout)),
            Ok(Ok(_)) => return Err("the probe's handshake completed unexpectedly".into()),
            Ok(Err(e)) => e,
        };
        // The verifier refused with the certificate's names inside a typed error.
        match error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
                match other.0.downcast_ref::<Presented>() {
                    Some(Presented(names)) => Ok(names.clone()),
                    None => Err(format!("certificate unreadable: {other}")),
                }
            }
            _ => Err(format!("TLS with the destination failed: {error}")),
        }
    }
}

/// The certificate a probe saw, carried out of the handshake in the verifier's error.
#[derive(Debug)]
struct Presented(DestinationCertificate);

impl std::fmt::Display for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "probe: certificate for {:?}", self.0.names)
    }
}

impl std::error::Error for Presented {}

/// Reads the end-entity certificate's names and refuses it — every time. A probe never
/// completes a handshake, so this verifier never lets data flow.
#[derive(Debug)]
struct RecordingRefusal {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for RecordingRefusal {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let names = certificate_names(end_entity)
            .map_err(|e| rustls::Error::General(format!("certificate unreadable: {e}")))?;
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(Presented(names)))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "probe connections are never used".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "probe connections are never used".into(),
        ))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The DNS names of a DER certificate: its SANs, or the subject CN when it has none.
pub(crate) fn certificate_names(der: &[u8]) -> Result<DestinationCertificate, String> {
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(DestinationCertificate { names })
}
