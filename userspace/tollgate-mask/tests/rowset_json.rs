//! JSON rowset and JSON chunk masking on captured Snowflake payloads.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{json, Value};
use tollgate_mask::{
    ColumnCounts, ColumnRule, DetectRule, Detector, DetectorSet, Method, ResultMasker, RowsetError,
};

/// Node's `SELECT id, name, ssn, dob, balance FROM patients WHERE id > ?`:
/// `[["3","Carol","111-22-3333","7367","1.25"]]`.
fn patients() -> (Vec<Value>, Value) {
    let v: Value = serde_json::from_slice(&fixture("patients_json.json")).unwrap();
    (
        v["rowtype"].as_array().unwrap().clone(),
        v["rowset"].clone(),
    )
}

fn range_chunk() -> (Vec<Value>, Vec<u8>) {
    (rowtype("range_json"), fixture("range_chunk1.json"))
}

/// Parses a chunk body the way the drivers do: wrapped in brackets.
fn rows(chunk: &[u8]) -> Vec<Vec<Value>> {
    let mut wrapped = b"[".to_vec();
    wrapped.extend_from_slice(chunk);
    wrapped.push(b']');
    serde_json::from_slice(&wrapped).expect("chunk output parses as the drivers parse it")
}

fn one_shot(m: &ResultMasker, chunk: &[u8]) -> Result<(Vec<u8>, ColumnCounts), RowsetError> {
    let mut c = m.json_chunk_masker();
    let mut out = Vec::new();
    c.push(chunk, &mut out)?;
    let counts = c.finish(&mut out)?;
    Ok((out, counts))
}

#[test]
fn rowset_masked_by_column_and_rowtype_rewritten() {
    let (rowtype, mut rowset) = patients();
    let original = rowset.clone();
    let rules = vec![
        ColumnRule::Mask(token()),
        ColumnRule::Keep,
        ColumnRule::Mask(Method::Partial { keep_last: 4 }),
        ColumnRule::Mask(Method::Generalize),
        ColumnRule::Mask(Method::Null),
    ];
    let m = ResultMasker::new(rules, &rowtype).unwrap();
    let mut counts = ColumnCounts::default();
    m.mask_json_rowset(&mut rowset, &mut counts).unwrap();
    assert_eq!(
        rowset,
        json!([[tok("3"), "Carol", "***-**-3333", "1990", null]])
    );
    let mut rt = rowtype.clone();
    m.rewrite_rowtype(&mut rt);
    assert_text_rowtype(&rt[0]);
    assert_eq!(rt[1], rowtype[1]);
    assert_eq!(rt[2], rowtype[2]);
    assert_text_rowtype(&rt[3]);
    assert_eq!(rt[4]["type"], "fixed");
    assert_eq!(rt[4]["nullable"], true);
    let text = rowset.to_string();
    for v in ["111-22-3333", "7367", "1.25"] {
        assert!(!text.contains(v), "{v} survived");
    }
    let per_col: Vec<u64> = counts.columns().iter().map(|c| c.masked).collect();
    assert_eq!(per_col, [1, 0, 1, 1, 1]);
    assert_eq!(counts.rows(), 1);

    // Keep-all changes nothing.
    let m = ResultMasker::new((0..5).map(|_| ColumnRule::Keep).collect(), &rowtype).unwrap();
    assert!(m.is_noop());
    let mut same = original.clone();
    m.mask_json_rowset(&mut same, &mut counts).unwrap();
    assert_eq!(same, original);
}

#[test]
fn json_and_arrow_render_values_alike() {
    // Snowflake's JSON encodings of the values the Arrow test renders (see rowset_arrow.rs).
    let cases: [(&str, Option<u32>, &str, &str); 10] = [
        ("fixed", Some(2), "10.50", "10.50"),
        (
            "timestamp_ntz",
            Some(3),
            "1715000000.123",
            "2024-05-06 12:53:20.123",
        ),
        (
            "timestamp_ltz",
            Some(0),
            "86399",
            "1970-01-01 23:59:59 +00:00",
        ),
        (
            "timestamp_tz",
            Some(3),
            "1.000 1500",
            "1970-01-01 01:00:01.000 +01:00",
        ),
        (
            "timestamp_tz",
            Some(9),
            "1704164645.000000000 1440",
            "2024-01-02 03:04:05.000000000 +00:00",
        ),
        ("time", Some(3), "3723.500", "01:02:03.500"),
        ("date", None, "-1", "1969-12-31"),
        ("boolean", None, "1", "true"),
        ("binary", None, "ab", "AB"),
        ("real", None, "1.5", "1.5"),
    ];
    let rowtype: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (t, scale, _, _))| sf_rowtype(&format!("C{i}"), t, *scale))
        .collect();
    let m = ResultMasker::new(
        cases.iter().map(|_| ColumnRule::Mask(token())).collect(),
        &rowtype,
    )
    .unwrap();
    let mut rowset = json!([cases.iter().map(|c| c.2).collect::<Vec<_>>()]);
    m.mask_json_rowset(&mut rowset, &mut ColumnCounts::default())
        .unwrap();
    let expected: Vec<String> = cases.iter().map(|c| tok(c.3)).collect();
    assert_eq!(rowset, json!([expected]));
}

#[test]
fn rowset_errors_empty_the_rowset_and_name_no_value() {
    let (rowtype, rowset) = patients();
    let rules = || {
        vec![
            ColumnRule::Keep,
            ColumnRule::Keep,
            ColumnRule::Mask(Method::Redact),
            ColumnRule::Mask(Method::Generalize),
            ColumnRule::Keep,
        ]
    };
    let m = ResultMasker::new(rules(), &rowtype).unwrap();
    let mut counts = ColumnCounts::default();
    let cases = [
        (
            json!([["3", "Carol", "111-22-3333", "notadate42", "1.25"]]),
            "DOB",
        ),
        (json!([["3", "Carol", 1112233, "7367", "1.25"]]), "SSN"),
        (json!([["3", "Carol", "111-22-3333", "7367"]]), "4 values"),
        (json!([{"ID": "3"}]), "not an array"),
        (json!({"rows": []}), "not an array"),
    ];
    for (mut bad, what) in cases {
        let err = m.mask_json_rowset(&mut bad, &mut counts).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(what), "{msg}");
        for v in ["notadate42", "1112233", "111-22-3333", "Carol"] {
            assert!(!msg.contains(v), "{msg}");
        }
        assert_eq!(bad, json!([]), "a failed rowset is emptied");
    }
    assert_eq!(counts, ColumnCounts::default(), "failures add no counts");
    // Rules and rowtype must agree; a masked column needs a type.
    assert!(matches!(
        ResultMasker::new(vec![ColumnRule::Keep], &rowtype),
        Err(RowsetError::ColumnCount {
            rules: 1,
            columns: 5,
            ..
        })
    ));
    let err = ResultMasker::new(
        vec![ColumnRule::Mask(Method::Redact)],
        &[json!({"name": "X"})],
    )
    .unwrap_err();
    assert!(
        matches!(err, RowsetError::MissingType { column: 0, .. }),
        "{err}"
    );
    // `null` rowset: nothing to do.
    let mut null = Value::Null;
    m.mask_json_rowset(&mut null, &mut counts).unwrap();
    let _ = rowset;
}

#[test]
fn chunk_keep_all_is_byte_identical_and_masking_keeps_separators() {
    let (rowtype, chunk) = range_chunk();
    assert!(chunk.starts_with(br#"["2000", "name-2000"],["2001""#));
    let m = ResultMasker::new(vec![ColumnRule::Keep, ColumnRule::Keep], &rowtype).unwrap();
    let (out, counts) = one_shot(&m, &chunk).unwrap();
    assert_eq!(out, chunk);
    assert_eq!(counts.rows(), 500);

    let m = ResultMasker::new(
        vec![
            ColumnRule::Keep,
            ColumnRule::Mask(Method::Partial { keep_last: 2 }),
        ],
        &rowtype,
    )
    .unwrap();
    let (out, counts) = one_shot(&m, &chunk).unwrap();
    assert!(out.starts_with(br#"["2000", "****-**00"],["2001", "****-**01"]"#));
    let (r_in, r_out) = (rows(&chunk), rows(&out));
    assert_eq!(r_out.len(), 500);
    for (a, b) in r_in.iter().zip(&r_out) {
        assert_eq!(a[0], b[0], "kept column identical");
    }
    assert!(!contains(&out, b"name-"));
    assert_eq!(counts.columns()[1].masked, 500);

    // Other separators (newlines, spaces) are kept as they were.
    let rowtype = vec![
        sf_rowtype("A", "fixed", Some(0)),
        sf_rowtype("B", "text", None),
    ];
    let m = ResultMasker::new(
        vec![ColumnRule::Keep, ColumnRule::Mask(Method::Redact)],
        &rowtype,
    )
    .unwrap();
    let input = b" [\"1\",\"a\"],\n[\"2\",null] ,\r\n\t[ \"3\" , \"c\\\"q\" ]\n";
    let (out, _) = one_shot(&m, input).unwrap();
    assert_eq!(
        out,
        b"[\"1\",\"***\"],\n[\"2\",null] ,\r\n\t[ \"3\" , \"***\" ]".to_vec()
    );
}

#[test]
fn chunk_streaming_equals_one_shot_at_every_split() {
    let (rowtype, chunk) = range_chunk();
    let m = ResultMasker::new(
        vec![ColumnRule::Mask(token()), ColumnRule::Mask(Method::Redact)],
        &rowtype,
    )
    .unwrap();
    let (whole, counts) = one_shot(&m, &chunk).unwrap();
    // Byte by byte.
    let mut c = m.json_chunk_masker();
    let mut out = Vec::new();
    let mut first_row_out_at = None;
    for (i, b) in chunk.iter().enumerate() {
        c.push(std::slice::from_ref(b), &mut out).unwrap();
        if first_row_out_at.is_none() && !out.is_empty() {
            first_row_out_at = Some(i);
        }
    }
    assert_eq!(c.finish(&mut out).unwrap(), counts);
    assert_eq!(out, whole);
    assert_eq!(
        first_row_out_at,
        Some(chunk.iter().position(|&b| b == b']').unwrap()),
        "a row is emitted as soon as it is complete"
    );
    // Every split point of a small chunk, in two pieces.
    let small = &chunk[..chunk.len().min(400)];
    let small = &small[..small.iter().rposition(|&b| b == b']').unwrap() + 1];
    let (expected, _) = one_shot(&m, small).unwrap();
    for k in 0..=small.len() {
        let mut c = m.json_chunk_masker();
        let mut out = Vec::new();
        c.push(&small[..k], &mut out).unwrap();
        c.push(&small[k..], &mut out).unwrap();
        c.finish(&mut out).unwrap();
        assert_eq!(out, expected, "split at {k}");
    }
    // Random pieces.
    for seed in 0..10 {
        let mut rng = Rng(seed);
        let mut c = m.json_chunk_masker();
        let mut out = Vec::new();
        let mut at = 0;
        while at < chunk.len() {
            let end = (at + 1 + rng.below(300)).min(chunk.len());
            c.push(&chunk[at..end], &mut out).unwrap();
            at = end;
        }
        c.finish(&mut out).unwrap();
        assert_eq!(out, whole, "seed {seed}");
    }
}

#[test]
fn chunk_truncation_and_malformed_input_are_errors() {
    let (rowtype, chunk) = range_chunk();
    let m = ResultMasker::new(
        vec![ColumnRule::Keep, ColumnRule::Mask(Method::Redact)],
        &rowtype,
    )
    .unwrap();
    // Cut inside a row or after a separator: an error at finish, and no partial row out.
    for cut in [1, 5, 12, 20, 22, 23, 30, 1000, chunk.len() - 1] {
        let mut c = m.json_chunk_masker();
        let mut out = Vec::new();
        c.push(&chunk[..cut], &mut out).unwrap();
        let err = c.finish(&mut out).unwrap_err();
        assert!(
            matches!(err, RowsetError::Truncated { .. }),
            "cut {cut}: {err}"
        );
        if !out.is_empty() {
            assert!(
                out.ends_with(b"]"),
                "cut {cut}: only whole rows are emitted"
            );
            rows(&out);
        }
    }
    // A cut right after a row is a complete (shorter) chunk.
    let end_of_row = chunk.iter().position(|&b| b == b']').unwrap() + 1;
    assert_eq!(
        rows(&one_shot(&m, &chunk[..end_of_row]).unwrap().0).len(),
        1
    );

    let cases: [(&[u8], &str); 12] = [
        (br#"["1","a"]["2","b"]"#, "expected `,` between rows"),
        (br#"{"1":"a"}"#, "expected `[`"),
        (br#"["1","a"],,["2","b"]"#, "expected `[`"),
        (br#"["1","a","x"]"#, "3 values"),
        (br#"["1"]"#, "1 values"),
        (br#"["1",5]"#, "not a string or null"),
        (br#"["1","a\q"]"#, "invalid string escape"),
        (br#"["1" "a"]"#, "expected `,` or `]`"),
        (br#"["1",nul]"#, "expected a JSON value"),
        (b"[\"1\",\"a\xff\"]", "UTF-8"),
        (br#"["1","a"],"#, "trailing `,`"),
        (br#"["1",["a"]]"#, "not a string or null"),
    ];
    for (input, want) in cases {
        let err = one_shot(&m, input).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(want),
            "{}: {msg}",
            String::from_utf8_lossy(input)
        );
        assert!(!msg.contains("\"a"), "{msg}");
    }
    // Errors say where.
    let err = one_shot(&m, br#"["1","a"],["2","b"],["3" "c"]"#).unwrap_err();
    assert!(err.to_string().contains("row 2 at byte offset 20"), "{err}");
    // After an error nothing more is accepted or emitted.
    let mut c = m.json_chunk_masker();
    let mut out = Vec::new();
    c.push(br#"["1","secret"],["2" "#, &mut out).unwrap();
    let emitted = out.len();
    assert!(c.push(br#""x"]"#, &mut out).is_err());
    assert!(matches!(
        c.push(br#",["3","y"]"#, &mut out),
        Err(RowsetError::Failed)
    ));
    assert_eq!(out.len(), emitted);
    assert!(!contains(&out, b"secret"));
    // Empty and whitespace-only chunks are empty.
    assert!(one_shot(&m, b"").unwrap().0.is_empty());
    assert!(one_shot(&m, b" \n").unwrap().0.is_empty());
}

#[test]
fn chunk_row_limit() {
    let (rowtype, chunk) = range_chunk();
    let m = ResultMasker::new(
        vec![ColumnRule::Keep, ColumnRule::Mask(Method::Redact)],
        &rowtype,
    )
    .unwrap();
    for (limit, want, truncated) in [
        (0, 0, true),
        (1, 1, true),
        (10, 10, true),
        (500, 500, false),
    ] {
        for piece in [chunk.len(), 7] {
            let mut c = m.json_chunk_masker().with_row_limit(limit);
            let mut out = Vec::new();
            for p in chunk.chunks(piece) {
                c.push(p, &mut out).unwrap();
            }
            let counts = c.finish(&mut out).unwrap();
            let r = rows(&out);
            assert_eq!(r.len(), want, "limit {limit}");
            assert_eq!(counts.rows(), want as u64);
            assert_eq!(counts.truncated(), truncated, "limit {limit}");
            if let Some(first) = r.first() {
                assert_eq!(first[0], "2000");
            }
        }
    }
    // Past the limit the rest is not parsed: a truncated tail is no error.
    let mut c = m.json_chunk_masker().with_row_limit(1);
    let mut out = Vec::new();
    c.push(br#"["1","a"],["2","#, &mut out).unwrap();
    assert!(c.finish(&mut out).unwrap().truncated());
}

#[test]
fn chunk_detect_and_escapes() {
    let rowtype = vec![
        sf_rowtype("NOTE", "text", None),
        sf_rowtype("V", "variant", None),
        sf_rowtype("N", "fixed", Some(0)),
        sf_rowtype("S", "text", None),
    ];
    let rule = DetectRule {
        detectors: Arc::new(DetectorSet::standard()),
        methods: vec![(Detector::Email, token())],
        default: Method::Redact,
    };
    let rules = vec![
        ColumnRule::Detect(rule.clone()),
        ColumnRule::Detect(rule.clone()),
        ColumnRule::Detect(rule),
        ColumnRule::Mask(token()),
    ];
    let m = ResultMasker::new(rules, &rowtype).unwrap();
    let input = br#"["SSN 219-09-9999, mail a.b@example.com", "{\"ssn\":\"219-09-9999\"}", "219099999", "caf\u00e9 \"q\""],["none", null, "1", null]"#;
    let (out, counts) = one_shot(&m, input).unwrap();
    let r = rows(&out);
    assert_eq!(r[0][0], format!("SSN ***, mail {}", tok("a.b@example.com")));
    assert_eq!(r[0][1], r#"{"ssn":"***"}"#, "VARIANT text stays valid JSON");
    assert_eq!(r[0][2], "219099999", "FIXED is not free text");
    assert_eq!(r[0][3], tok("café \"q\""), "the unescaped value is masked");
    assert_eq!(r[1], [json!("none"), Value::Null, json!("1"), Value::Null]);
    assert!(!contains(&out, b"219-09-9999"));
    assert!(
        out.ends_with(br#"["none", null, "1", null]"#),
        "unchanged row copied"
    );
    assert_eq!(counts.columns()[0].findings.get(Detector::Ssn), 1);
    assert_eq!(counts.columns()[0].findings.get(Detector::Email), 1);
    assert_eq!(counts.columns()[1].masked, 1);
    assert_eq!(counts.columns()[2].masked, 0);
    assert_eq!(counts.columns()[3].masked, 1);
    let mut rt = rowtype.clone();
    m.rewrite_rowtype(&mut rt);
    assert_eq!(rt, rowtype, "Detect and text tokens change no type");
}
