//! Property tests: values of a masked TEXT column never reach the output, in either format,
//! and streaming never changes the result.

mod common;

use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Schema};
use common::*;
use proptest::prelude::*;
use tollgate_mask::{ColumnCounts, ColumnRule, Method, ResultMasker};

/// Secret-looking strings: a `Z` (never in a token, the redaction marker or the schema) and
/// then anything, quotes, backslashes, control characters and non-ASCII included.
fn secret() -> impl Strategy<Value = String> {
    "Z[^\u{0}]{5,30}"
}

fn rows() -> impl Strategy<Value = Vec<(i64, Option<String>)>> {
    prop::collection::vec((any::<i64>(), prop::option::weighted(0.9, secret())), 1..20)
}

fn methods() -> impl Strategy<Value = Method> {
    prop_oneof![Just(Method::Redact), Just(token()), Just(Method::Null)]
}

fn rowtype() -> Vec<serde_json::Value> {
    vec![
        sf_rowtype("ID", "fixed", Some(0)),
        sf_rowtype("NOTE", "text", None),
    ]
}

fn json_chunk(rows: &[(i64, Option<String>)]) -> Vec<u8> {
    let rows: Vec<String> = rows
        .iter()
        .map(|(id, note)| serde_json::to_string(&(id.to_string(), note)).unwrap())
        .collect();
    rows.join(",").into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn masked_text_never_reaches_json_output(rows in rows(), method in methods(), splits in prop::collection::vec(1usize..64, 1..8)) {
        let m = ResultMasker::new(vec![ColumnRule::Keep, ColumnRule::Mask(method)], &rowtype()).unwrap();
        let chunk = json_chunk(&rows);
        let mut c = m.json_chunk_masker();
        let mut out = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < chunk.len() {
            let end = (at + splits[i % splits.len()]).min(chunk.len());
            c.push(&chunk[at..end], &mut out).unwrap();
            at = end;
            i += 1;
        }
        let counts = c.finish(&mut out).unwrap();
        let mut whole = m.json_chunk_masker();
        let mut one = Vec::new();
        whole.push(&chunk, &mut one).unwrap();
        whole.finish(&mut one).unwrap();
        prop_assert_eq!(&out, &one, "streaming equals one-shot");
        for (_, note) in &rows {
            if let Some(s) = note {
                prop_assert!(!contains(&out, s.as_bytes()));
                let escaped = serde_json::to_string(s).unwrap();
                prop_assert!(!contains(&out, &escaped.as_bytes()[1..escaped.len() - 1]));
            }
        }
        prop_assert_eq!(counts.columns()[1].masked, rows.iter().filter(|r| r.1.is_some()).count() as u64);
        prop_assert_eq!(counts.rows(), rows.len() as u64);

        // The one-shot rowset path agrees.
        let mut rowset: serde_json::Value = serde_json::from_slice(&[b"[", &chunk[..], b"]"].concat()).unwrap();
        m.mask_json_rowset(&mut rowset, &mut ColumnCounts::default()).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&[b"[", &out[..], b"]"].concat()).unwrap();
        prop_assert_eq!(rowset, parsed);
    }

    #[test]
    fn masked_text_never_reaches_arrow_output(rows in rows(), method in methods(), batch_rows in 1usize..8) {
        let schema = Schema::new(vec![
            sf_field("ID", DataType::Int64, "FIXED", 0),
            sf_field("NOTE", DataType::Utf8, "TEXT", 0),
        ]);
        let batches: Vec<RecordBatch> = rows
            .chunks(batch_rows)
            .map(|part| {
                let ids = Int64Array::from(part.iter().map(|r| r.0).collect::<Vec<_>>());
                let notes = StringArray::from(part.iter().map(|r| r.1.clone()).collect::<Vec<_>>());
                RecordBatch::try_new(Arc::new(schema.clone()), vec![Arc::new(ids), Arc::new(notes)]).unwrap()
            })
            .collect();
        let ipc = encode(&schema, &batches);
        let m = ResultMasker::new(vec![ColumnRule::Keep, ColumnRule::Mask(method)], &rowtype()).unwrap();
        let mut counts = ColumnCounts::default();
        let out = m.mask_arrow_stream(&ipc, &mut counts).unwrap();
        for (_, note) in &rows {
            if let Some(s) = note {
                prop_assert!(!contains(&out, s.as_bytes()));
            }
        }
        let (_, got) = decode(&out);
        prop_assert_eq!(got.len(), batches.len());
        for (a, b) in got.iter().zip(&batches) {
            prop_assert_eq!(a.column(0), b.column(0));
            prop_assert_eq!(a.column(1).null_count() >= b.column(1).null_count(), true);
        }
        prop_assert_eq!(counts.columns()[1].masked, rows.iter().filter(|r| r.1.is_some()).count() as u64);
    }
}
