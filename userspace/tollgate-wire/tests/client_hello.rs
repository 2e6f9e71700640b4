//! ClientHello parser against captured hellos (openssl s_client and rustls, in
//! `tests/fixtures`), hand-built malformed ones, and property tests.

use std::sync::Arc;

use proptest::prelude::*;
use tollgate_wire::{
    parse_client_hello, parse_client_hello_with_limit, HelloError, MalformedReason,
};

const OPENSSL_SNI_ALPN: &[u8] = include_bytes!("fixtures/openssl_sni_alpn.bin");
const OPENSSL_NO_SNI: &[u8] = include_bytes!("fixtures/openssl_no_sni.bin");
const OPENSSL_TLS12_SNI: &[u8] = include_bytes!("fixtures/openssl_tls12_sni.bin");
const RUSTLS_SNI_ALPN: &[u8] = include_bytes!("fixtures/rustls_sni_alpn.bin");

fn fixtures() -> [(&'static str, &'static [u8]); 4] {
    [
        ("openssl_sni_alpn", OPENSSL_SNI_ALPN),
        ("openssl_no_sni", OPENSSL_NO_SNI),
        ("openssl_tls12_sni", OPENSSL_TLS12_SNI),
        ("rustls_sni_alpn", RUSTLS_SNI_ALPN),
    ]
}

/// A ClientHello exactly as a rustls 0.23 client (ring provider) sends it.
fn rustls_client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Re-frames the handshake bytes of a single-record hello into records of `size` bytes.
fn refragment(single: &[u8], size: usize) -> Vec<u8> {
    let len = usize::from(u16::from_be_bytes([single[3], single[4]]));
    let handshake = &single[5..5 + len];
    let mut out = Vec::new();
    for chunk in handshake.chunks(size) {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// A minimal, well-formed TLS 1.2-style hello with the given extensions block (raw bytes,
/// without its length prefix unless `raw_extensions` already carries one).
fn build_hello(extensions: Option<&[u8]>) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    if let Some(ext) = extensions {
        body.extend_from_slice(ext);
    }
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

fn extension(ty: u16, data: &[u8]) -> Vec<u8> {
    let mut out = ty.to_be_bytes().to_vec();
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out
}

fn with_len16(data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

fn sni_extension(host: &[u8]) -> Vec<u8> {
    let mut entry = vec![0u8];
    entry.extend_from_slice(&with_len16(host));
    extension(0, &with_len16(&entry))
}

fn assert_every_prefix_incomplete(name: &str, full: &[u8]) {
    let hello = parse_client_hello(full).unwrap_or_else(|e| panic!("{name}: {e}"));
    for cut in 0..hello.wire_len {
        match parse_client_hello(&full[..cut]) {
            Err(HelloError::Incomplete { needed }) => {
                if let Some(needed) = needed {
                    assert!(needed >= 1, "{name}: prefix {cut}: needed 0");
                    assert!(
                        cut + needed <= hello.wire_len,
                        "{name}: prefix {cut}: needed {needed} overshoots {}",
                        hello.wire_len
                    );
                }
            }
            other => panic!("{name}: prefix of {cut} bytes gave {other:?}"),
        }
    }
}

#[test]
fn captured_hellos_parse() {
    let h = parse_client_hello(OPENSSL_SNI_ALPN).unwrap();
    // s_client was given an upper-case name: SNI comes back lowercased.
    assert_eq!(h.sni.as_deref(), Some("acct.snowflakecomputing.com"));
    assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(h.legacy_version, 0x0303);
    assert!(h.offers_tls13());
    assert_eq!(h.wire_len, OPENSSL_SNI_ALPN.len());

    let h = parse_client_hello(OPENSSL_NO_SNI).unwrap();
    assert_eq!(h.sni, None);
    assert!(h.alpn.is_empty());

    let h = parse_client_hello(OPENSSL_TLS12_SNI).unwrap();
    assert_eq!(
        h.sni.as_deref(),
        Some("xy12345.us-east-2.aws.snowflakecomputing.com")
    );
    assert!(!h.offers_tls13());

    let h = parse_client_hello(RUSTLS_SNI_ALPN).unwrap();
    assert_eq!(h.sni.as_deref(), Some("acct.snowflakecomputing.com"));
    assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
}

#[test]
fn every_prefix_of_a_captured_hello_is_incomplete() {
    for (name, bytes) in fixtures() {
        assert_every_prefix_incomplete(name, bytes);
    }
}

#[test]
fn hello_spanning_several_records() {
    for (name, bytes) in fixtures() {
        let single = parse_client_hello(bytes).unwrap();
        for size in [1, 3, 4, 5, 64, 200] {
            let multi = refragment(bytes, size);
            let parsed =
                parse_client_hello(&multi).unwrap_or_else(|e| panic!("{name}/{size}: {e}"));
            assert_eq!(parsed.sni, single.sni, "{name}/{size}");
            assert_eq!(parsed.alpn, single.alpn, "{name}/{size}");
            assert_eq!(parsed.wire_len, multi.len(), "{name}/{size}");
            assert_every_prefix_incomplete(name, &multi);
        }
    }
}

#[test]
fn bytes_after_the_hello_are_ignored() {
    let mut stream = OPENSSL_SNI_ALPN.to_vec();
    stream.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0xff]);
    let h = parse_client_hello(&stream).unwrap();
    assert_eq!(h.wire_len, OPENSSL_SNI_ALPN.len());
}

#[test]
fn live_rustls_hello_matches_fixture_shape() {
    let bytes = rustls_client_hello("Acct.SnowflakeComputing.com", &[b"http/1.1"]);
    let h = parse_client_hello(&bytes).unwrap();
    assert_eq!(h.sni.as_deref(), Some("acct.snowflakecomputing.com"));
    assert_eq!(h.alpn, vec![b"http/1.1".to_vec()]);
    assert_every_prefix_incomplete("live rustls", &bytes);
}

/// A ClientHello from the rustls in this build parses like the committed fixture; with
/// `TOLLGATE_REGENERATE_FIXTURES=1` (after a rustls bump) it also rewrites
/// `tests/fixtures/rustls_sni_alpn.bin`.
#[test]
fn current_rustls_hello_parses_and_can_regenerate_the_fixture() {
    let bytes = rustls_client_hello("acct.snowflakecomputing.com", &[b"h2", b"http/1.1"]);
    let hello = parse_client_hello(&bytes).expect("a fresh rustls ClientHello parses");
    assert_eq!(hello.sni.as_deref(), Some("acct.snowflakecomputing.com"));
    assert_eq!(hello.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    if std::env::var_os("TOLLGATE_REGENERATE_FIXTURES").is_some() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/rustls_sni_alpn.bin"
        );
        std::fs::write(path, bytes).unwrap();
    }
}

#[test]
fn other_protocols_are_not_tls() {
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x00\x00\x00\x00",
        b"\x80\x2e\x01\x03\x01", // SSLv2-compatible hello: not supported
        b"\x16\x02\x00",         // handshake byte, then not TLS major version 3
        b"PRI * HTTP/2.0\r\n",
    ] {
        assert_eq!(
            parse_client_hello(garbage),
            Err(HelloError::NotTls),
            "{garbage:?}"
        );
    }
}

#[test]
fn truncated_extensions_are_malformed() {
    // The extension claims 10 bytes of data, the extensions block holds 5.
    let mut ext = 0u16.to_be_bytes().to_vec();
    ext.extend_from_slice(&10u16.to_be_bytes());
    ext.extend_from_slice(&[0; 5]);
    let hello = build_hello(Some(&with_len16(&ext)));
    assert_eq!(
        parse_client_hello(&hello),
        Err(HelloError::Malformed(MalformedReason::Truncated {
            field: "extension data"
        }))
    );

    // A real hello whose extensions length was bumped past the end of the message.
    let mut real = OPENSSL_SNI_ALPN.to_vec();
    let session_len = usize::from(real[5 + 4 + 2 + 32]);
    let mut off = 5 + 4 + 2 + 32 + 1 + session_len;
    let suites = usize::from(u16::from_be_bytes([real[off], real[off + 1]]));
    off += 2 + suites;
    off += 1 + usize::from(real[off]);
    let ext_len = u16::from_be_bytes([real[off], real[off + 1]]) + 1;
    real[off..off + 2].copy_from_slice(&ext_len.to_be_bytes());
    assert_eq!(
        parse_client_hello(&real),
        Err(HelloError::Malformed(MalformedReason::Truncated {
            field: "extensions"
        }))
    );
}

#[test]
fn structural_violations_are_malformed() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x16, 0x03, 0x01, 0x00, 0x00], "empty handshake record"),
        (vec![0x16, 0x03, 0x01, 0x40, 0x01], "exceeds the 16384-byte"),
        (
            vec![0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00],
            "expected ClientHello",
        ),
        (
            build_hello(Some(&with_len16(
                &[sni_extension(b"a.example"), sni_extension(b"b.example")].concat(),
            ))),
            "duplicate extension 0",
        ),
        (
            build_hello(Some(&with_len16(&sni_extension(b"db.example.com.")))),
            "trailing dot",
        ),
        (
            build_hello(Some(&with_len16(&sni_extension(b"db\xffexample")))),
            "invalid SNI host name",
        ),
        (
            build_hello(Some(&with_len16(&extension(16, &with_len16(&[0]))))),
            "ALPN protocol name: empty",
        ),
        (
            build_hello(Some(&[0, 0, 9])),
            "trailing bytes after ClientHello",
        ),
    ];
    for (bytes, expected) in cases {
        match parse_client_hello(&bytes) {
            Err(e @ HelloError::Malformed(_)) => {
                assert!(e.to_string().contains(expected), "{e} !~ {expected}")
            }
            other => panic!("{expected}: got {other:?}"),
        }
    }
}

#[test]
fn interleaved_records_are_malformed() {
    let mut multi = refragment(OPENSSL_SNI_ALPN, 100);
    // Turn the second record into application data.
    multi[5 + 100] = 0x17;
    assert_eq!(
        parse_client_hello(&multi),
        Err(HelloError::Malformed(
            MalformedReason::UnexpectedContentType { content_type: 0x17 }
        ))
    );
}

#[test]
fn hellos_without_extensions_or_sni() {
    let h = parse_client_hello(&build_hello(None)).unwrap();
    assert_eq!(h.sni, None);
    let h = parse_client_hello(&build_hello(Some(&with_len16(&extension(5, &[]))))).unwrap();
    assert_eq!(h.sni, None);
}

#[test]
fn size_limit_is_enforced_before_buffering() {
    // Only the headers have arrived, announcing a 20 KiB hello over several records.
    let head = [0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x50, 0x00];
    assert_eq!(
        parse_client_hello(&head),
        Err(HelloError::Malformed(MalformedReason::TooLarge {
            len: 4 + 0x5000,
            max: 16 * 1024
        }))
    );
    assert!(matches!(
        parse_client_hello_with_limit(OPENSSL_SNI_ALPN, 100),
        Err(HelloError::Malformed(MalformedReason::TooLarge { .. }))
    ));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_client_hello(&bytes);
    }

    #[test]
    fn tls_looking_bytes_never_panic(
        len in 0u16..600,
        body in proptest::collection::vec(any::<u8>(), 0..700),
    ) {
        let mut bytes = vec![0x16, 0x03, 0x01];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.push(0x01);
        bytes.extend_from_slice(&body);
        let _ = parse_client_hello(&bytes);
    }

    #[test]
    fn mutated_real_hellos_never_panic(
        which in 0usize..4,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut bytes = fixtures()[which].1.to_vec();
        for (at, value) in flips {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        let cut = cut % (bytes.len() + 1);
        let _ = parse_client_hello(&bytes[..cut]);
    }

    #[test]
    fn any_fragmentation_parses_the_same(which in 0usize..4, size in 1usize..400) {
        let bytes = fixtures()[which].1;
        let multi = refragment(bytes, size);
        prop_assert_eq!(
            parse_client_hello(&multi).unwrap().sni,
            parse_client_hello(bytes).unwrap().sni
        );
    }
}
