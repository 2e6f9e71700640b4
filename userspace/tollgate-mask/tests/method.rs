//! Masking methods on single values, and `mask_text`.

use tollgate_mask::method::{MIN_KEY_LEN, RESTRICTED_ZIP3};
use tollgate_mask::{
    mask_text, Detector, DetectorSet, MaskError, MaskKey, MaskedValue, Method, REDACTED,
};

fn key(b: u8) -> MaskKey {
    MaskKey::from_bytes(&[b; 32]).unwrap()
}

fn text(m: &Method, v: &str) -> String {
    m.apply(v).as_text().expect("not NULL").to_owned()
}

#[test]
fn redact_and_null() {
    assert_eq!(text(&Method::Redact, "219-09-9999"), REDACTED);
    assert_eq!(Method::Null.apply("219-09-9999"), MaskedValue::Null);
    assert_eq!(Method::Null.apply("x").as_text(), None);
}

#[test]
fn partial_keeps_separators() {
    let cases = [
        ("219-09-9999", 4, "***-**-9999"),
        ("4111 1111 1111 1111", 4, "**** **** **** 1111"),
        ("(415) 555-0132", 4, "(***) ***-0132"),
        ("jane@example.com", 3, "****@*******.com"),
        ("219-09-9999", 0, "***-**-****"),
        // keep_last would reveal everything: nothing is kept.
        ("1234", 4, "****"),
        ("a-b", 2, "*-*"),
        ("", 4, ""),
        ("ÄÖÜ-12", 2, "***-12"),
    ];
    for (value, keep_last, want) in cases {
        assert_eq!(text(&Method::Partial { keep_last }, value), want, "{value}");
    }
}

#[test]
fn token_is_stable_and_key_separated() {
    let a = Method::Token { key: key(1) };
    let a2 = Method::Token { key: key(1) };
    let b = Method::Token { key: key(2) };
    let t = text(&a, "219-09-9999");
    assert!(t.starts_with("tok_") && t.len() == 4 + 32, "{t}");
    assert!(t[4..]
        .bytes()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(t, text(&a, "219-09-9999"));
    assert_eq!(t, text(&a2, "219-09-9999"));
    assert_ne!(t, text(&b, "219-09-9999"));
    assert_ne!(t, text(&a, "219-09-9998"));
}

#[test]
fn token_matches_hmac_sha256_reference() {
    // RFC 4231 test case 2 uses a 4-byte key, below our minimum; this is its message with the
    // key "Jefe" repeated to 16 bytes, the expected value from Python's `hmac` module.
    let k = MaskKey::from_bytes(b"JefeJefeJefeJefe").unwrap();
    assert_eq!(
        k.token("what do ya want for nothing?"),
        "tok_2ccd85dfc8d18cb5d84fef4b19855469"
    );
}

proptest::proptest! {
    /// Tokens are the first 16 bytes of the `hmac` crate's HMAC-SHA256, for keys shorter and
    /// longer than a block and messages around every padding boundary (55, 56, 64 bytes …).
    #[test]
    fn token_is_hmac_sha256(
        key in proptest::collection::vec(proptest::num::u8::ANY, MIN_KEY_LEN..150),
        value in "(?s).{0,140}",
    ) {
        use hmac::{Hmac, Mac};
        let mut reference = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).unwrap();
        reference.update(value.as_bytes());
        let tag = reference.finalize().into_bytes();
        let hex: String = tag[..16].iter().map(|b| format!("{b:02x}")).collect();
        proptest::prop_assert_eq!(
            MaskKey::from_bytes(&key).unwrap().token(&value),
            format!("tok_{hex}")
        );
    }
}

#[test]
fn token_at_every_padding_boundary() {
    use hmac::{Hmac, Mac};
    for key_len in [MIN_KEY_LEN, 63, 64, 65, 200] {
        let key: Vec<u8> = (0..key_len).map(|i| i as u8).collect();
        let k = MaskKey::from_bytes(&key).unwrap();
        for len in 0..=200 {
            let value = "x".repeat(len);
            let mut reference = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).unwrap();
            reference.update(value.as_bytes());
            let tag = reference.finalize().into_bytes();
            let hex: String = tag[..16].iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                k.token(&value),
                format!("tok_{hex}"),
                "key {key_len}, value {len}"
            );
        }
    }
}

#[test]
fn key_rules() {
    assert!(matches!(
        MaskKey::from_bytes(&[0; MIN_KEY_LEN - 1]),
        Err(MaskError::KeyTooShort { len: 15, min: 16 })
    ));
    assert!(MaskKey::from_bytes(&[0; MIN_KEY_LEN]).is_ok());
    let k = MaskKey::from_bytes(b"super-secret-key-bytes!!").unwrap();
    let dbg = format!("{k:?} {:?}", Method::Token { key: k.clone() });
    assert!(
        !dbg.contains("super") && dbg.contains("<redacted>"),
        "{dbg}"
    );
    let err = MaskKey::from_bytes(b"short").unwrap_err().to_string();
    assert!(
        err.contains("5 bytes") && err.contains("at least 16"),
        "{err}"
    );
}

#[test]
fn generalize_safe_harbor() {
    let cases = [
        ("1980-01-02", "1980"),
        ("01/02/1980", "1980"),
        ("1/2/1980", "1980"),
        ("1980-01-02T10:11:12Z", "1980"),
        ("1980-01-02 10:11", "1980"),
        ("62704", "62700"),
        ("94105-1234", "94100"),
        ("03601", "00000"),
        ("89301-1234", "00000"),
        ("90", "90+"),
        ("120", "90+"),
        ("89", "89"),
        ("7", "7"),
        // Not a date, ZIP or age: redacted (fail closed).
        ("1980", REDACTED),
        ("1980-02-30", REDACTED),
        ("219-09-9999", REDACTED),
        ("62704-12", REDACTED),
        ("hello", REDACTED),
        ("", REDACTED),
    ];
    for (value, want) in cases {
        assert_eq!(text(&Method::Generalize, value), want, "{value}");
    }
    for zip3 in RESTRICTED_ZIP3 {
        assert_eq!(text(&Method::Generalize, &format!("{zip3}12")), "00000");
    }
}

#[test]
fn mask_text_in_place_with_counts() {
    let set = DetectorSet::standard();
    let input = "SSN 219-09-9999, dob 1980-01-02, ZIP IL 62704; call 415-555-0132.";
    let (out, counts) = mask_text(input, &set, &Method::Redact);
    assert_eq!(out, "SSN ***, dob ***, ZIP IL ***; call ***.");
    assert_eq!(counts.total(), 4);
    assert_eq!(counts.get(Detector::Ssn), 1);
    assert_eq!(counts.get(Detector::Email), 0);
    assert_eq!(
        serde_json::to_string(&counts).unwrap(),
        r#"{"ssn":1,"phone":1,"date_of_birth":1,"zip":1}"#
    );

    let (out, _) = mask_text(input, &set, &Method::Generalize);
    assert_eq!(out, "SSN ***, dob 1980, ZIP IL 62700; call ***.");
    let (out, _) = mask_text(input, &set, &Method::Partial { keep_last: 4 });
    assert_eq!(
        out,
        "SSN ***-**-9999, dob ****-01-02, ZIP IL *2704; call ***-***-0132."
    );
    let (out, _) = mask_text(input, &set, &Method::Null);
    assert_eq!(out, "SSN ***, dob ***, ZIP IL ***; call ***.");

    let (out, counts) = mask_text("nothing here", &set, &Method::Redact);
    assert_eq!((out.as_str(), counts.total()), ("nothing here", 0));
}
