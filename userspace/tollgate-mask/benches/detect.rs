//! `DetectorSet::scan` throughput over generated free text, with and without PHI, against a
//! plain `str::contains` pass over the same bytes in the same run.
//!
//! Run: `cargo bench --bench detect` (prints MB/s; no external harness).

use std::hint::black_box;
use std::time::{Duration, Instant};

use tollgate_mask::{Detector, DetectorSet};

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
    "room",
    "4B",
];

/// About `len` bytes of notes; every `phi_every`-th word is a PHI value (0: never).
fn notes(len: usize, phi_every: usize) -> String {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = String::with_capacity(len + 64);
    let mut i = 0;
    while out.len() < len {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = (state >> 33) as usize;
        i += 1;
        let word = if phi_every != 0 && i % phi_every == 0 {
            Detector::EXAMPLES[r % Detector::EXAMPLES.len()].1
        } else {
            WORDS[r % WORDS.len()]
        };
        out.push_str(word);
        out.push(if r % 11 == 0 { '.' } else { ' ' });
    }
    out
}

fn mb_per_s(bytes: usize, iters: u32, elapsed: Duration) -> f64 {
    (bytes as f64 * f64::from(iters)) / elapsed.as_secs_f64() / 1e6
}

fn time<F: FnMut()>(mut f: F) -> (u32, Duration) {
    let start = Instant::now();
    let mut iters = 0;
    while iters < 3 || start.elapsed() < Duration::from_millis(500) {
        f();
        iters += 1;
    }
    (iters, start.elapsed())
}

fn main() {
    let set = DetectorSet::standard();
    for (label, text) in [
        ("no PHI", notes(1 << 20, 0)),
        ("PHI every 20 words", notes(1 << 20, 20)),
    ] {
        let findings = set.scan(&text).len();
        let (i, d) = time(|| {
            black_box(set.scan(black_box(&text)));
        });
        let scan = mb_per_s(text.len(), i, d);
        let (i, d) = time(|| {
            black_box(black_box(&text).contains("zq-not-present"));
        });
        let base = mb_per_s(text.len(), i, d);
        println!(
            "{label:>20}: {} bytes, {findings} findings; scan {scan:8.1} MB/s, \
             str::contains baseline {base:8.1} MB/s ({:.1}x slower)",
            text.len(),
            base / scan
        );
    }
}
