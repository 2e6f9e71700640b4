//! The interception CA on disk: creation, permissions, reload, leaf cache.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use tollgate_proxy::{CaError, CertificateAuthority};

#[test]
fn created_once_then_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (ca, created) = CertificateAuthority::load_or_create(&state).unwrap();
    assert!(created);
    let key_mode = std::fs::metadata(state.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o077, 0);
    assert_eq!(ca.cert_path(), state.join("ca.pem"));
    assert_eq!(
        std::fs::read_to_string(ca.cert_path()).unwrap(),
        ca.cert_pem()
    );

    let (again, created) = CertificateAuthority::load_or_create(&state).unwrap();
    assert!(!created);
    assert_eq!(again.cert_pem(), ca.cert_pem());
    let loaded = CertificateAuthority::load(&state).unwrap();
    assert_eq!(loaded.cert_pem(), ca.cert_pem());

    // A leaf minted by the reloaded CA chains to the original ca.pem.
    let leaf = loaded.leaf_for("acct.snowflakecomputing.com").unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.cert_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_server_cert(
            &leaf.cert[0],
            &[],
            &rustls::pki_types::ServerName::try_from("acct.snowflakecomputing.com").unwrap(),
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .unwrap();
}

#[test]
fn leaf_cache_returns_the_same_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = CertificateAuthority::load_or_create(dir.path()).unwrap();
    let a = ca.leaf_for("a.snowflakecomputing.com").unwrap();
    let again = ca.leaf_for("a.snowflakecomputing.com").unwrap();
    assert!(Arc::ptr_eq(&a, &again));
    let b = ca.leaf_for("b.snowflakecomputing.com").unwrap();
    assert_ne!(a.cert[0], b.cert[0]);
}

#[test]
fn refuses_unsafe_or_incomplete_state() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, _) = CertificateAuthority::load_or_create(dir.path()).unwrap();
    let key = dir.path().join("ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = CertificateAuthority::load(dir.path()).unwrap_err();
    assert!(matches!(err, CaError::KeyPermissions { .. }), "{err}");
    assert!(err.to_string().contains("chmod 600"), "{err}");

    std::fs::remove_file(&key).unwrap();
    let err = CertificateAuthority::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, CaError::HalfPresent { .. }), "{err}");

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        CertificateAuthority::load(empty.path()),
        Err(CaError::Missing(_))
    ));
}

/// Regression: leaves carried `BasicConstraints { cA: FALSE }` encoded explicitly, a DER
/// violation (DEFAULT values are omitted) that snowflake-connector-python's `cryptography`
/// parser rejects with `ParseError { kind: EncodedDefault, location: ["BasicConstraints::ca"] }`.
#[test]
fn leaf_has_no_explicit_default_basic_constraints() {
    use x509_parser::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = CertificateAuthority::load_or_create(dir.path()).unwrap();
    let leaf = ca.leaf_for("acct.snowflakecomputing.com").unwrap();
    let (_, cert) = X509Certificate::from_der(&leaf.cert[0]).unwrap();
    assert!(
        cert.basic_constraints().unwrap().is_none(),
        "a leaf needs no BasicConstraints, and an encoded cA=FALSE breaks strict DER parsers"
    );
    // The DER encoding of `BOOLEAN FALSE` (01 01 00) must not appear inside the extensions.
    let bc_oid = [0x06, 0x03, 0x55, 0x1d, 0x13];
    assert!(!leaf.cert[0].windows(5).any(|w| w == bc_oid));
}
