//! Property tests: scanning never panics and yields sane spans; masking hides found values.

use proptest::prelude::*;
use tollgate_mask::{mask_text, DetectorSet, MaskKey, Method};

fn set() -> &'static DetectorSet {
    use std::sync::OnceLock;
    static SET: OnceLock<DetectorSet> = OnceLock::new();
    SET.get_or_init(DetectorSet::standard)
}

/// Text with PHI-like values embedded in filler.
fn phi_text() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        "[1-8][0-9]{2}-[1-9][0-9]-[1-9][0-9]{3}",
        "[a-z]{1,8}@[a-z]{1,8}\\.(com|org)",
        "\\([2-9][0-9]{2}\\) [2-9][0-9]{2}-[0-9]{4}",
        "(19[0-9]{2}|20[0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])",
        "4[0-9]{3} [0-9]{4} [0-9]{4} [0-9]{4}",
        "1[0-9]{9}",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        "[0-9]{1,4} [A-Z][a-z]{2,8} (St|Ave|Road)",
        "(IL|CA) [0-9]{5}",
        "MRN: [0-9]{8}",
    ];
    prop::collection::vec(("[a-z ,.;:]{0,12}", value), 0..6)
        .prop_map(|parts| parts.into_iter().map(|(f, v)| f + " " + &v).collect())
}

fn methods() -> Vec<Method> {
    vec![
        Method::Redact,
        Method::Token {
            key: MaskKey::from_bytes(&[7; 32]).unwrap(),
        },
        Method::Partial { keep_last: 0 },
        Method::Partial { keep_last: 4 },
        Method::Partial { keep_last: 100 },
    ]
}

fn check_spans(text: &str) -> Result<(), TestCaseError> {
    let findings = set().scan(text);
    let mut last_end = 0;
    for f in &findings {
        prop_assert!(f.span.start < f.span.end);
        prop_assert!(f.span.end <= text.len());
        prop_assert!(
            f.span.start >= last_end,
            "overlap or unsorted: {findings:?}"
        );
        prop_assert!(text.is_char_boundary(f.span.start) && text.is_char_boundary(f.span.end));
        last_end = f.span.end;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn scan_arbitrary_text_is_sane(text in "\\PC{0,200}") {
        check_spans(&text)?;
    }

    #[test]
    fn scan_digit_heavy_text_is_sane(text in "[0-9 ./:@()+\\-A-Za-z]{0,200}") {
        check_spans(&text)?;
    }

    #[test]
    fn masking_hides_found_values(text in phi_text()) {
        check_spans(&text)?;
        for f in set().scan(&text) {
            let value = &text[f.span.clone()];
            for m in methods() {
                let out = m.apply(value);
                let out = out.as_text().unwrap();
                prop_assert!(!out.contains(value), "{m:?} leaks {value:?} as {out:?}");
            }
        }
        assert_masked_everywhere(&text)?;
    }
}

/// `mask_text` leaves no found value anywhere but where the text outside every finding holds
/// it by chance (`75051`, a ZIP code, inside the number `1175051010`, which is none).
fn assert_masked_everywhere(text: &str) -> Result<(), TestCaseError> {
    let findings = set().scan(text);
    let mut outside = String::new();
    let mut at = 0;
    for f in &findings {
        outside.push_str(&text[at..f.span.start]);
        outside.push('\0');
        at = f.span.end;
    }
    outside.push_str(&text[at..]);
    for m in methods() {
        let (out, counts) = mask_text(text, set(), &m);
        prop_assert_eq!(counts.total(), findings.len());
        for f in &findings {
            let value = &text[f.span.clone()];
            // A value found twice is masked twice: it survives only where it was never found.
            prop_assert!(
                out.matches(value).count() <= outside.matches(value).count(),
                "{:?} leaks {:?} in {:?}",
                m,
                value,
                out
            );
        }
    }
    Ok(())
}

#[test]
fn a_value_inside_an_unrelated_number_is_not_a_leak() {
    // Found by the property above: the ZIP code is masked, the number that holds its digits
    // is no PHI and stays.
    assert_masked_everywhere(" 1175051010 IL 75051").unwrap();
    // Still a leak when the finding itself survives.
    let text = "SSN 219-09-9999 and again 219-09-9999";
    let (out, _) = mask_text(text, set(), &Method::Redact);
    assert!(!out.contains("219-09-9999"), "{out}");
}

/// `Partial` as specified, char by char (the reference for its ASCII fast path).
fn partial_reference(value: &str, keep_last: usize) -> String {
    let maskable = value.chars().filter(|c| c.is_alphanumeric()).count();
    let keep = if keep_last >= maskable { 0 } else { keep_last };
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if !c.is_alphanumeric() {
                return c;
            }
            seen += 1;
            if seen > maskable - keep {
                c
            } else {
                '*'
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn partial_fast_path_agrees_with_the_reference(
        value in prop_oneof!["[ -~]{0,150}", "\\PC{0,40}", "[0-9a-zé ü-]{0,20}"],
        keep_last in 0usize..12,
    ) {
        let m = Method::Partial { keep_last };
        let got = m.apply(&value);
        let want = partial_reference(&value, keep_last);
        prop_assert_eq!(got.as_text(), Some(want.as_str()));
        // `apply_into` appends the same text after what the buffer already holds.
        let mut buf = String::from("prefix:");
        prop_assert!(m.apply_into(&value, &mut buf));
        prop_assert_eq!(&buf[7..], partial_reference(&value, keep_last));
    }

    #[test]
    fn tokens_appended_equal_tokens_returned(value in "\\PC{0,40}") {
        let key = MaskKey::from_bytes(&[9; 32]).unwrap();
        let mut buf = String::from("x");
        key.push_token(&value, &mut buf);
        prop_assert_eq!(&buf[1..], key.token(&value));
        prop_assert_eq!(buf.len(), 1 + 4 + 32);
    }
}
