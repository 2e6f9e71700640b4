//! The streaming JSON chunk masker against the one-shot `data.rowset` path (serde_json
//! `Value`s): same masked values and counts on random rows cut into random pieces, and the same
//! verdict on damaged input.

mod common;

use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use serde_json::Value;
use tollgate_mask::{
    ColumnCounts, ColumnRule, DetectRule, DetectorSet, Method, ResultMasker, RowsetError,
};

/// Cell text: ASCII, quotes, backslashes, control characters, non-ASCII (two, three and four
/// bytes), and PHI-looking pieces for the detectors.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => "[a-zA-Z0-9 .,:-]{1,8}",
            1 => Just("\"".to_owned()),
            1 => Just("\\".to_owned()),
            1 => "[\\x00-\\x1f\\x7f]",
            1 => "[é€日😀\u{10ffff}]",
            1 => Just("219-09-9999".to_owned()),
            1 => Just("1980-01-02".to_owned()),
        ],
        0..6,
    )
    .prop_map(|parts| parts.concat())
}

/// A cell of the kept column: any JSON value.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z]{0,3}", inner), 0..3)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

type Row = (Value, Option<String>, Option<String>, Option<String>);

fn rows() -> impl Strategy<Value = Vec<Row>> {
    let cell = || prop::option::weighted(0.8, text());
    prop::collection::vec((any_json(), cell(), cell(), cell()), 0..12)
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::Redact),
        Just(Method::Null),
        Just(token()),
        (0usize..4).prop_map(|keep_last| Method::Partial { keep_last }),
        Just(Method::Generalize),
    ]
}

fn masker(m1: Method, m2: Method) -> ResultMasker {
    let rowtype = vec![
        sf_rowtype("K", "variant", None),
        sf_rowtype("A", "text", None),
        sf_rowtype("B", "text", None),
        sf_rowtype("NOTE", "text", None),
    ];
    let detect = ColumnRule::Detect(DetectRule {
        detectors: Arc::new(DetectorSet::standard()),
        methods: vec![],
        default: Method::Redact,
    });
    let rules = vec![
        ColumnRule::Keep,
        ColumnRule::Mask(m1),
        ColumnRule::Mask(m2),
        detect,
    ];
    ResultMasker::new(rules, &rowtype).unwrap()
}

/// Writes `s` as a JSON string, each character either as is (escaped only where JSON needs
/// it) or as a `\u` escape (a surrogate pair above the BMP), as `escape` says.
fn write_str(out: &mut String, s: &str, escape: &mut impl Iterator<Item = bool>) {
    out.push('"');
    for c in s.chars() {
        let esc = escape.next().unwrap_or(false);
        match c {
            '"' if !esc => out.push_str("\\\""),
            '\\' if !esc => out.push_str("\\\\"),
            '/' if esc => out.push_str("\\/"),
            c if esc || c < ' ' => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04X}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_value(out: &mut String, v: &Value, escape: &mut impl Iterator<Item = bool>) {
    match v {
        Value::String(s) => write_str(out, s, escape),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, x, escape);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(" , ");
                }
                write_str(out, k, escape);
                out.push_str(" :");
                write_value(out, x, escape);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The rows as a chunk body, with JSON whitespace from `ws` around rows and values.
fn chunk(rows: &[Row], escapes: &[bool], ws: &[u8]) -> Vec<u8> {
    let mut escape = escapes.iter().copied().cycle();
    let mut space = ws
        .iter()
        .cycle()
        .map(|&w| [" ", "", "\n", "", "\r\n\t", ""][w as usize % 6]);
    let mut out = String::new();
    for (i, (k, a, b, note)) in rows.iter().enumerate() {
        if i > 0 {
            out.push_str(space.next().unwrap());
            out.push(',');
        }
        out.push_str(space.next().unwrap());
        out.push('[');
        write_value(&mut out, k, &mut escape);
        for cell in [a, b, note] {
            out.push_str(space.next().unwrap());
            out.push(',');
            out.push_str(space.next().unwrap());
            match cell {
                Some(s) => write_str(&mut out, s, &mut escape),
                None => out.push_str("null"),
            }
        }
        out.push_str(space.next().unwrap());
        out.push(']');
    }
    out.push_str(space.next().unwrap());
    out.into_bytes()
}

/// Streams `input` through a chunk masker in pieces of the sizes in `cuts` (cycled).
fn stream(
    m: &ResultMasker,
    input: &[u8],
    cuts: &[usize],
) -> Result<(Vec<u8>, ColumnCounts), RowsetError> {
    let mut c = m.json_chunk_masker();
    let mut out = Vec::new();
    let mut at = 0;
    for &n in cuts.iter().cycle() {
        if at >= input.len() {
            break;
        }
        let end = (at + n).min(input.len());
        c.push(&input[at..end], &mut out)?;
        at = end;
    }
    let counts = c.finish(&mut out)?;
    Ok((out, counts))
}

/// The one-shot reference: the body parsed as one array and masked as `data.rowset`.
fn reference(m: &ResultMasker, input: &[u8]) -> Option<(Value, ColumnCounts)> {
    let mut rowset: Value = serde_json::from_slice(&[b"[", input, b"]"].concat()).ok()?;
    let mut counts = ColumnCounts::default();
    m.mask_json_rowset(&mut rowset, &mut counts).ok()?;
    Some((rowset, counts))
}

fn parse_body(out: &[u8]) -> Value {
    serde_json::from_slice(&[b"[", out, b"]"].concat()).expect("output parses")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn streamed_chunks_mask_like_the_rowset_path(
        rows in rows(),
        m1 in method(),
        m2 in method(),
        escapes in prop::collection::vec(prop::bool::weighted(0.2), 1..40),
        ws in prop::collection::vec(any::<u8>(), 1..16),
        cuts in prop::collection::vec(1usize..80, 1..6),
    ) {
        let m = masker(m1, m2);
        let input = chunk(&rows, &escapes, &ws);
        let (want, want_counts) = reference(&m, &input).expect("the generated body is valid");
        let (out, counts) = stream(&m, &input, &cuts).unwrap();
        prop_assert_eq!(parse_body(&out), want);
        prop_assert_eq!(&counts, &want_counts);
        prop_assert_eq!(counts.rows(), rows.len() as u64);
        // In one piece: the same bytes.
        let (whole, whole_counts) = stream(&m, &input, &[input.len().max(1)]).unwrap();
        prop_assert_eq!(&whole, &out);
        prop_assert_eq!(whole_counts, counts);
        // Unmasked rows are copied byte for byte, separators included.
        let keep = ResultMasker::new(
            (0..4).map(|_| ColumnRule::Keep).collect(),
            &[sf_rowtype("K", "variant", None), sf_rowtype("A", "text", None),
              sf_rowtype("B", "text", None), sf_rowtype("NOTE", "text", None)],
        ).unwrap();
        let (same, _) = stream(&keep, &input, &cuts).unwrap();
        let trimmed = input.len() - input.iter().rev().take_while(|b| b.is_ascii_whitespace()).count();
        let lead = input.iter().take_while(|b| b.is_ascii_whitespace()).count();
        if !rows.is_empty() {
            prop_assert_eq!(&same[..], &input[lead..trimmed]);
        }
    }

    /// A damaged body (one byte changed, dropped or cut off) is accepted exactly when the
    /// reference accepts it, and then masked alike.
    #[test]
    fn damaged_chunks_fail_like_the_rowset_path(
        rows in rows(),
        m1 in method(),
        escapes in prop::collection::vec(prop::bool::weighted(0.2), 1..40),
        at in any::<prop::sample::Index>(),
        damage in 0u8..4,
        byte in prop_oneof![
            Just(b'"'), Just(b'\\'), Just(b','), Just(b'['), Just(b']'), Just(b'{'), Just(b'}'),
            Just(b':'), Just(b'n'), Just(b'u'), Just(b'0'), Just(b' '), Just(0x01u8), Just(0x80u8),
            Just(0xc3u8), Just(0xffu8), any::<u8>(),
        ],
        cuts in prop::collection::vec(1usize..40, 1..6),
    ) {
        let m = masker(m1, Method::Redact);
        let mut input = chunk(&rows, &escapes, &[0]);
        prop_assume!(!input.is_empty());
        let i = at.index(input.len());
        match damage {
            0 => input[i] = byte,
            1 => { input.remove(i); }
            2 => input.insert(i, byte),
            _ => input.truncate(i),
        }
        // Lone surrogates are refused only where values are read (masked columns); keep them
        // out of the comparison.
        prop_assume!(!contains(&input, b"\\uD") && !contains(&input, b"\\ud"));
        let got = stream(&m, &input, &cuts);
        match reference(&m, &input) {
            Some((want, want_counts)) => {
                let (out, counts) = got.expect("valid input is accepted");
                prop_assert_eq!(parse_body(&out), want);
                prop_assert_eq!(counts, want_counts);
            }
            None => prop_assert!(got.is_err(), "invalid input was accepted"),
        }
    }
}

fn one_shot(m: &ResultMasker, input: &[u8]) -> Result<(Vec<u8>, ColumnCounts), RowsetError> {
    stream(m, input, &[input.len().max(1)])
}

fn two_cols(rule: ColumnRule) -> ResultMasker {
    ResultMasker::new(
        vec![ColumnRule::Keep, rule],
        &[sf_rowtype("A", "text", None), sf_rowtype("B", "text", None)],
    )
    .unwrap()
}

#[test]
fn malformed_cells_are_errors_at_every_split() {
    let redact = two_cols(ColumnRule::Mask(Method::Redact));
    let cases: [(&[u8], &str); 12] = [
        (br#"["a","\x"]"#, "invalid string escape"),
        (br#"["\x","b"]"#, "invalid string escape"),
        (br#"["a","\u12G4"]"#, "invalid string escape"),
        (br#"["a","\u12"]"#, "invalid string escape"),
        (br#"["a","\ud800"]"#, "invalid string escape"),
        (br#"["a","\udc00\ud800"]"#, "invalid string escape"),
        (b"[\"a\",\"b\x01\"]", "control character"),
        (b"[\"a\x1f\",\"b\"]", "control character"),
        (b"[\"a\",\"\xc3\x28\"]", "UTF-8"),
        (b"[\"\xe2\x82\",\"b\"]", "UTF-8"),
        (b"[\"a\",\"b\xf0\x9f\x98\"]", "UTF-8"),
        (br#"["a","b"],["c" ,, "d"]"#, "expected a JSON value"),
    ];
    for (input, want) in cases {
        for k in 0..=input.len() {
            let err = stream(&redact, input, &[k.max(1), input.len()]).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(want),
                "{} split {k}: {msg}",
                String::from_utf8_lossy(input)
            );
        }
    }
    // A code point split across pieces is fine; a kept column's lone surrogate is not read.
    let ok: &[u8] = "[\"é€\",\"日😀\"],[\"\\ud800\",null]".as_bytes();
    for k in 1..ok.len() {
        let (out, counts) = stream(&redact, ok, &[k, ok.len()]).unwrap();
        assert_eq!(
            out,
            "[\"é€\",\"***\"],[\"\\ud800\",null]".as_bytes(),
            "split {k}"
        );
        assert_eq!(counts.columns()[1].masked, 1);
    }
}

#[test]
fn truncated_rows_are_errors() {
    let m = two_cols(ColumnRule::Mask(token()));
    let body: &[u8] = br#"["a","b\"c"], ["d","\u00e9"]"#;
    let full = one_shot(&m, body).unwrap();
    assert_eq!(full.1.rows(), 2);
    let first_end = body.iter().position(|&b| b == b']').unwrap() + 1;
    for cut in 1..body.len() {
        let r = stream(&m, &body[..cut], &[3]);
        if cut == first_end {
            assert_eq!(r.unwrap().1.rows(), 1, "cut {cut}");
        } else {
            let err = r.unwrap_err();
            assert!(
                matches!(err, RowsetError::Truncated { .. }),
                "cut {cut}: {err}"
            );
        }
    }
    // Where a truncated row starts is reported as its offset.
    let err = one_shot(&m, &body[..body.len() - 1]).unwrap_err();
    match err {
        RowsetError::Truncated { offset, .. } => assert_eq!(offset, first_end as u64 + 2),
        other => panic!("{other}"),
    }
}

#[test]
fn long_rows_streamed_in_small_pieces() {
    // A long escaped VARIANT-like value across many pieces: the masker keeps only the row.
    let m = two_cols(ColumnRule::Mask(Method::Partial { keep_last: 3 }));
    let long: String = (0..5000)
        .map(|i| if i % 97 == 0 { "\"q\\" } else { "ab日" })
        .collect();
    let row = format!("[\"k\",{}]", serde_json::to_string(&long).unwrap());
    let input = format!("{row},{row}");
    let reference_rows = reference(&m, input.as_bytes()).unwrap();
    for piece in [1, 7, 64, 1000] {
        let (out, counts) = stream(&m, input.as_bytes(), &[piece]).unwrap();
        assert_eq!(parse_body(&out), reference_rows.0, "piece {piece}");
        assert_eq!(counts, reference_rows.1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// DATE columns under every method (Generalize has its own path from the day count).
    #[test]
    fn date_columns_mask_like_the_rowset_path(
        days in prop::collection::vec(
            prop_oneof![
                4 => (-30_000i64..50_000).prop_map(|d| d.to_string()),
                1 => any::<i64>().prop_map(|d| d.to_string()),
                1 => Just("-0".to_owned()),
                1 => Just("+7367".to_owned()),
                1 => Just("1e3".to_owned()),
            ],
            1..10,
        ),
        method in method(),
        cuts in prop::collection::vec(1usize..30, 1..4),
    ) {
        let m = ResultMasker::new(
            vec![ColumnRule::Mask(method)],
            &[sf_rowtype("DOB", "date", None)],
        )
        .unwrap();
        let input = days
            .iter()
            .map(|d| serde_json::to_string(&[d]).unwrap())
            .collect::<Vec<_>>()
            .join(",")
            .into_bytes();
        let got = stream(&m, &input, &cuts);
        match reference(&m, &input) {
            Some((want, want_counts)) => {
                let (out, counts) = got.unwrap();
                prop_assert_eq!(parse_body(&out), want);
                prop_assert_eq!(counts, want_counts);
            }
            None => prop_assert!(got.is_err()),
        }
    }
}
