//! The path normaliser and classification on normalized paths: the attack spellings of a
//! result fetch, the refused ambiguities, and property tests (idempotence, canonical shape).

use proptest::prelude::*;
use tollgate_wire::snowflake::{
    classify, classify_target, normalize_path, Endpoint, NormalizedPath, PathError,
};

const QID: &str = "01b2c3d4-0000-1111-2222-333344445555";

fn result() -> Endpoint {
    Endpoint::QueryResult {
        query_id: QID.to_owned(),
    }
}

#[test]
fn encoded_spellings_of_a_result_fetch_are_the_result_endpoint() {
    for target in [
        format!("/queries/{QID}/r%65sult?X-Amz-Signature=x"),
        format!("/queries/{QID}/%72%65%73%75%6C%74?X-Amz-Signature=x"),
        format!("/queries/{QID}/%72%65%73%75%6c%74"),
        format!("/%71ueries/{QID}/result"),
        format!("/queries/{QID}/result/"),
        format!("/queries/{QID}//result"),
        format!("//queries/{QID}/result"),
        format!("/queries/{QID}/./result"),
        format!("/queries/x/../{QID}/result"),
        format!("/queries/{QID}/result/x/.."),
        format!("/queries/{QID}/%2E/result"),
        format!("/queries/x/%2e%2E/{QID}/result?sig=s"),
        format!("https://acct.snowflakecomputing.com/queries/{QID}/r%65sult"),
    ] {
        let classified = classify_target("GET", &target).unwrap();
        assert_eq!(classified.endpoint, result(), "{target}");
        assert_eq!(classify("GET", &target), result(), "{target}");
        assert!(classified.endpoint.carries_rows());
        let query = target.split_once('?').map(|(_, q)| q);
        assert_eq!(
            classified.canonical_target(),
            match query {
                Some(q) => format!("/queries/{QID}/result?{q}"),
                None => format!("/queries/{QID}/result"),
            },
            "{target}"
        );
    }
    // The other endpoints are normalized the same way.
    assert_eq!(
        classify("POST", "/queries/v1/query-r%65quest?requestId=r"),
        Endpoint::QueryRequest
    );
    assert_eq!(
        classify("GET", "/api/v2/statements/h%2D1"),
        Endpoint::SqlApiStatus {
            handle: "h-1".into()
        }
    );
}

#[test]
fn ambiguous_spellings_are_refused() {
    let cases: Vec<(String, PathError)> = vec![
        (
            format!("/queries%2F{QID}%2Fresult?X-Amz-Signature=x"),
            PathError::EncodedSlash,
        ),
        (format!("/queries/{QID}%2fresult"), PathError::EncodedSlash),
        (format!("/queries/{QID}%5Cresult"), PathError::Backslash),
        (format!("/queries/{QID}\\result"), PathError::Backslash),
        (
            format!("/queries/{QID}/result%00"),
            PathError::ControlCharacter { ch: '\0' },
        ),
        (
            format!("/queries/{QID}/result%0A"),
            PathError::ControlCharacter { ch: '\n' },
        ),
        (
            format!("/queries/{QID}/result\t"),
            PathError::ControlCharacter { ch: '\t' },
        ),
        (
            format!("/queries/{QID}/result%7F"),
            PathError::ControlCharacter { ch: '\u{7f}' },
        ),
        (
            format!("/queries/{QID}/result%C2%85"),
            PathError::ControlCharacter { ch: '\u{85}' },
        ),
        (
            format!("/queries/{QID}/result%zz"),
            PathError::InvalidEscape { offset: 52 },
        ),
        (
            format!("/queries/{QID}/result%4"),
            PathError::InvalidEscape { offset: 52 },
        ),
        (
            format!("/queries/{QID}/result%"),
            PathError::InvalidEscape { offset: 52 },
        ),
        (format!("/queries/{QID}/result%FF"), PathError::NotUtf8),
        (format!("/queries/{QID}/result%C3"), PathError::NotUtf8),
        (
            format!("/queries/{QID}/result%3Fx=1"),
            PathError::Delimiter { byte: b'?' },
        ),
        (
            format!("/queries/{QID}/result%23x"),
            PathError::Delimiter { byte: b'#' },
        ),
        (
            format!("/queries/{QID}/result;jsessionid=1"),
            PathError::PathParameter,
        ),
        (
            format!("/queries/{QID}/result%3Bx"),
            PathError::PathParameter,
        ),
        (
            format!("/queries%252F{QID}%252Fresult"),
            PathError::DoubleEncoded,
        ),
        (
            format!("/queries/{QID}/r%2565sult"),
            PathError::DoubleEncoded,
        ),
        (format!("/../queries/{QID}/result"), PathError::AboveRoot),
        (format!("/queries/../../{QID}/result"), PathError::AboveRoot),
        (
            format!("/queries/%2E%2E/%2e%2e/{QID}"),
            PathError::AboveRoot,
        ),
        (format!("queries/{QID}/result"), PathError::NotOriginForm),
        ("*".to_owned(), PathError::NotOriginForm),
        (String::new(), PathError::NotOriginForm),
    ];
    for (target, error) in cases {
        assert_eq!(
            classify_target("GET", &target).unwrap_err(),
            error,
            "{target}"
        );
        // The folding classifier never lets them through as a chunk or as "unknown".
        let folded = classify("GET", &target);
        assert!(
            matches!(&folded, Endpoint::AmbiguousPath { error: e, .. } if *e == error),
            "{target}: {folded:?}"
        );
        assert!(folded.carries_rows());
        assert_eq!(folded.name(), "ambiguous_path");
    }
    // A raw `?` or `#` in a bare path (the caller forgot split_target).
    assert_eq!(
        normalize_path("/a?b").unwrap_err(),
        PathError::Delimiter { byte: b'?' }
    );
    assert_eq!(
        normalize_path("/a#b").unwrap_err(),
        PathError::Delimiter { byte: b'#' }
    );
}

#[test]
fn normalized_shape() {
    let n = normalize_path("/a//b/./c/../d/").unwrap();
    assert_eq!(n.as_str(), "/a/b/d");
    assert_eq!(n.segments().collect::<Vec<_>>(), ["a", "b", "d"]);
    assert!(!n.was_canonical());
    for root in ["/", "//", "/.", "/a/..", "/./"] {
        let n = normalize_path(root).unwrap();
        assert_eq!(n.as_str(), "/", "{root}");
        assert_eq!(n.segments().count(), 0);
    }
    // Lone `%` after decoding is kept (and re-encoded), `+` is a literal plus in a path.
    let n = normalize_path("/a%25zz/b+c/%C3%A9t%C3%A9").unwrap();
    assert_eq!(n.as_str(), "/a%zz/b+c/été");
    assert_eq!(
        n.to_origin_form(Some("x=1&y")),
        "/a%25zz/b%2Bc/%C3%A9t%C3%A9?x=1&y"
    );
    assert_eq!(n.to_origin_form(Some("")), "/a%25zz/b%2Bc/%C3%A9t%C3%A9?");
    assert_eq!(normalize_path(&n.to_origin_form(None)).unwrap(), n);
    assert_eq!(format!("{n}"), "/a%zz/b+c/été");
    assert!(format!("{n:?}").starts_with("NormalizedPath("));
}

#[test]
fn legit_driver_targets_classify_as_before_and_are_canonical() {
    // (method, target, endpoint name): the hand-written cases of `tests/snowflake.rs` and the
    // paths in the captures; absolute-form targets forward as origin-form.
    let cases = [
        ("POST", "/session/v1/login-request?request_id=1", "login"),
        (
            "POST",
            "/session/authenticator-request",
            "authenticator_request",
        ),
        (
            "POST",
            "/session/token-request?requestId=1",
            "token_request",
        ),
        ("POST", "/session/heartbeat?requestId=1", "heartbeat"),
        (
            "POST",
            "/session?delete=true&request_guid=g",
            "session_delete",
        ),
        (
            "POST",
            "/queries/v1/query-request?requestId=r",
            "query_request",
        ),
        (
            "POST",
            "/queries/v1/abort-request?requestId=r",
            "abort_request",
        ),
        ("POST", "/queries/01b2-x/abort-request", "abort_query"),
        (
            "GET",
            "/queries/01b2-x/result?request_guid=g",
            "query_result",
        ),
        ("GET", "/monitoring/queries/01b2-x", "monitoring_query"),
        ("POST", "/telemetry/send?request_guid=g", "telemetry"),
        ("POST", "/api/v2/statements?requestId=r", "sql_api_submit"),
        (
            "GET",
            "/api/v2/statements/h-1?partition=1",
            "sql_api_status",
        ),
        ("POST", "/api/v2/statements/h-1/cancel", "sql_api_cancel"),
        (
            "GET",
            "/results/x/main/data_0_0_0?X-Amz-Signature=abc&x=1",
            "result_chunk",
        ),
        ("GET", "/c/data_0?sv=2020&sig=abc", "result_chunk"),
        (
            "GET",
            "/fsp-chunks/953ae7d9-4555-4883-a113-b4c5b14b140b/0",
            "unknown",
        ),
    ];
    for (method, target, name) in cases {
        let c = classify_target(method, target).unwrap();
        assert_eq!(c.endpoint.name(), name, "{method} {target}");
        assert_eq!(c.endpoint, classify(method, target));
        assert!(c.path.was_canonical(), "{target}");
        assert_eq!(c.canonical_target(), target);
    }
    let c = classify_target("GET", "https://acct.snowflakecomputing.com?x=1").unwrap();
    assert_eq!(c.canonical_target(), "/?x=1");
}

#[test]
fn rows_only_where_results_flow() {
    let q = || "q".to_owned();
    let rows = [
        Endpoint::QueryRequest,
        Endpoint::QueryResult { query_id: q() },
        Endpoint::SqlApiSubmit,
        Endpoint::SqlApiStatus { handle: q() },
        Endpoint::ResultChunk,
        classify("PUT", "/x"),
    ];
    for e in rows {
        assert!(e.carries_rows(), "{e:?}");
    }
    let no_rows = [
        Endpoint::Login,
        Endpoint::AuthenticatorRequest,
        Endpoint::TokenRequest,
        Endpoint::Heartbeat,
        Endpoint::SessionDelete,
        Endpoint::AbortRequest,
        Endpoint::AbortQuery { query_id: q() },
        Endpoint::MonitoringQuery { query_id: q() },
        Endpoint::Telemetry,
        Endpoint::SqlApiCancel { handle: q() },
    ];
    for e in no_rows {
        assert!(!e.carries_rows(), "{e:?}");
    }
}

/// Paths built from the pieces attacks use: escapes (valid, invalid, double), dot segments,
/// empty segments, delimiters, backslashes, controls, non-ASCII.
fn path_piece() -> impl Strategy<Value = String> {
    // Weighted towards pieces that normalize, so that most paths get to the checks.
    prop_oneof![
        8 => "[a-zA-Z0-9_~-]{1,6}",
        6 => Just("/".to_owned()),
        2 => Just("//".to_owned()),
        2 => Just(".".to_owned()),
        2 => Just("..".to_owned()),
        2 => Just("/./".to_owned()),
        2 => Just("/../".to_owned()),
        2 => Just("%2e".to_owned()),
        2 => Just("%25".to_owned()),
        2 => Just("%C3%A9".to_owned()),
        2 => "%[0-9a-fA-F]{2}",
        2 => "[ -~]",
        1 => Just("é".to_owned()),
        1 => Just("%2F".to_owned()),
        1 => Just("%252F".to_owned()),
        1 => Just("%5C".to_owned()),
        1 => Just("%3B".to_owned()),
        1 => Just("%".to_owned()),
        1 => Just("\\".to_owned()),
    ]
}

fn attack_path() -> impl Strategy<Value = String> {
    prop::collection::vec(path_piece(), 0..12).prop_map(|v| format!("/{}", v.concat()))
}

fn check_canonical(n: &NormalizedPath) -> Result<(), TestCaseError> {
    let s = n.as_str();
    prop_assert!(s.starts_with('/'));
    prop_assert!(!s.contains("//"), "{s}");
    prop_assert!(!s.contains("/./") && !s.ends_with("/."), "{s}");
    prop_assert!(!s.contains("/../") && !s.ends_with("/.."), "{s}");
    prop_assert!(s == "/" || !s.ends_with('/'), "{s}");
    let origin = n.to_origin_form(None);
    prop_assert!(!origin.to_ascii_uppercase().contains("%2F"), "{origin}");
    prop_assert!(origin.is_ascii());
    let again = normalize_path(&origin).expect("the origin form normalizes");
    prop_assert_eq!(&again, n);
    prop_assert!(again.was_canonical());
    Ok(())
}

proptest! {
    #[test]
    fn normalization_is_idempotent(path in attack_path()) {
        match normalize_path(&path) {
            Ok(n) => check_canonical(&n)?,
            // A refusal is stable too: the same spelling is refused the same way.
            Err(e) => prop_assert_eq!(normalize_path(&path).unwrap_err(), e),
        }
    }

    #[test]
    fn arbitrary_paths_never_panic(path in "/\\PC{0,40}", bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(n) = normalize_path(&path) {
            check_canonical(&n)?;
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(n) = normalize_path(&text) {
            check_canonical(&n)?;
        }
        let _ = classify("GET", &text);
    }

    #[test]
    fn classification_survives_forwarding(path in attack_path(), query in proptest::option::of("[a-zA-Z0-9=&%-]{0,20}")) {
        let target = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
        if let Ok(c) = classify_target("GET", &target) {
            // What the proxy forwards classifies the same, and forwards unchanged.
            let forwarded = c.canonical_target();
            let again = classify_target("GET", &forwarded).unwrap();
            prop_assert_eq!(&again.endpoint, &c.endpoint);
            prop_assert_eq!(again.canonical_target(), forwarded);
        }
    }

    #[test]
    fn encoding_letters_never_changes_the_endpoint(mask in prop::collection::vec(any::<bool>(), 0..64)) {
        // Any subset of the characters of a result path percent-encoded is still that result.
        let canonical = format!("/queries/{QID}/result");
        let spelled: String = canonical
            .chars()
            .enumerate()
            .map(|(i, c)| if c != '/' && mask.get(i).copied().unwrap_or(false) {
                format!("%{:02X}", c as u32)
            } else {
                c.to_string()
            })
            .collect();
        prop_assert_eq!(classify("GET", &format!("{spelled}?X-Amz-Signature=x")), result());
    }
}
