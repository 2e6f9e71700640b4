//! A JSON chunk body (rows without the outer brackets) masked by column rules. The first byte
//! picks the column count, the rules and a split point; the rest is the chunk. Nothing may
//! panic; streaming in two pieces must match feeding it whole; accepted output must parse as
//! the drivers parse it (wrapped in brackets), with rows of the right width, redacted columns
//! holding only the marker or null; and the one-shot rowset path must agree.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tollgate_mask::{
    ColumnCounts, ColumnRule, DetectRule, DetectorSet, MaskKey, Method, ResultMasker, REDACTED,
};

fn detectors() -> Arc<DetectorSet> {
    static SET: OnceLock<Arc<DetectorSet>> = OnceLock::new();
    Arc::clone(SET.get_or_init(|| Arc::new(DetectorSet::standard())))
}

const TYPES: [&str; 8] = [
    "text", "fixed", "date", "timestamp_ntz", "timestamp_tz", "boolean", "binary", "variant",
];

fn rule(i: usize, selector: u8) -> ColumnRule {
    match (usize::from(selector >> 2) + i) % 5 {
        0 => ColumnRule::Keep,
        1 => ColumnRule::Mask(Method::Redact),
        2 => ColumnRule::Mask(Method::Token {
            key: MaskKey::from_bytes(&[7; 32]).unwrap(),
        }),
        3 => ColumnRule::Mask(Method::Null),
        _ => ColumnRule::Detect(DetectRule {
            detectors: detectors(),
            methods: vec![],
            default: Method::Redact,
        }),
    }
}

fn run(masker: &ResultMasker, pieces: &[&[u8]]) -> Result<Vec<u8>, String> {
    let mut c = masker.json_chunk_masker();
    let mut out = Vec::new();
    for p in pieces {
        c.push(p, &mut out).map_err(|e| e.to_string())?;
    }
    c.finish(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, chunk)) = data.split_first() else {
        return;
    };
    let n = 1 + usize::from(selector & 3);
    let rules: Vec<ColumnRule> = (0..n).map(|i| rule(i, selector)).collect();
    let rowtype: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("C{i}"), "type": TYPES[(i + usize::from(selector >> 5)) % 8], "scale": 3}))
        .collect();
    let masker = ResultMasker::new(rules.clone(), &rowtype).expect("rules match the rowtype");

    let whole = run(&masker, &[chunk]);
    let split = usize::from(selector).wrapping_mul(17) % (chunk.len() + 1);
    let streamed = run(&masker, &[&chunk[..split], &chunk[split..]]);
    assert_eq!(whole.is_ok(), streamed.is_ok());
    if let (Ok(a), Ok(b)) = (&whole, &streamed) {
        assert_eq!(a, b, "streaming changed the output");
    }

    // The one-shot rowset path on the same rows, if they are JSON at all.
    let wrapped_in = [b"[", chunk, b"]"].concat();
    let mut rowset: Option<Value> = serde_json::from_slice(&wrapped_in).ok();
    let one_shot = rowset
        .as_mut()
        .map(|r| masker.mask_json_rowset(r, &mut ColumnCounts::default()));

    let Ok(out) = whole else { return };
    let parsed: Value =
        serde_json::from_slice(&[b"[", &out[..], b"]"].concat()).expect("output is JSON rows");
    let rows = parsed.as_array().expect("an array of rows");
    for row in rows {
        let cells = row.as_array().expect("rows are arrays");
        assert_eq!(cells.len(), n);
        for (cell, r) in cells.iter().zip(&rules) {
            match r {
                ColumnRule::Mask(Method::Redact) => {
                    assert!(cell.is_null() || cell == REDACTED)
                }
                ColumnRule::Mask(Method::Null) => assert!(cell.is_null()),
                _ => {}
            }
        }
    }
    if let (Some(Ok(())), Some(r)) = (one_shot, rowset) {
        assert_eq!(&r, &parsed, "one-shot and streamed masking differ");
    }
});
