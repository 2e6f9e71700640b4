//! Helpers shared by the rowset tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde_json::{json, Value};
use tollgate_mask::{MaskKey, Method};

/// A captured payload copied from shared/fixtures (see tests/fixtures/README.md).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A captured rowtype (`<name>.rowtype.json`).
pub fn rowtype(name: &str) -> Vec<Value> {
    serde_json::from_slice(&fixture(&format!("{name}.rowtype.json"))).unwrap()
}

pub fn key() -> MaskKey {
    MaskKey::from_bytes(&[42; 32]).unwrap()
}

pub fn token() -> Method {
    Method::Token { key: key() }
}

pub fn tok(s: &str) -> String {
    key().token(s)
}

/// Decodes a whole IPC stream.
pub fn decode(bytes: &[u8]) -> (SchemaRef, Vec<RecordBatch>) {
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes.to_vec()), None)
        .expect("output is a readable IPC stream");
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .expect("every batch decodes");
    (schema, batches)
}

/// Encodes batches as an IPC stream (with the end-of-stream marker).
pub fn encode(schema: &Schema, batches: &[RecordBatch]) -> Vec<u8> {
    let mut w = StreamWriter::try_new(Vec::new(), schema).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.into_inner().unwrap()
}

/// Column `i` of every batch, as optional strings (the column must be Utf8).
pub fn strings(batches: &[RecordBatch], i: usize) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b
                .column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap_or_else(|| panic!("column {i} is {}", b.column(i).data_type()));
            a.iter().map(|v| v.map(str::to_owned)).collect::<Vec<_>>()
        })
        .collect()
}

pub fn column(batches: &[RecordBatch], i: usize) -> Vec<ArrayRef> {
    batches.iter().map(|b| Arc::clone(b.column(i))).collect()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A Snowflake-style Arrow field.
pub fn sf_field(name: &str, dt: DataType, logical: &str, scale: u32) -> Field {
    let char_length = if logical == "TEXT" { "16777216" } else { "0" };
    Field::new(name, dt, true).with_metadata(HashMap::from([
        ("logicalType".to_owned(), logical.to_owned()),
        ("scale".to_owned(), scale.to_string()),
        ("precision".to_owned(), "38".to_owned()),
        ("charLength".to_owned(), char_length.to_owned()),
    ]))
}

/// A Snowflake-style rowtype entry.
pub fn sf_rowtype(name: &str, t: &str, scale: Option<u32>) -> Value {
    let text = t == "text";
    json!({
        "name": name, "database": "", "schema": "", "table": "", "nullable": true, "type": t,
        "byteLength": if text { json!(16777216) } else { Value::Null },
        "length": if text { json!(16777216) } else { Value::Null },
        "scale": scale, "precision": if t == "fixed" { json!(38) } else { Value::Null },
        "collation": null,
    })
}

/// The TEXT field metadata a masked-to-text column must carry.
pub fn assert_text_field(field: &Field) {
    assert_eq!(field.data_type(), &DataType::Utf8, "{}", field.name());
    assert!(field.is_nullable());
    let m = field.metadata();
    assert_eq!(m.get("logicalType").map(String::as_str), Some("TEXT"));
    assert_eq!(m.get("charLength").map(String::as_str), Some("16777216"));
    assert_eq!(m.get("byteLength").map(String::as_str), Some("16777216"));
}

/// The TEXT rowtype entry a masked-to-text column must have.
pub fn assert_text_rowtype(entry: &Value) {
    assert_eq!(entry["type"], "text");
    assert_eq!(entry["length"], 16777216);
    assert_eq!(entry["byteLength"], 16777216);
    assert_eq!(entry["precision"], Value::Null);
    assert_eq!(entry["scale"], Value::Null);
    assert_eq!(entry["nullable"], true);
}

/// A tiny deterministic PRNG for split points.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}
