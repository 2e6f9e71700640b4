//! Any text as a request path or target: normalising never panics, a normalized path has the
//! canonical shape (no `//`, no dot segments, no trailing slash, origin form without `%2F`)
//! and normalises to itself from its origin form; a classified target forwarded as its
//! canonical target classifies the same and is forwarded unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_wire::snowflake::{classify, classify_target, normalize_path, NormalizedPath};

fn check_canonical(n: &NormalizedPath) {
    let s = n.as_str();
    assert!(s.starts_with('/'), "{s:?}");
    assert!(!s.contains("//"), "{s:?}");
    assert!(!s.contains("/./") && !s.ends_with("/."), "{s:?}");
    assert!(!s.contains("/../") && !s.ends_with("/.."), "{s:?}");
    assert!(s == "/" || !s.ends_with('/'), "{s:?}");
    let origin = n.to_origin_form(None);
    assert!(origin.is_ascii(), "{origin:?}");
    assert!(!origin.to_ascii_uppercase().contains("%2F"), "{origin:?}");
    let again = normalize_path(&origin).expect("an origin form normalizes");
    assert_eq!(&again, n);
    assert!(again.was_canonical());
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(n) = normalize_path(&text) {
        check_canonical(&n);
    }
    for method in ["GET", "POST"] {
        let endpoint = classify(method, &text);
        let _ = (endpoint.name(), endpoint.carries_rows());
        match classify_target(method, &text) {
            Ok(c) => {
                assert_eq!(c.endpoint, endpoint);
                check_canonical(&c.path);
                let forwarded = c.canonical_target();
                let again =
                    classify_target(method, &forwarded).expect("a canonical target classifies");
                assert_eq!(again.endpoint, c.endpoint);
                assert_eq!(again.canonical_target(), forwarded);
            }
            Err(e) => assert!(
                matches!(&endpoint, tollgate_wire::snowflake::Endpoint::AmbiguousPath { error, .. } if *error == e),
                "{endpoint:?}"
            ),
        }
    }
});
