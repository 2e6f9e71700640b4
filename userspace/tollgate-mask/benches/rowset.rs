//! Result-set masking throughput (MB/s of input) against pass-through baselines measured in
//! the same run:
//! - Arrow: 100k rows × {ID int, NAME text, SSN text, DOB date, AMOUNT number(10,2)}, three
//!   columns masked (NAME partial, SSN token, DOB generalise), against Keep-all (decode +
//!   re-encode) and a raw memcpy of the stream;
//! - JSON chunk: the same rows as a chunk body, against Keep-all through the chunk masker,
//!   serde_json parse + re-serialise, and memcpy;
//! - free text: a NOTE column scanned by `Detect` against Keep, in both formats.
//!
//! Run: `cargo bench -p tollgate-mask --bench rowset` (no external harness); a word after `--`
//! (`arrow`, `json`, `text`) runs only the sections whose name holds it.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray};
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Schema};
use serde_json::{json, Value};
use tollgate_mask::{
    ColumnCounts, ColumnRule, DetectRule, DetectorSet, MaskKey, Method, ResultMasker, TokenMac,
};

const ROWS: usize = 100_000;
const BATCH: usize = 10_000;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }
}

const FIRST: &[&str] = &[
    "Alice", "Bob", "Carol", "Dmitri", "Eve", "Farah", "Gus", "Hana",
];
const LAST: &[&str] = &["Synthetic", "Example", "Sample", "Testcase", "Placeholder"];
const WORDS: &[&str] = &[
    "patient",
    "reports",
    "mild",
    "pain",
    "after",
    "the",
    "visit",
    "on",
    "follow-up",
    "with",
    "dose",
    "of",
    "10mg",
    "daily",
    "and",
    "no",
    "fever",
    "noted",
    "by",
    "nurse",
];
const PHI: &[&str] = &[
    "219-09-9999",
    "jane.doe@example.com",
    "(415) 555-0132",
    "1980-01-02",
    "MRN: 12345678",
];

struct Data {
    ids: Vec<i64>,
    names: Vec<String>,
    ssns: Vec<String>,
    dobs: Vec<i32>,
    amounts: Vec<i128>,
    notes: Vec<String>,
}

fn data() -> Data {
    let mut r = Lcg(0x9e37_79b9_7f4a_7c15);
    let mut d = Data {
        ids: Vec::with_capacity(ROWS),
        names: Vec::with_capacity(ROWS),
        ssns: Vec::with_capacity(ROWS),
        dobs: Vec::with_capacity(ROWS),
        amounts: Vec::with_capacity(ROWS),
        notes: Vec::with_capacity(ROWS),
    };
    for i in 0..ROWS {
        d.ids.push(i as i64 + 1);
        d.names.push(format!(
            "{} {}",
            FIRST[r.next() % FIRST.len()],
            LAST[r.next() % LAST.len()]
        ));
        d.ssns.push(format!(
            "{:03}-{:02}-{:04}",
            100 + r.next() % 600,
            10 + r.next() % 89,
            1000 + r.next() % 8999
        ));
        d.dobs.push(-10_000 + (r.next() % 20_000) as i32);
        d.amounts.push((r.next() % 10_000_000) as i128);
        let mut note = String::new();
        for w in 0..12 {
            if w == 6 && i % 4 == 0 {
                note.push_str(PHI[r.next() % PHI.len()]);
            } else {
                note.push_str(WORDS[r.next() % WORDS.len()]);
            }
            note.push(' ');
        }
        d.notes.push(note);
    }
    d
}

fn field(name: &str, dt: DataType, logical: &str, scale: u32) -> Field {
    Field::new(name, dt, true).with_metadata(std::collections::HashMap::from([
        ("logicalType".to_owned(), logical.to_owned()),
        ("scale".to_owned(), scale.to_string()),
        ("precision".to_owned(), "38".to_owned()),
        ("charLength".to_owned(), "16777216".to_owned()),
    ]))
}

fn rowtype_entry(name: &str, t: &str, scale: u32) -> Value {
    json!({"name": name, "type": t, "scale": scale, "nullable": true})
}

/// The five-column table as an IPC stream, and its rowtype.
fn arrow_table(d: &Data) -> (Vec<u8>, Vec<Value>) {
    let schema = Arc::new(Schema::new(vec![
        field("ID", DataType::Int64, "FIXED", 0),
        field("NAME", DataType::Utf8, "TEXT", 0),
        field("SSN", DataType::Utf8, "TEXT", 0),
        field("DOB", DataType::Date32, "DATE", 0),
        field("AMOUNT", DataType::Decimal128(10, 2), "FIXED", 2),
    ]));
    let mut w = StreamWriter::try_new(Vec::new(), &schema).unwrap();
    for start in (0..ROWS).step_by(BATCH) {
        let r = start..start + BATCH;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(d.ids[r.clone()].to_vec())),
            Arc::new(StringArray::from_iter_values(&d.names[r.clone()])),
            Arc::new(StringArray::from_iter_values(&d.ssns[r.clone()])),
            Arc::new(Date32Array::from(d.dobs[r.clone()].to_vec())),
            Arc::new(
                Decimal128Array::from(d.amounts[r.clone()].to_vec())
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
        ];
        w.write(&RecordBatch::try_new(Arc::clone(&schema), cols).unwrap())
            .unwrap();
    }
    let rowtype = vec![
        rowtype_entry("ID", "fixed", 0),
        rowtype_entry("NAME", "text", 0),
        rowtype_entry("SSN", "text", 0),
        rowtype_entry("DOB", "date", 0),
        rowtype_entry("AMOUNT", "fixed", 2),
    ];
    (w.into_inner().unwrap(), rowtype)
}

/// The same table as a JSON chunk body (Snowflake's string encodings).
fn json_chunk(d: &Data) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..ROWS {
        if i > 0 {
            out.push(b',');
        }
        let a = d.amounts[i];
        let row = [
            d.ids[i].to_string(),
            d.names[i].clone(),
            d.ssns[i].clone(),
            d.dobs[i].to_string(),
            format!("{}.{:02}", a / 100, a % 100),
        ];
        serde_json::to_writer(&mut out, &row).unwrap();
    }
    out
}

fn notes_arrow(d: &Data) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        field("ID", DataType::Int64, "FIXED", 0),
        field("NOTE", DataType::Utf8, "TEXT", 0),
    ]));
    let mut w = StreamWriter::try_new(Vec::new(), &schema).unwrap();
    for start in (0..ROWS).step_by(BATCH) {
        let r = start..start + BATCH;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(d.ids[r.clone()].to_vec())),
            Arc::new(StringArray::from_iter_values(&d.notes[r])),
        ];
        w.write(&RecordBatch::try_new(Arc::clone(&schema), cols).unwrap())
            .unwrap();
    }
    w.into_inner().unwrap()
}

fn notes_json(d: &Data) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..ROWS {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, &(d.ids[i].to_string(), &d.notes[i])).unwrap();
    }
    out
}

/// `(year, month, day)` of a day count since 1970-01-01.
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn time<F: FnMut()>(mut f: F) -> (u32, Duration) {
    let start = Instant::now();
    let mut iters = 0;
    while iters < 3 || start.elapsed() < Duration::from_millis(700) {
        f();
        iters += 1;
    }
    (iters, start.elapsed())
}

/// MB/s of `bytes` input processed by `f`.
fn rate<F: FnMut()>(bytes: usize, f: F) -> f64 {
    let (iters, d) = time(f);
    bytes as f64 * f64::from(iters) / d.as_secs_f64() / 1e6
}

fn report(label: &str, mbs: f64, baselines: &[(&str, f64)]) {
    let ratios: Vec<String> = baselines
        .iter()
        .map(|(name, b)| format!("{:.2}x {name}", mbs / b))
        .collect();
    println!("  {label:<44} {mbs:9.1} MB/s  ({})", ratios.join(", "));
}

fn arrow_mask(m: &ResultMasker, ipc: &[u8]) -> Vec<u8> {
    let mut counts = ColumnCounts::default();
    m.mask_arrow_stream(ipc, &mut counts).unwrap()
}

fn arrow_stream(m: &ResultMasker, ipc: &[u8], piece: usize) -> usize {
    let mut c = m.arrow_chunk_masker();
    let mut out = Vec::new();
    let mut written = 0;
    for p in ipc.chunks(piece) {
        c.push(p, &mut out).unwrap();
        written += out.len();
        out.clear(); // a proxy would send it on
    }
    c.finish(&mut out).unwrap();
    written + out.len()
}

fn json_mask(m: &ResultMasker, chunk: &[u8], piece: usize) -> usize {
    let mut c = m.json_chunk_masker();
    let mut out = Vec::new();
    let mut written = 0;
    for p in chunk.chunks(piece) {
        c.push(p, &mut out).unwrap();
        written += out.len();
        out.clear();
    }
    c.finish(&mut out).unwrap();
    written + out.len()
}

fn serde_pass_through(chunk: &[u8]) -> Vec<u8> {
    let wrapped = [b"[", chunk, b"]"].concat();
    let rows: Vec<Vec<Option<String>>> = serde_json::from_slice(&wrapped).unwrap();
    let out = serde_json::to_vec(&rows).unwrap();
    out[1..out.len() - 1].to_vec()
}

fn main() {
    let key = MaskKey::from_bytes(&[42; 32]).unwrap();
    let cmac_key = MaskKey::new(&[42; 32], TokenMac::Aes256Cmac).unwrap();
    let d = data();
    let keep = |n: usize| (0..n).map(|_| ColumnRule::Keep).collect::<Vec<_>>();
    let three = || {
        vec![
            ColumnRule::Keep,
            ColumnRule::Mask(Method::Partial { keep_last: 2 }),
            ColumnRule::Mask(Method::Token { key: key.clone() }),
            ColumnRule::Mask(Method::Generalize),
            ColumnRule::Keep,
        ]
    };
    let three_cmac = || {
        vec![
            ColumnRule::Keep,
            ColumnRule::Mask(Method::Partial { keep_last: 2 }),
            ColumnRule::Mask(Method::Token {
                key: cmac_key.clone(),
            }),
            ColumnRule::Mask(Method::Generalize),
            ColumnRule::Keep,
        ]
    };
    let redact3 = || {
        vec![
            ColumnRule::Keep,
            ColumnRule::Mask(Method::Redact),
            ColumnRule::Mask(Method::Redact),
            ColumnRule::Mask(Method::Redact),
            ColumnRule::Keep,
        ]
    };
    let plain3 = || {
        vec![
            ColumnRule::Keep,
            ColumnRule::Mask(Method::Partial { keep_last: 2 }),
            ColumnRule::Mask(Method::Redact),
            ColumnRule::Mask(Method::Generalize),
            ColumnRule::Keep,
        ]
    };
    const PIECE: usize = 64 << 10;
    // `cargo bench` passes `--bench`; any other argument selects sections.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |section: &str| only.is_empty() || only.iter().any(|o| section.contains(o.as_str()));

    let (ipc, rowtype) = arrow_table(&d);
    let keep_m = ResultMasker::new(keep(5), &rowtype).unwrap();
    let mask_m = ResultMasker::new(three(), &rowtype).unwrap();
    let cmac_m = ResultMasker::new(three_cmac(), &rowtype).unwrap();
    let redact_m = ResultMasker::new(redact3(), &rowtype).unwrap();

    // --- Arrow, column rules ---
    if run("arrow") {
        println!(
        "Arrow: {ROWS} rows x 5 columns, {} batches, {} bytes; NAME partial, SSN token, DOB generalise",
        ROWS / BATCH,
        ipc.len()
    );
        let memcpy = rate(ipc.len(), || {
            black_box(black_box(&ipc[..]).to_vec());
        });
        let pass = rate(ipc.len(), || {
            black_box(arrow_mask(&keep_m, black_box(&ipc)));
        });
        let masked = rate(ipc.len(), || {
            black_box(arrow_mask(&mask_m, black_box(&ipc)));
        });
        let streamed = rate(ipc.len(), || {
            black_box(arrow_stream(&mask_m, black_box(&ipc), PIECE));
        });
        let base = [("memcpy", memcpy), ("Keep-all", pass)];
        report("memcpy baseline", memcpy, &[]);
        report("Keep-all (decode + re-encode)", pass, &base[..1]);
        report("3 columns masked, one-shot", masked, &base);
        report(
            "3 columns masked, streamed in 64 KiB pieces",
            streamed,
            &base,
        );
        let redacted = rate(ipc.len(), || {
            black_box(arrow_mask(&redact_m, black_box(&ipc)));
        });
        report("3 columns redacted (no HMAC), one-shot", redacted, &base);
        // The three methods alone on the same values, already rendered as text: what any
        // result format has to pay.
        let dob_text: Vec<String> = d
            .dobs
            .iter()
            .map(|&days| {
                let (y, m, dd) = civil(i64::from(days));
                format!("{y:04}-{m:02}-{dd:02}")
            })
            .collect();
        let (partial, token, generalize) = (
            Method::Partial { keep_last: 2 },
            Method::Token { key: key.clone() },
            Method::Generalize,
        );
        let methods_only = rate(ipc.len(), || {
            for ((name, ssn), dob) in d.names.iter().zip(&d.ssns).zip(&dob_text) {
                black_box(partial.apply(black_box(name)));
                black_box(token.apply(black_box(ssn)));
                black_box(generalize.apply(black_box(dob)));
            }
        });
        report(
            "  (the 3 methods alone on pre-rendered text)",
            methods_only,
            &base,
        );
        // Each method alone, per value, writing into one reused buffer as the maskers do.
        let per_value = |method: &Method, values: &[String]| {
            let mut out = String::new();
            let (iters, took) = time(|| {
                for v in values {
                    out.clear();
                    black_box(method.apply_into(black_box(v), &mut out));
                }
            });
            took.as_nanos() as f64 / f64::from(iters) / values.len() as f64
        };
        let cmac_token = Method::Token {
            key: cmac_key.clone(),
        };
        println!(
            "    per value: partial {:.0} ns (NAME), token {:.0} ns (SSN; AES-256-CMAC {:.0} ns), \
             generalise {:.0} ns (DOB)",
            per_value(&partial, &d.names),
            per_value(&token, &d.ssns),
            per_value(&cmac_token, &d.ssns),
            per_value(&generalize, &dob_text),
        );
        let cmac = rate(ipc.len(), || {
            black_box(arrow_mask(&cmac_m, black_box(&ipc)));
        });
        report(
            "3 columns masked, AES-256-CMAC token, one-shot",
            cmac,
            &base,
        );
        let plain_m = ResultMasker::new(plain3(), &rowtype).unwrap();
        let plain = rate(ipc.len(), || {
            black_box(arrow_mask(&plain_m, black_box(&ipc)));
        });
        report("3 columns masked without a token, one-shot", plain, &base);
        println!("    (NAME partial, SSN redact, DOB generalise)");
    }

    // --- JSON chunk, column rules ---
    if run("json") {
        let chunk = json_chunk(&d);
        println!(
            "JSON chunk: {ROWS} rows x 5 columns, {} bytes; same rules",
            chunk.len()
        );
        let memcpy = rate(chunk.len(), || {
            black_box(black_box(&chunk[..]).to_vec());
        });
        let serde = rate(chunk.len(), || {
            black_box(serde_pass_through(black_box(&chunk)));
        });
        let pass = rate(chunk.len(), || {
            black_box(json_mask(&keep_m, black_box(&chunk), PIECE));
        });
        let masked = rate(chunk.len(), || {
            black_box(json_mask(&mask_m, black_box(&chunk), PIECE));
        });
        let redacted = rate(chunk.len(), || {
            black_box(json_mask(&redact_m, black_box(&chunk), PIECE));
        });
        let base = [("memcpy", memcpy), ("serde", serde), ("Keep-all", pass)];
        report("memcpy baseline", memcpy, &[]);
        report("serde_json parse + re-serialise", serde, &base[..1]);
        report("Keep-all through the chunk masker", pass, &base[..2]);
        report("3 columns masked, streamed in 64 KiB pieces", masked, &base);
        report("3 columns redacted (no HMAC), streamed", redacted, &base);
        let cmac = rate(chunk.len(), || {
            black_box(json_mask(&cmac_m, black_box(&chunk), PIECE));
        });
        report(
            "3 columns masked, AES-256-CMAC token, streamed",
            cmac,
            &base,
        );
    }

    // --- Free text: Detect vs Keep ---
    if !run("text") {
        return;
    }
    let detect = ColumnRule::Detect(DetectRule {
        detectors: Arc::new(DetectorSet::standard()),
        methods: vec![],
        default: Method::Redact,
    });
    let notes_rowtype = vec![
        rowtype_entry("ID", "fixed", 0),
        rowtype_entry("NOTE", "text", 0),
    ];
    let keep_n = ResultMasker::new(keep(2), &notes_rowtype).unwrap();
    let detect_n = ResultMasker::new(vec![ColumnRule::Keep, detect], &notes_rowtype).unwrap();
    let ipc = notes_arrow(&d);
    let chunk = notes_json(&d);
    println!(
        "Free text: {ROWS} notes of ~{} bytes, PHI in every 4th; Detect (all detectors) vs Keep",
        d.notes.iter().map(String::len).sum::<usize>() / ROWS
    );
    let a_keep = rate(ipc.len(), || {
        black_box(arrow_mask(&keep_n, black_box(&ipc)));
    });
    let a_detect = rate(ipc.len(), || {
        black_box(arrow_mask(&detect_n, black_box(&ipc)));
    });
    let j_keep = rate(chunk.len(), || {
        black_box(json_mask(&keep_n, black_box(&chunk), PIECE));
    });
    let j_detect = rate(chunk.len(), || {
        black_box(json_mask(&detect_n, black_box(&chunk), PIECE));
    });
    report("Arrow Keep", a_keep, &[]);
    report("Arrow Detect", a_detect, &[("Arrow Keep", a_keep)]);
    report("JSON Keep", j_keep, &[]);
    report("JSON Detect", j_detect, &[("JSON Keep", j_keep)]);
}
