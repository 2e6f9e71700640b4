//! Table-driven positives and negatives for every detector.

use tollgate_mask::{Detector, DetectorConfig, DetectorSet, MaskError};

fn only(kind: Detector) -> DetectorSet {
    DetectorSet::compile(&DetectorConfig {
        detectors: vec![kind],
        mrn_pattern: None,
    })
    .unwrap()
}

/// Asserts that `kind` alone finds exactly `expected` (as substrings) in `text`.
fn check(kind: Detector, text: &str, expected: &[&str]) {
    let found: Vec<&str> = only(kind)
        .scan(text)
        .into_iter()
        .map(|f| {
            assert_eq!(f.kind, kind);
            &text[f.span]
        })
        .collect();
    assert_eq!(found, expected, "{kind:?} in {text:?}");
}

#[test]
fn ssn() {
    let cases: &[(&str, &[&str])] = &[
        ("SSN 219-09-9999 on file", &["219-09-9999"]),
        ("ssn: 219 09 9999", &["219 09 9999"]),
        ("bare 219099999.", &["219099999"]),
        ("glued SSN123-45-6789", &["123-45-6789"]),
        // Voided by the SSA but SSN-shaped: detected on purpose (see `Detector::Ssn`).
        ("woolworth 078-05-1120", &["078-05-1120"]),
        (
            "two 219-09-9999,123-45-6789",
            &["219-09-9999", "123-45-6789"],
        ),
        ("area 000-12-3456", &[]),
        ("area 666-12-3456", &[]),
        ("area 900-12-3456 and 999-12-3456", &[]),
        ("group 123-00-4567", &[]),
        ("serial 123-45-0000", &[]),
        ("too long 1234-56-7890 or 123-45-67890", &[]),
        ("mixed separators 123-45 6789", &[]),
        ("ten digits 1234567890", &[]),
    ];
    for (text, want) in cases {
        check(Detector::Ssn, text, want);
    }
}

#[test]
fn email() {
    let cases: &[(&str, &[&str])] = &[
        (
            "mail jane.doe+x@example.co.uk now",
            &["jane.doe+x@example.co.uk"],
        ),
        ("<a_b@mail-host.org>", &["a_b@mail-host.org"]),
        ("no tld jane@localhost", &[]),
        ("no local @example.com", &[]),
        ("bad domain jane@-example.com", &[]),
    ];
    for (text, want) in cases {
        check(Detector::Email, text, want);
    }
}

#[test]
fn phone() {
    let cases: &[(&str, &[&str])] = &[
        ("call (415) 555-0132", &["(415) 555-0132"]),
        ("call (415)555-0132", &["(415)555-0132"]),
        ("call 415-555-0132.", &["415-555-0132"]),
        ("call 415.555.0132", &["415.555.0132"]),
        ("call 415 555 0132", &["415 555 0132"]),
        ("call +1 415 555 0132", &["+1 415 555 0132"]),
        ("call +14155550132x", &[]),
        ("call 1-415-555-0132", &["1-415-555-0132"]),
        ("area starts with 1: 115-555-0132", &[]),
        ("exchange starts with 0: 415-055-0132", &[]),
        ("bare 4155550132", &[]),
        ("glued 9415-555-01322", &[]),
    ];
    for (text, want) in cases {
        check(Detector::Phone, text, want);
    }
}

#[test]
fn date_of_birth() {
    let cases: &[(&str, &[&str])] = &[
        ("dob 1980-01-02", &["1980-01-02"]),
        ("dob 01/02/1980", &["01/02/1980"]),
        ("dob 1/2/1980", &["1/2/1980"]),
        (
            "leap 02/29/2020 and 2000-02-29",
            &["02/29/2020", "2000-02-29"],
        ),
        ("not leap 02/29/2019 or 1900-02-29", &[]),
        ("month 13/01/2000 or 2000-13-01", &[]),
        ("day 2000-04-31 or 00/10/2000", &[]),
        ("year 1899-12-31 or 01/01/2100", &[]),
        ("short 1980-1-2", &[]),
        ("glued 11980-01-02", &[]),
    ];
    for (text, want) in cases {
        check(Detector::DateOfBirth, text, want);
    }
}

#[test]
fn mrn_default_and_custom() {
    check(Detector::Mrn, "MRN: 12345678 seen", &["12345678"]);
    check(Detector::Mrn, "mrn#0012345", &["0012345"]);
    check(Detector::Mrn, "MRN 12345", &[]);
    check(Detector::Mrn, "12345678 without label", &[]);

    let custom = DetectorSet::compile(&DetectorConfig {
        detectors: vec![Detector::Mrn],
        mrn_pattern: Some(r"\bMR[0-9]{7}\b".into()),
    })
    .unwrap();
    let text = "patient MR1234567 and MR123";
    let spans: Vec<_> = custom
        .scan(text)
        .into_iter()
        .map(|f| &text[f.span])
        .collect();
    assert_eq!(spans, ["MR1234567"]);
}

#[test]
fn mrn_pattern_errors() {
    let compile = |p: &str| {
        DetectorSet::compile(&DetectorConfig {
            detectors: vec![Detector::Mrn],
            mrn_pattern: Some(p.into()),
        })
    };
    assert!(matches!(
        compile("(unclosed"),
        Err(MaskError::InvalidMrnPattern { .. })
    ));
    assert!(matches!(
        compile("[0-9]*"),
        Err(MaskError::MrnPatternMatchesEmpty { .. })
    ));
}

#[test]
fn npi() {
    let cases: &[(&str, &[&str])] = &[
        ("NPI 1234567893", &["1234567893"]),
        ("NPI 1234567890", &[]),
        ("starts with 3: 3234567891", &[]),
        ("glued 12345678931", &[]),
    ];
    for (text, want) in cases {
        check(Detector::Npi, text, want);
    }
}

#[test]
fn payment_card() {
    let cases: &[(&str, &[&str])] = &[
        ("visa 4111 1111 1111 1111 ok", &["4111 1111 1111 1111"]),
        ("visa 4111-1111-1111-1111", &["4111-1111-1111-1111"]),
        ("visa 4111111111111111", &["4111111111111111"]),
        ("mc 5500 0000 0000 0004", &["5500 0000 0000 0004"]),
        ("amex 378282246310005", &["378282246310005"]),
        ("luhn-invalid 4111111111111112", &[]),
        ("too short 411111111111", &[]),
        ("double separator 4111  1111 1111 1111", &[]),
    ];
    for (text, want) in cases {
        check(Detector::PaymentCard, text, want);
    }
}

#[test]
fn ipv4() {
    let cases: &[(&str, &[&str])] = &[
        (
            "from 10.0.0.1 to 192.168.1.254.",
            &["10.0.0.1", "192.168.1.254"],
        ),
        ("host=255.255.255.255", &["255.255.255.255"]),
        ("octet 256.1.1.1", &[]),
        ("five parts 1.2.3.4.5", &[]),
        ("three parts 1.2.3", &[]),
    ];
    for (text, want) in cases {
        check(Detector::Ipv4, text, want);
    }
}

#[test]
fn street_address() {
    let cases: &[(&str, &[&str])] = &[
        (
            "lives at 1600 Pennsylvania Ave NW",
            &["1600 Pennsylvania Ave"],
        ),
        ("42 N Main Street, Springfield", &["42 N Main Street"]),
        // A trailing period is taken as an abbreviation point, even after a full suffix.
        ("7 5th street.", &["7 5th street."]),
        ("12 Oak St. apt 4", &["12 Oak St."]),
        ("3 cats on the way", &[]),
        ("42 apples", &[]),
        ("1600 Pennsylvania Avenues", &[]),
    ];
    for (text, want) in cases {
        check(Detector::StreetAddress, text, want);
    }
}

#[test]
fn zip() {
    let cases: &[(&str, &[&str])] = &[
        ("Springfield, IL 62704", &["62704"]),
        ("San Francisco, CA, 94105-1234.", &["94105-1234"]),
        ("zip code: 10001", &["10001"]),
        ("ZIP 02139", &["02139"]),
        ("62704 items shipped", &[]),
        ("in 62704 cases", &[]),
        ("IL 627041", &[]),
    ];
    for (text, want) in cases {
        check(Detector::Zip, text, want);
    }
}

#[test]
fn standard_set_is_leftmost_longest_and_sorted() {
    let set = DetectorSet::standard();
    assert_eq!(set.detectors().count(), Detector::ALL.len());
    let text = "Pt Jane (MRN: 12345678), SSN 219-09-9999, dob 1980-01-02, \
                jane@example.com, (415) 555-0132, 1600 Pennsylvania Ave, Springfield, IL 62704, \
                card 4111 1111 1111 1111, NPI 1234567893, ip 10.0.0.1";
    let got: Vec<(Detector, &str)> = set
        .scan(text)
        .into_iter()
        .map(|f| (f.kind, &text[f.span]))
        .collect();
    assert_eq!(
        got,
        [
            (Detector::Mrn, "12345678"),
            (Detector::Ssn, "219-09-9999"),
            (Detector::DateOfBirth, "1980-01-02"),
            (Detector::Email, "jane@example.com"),
            (Detector::Phone, "(415) 555-0132"),
            (Detector::StreetAddress, "1600 Pennsylvania Ave"),
            (Detector::Zip, "62704"),
            (Detector::PaymentCard, "4111 1111 1111 1111"),
            (Detector::Npi, "1234567893"),
            (Detector::Ipv4, "10.0.0.1"),
        ]
    );
}

#[test]
fn config_is_strict_serde() {
    let cfg: DetectorConfig =
        serde_json::from_str(r#"{"detectors":["ssn","payment_card"]}"#).unwrap();
    assert_eq!(cfg.detectors, [Detector::Ssn, Detector::PaymentCard]);
    assert!(serde_json::from_str::<DetectorConfig>(r#"{"detectors":[],"x":1}"#).is_err());
    assert!(serde_json::from_str::<DetectorConfig>(r#"{"detectors":["dna"]}"#).is_err());
    for k in Detector::ALL {
        assert_eq!(
            serde_json::to_string(&k).unwrap(),
            format!("\"{}\"", k.name())
        );
    }
}

#[test]
fn every_example_is_found_as_its_kind() {
    let standard = DetectorSet::standard();
    for (kind, example) in Detector::EXAMPLES {
        let found = standard.scan(example);
        assert_eq!(found.len(), 1, "{example:?}: {found:?}");
        assert_eq!(found[0].kind, kind, "{example:?}");
    }
    let listed: Vec<Detector> = Detector::EXAMPLES.iter().map(|&(k, _)| k).collect();
    assert_eq!(
        listed,
        Detector::ALL,
        "one example per detector, in ALL order"
    );
}
