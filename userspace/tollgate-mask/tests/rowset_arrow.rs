//! Arrow result masking on captured Snowflake payloads and synthetic batches.

mod common;

use std::sync::Arc;

use arrow_array::builder::{Int32Builder, Int64Builder, StructBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, DictionaryArray, Int16Array,
    Int64Array, LargeStringArray, RecordBatch, StringArray, StringViewArray,
};
use arrow_schema::{DataType, Field, Fields, Schema};
use common::*;
use serde_json::Value;
use tollgate_mask::{
    ColumnCounts, ColumnRule, DetectRule, Detector, DetectorSet, Method, ResultMasker, RowsetError,
};

const EOS: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];

fn keep_all(n: usize) -> Vec<ColumnRule> {
    (0..n).map(|_| ColumnRule::Keep).collect()
}

fn mask(m: &ResultMasker, ipc: &[u8]) -> (Vec<u8>, ColumnCounts) {
    let mut counts = ColumnCounts::default();
    let out = m.mask_arrow_stream(ipc, &mut counts).expect("masks");
    (out, counts)
}

#[test]
fn keep_all_round_trips_every_capture() {
    for name in ["patients", "types", "show_tables", "range_first"] {
        let rowtype = rowtype(name);
        let ipc = fixture(&format!("{name}.arrow"));
        let m = ResultMasker::new(keep_all(rowtype.len()), &rowtype).unwrap();
        assert!(m.is_noop());
        let (out, counts) = mask(&m, &ipc);
        let (s_in, b_in) = decode(&ipc);
        let (s_out, b_out) = decode(&out);
        assert_eq!(
            s_in, s_out,
            "{name}: schema, field metadata and schema metadata"
        );
        assert_eq!(b_in, b_out, "{name}: batches");
        assert_eq!(out.ends_with(&EOS), ipc.ends_with(&EOS));
        assert_eq!(counts.total_masked(), 0);
        assert_eq!(
            counts.rows(),
            b_in.iter().map(|b| b.num_rows() as u64).sum::<u64>()
        );
        let mut rt = rowtype.clone();
        m.rewrite_rowtype(&mut rt);
        assert_eq!(rt, rowtype);
    }
}

/// SELECT id, name, ssn, dob, balance FROM patients: (1, Alice, 123-45-6789, 1980-01-02, 10.50),
/// (2, Bob, 987-65-4321, 1975-06-07, NULL).
#[test]
fn patients_capture_masked_by_column() {
    let rowtype = rowtype("patients");
    let ipc = fixture("patients.arrow");
    let rules = vec![
        ColumnRule::Mask(token()),
        ColumnRule::Keep,
        ColumnRule::Mask(Method::Partial { keep_last: 4 }),
        ColumnRule::Mask(Method::Generalize),
        ColumnRule::Mask(Method::Null),
    ];
    let m = ResultMasker::new(rules, &rowtype).unwrap();
    assert!(!m.is_noop());
    let (out, counts) = mask(&m, &ipc);
    let (s_in, b_in) = decode(&ipc);
    let (s, b) = decode(&out);

    // ID: FIXED tokenised → TEXT in both the field and the rowtype.
    assert_text_field(s.field(0));
    assert_eq!(strings(&b, 0), [Some(tok("1")), Some(tok("2"))]);
    let mut rt = rowtype.clone();
    m.rewrite_rowtype(&mut rt);
    assert_text_rowtype(&rt[0]);
    // NAME: untouched, field and values.
    assert_eq!(s.field(1), s_in.field(1));
    assert_eq!(column(&b, 1), column(&b_in, 1));
    assert_eq!(rt[1], rowtype[1]);
    // SSN: partial, still TEXT with its own metadata.
    assert_eq!(s.field(2), s_in.field(2));
    assert_eq!(
        strings(&b, 2),
        [Some("***-**-6789".into()), Some("***-**-4321".into())]
    );
    assert_eq!(rt[2], rowtype[2]);
    // DOB: DATE generalised to its year → TEXT.
    assert_text_field(s.field(3));
    assert_text_rowtype(&rt[3]);
    assert_eq!(strings(&b, 3), [Some("1980".into()), Some("1975".into())]);
    // BALANCE: NULL keeps its type and metadata, becomes nullable.
    assert_eq!(s.field(4).data_type(), s_in.field(4).data_type());
    assert_eq!(s.field(4).metadata(), s_in.field(4).metadata());
    assert_eq!(b[0].column(4).null_count(), 2);
    assert_eq!(rt[4]["type"], "fixed");
    assert_eq!(rt[4]["scale"], 2);
    assert_eq!(rt[4]["nullable"], true);

    for original in ["123-45-6789", "987-65-4321", "1980-01-02", "1975-06-07"] {
        assert!(!contains(&out, original.as_bytes()), "{original} survived");
    }
    let per_col: Vec<u64> = counts.columns().iter().map(|c| c.masked).collect();
    assert_eq!(per_col, [2, 0, 2, 2, 1], "NULL balance is not counted");
    assert_eq!(counts.rows(), 2);
}

/// select 1::boolean, 1.5::float, '2024-01-02 03:04:05'::timestamp, 'ab'::binary,
/// parse_json('{"a":1}') as v, [1,2]::array
#[test]
fn types_capture_boolean_real_timestamp_binary_variant() {
    let rowtype = rowtype("types");
    let ipc = fixture("types.arrow");
    let rules = |ts: Method| {
        vec![
            ColumnRule::Mask(token()),
            ColumnRule::Mask(Method::Generalize),
            ColumnRule::Mask(ts),
            ColumnRule::Mask(token()),
            ColumnRule::Detect(DetectRule {
                detectors: Arc::new(DetectorSet::standard()),
                methods: vec![],
                default: Method::Redact,
            }),
            ColumnRule::Keep,
        ]
    };
    let m = ResultMasker::new(rules(Method::Redact), &rowtype).unwrap();
    let (out, counts) = mask(&m, &ipc);
    let (s_in, b_in) = decode(&ipc);
    let (s, b) = decode(&out);
    let mut rt = rowtype.clone();
    m.rewrite_rowtype(&mut rt);
    for (i, entry) in rt.iter().enumerate().take(4) {
        assert_text_field(s.field(i));
        assert_text_rowtype(entry);
    }
    assert_eq!(strings(&b, 0), [Some(tok("true"))]);
    assert_eq!(
        strings(&b, 1),
        [Some("***".into())],
        "1.5 is no date/zip/age"
    );
    assert_eq!(strings(&b, 2), [Some("***".into())]);
    assert_eq!(strings(&b, 3), [Some(tok("6162"))]);
    // The VARIANT has no PHI: kept as is, field and rowtype too.
    assert_eq!(s.field(4), s_in.field(4));
    assert_eq!(column(&b, 4), column(&b_in, 4));
    assert_eq!(rt[4], rowtype[4]);
    assert_eq!(column(&b, 5), column(&b_in, 5));
    assert_eq!(counts.columns()[4].masked, 0);

    // The timestamp's text, seen through its token.
    let m = ResultMasker::new(rules(token()), &rowtype).unwrap();
    let (out, _) = mask(&m, &ipc);
    let (_, b) = decode(&out);
    assert_eq!(strings(&b, 2), [Some(tok("2024-01-02 03:04:05.000000000"))]);
}

/// SHOW TABLES: `created_on` is a TIMESTAMP_TZ struct {epoch, fraction, timezone}.
#[test]
fn show_tables_capture_timestamp_tz_and_int32() {
    let rowtype = rowtype("show_tables");
    let ipc = fixture("show_tables.arrow");
    let mut rules = keep_all(rowtype.len());
    rules[0] = ColumnRule::Mask(token());
    rules[7] = ColumnRule::Mask(Method::Null);
    rules[8] = ColumnRule::Mask(token());
    let m = ResultMasker::new(rules, &rowtype).unwrap();
    let (out, _) = mask(&m, &ipc);
    let (s_in, b_in) = decode(&ipc);
    let (s, b) = decode(&out);
    assert_eq!(
        strings(&b, 0),
        [Some(tok("1970-01-01 00:00:00.000000000 +00:00"))]
    );
    assert_eq!(s.field(7).data_type(), &DataType::Int32);
    assert!(b[0].column(7).is_null(0));
    assert_eq!(strings(&b, 8), [Some(tok("0"))]);
    for i in (1..7).chain(9..s.fields().len()) {
        assert_eq!(s.field(i), s_in.field(i));
        assert_eq!(column(&b, i), column(&b_in, i));
    }
}

/// Every Snowflake encoding the masker renders, with NULLs, in one synthetic batch.
fn synthetic() -> (Schema, RecordBatch, Vec<Value>, Vec<[&'static str; 2]>) {
    let tz_fields = Fields::from(vec![
        Field::new("epoch", DataType::Int64, true),
        Field::new("timezone", DataType::Int32, true),
    ]);
    let mut tz = StructBuilder::new(
        tz_fields.clone(),
        vec![
            Box::new(Int64Builder::new()) as Box<dyn arrow_array::builder::ArrayBuilder>,
            Box::new(Int32Builder::new()),
        ],
    );
    for (epoch, zone, valid) in [(1000, 1500, true), (0, 1380, true), (0, 0, false)] {
        tz.field_builder::<Int64Builder>(0)
            .unwrap()
            .append_value(epoch);
        tz.field_builder::<Int32Builder>(1)
            .unwrap()
            .append_value(zone);
        tz.append(valid);
    }
    let schema = Schema::new(vec![
        sf_field("AMOUNT", DataType::Int64, "FIXED", 2),
        sf_field("ADMITTED", DataType::Int64, "TIMESTAMP_NTZ", 3),
        sf_field("SEEN", DataType::Int64, "TIMESTAMP_LTZ", 0),
        sf_field("AT", DataType::Struct(tz_fields), "TIMESTAMP_TZ", 3),
        sf_field("T", DataType::Int64, "TIME", 3),
        sf_field("DOB", DataType::Date32, "DATE", 0),
        sf_field("NOTE", DataType::LargeUtf8, "TEXT", 0),
        sf_field("FLAG", DataType::Boolean, "BOOLEAN", 0),
        sf_field("BIN", DataType::Binary, "BINARY", 0),
        sf_field("SMALL", DataType::Int16, "FIXED", 1),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![Some(1050), Some(-5), None])),
        Arc::new(Int64Array::from(vec![
            Some(1_715_000_000_123),
            Some(0),
            None,
        ])),
        Arc::new(Int64Array::from(vec![Some(0), Some(86399), None])),
        Arc::new(tz.finish()),
        Arc::new(Int64Array::from(vec![Some(3_723_500), Some(0), None])),
        Arc::new(Date32Array::from(vec![Some(-1), Some(7367), None])),
        Arc::new(LargeStringArray::from(vec![Some("a"), Some("bb"), None])),
        Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
        Arc::new(BinaryArray::from(vec![
            Some(&[0xab_u8][..]),
            Some(&[][..]),
            None,
        ])),
        Arc::new(Int16Array::from(vec![Some(-15), Some(7), None])),
    ];
    let batch = RecordBatch::try_new(Arc::new(schema.clone()), columns).unwrap();
    let rowtype = vec![
        sf_rowtype("AMOUNT", "fixed", Some(2)),
        sf_rowtype("ADMITTED", "timestamp_ntz", Some(3)),
        sf_rowtype("SEEN", "timestamp_ltz", Some(0)),
        sf_rowtype("AT", "timestamp_tz", Some(3)),
        sf_rowtype("T", "time", Some(3)),
        sf_rowtype("DOB", "date", None),
        sf_rowtype("NOTE", "text", None),
        sf_rowtype("FLAG", "boolean", None),
        sf_rowtype("BIN", "binary", None),
        sf_rowtype("SMALL", "fixed", Some(1)),
    ];
    let texts = vec![
        ["10.50", "-0.05"],
        ["2024-05-06 12:53:20.123", "1970-01-01 00:00:00.000"],
        ["1970-01-01 00:00:00 +00:00", "1970-01-01 23:59:59 +00:00"],
        [
            "1970-01-01 01:00:01.000 +01:00",
            "1969-12-31 23:00:00.000 -01:00",
        ],
        ["01:02:03.500", "00:00:00.000"],
        ["1969-12-31", "1990-03-04"],
        ["a", "bb"],
        ["true", "false"],
        ["AB", ""],
        ["-1.5", "0.7"],
    ];
    (schema, batch, rowtype, texts)
}

#[test]
fn every_encoding_renders_to_text_and_becomes_text() {
    let (schema, batch, rowtype, texts) = synthetic();
    let ipc = encode(&schema, &[batch]);
    let rules = (0..rowtype.len())
        .map(|_| ColumnRule::Mask(token()))
        .collect();
    let m = ResultMasker::new(rules, &rowtype).unwrap();
    let (out, counts) = mask(&m, &ipc);
    let (s, b) = decode(&out);
    let mut rt = rowtype.clone();
    m.rewrite_rowtype(&mut rt);
    for (i, [a, bb]) in texts.iter().enumerate() {
        assert_eq!(
            strings(&b, i),
            [Some(tok(a)), Some(tok(bb)), None],
            "column {i} renders as {a:?}, {bb:?}"
        );
        if i == 6 {
            // Already TEXT: keeps its metadata; the rowtype is unchanged.
            assert_eq!(s.field(i).metadata(), schema.field(i).metadata());
            assert_eq!(rt[i], rowtype[i]);
        } else {
            assert_text_field(s.field(i));
            assert_text_rowtype(&rt[i]);
        }
        assert_eq!(counts.columns()[i].masked, 2, "NULLs are not counted");
    }
}

#[test]
fn null_method_keeps_every_type() {
    let (schema, batch, rowtype, _) = synthetic();
    let ipc = encode(&schema, std::slice::from_ref(&batch));
    let rules = (0..rowtype.len())
        .map(|_| ColumnRule::Mask(Method::Null))
        .collect();
    let m = ResultMasker::new(rules, &rowtype).unwrap();
    let (out, counts) = mask(&m, &ipc);
    let (s, b) = decode(&out);
    for (i, f) in s.fields().iter().enumerate() {
        assert_eq!(f.data_type(), schema.field(i).data_type());
        assert_eq!(f.metadata(), schema.field(i).metadata());
        assert!(f.is_nullable());
        assert_eq!(b[0].column(i).logical_null_count(), 3, "column {i}");
    }
    assert_eq!(counts.total_masked(), 20);
}

#[test]
fn detect_masks_findings_in_text_and_keeps_other_columns() {
    let notes = StringArray::from(vec![
        Some("called 415-555-0132 re SSN 219-09-9999"),
        Some("nothing here"),
        None,
        Some("mail jane.doe@example.com"),
    ]);
    let view = StringViewArray::from(vec![
        Some("ssn 219-09-9999 again"),
        Some("x"),
        None,
        Some("y"),
    ]);
    let ids = Int64Array::from(vec![219_099_999, 1, 2, 3]);
    let schema = Schema::new(vec![
        sf_field("NOTE", DataType::Utf8, "TEXT", 0),
        sf_field("V", DataType::Utf8View, "VARIANT", 0),
        sf_field("ID", DataType::Int64, "FIXED", 0),
    ]);
    let batch = RecordBatch::try_new(
        Arc::new(schema.clone()),
        vec![Arc::new(notes), Arc::new(view), Arc::new(ids)],
    )
    .unwrap();
    let rowtype = vec![
        sf_rowtype("NOTE", "text", None),
        sf_rowtype("V", "variant", None),
        sf_rowtype("ID", "fixed", Some(0)),
    ];
    let rule = DetectRule {
        detectors: Arc::new(DetectorSet::standard()),
        methods: vec![(Detector::Ssn, Method::Partial { keep_last: 4 })],
        default: Method::Null,
    };
    let rules = (0..3).map(|_| ColumnRule::Detect(rule.clone())).collect();
    let m = ResultMasker::new(rules, &rowtype).unwrap();
    let (out, counts) = mask(&m, &encode(&schema, std::slice::from_ref(&batch)));
    let (s, b) = decode(&out);
    assert_eq!(s.as_ref(), &schema, "Detect never changes a type");
    assert_eq!(
        strings(&b, 0),
        [
            Some("called *** re SSN ***-**-9999".into()),
            Some("nothing here".into()),
            None,
            Some("mail ***".into())
        ]
    );
    let v = b[0]
        .column(1)
        .as_any()
        .downcast_ref::<StringViewArray>()
        .unwrap();
    assert_eq!(v.value(0), "ssn ***-**-9999 again");
    assert_eq!(v.value(1), "x");
    assert_eq!(b[0].column(2), batch.column(2), "FIXED is not free text");
    assert!(!contains(&out, b"219-09-9999"));
    assert!(!contains(&out, b"jane.doe"));
    let c = &counts.columns()[0];
    assert_eq!(c.masked, 2);
    assert_eq!(c.findings.get(Detector::Ssn), 1);
    assert_eq!(c.findings.get(Detector::Phone), 1);
    assert_eq!(c.findings.get(Detector::Email), 1);
    assert_eq!(counts.findings().get(Detector::Ssn), 2);
}

#[test]
fn streaming_equals_one_shot_for_random_pieces() {
    let rowtype = rowtype("range_first");
    for name in ["range_chunk1.arrow", "range_first.arrow"] {
        let ipc = fixture(name);
        let rules = vec![
            ColumnRule::Mask(token()),
            ColumnRule::Mask(Method::Partial { keep_last: 2 }),
        ];
        let m = ResultMasker::new(rules, &rowtype).unwrap();
        let (whole, counts) = mask(&m, &ipc);
        let (_, b) = decode(&whole);
        if name == "range_chunk1.arrow" {
            assert_eq!(b.len(), 2, "{name} has two record batches");
        }
        assert!(!contains(&whole, b"name-2"));
        for seed in 0..20 {
            let mut rng = Rng(seed);
            let mut c = m.arrow_chunk_masker();
            let mut out = Vec::new();
            let mut at = 0;
            while at < ipc.len() {
                let n = 1 + rng.below(if seed % 2 == 0 { 64 } else { 4096 });
                let end = (at + n).min(ipc.len());
                c.push(&ipc[at..end], &mut out).unwrap();
                at = end;
            }
            assert_eq!(c.finish(&mut out).unwrap(), counts);
            assert_eq!(out, whole, "{name}, seed {seed}");
        }
        // Byte by byte, and output is emitted as soon as each batch is complete.
        let mut c = m.arrow_chunk_masker();
        let mut out = Vec::new();
        let mut grew_before_end = false;
        for (i, byte) in ipc.iter().enumerate() {
            let before = out.len();
            c.push(std::slice::from_ref(byte), &mut out).unwrap();
            grew_before_end |= out.len() > before && i + 1 < ipc.len() - 8;
        }
        c.finish(&mut out).unwrap();
        assert_eq!(out, whole);
        assert!(grew_before_end, "batches are written as they complete");
    }
}

#[test]
fn truncated_streams_fail_at_finish_and_never_emit_a_partial_batch() {
    let rowtype = rowtype("range_first");
    let ipc = fixture("range_chunk1.arrow");
    let rules = vec![ColumnRule::Keep, ColumnRule::Mask(Method::Redact)];
    let m = ResultMasker::new(rules, &rowtype).unwrap();
    let eos_at = ipc.len() - 8;
    let boundaries = message_boundaries(&ipc);
    assert_eq!(boundaries.len(), 4, "schema, two batches, end marker");
    for cut in (1..eos_at).step_by(7).chain([eos_at - 1]) {
        let mut c = m.arrow_chunk_masker();
        let mut out = Vec::new();
        c.push(&ipc[..cut], &mut out).unwrap();
        if boundaries.contains(&cut) {
            // A stream may end after any whole message.
            c.finish(&mut out).unwrap();
            continue;
        }
        let err = c.finish(&mut out).unwrap_err();
        assert!(
            matches!(err, RowsetError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
        // Whatever was emitted is a well-formed prefix: whole batches only.
        if !out.is_empty() {
            let (_, b) = decode(&out);
            for batch in b {
                assert!(batch.num_rows() == 48 || batch.num_rows() == 452);
            }
        }
    }
    // Without the end-of-stream marker the stream is complete, and so is the output.
    let (full, _) = {
        let mut counts = ColumnCounts::default();
        let out = m.mask_arrow_stream(&ipc[..eos_at], &mut counts).unwrap();
        (out, counts)
    };
    assert!(!full.ends_with(&EOS));
    assert_eq!(decode(&full).1.len(), 2);
    let (with_eos, _) = mask(&m, &ipc);
    assert!(with_eos.ends_with(&EOS));
    assert_eq!(&with_eos[..with_eos.len() - 8], &full[..]);
}

#[test]
fn garbage_and_misuse_are_errors() {
    let rowtype = rowtype("range_first");
    let ipc = fixture("range_chunk1.arrow");
    let m = ResultMasker::new(
        vec![ColumnRule::Keep, ColumnRule::Mask(Method::Redact)],
        &rowtype,
    )
    .unwrap();
    let mut counts = ColumnCounts::default();
    for garbage in [
        &b"definitely not arrow"[..],
        &[
            0xff, 0xff, 0xff, 0xff, 0x10, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
            15, 16,
        ],
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        &EOS,
    ] {
        let err = m.mask_arrow_stream(garbage, &mut counts).unwrap_err();
        assert!(
            matches!(
                err,
                RowsetError::MalformedIpc { .. } | RowsetError::Truncated { .. }
            ),
            "{err}"
        );
    }
    // A record batch with no schema before it.
    let schema_len = 8 + u32::from_le_bytes(ipc[4..8].try_into().unwrap()) as usize;
    let err = m
        .mask_arrow_stream(&ipc[schema_len..], &mut counts)
        .unwrap_err();
    assert!(matches!(err, RowsetError::MalformedIpc { .. }), "{err}");
    // Corrupted bytes inside a batch body: an error, never a panic.
    for i in (schema_len..ipc.len()).step_by(13) {
        let mut bad = ipc.clone();
        bad[i] ^= 0x5a;
        let _ = m.mask_arrow_stream(&bad, &mut counts);
    }
    // Data after the end-of-stream marker.
    let mut twice = ipc.clone();
    twice.extend_from_slice(&ipc);
    let err = m.mask_arrow_stream(&twice, &mut counts).unwrap_err();
    assert!(
        err.to_string().contains("after the end-of-stream marker"),
        "{err}"
    );
    // After an error, the masker refuses further use.
    let mut c = m.arrow_chunk_masker();
    let mut out = Vec::new();
    assert!(c.push(b"garbage!", &mut out).is_err());
    assert!(matches!(c.push(&ipc, &mut out), Err(RowsetError::Failed)));
    assert!(out.is_empty());
    // Empty input: empty output (Snowflake's `rowsetBase64: ""`).
    assert!(m.mask_arrow_stream(b"", &mut counts).unwrap().is_empty());
}

#[test]
fn column_count_and_unsupported_types_fail_closed() {
    // Rules for 5 columns, a stream with 6.
    let five = rowtype("patients");
    let m = ResultMasker::new(keep_all(5), &five).unwrap();
    let err = m
        .mask_arrow_stream(&fixture("types.arrow"), &mut ColumnCounts::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            RowsetError::ColumnCount {
                rules: 5,
                columns: 6,
                ..
            }
        ),
        "{err}"
    );
    assert!(ResultMasker::new(keep_all(4), &five).is_err());

    // A dictionary-encoded masked column: refused, not passed through.
    let dict: DictionaryArray<Int32Type> = vec!["123-45-6789", "123-45-6789"].into_iter().collect();
    let schema = Schema::new(vec![sf_field("SSN", dict.data_type().clone(), "TEXT", 0)]);
    let batch = RecordBatch::try_new(Arc::new(schema.clone()), vec![Arc::new(dict)]).unwrap();
    let ipc = encode(&schema, &[batch]);
    let rowtype = vec![sf_rowtype("SSN", "text", None)];
    let m = ResultMasker::new(vec![ColumnRule::Mask(Method::Redact)], &rowtype).unwrap();
    let mut out = Vec::new();
    let mut c = m.arrow_chunk_masker();
    let err = c.push(&ipc, &mut out).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RowsetError::UnsupportedType { column: 0, .. }),
        "{msg}"
    );
    assert!(msg.contains("SSN") && msg.contains("Dictionary"), "{msg}");
    assert!(!contains(&out, b"123-45-6789"));
    // Kept, the same column passes.
    let m = ResultMasker::new(vec![ColumnRule::Keep], &rowtype).unwrap();
    assert!(m
        .mask_arrow_stream(&ipc, &mut ColumnCounts::default())
        .is_ok());

    // A TIME value out of range in a column whose masking needs its text: an error that names
    // no value. (Redact needs no text, so it never fails on a value.)
    let schema = Schema::new(vec![sf_field("T", DataType::Int64, "TIME", 0)]);
    let batch = RecordBatch::try_new(
        Arc::new(schema.clone()),
        vec![Arc::new(Int64Array::from(vec![12, 987_654_321]))],
    )
    .unwrap();
    let rowtype = vec![sf_rowtype("T", "time", Some(0))];
    let m = ResultMasker::new(vec![ColumnRule::Mask(token())], &rowtype).unwrap();
    let err = m
        .mask_arrow_stream(&encode(&schema, &[batch]), &mut ColumnCounts::default())
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("record batch 0, row 1") && msg.contains("`T`"),
        "{msg}"
    );
    assert!(!msg.contains("987654321"), "{msg}");
}

#[test]
fn row_limit_cuts_across_batches() {
    let rowtype = rowtype("range_first");
    let ipc = fixture("range_chunk1.arrow"); // batches of 48 and 452 rows
    let rules = || vec![ColumnRule::Keep, ColumnRule::Mask(Method::Redact)];
    let m = ResultMasker::new(rules(), &rowtype).unwrap();
    for (limit, rows, truncated) in [
        (0, vec![], true),
        (10, vec![10], true),
        (48, vec![48], true),
        (100, vec![48, 52], true),
        (500, vec![48, 452], false),
        (10_000, vec![48, 452], false),
    ] {
        for piece in [ipc.len(), 5] {
            let mut c = m.arrow_chunk_masker().with_row_limit(limit);
            let mut out = Vec::new();
            for p in ipc.chunks(piece) {
                c.push(p, &mut out).unwrap();
            }
            let counts = c.finish(&mut out).unwrap();
            let (_, b) = decode(&out);
            let got: Vec<usize> = b.iter().map(RecordBatch::num_rows).collect();
            assert_eq!(got, rows, "limit {limit}");
            assert_eq!(counts.rows(), rows.iter().sum::<usize>() as u64);
            assert_eq!(counts.truncated(), truncated, "limit {limit}");
            if let Some(first) = b.first() {
                let ids = first
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                assert_eq!(ids.value(0), 2000);
            }
        }
    }
}

/// End offsets of every message in an IPC stream.
fn message_boundaries(ipc: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut ends = Vec::new();
    while at < ipc.len() {
        let len = u32::from_le_bytes(ipc[at + 4..at + 8].try_into().unwrap()) as usize;
        if len == 0 {
            at += 8;
        } else {
            let meta = &ipc[at + 8..at + 8 + len];
            let body = arrow_ipc::root_as_message(meta).unwrap().bodyLength() as usize;
            at += 8 + len + body;
        }
        ends.push(at);
    }
    ends
}

#[test]
fn maskers_move_across_tasks() {
    fn send<T: Send + 'static>() {}
    fn sync<T: Sync>() {}
    send::<ResultMasker>();
    sync::<ResultMasker>();
    send::<tollgate_mask::ArrowChunkMasker>();
    send::<tollgate_mask::JsonChunkMasker>();
    send::<RowsetError>();
    sync::<RowsetError>();
}

#[test]
fn masked_output_reads_back_as_text_rows_for_the_audit_record() {
    let rowtype = rowtype("patients");
    let ipc = fixture("patients.arrow");
    let rules = vec![
        ColumnRule::Keep,
        ColumnRule::Mask(Method::Redact),
        ColumnRule::Mask(Method::Partial { keep_last: 4 }),
        ColumnRule::Mask(Method::Generalize),
        ColumnRule::Mask(Method::Null),
    ];
    let m = ResultMasker::new(rules, &rowtype).unwrap();
    let (out, _) = mask(&m, &ipc);
    let mut rt = rowtype.clone();
    m.rewrite_rowtype(&mut rt);
    let rows = tollgate_mask::rowset::arrow_rows_as_text(&out, &rt, 10).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0][0].as_deref(), Some("1"));
    assert_eq!(rows[0][2].as_deref(), Some("***-**-6789"));
    assert_eq!(rows[0][3].as_deref(), Some("1980"));
    assert_eq!(rows[0][4], None);
    assert!(rows
        .iter()
        .flatten()
        .flatten()
        .all(|v| !v.contains("123-45")));
    // The limit holds; garbage is an error, not a panic.
    assert_eq!(
        tollgate_mask::rowset::arrow_rows_as_text(&out, &rt, 1)
            .unwrap()
            .len(),
        1
    );
    assert!(tollgate_mask::rowset::arrow_rows_as_text(&out[..out.len() / 2], &rt, 10).is_err());
}

#[test]
fn a_big_batch_is_masked_and_written_in_slices_with_every_row_in_order() {
    // 120000 rows of ~30 bytes of text: about 4 MiB in one input batch.
    let n = 120_000usize;
    let schema = Schema::new(vec![
        sf_field("ID", DataType::Int64, "FIXED", 0),
        sf_field("NAME", DataType::Utf8, "TEXT", 0),
    ]);
    let ids = Int64Array::from((0..n as i64).collect::<Vec<_>>());
    let names = StringArray::from(
        (0..n)
            .map(|i| Some(format!("Patient Person Number {i:08}")))
            .collect::<Vec<_>>(),
    );
    let batch = RecordBatch::try_new(
        Arc::new(schema.clone()),
        vec![Arc::new(ids), Arc::new(names)],
    )
    .unwrap();
    let ipc = encode(&schema, &[batch]);
    let rowtype = vec![
        sf_rowtype("ID", "fixed", Some(0)),
        sf_rowtype("NAME", "text", None),
    ];
    let m = ResultMasker::new(
        vec![ColumnRule::Keep, ColumnRule::Mask(Method::Redact)],
        &rowtype,
    )
    .unwrap();
    let (out, counts) = mask(&m, &ipc);
    let (_, got) = decode(&out);
    assert!(got.len() > 1, "one big batch comes out as several");
    assert!(
        got.iter().all(|b| b.num_rows() < n),
        "every output batch is a slice"
    );
    let ids: Vec<i64> = got
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(ids, (0..n as i64).collect::<Vec<_>>());
    assert!(!contains(&out, b"Patient Person"));
    assert_eq!(counts.rows(), n as u64);
    assert_eq!(counts.columns()[1].masked, n as u64);
    // A row limit inside the big batch still cuts exactly.
    let mut c = m.arrow_chunk_masker().with_row_limit(70_001);
    let mut limited = Vec::new();
    c.push(&ipc, &mut limited).unwrap();
    let counts = c.finish(&mut limited).unwrap();
    let (_, got) = decode(&limited);
    assert_eq!(got.iter().map(RecordBatch::num_rows).sum::<usize>(), 70_001);
    assert!(counts.truncated());
}
