//! The interception certificate authority: created on first run, loaded afterwards, minting
//! short-lived leaf certificates per SNI for the TLS acceptor.
//!
//! Files in the state directory: `ca.pem` (the certificate, installed into agents' trust
//! stores) and `ca.key` (PKCS#8, mode 0600; the proxy refuses a key readable by others).

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::{Duration, OffsetDateTime};

/// Leaf certificates start this long before minting, so clients with a slow clock accept them.
pub const LEAF_BACKDATE: Duration = Duration::hours(1);
/// Leaf certificates expire this long after minting.
pub const LEAF_LIFETIME: Duration = Duration::hours(24);
/// A cached leaf is re-minted once less than this much validity remains.
pub const LEAF_REMINT_MARGIN: Duration = Duration::hours(1);
/// The CA certificate's lifetime.
pub const CA_LIFETIME: Duration = Duration::days(3650);
/// At most this many leaves are cached; beyond it the cache is cleared (re-minting is cheap).
const MAX_CACHED_LEAVES: usize = 8192;

const CERT_FILE: &str = "ca.pem";
const KEY_FILE: &str = "ca.key";

/// Failures creating, loading or using the CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A CA file or the state directory could not be read or written.
    #[error("{path}: {source}; check that the state directory exists and is writable by tollgate (root)")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Only one of `ca.pem` / `ca.key` exists.
    #[error("{present} exists but {missing} does not; restore the missing file or remove both to create a new CA (agents must then trust the new ca.pem)")]
    HalfPresent {
        /// The file found.
        present: PathBuf,
        /// The file missing.
        missing: PathBuf,
    },
    /// There is no CA in the directory (from [`CertificateAuthority::load`]).
    #[error(
        "no CA in {0}; run tollgate once with CA creation enabled, or copy ca.pem and ca.key there"
    )]
    Missing(PathBuf),
    /// The private key file is accessible to group or others.
    #[error(
        "{path} has mode {mode:o}; the CA key must be readable by its owner only: chmod 600 {path}"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A CA file does not hold what it should.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Certificate generation or signing failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The host name cannot be put into a certificate.
    #[error("cannot mint a certificate for {name:?}: {why}")]
    BadName {
        /// The requested name.
        name: String,
        /// Why.
        why: String,
    },
}

struct CachedLeaf {
    key: Arc<CertifiedKey>,
    not_after: OffsetDateTime,
}

/// The interception CA and its leaf cache.
pub struct CertificateAuthority {
    cert_path: PathBuf,
    cert_pem: String,
    /// The CA as an rcgen issuer (re-derived from `ca.pem` when loaded).
    issuer: Certificate,
    key: KeyPair,
    leaves: Mutex<HashMap<String, CachedLeaf>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl CertificateAuthority {
    /// Loads the CA from `dir`, or creates one there (and the directory, mode 0700) when
    /// neither file exists. Returns whether it was created.
    pub fn load_or_create(dir: impl AsRef<Path>) -> Result<(Self, bool), CaError> {
        let dir = dir.as_ref();
        match Self::load(dir) {
            Ok(ca) => Ok((ca, false)),
            Err(CaError::Missing(_)) => Ok((Self::create(dir)?, true)),
            Err(e) => Err(e),
        }
    }

    /// Loads an existing CA from `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, CaError> {
        let dir = dir.as_ref();
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (false, false) => return Err(CaError::Missing(dir.to_path_buf())),
            (true, false) => {
                return Err(CaError::HalfPresent {
                    present: cert_path,
                    missing: key_path,
                })
            }
            (false, true) => {
                return Err(CaError::HalfPresent {
                    present: key_path,
                    missing: cert_path,
                })
            }
            (true, true) => {}
        }
        let mode = fs::metadata(&key_path)
            .map_err(io_err(&key_path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(CaError::KeyPermissions {
                path: key_path,
                mode: mode & 0o777,
            });
        }
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Invalid {
            path: key_path.clone(),
            why: format!("not a PEM private key: {e}"),
        })?;
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let params =
            CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|e| CaError::Invalid {
                path: cert_path.clone(),
                why: format!("not a PEM CA certificate: {e}"),
            })?;
        // The re-signed copy is only used as the issuer description (subject, key id); the
        // certificate served and trusted stays the one in ca.pem.
        let issuer = params.self_signed(&key)?;
        Ok(Self::from_parts(cert_path, cert_pem, issuer, key))
    }

    fn create(dir: &Path) -> Result<Self, CaError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Tollgate");
        dn.push(DnType::CommonName, "Tollgate interception CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - LEAF_BACKDATE;
        params.not_after = now + CA_LIFETIME;
        let issuer = params.self_signed(&key)?;
        let cert_pem = issuer.pem();

        // Key first, created 0600 from the start (never chmod-ed after the fact); create_new
        // so a concurrent first run cannot interleave two CAs.
        let key_path = dir.join(KEY_FILE);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(io_err(&key_path))?;
        file.write_all(key.serialize_pem().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err(&key_path))?;
        let cert_path = dir.join(CERT_FILE);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&cert_path)
            .map_err(io_err(&cert_path))?;
        file.write_all(cert_pem.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err(&cert_path))?;
        tracing::info!(path = %cert_path.display(), "created interception CA");
        Ok(Self::from_parts(cert_path, cert_pem, issuer, key))
    }

    fn from_parts(cert_path: PathBuf, cert_pem: String, issuer: Certificate, key: KeyPair) -> Self {
        CertificateAuthority {
            cert_path,
            cert_pem,
            issuer,
            key,
            leaves: Mutex::new(HashMap::new()),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }

    /// The CA certificate in PEM, as agents must trust it.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Path of `ca.pem`.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The leaf certificate and key for `host` (a lowercased DNS name), from the cache when
    /// it is valid for at least [`LEAF_REMINT_MARGIN`] more, freshly minted otherwise.
    pub fn leaf_for(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let now = OffsetDateTime::now_utc();
        {
            let cache = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(leaf) = cache.get(host) {
                if leaf.not_after - now > LEAF_REMINT_MARGIN {
                    return Ok(leaf.key.clone());
                }
            }
        }
        let (key, not_after) = self.mint(host, now)?;
        let mut cache = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_LEAVES {
            cache.retain(|_, leaf| leaf.not_after - now > LEAF_REMINT_MARGIN);
            if cache.len() >= MAX_CACHED_LEAVES {
                cache.clear();
            }
        }
        cache.insert(
            host.to_string(),
            CachedLeaf {
                key: key.clone(),
                not_after,
            },
        );
        Ok(key)
    }

    fn mint(
        &self,
        host: &str,
        now: OffsetDateTime,
    ) -> Result<(Arc<CertifiedKey>, OffsetDateTime), CaError> {
        let bad_name = |why: String| CaError::BadName {
            name: host.to_string(),
            why,
        };
        // Exactly one SAN, the SNI itself: never a wildcard (docs/design.md, "TLS
        // interception"). No AIA and no CRL distribution points: rcgen adds neither unless
        // asked, and an unreachable OCSP URL breaks snowflake-connector-python even in
        // fail-open mode.
        let mut params =
            CertificateParams::new(vec![host.to_string()]).map_err(|e| bad_name(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        // No BasicConstraints at all: rcgen's `ExplicitNoCa` writes `cA FALSE`, a DEFAULT value
        // that DER forbids encoding, and the strict parser of snowflake-connector-python
        // (`cryptography`) then rejects the certificate after the handshake.
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - LEAF_BACKDATE;
        params.not_after = now + LEAF_LIFETIME;
        let not_after = params.not_after;
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&leaf_key, &self.issuer, &self.key)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signing_key = self
            .provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| bad_name(format!("loading the minted key failed: {e}")))?;
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        tracing::debug!(host, "minted leaf certificate");
        Ok((Arc::new(CertifiedKey::new(chain, signing_key)), not_after))
    }
}

/// A rustls certificate resolver serving minted leaves for the ClientHello's SNI.
#[derive(Debug, Clone)]
pub struct LeafResolver {
    ca: Arc<CertificateAuthority>,
}

impl LeafResolver {
    /// Serves leaves minted by `ca`.
    pub fn new(ca: Arc<CertificateAuthority>) -> Self {
        LeafResolver { ca }
    }
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Without SNI there is nothing to mint for; the gate never intercepts such hellos.
        let host = hello.server_name()?.to_ascii_lowercase();
        match self.ca.leaf_for(&host) {
            Ok(key) => Some(key),
            Err(error) => {
                tracing::warn!(%host, %error, "could not mint a leaf certificate");
                None
            }
        }
    }
}
