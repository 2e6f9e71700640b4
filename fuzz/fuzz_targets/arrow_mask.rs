//! An Arrow IPC stream masked by column rules. The first byte picks the column count and the
//! rules; the rest is the stream. Nothing may panic; an accepted stream must come out as a
//! well-formed stream whose redacted columns hold only the marker or NULL; and feeding the
//! input in two pieces must give the same bytes as feeding it whole.
#![no_main]

use std::io::Cursor;
use std::sync::{Arc, OnceLock};

use arrow_array::{Array, StringArray};
use arrow_ipc::reader::StreamReader;
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tollgate_mask::{
    ColumnCounts, ColumnRule, DetectRule, DetectorSet, MaskKey, Method, ResultMasker, REDACTED,
};

fn detectors() -> Arc<DetectorSet> {
    static SET: OnceLock<Arc<DetectorSet>> = OnceLock::new();
    Arc::clone(SET.get_or_init(|| Arc::new(DetectorSet::standard())))
}

fn rule(i: usize, selector: u8) -> ColumnRule {
    match (usize::from(selector >> 3) + i) % 6 {
        0 => ColumnRule::Keep,
        1 => ColumnRule::Mask(Method::Redact),
        2 => ColumnRule::Mask(Method::Token {
            key: MaskKey::from_bytes(&[7; 32]).unwrap(),
        }),
        3 => ColumnRule::Mask(Method::Null),
        4 => ColumnRule::Mask(Method::Generalize),
        _ => ColumnRule::Detect(DetectRule {
            detectors: detectors(),
            methods: vec![],
            default: Method::Partial { keep_last: 2 },
        }),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, ipc)) = data.split_first() else {
        return;
    };
    // Column counts of the seed captures: 2 (range), 5 (patients), 6 (types), 1.
    let n = [2, 5, 6, 1][usize::from(selector & 3)];
    let rules: Vec<ColumnRule> = (0..n).map(|i| rule(i, selector)).collect();
    let rowtype: Vec<_> = (0..n)
        .map(|i| json!({"name": format!("C{i}"), "type": "text", "scale": null}))
        .collect();
    let masker = ResultMasker::new(rules.clone(), &rowtype).expect("rules match the rowtype");

    let mut counts = ColumnCounts::default();
    let whole = masker.mask_arrow_stream(ipc, &mut counts);

    let split = usize::from(selector).wrapping_mul(31) % (ipc.len() + 1);
    let mut c = masker.arrow_chunk_masker();
    let mut out = Vec::new();
    let streamed = c
        .push(&ipc[..split], &mut out)
        .and_then(|()| c.push(&ipc[split..], &mut out))
        .and_then(|()| c.finish(&mut out));
    match (&whole, &streamed) {
        (Ok(a), Ok(_)) => assert_eq!(a, &out, "streaming changed the output"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("one-shot {:?} but streamed {:?}", a.is_ok(), b.is_ok()),
    }

    let Ok(out) = whole else { return };
    if out.is_empty() {
        assert!(ipc.is_empty());
        return;
    }
    let reader = StreamReader::try_new(Cursor::new(out), None).expect("output has a schema");
    let mut rows = 0;
    for batch in reader {
        let batch = batch.expect("output batches decode");
        rows += batch.num_rows() as u64;
        for (i, r) in rules.iter().enumerate() {
            if let ColumnRule::Mask(Method::Redact) = r {
                let col = batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("redacted columns are Utf8");
                assert!(col.iter().all(|v| v.is_none_or(|v| v == REDACTED)));
            }
            if let ColumnRule::Mask(Method::Null) = r {
                assert_eq!(batch.column(i).logical_null_count(), batch.num_rows());
            }
        }
    }
    assert_eq!(rows, counts.rows());
});
