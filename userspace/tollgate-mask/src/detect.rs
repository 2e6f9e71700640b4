//! Value detectors for PHI in free text.
//!
//! Each detector is a candidate regular expression plus a validator (SSN number rules, Luhn,
//! calendar dates, octet ranges, NANP rules). Numeric detectors require that the value is not
//! glued to further digits (`1234-56-78901` is not an SSN), but they do accept letters right
//! before the value (`SSN123-45-6789`), because in a HIPAA fallback a missed value costs more
//! than an extra mask.
//!
//! [`DetectorSet::scan`] runs every enabled detector and keeps a non-overlapping,
//! leftmost-longest selection of the findings, sorted by start offset. Built-in detectors run
//! only on small windows of the text that can hold one of their values (around clusters of
//! digits, house numbers, `@` signs), found in one cheap pass; the results are exactly those of
//! running each regex over the whole text. A user-configured MRN pattern runs over the whole
//! text.

use std::cmp::Reverse;
use std::ops::Range;

use regex::Regex;
use regex_automata::{meta, Input, PatternID};
use serde::{Deserialize, Serialize};

use crate::MaskError;

/// A kind of PHI value a detector looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Detector {
    /// US Social Security number: `AAA-GG-SSSS`, `AAA GG SSSS` or 9 bare digits; area not
    /// 000, 666 or 900–999, group not 00, serial not 0000. Numbers that pass these rules but
    /// were voided by the SSA (the "Woolworth" `078-05-1120`, advertising `123-45-6789`) are
    /// still detected: they are SSN-shaped data in a PHI column and masking them is harmless.
    Ssn,
    /// Email address (`local@domain.tld`).
    Email,
    /// US phone number: `(415) 555-0132`, `415-555-0132`, `415.555.0132`, `415 555 0132`,
    /// with an optional `+1`/`1-` prefix; area code and exchange start with 2–9 (NANP).
    Phone,
    /// A calendar date that may be a date of birth: `YYYY-MM-DD` or `MM/DD/YYYY` (1- or
    /// 2-digit month and day), year 1900–2099, day valid for its month. Under Safe Harbor every
    /// date tied to a person is an identifier, so all plausible dates are found.
    DateOfBirth,
    /// Medical record number, by the configured pattern ([`DetectorConfig::mrn_pattern`]).
    Mrn,
    /// National Provider Identifier: 10 digits starting with 1 or 2 whose Luhn check over the
    /// `80840` prefix holds.
    Npi,
    /// Payment card number: 13–19 digits, single spaces or dashes allowed between digits,
    /// Luhn-valid.
    PaymentCard,
    /// IPv4 address in dotted-quad form, each octet 0–255.
    Ipv4,
    /// US street address: house number, one to five name words each starting with a capital
    /// letter or digit, and a street suffix (`1600 Pennsylvania Ave`, `42 N Main Street`,
    /// `7 5th street`). Lower-case name words are not accepted (`3 cats on the way`).
    StreetAddress,
    /// US ZIP code (`12345` or `12345-6789`), only in an address context: after a state
    /// abbreviation (`IL 62704`, `CA, 94105`) or after the word `ZIP`/`zip code`.
    Zip,
}

impl Detector {
    /// Every detector, in the order used to break ties between equal spans.
    pub const ALL: [Detector; 10] = [
        Detector::Ssn,
        Detector::PaymentCard,
        Detector::Npi,
        Detector::Phone,
        Detector::DateOfBirth,
        Detector::Email,
        Detector::Ipv4,
        Detector::StreetAddress,
        Detector::Zip,
        Detector::Mrn,
    ];

    /// One value each detector finds in text (with the context it needs, e.g. `MRN: `), in
    /// [`Detector::ALL`] order: for documentation, tests and benchmarks.
    pub const EXAMPLES: [(Detector, &'static str); 10] = [
        (Detector::Ssn, "219-09-9999"),
        (Detector::PaymentCard, "4111 1111 1111 1111"),
        (Detector::Npi, "1234567893"),
        (Detector::Phone, "(415) 555-0132"),
        (Detector::DateOfBirth, "1980-01-02"),
        (Detector::Email, "jane.doe@example.com"),
        (Detector::Ipv4, "10.0.0.1"),
        (Detector::StreetAddress, "1600 Pennsylvania Ave"),
        (Detector::Zip, "IL 62704"),
        (Detector::Mrn, "MRN: 12345678"),
    ];

    /// The detector's stable lower-case name, as used in configuration and audit records.
    pub fn name(self) -> &'static str {
        match self {
            Detector::Ssn => "ssn",
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::DateOfBirth => "date_of_birth",
            Detector::Mrn => "mrn",
            Detector::Npi => "npi",
            Detector::PaymentCard => "payment_card",
            Detector::Ipv4 => "ipv4",
            Detector::StreetAddress => "street_address",
            Detector::Zip => "zip",
        }
    }
}

/// One detected value: what it is and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Finding {
    /// Which detector found it.
    pub kind: Detector,
    /// Byte range in the scanned text; always on `char` boundaries.
    pub span: Range<usize>,
}

/// Which detectors to run; the serde form of a [`DetectorSet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// Detectors to enable.
    pub detectors: Vec<Detector>,
    /// Regular expression (Rust `regex` syntax) for medical record numbers; used only when
    /// [`Detector::Mrn`] is enabled, and then [`DEFAULT_MRN_PATTERN`] if absent. If it has a
    /// capture group named `mrn`, only that group is the finding (so a label such as `MRN:`
    /// can anchor the match without being masked).
    #[serde(default)]
    pub mrn_pattern: Option<String>,
}

impl Default for DetectorConfig {
    /// All built-in detectors, MRN included with the default pattern.
    fn default() -> Self {
        DetectorConfig {
            detectors: Detector::ALL.to_vec(),
            mrn_pattern: None,
        }
    }
}

/// The MRN pattern used when none is configured: a `MRN` label, then 6–10 digits.
pub const DEFAULT_MRN_PATTERN: &str = r"(?i:\bMRN)[-:#]?[ ]?(?P<mrn>[0-9]{6,10})\b";

/// A compiled set of detectors; build once, scan many times (it is `Send + Sync`).
#[derive(Debug, Clone)]
pub struct DetectorSet {
    /// The enabled detectors, in [`Detector::ALL`] order.
    kinds: Vec<Detector>,
    /// Built-in detectors (the default MRN pattern included), searched only inside the windows
    /// their [`Gate`] allows.
    windowed: Vec<Windowed>,
    /// Detectors searched over the whole text: a user-configured MRN pattern, which can match
    /// anything and so cannot be prefiltered.
    full: Vec<Compiled>,
    /// [`kind_bit`]s of the windowed detectors with [`Gate::Cluster`].
    cluster_kinds: u16,
}

/// A detector searched over the whole text with the `regex` crate.
#[derive(Debug, Clone)]
struct Compiled {
    kind: Detector,
    regex: Regex,
    /// Capture group holding the value; the rest of the match is context.
    group: usize,
    validate: fn(&str) -> bool,
}

/// A built-in detector searched only inside windows of the text.
///
/// Soundness rests on one property of each gate: every match the regex has in the *whole*
/// text (context characters included) lies entirely inside one window the gate yields, and the
/// windows are disjoint. The search of a window uses the whole text as haystack with the
/// window as its span, so `^`, `$` and `\b` see the real neighbours of the window; a match
/// starting at position `s` inside a window is then the same match as in a full-text search
/// (paths that would leave the window are never the chosen ones, since the chosen one stays
/// inside), and no match starts outside every window. Hence the leftmost-first search loop of
/// [`Compiled::find_all`], run window by window, visits the same candidates in the same order.
#[derive(Debug, Clone)]
struct Windowed {
    kind: Detector,
    regex: meta::Regex,
    group: usize,
    validate: fn(&str) -> bool,
    gate: Gate,
    value: Value,
}

/// How the value group is found in a match; capture groups cost more than the match itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    /// The value is the whole match (email).
    Whole,
    /// The value runs from the match's first ASCII digit to its last: the value starts and
    /// ends with a digit and the context around it holds no digit (SSN, dates, NPI, cards,
    /// IPv4, ZIP, the default MRN pattern).
    Digits,
    /// The value runs from the match's first ASCII digit to its end: the value starts with a
    /// digit, the context before it holds none, and nothing follows it (street addresses).
    FromFirstDigit,
    /// Ask the regex for the group (phone numbers: `+` and `(` may be context or value).
    Captures,
}

fn value_kind(kind: Detector) -> Value {
    match kind {
        Detector::Email => Value::Whole,
        Detector::StreetAddress => Value::FromFirstDigit,
        Detector::Phone => Value::Captures,
        _ => Value::Digits,
    }
}

/// Where a built-in detector's matches can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Every match contains ASCII digits, all of them in one [`Cluster`] that
    /// [`cluster_admits`] admits for the detector, and spans at most [`CLUSTER_PRE`] bytes
    /// before the cluster's first digit and [`CLUSTER_POST`] bytes after its last one.
    Cluster,
    /// Street addresses: see [`street_window`].
    Street,
    /// Email addresses: see [`email_windows`].
    Email,
}

impl Gate {
    /// A byte every match of a detector with this gate contains.
    fn needed(self, b: u8) -> bool {
        match self {
            Gate::Cluster | Gate::Street => b.is_ascii_digit(),
            Gate::Email => b == b'@',
        }
    }
}

/// Digits of one value are never more than this many bytes apart (the widest gap is the `) `
/// or `-(` of a phone number); digit runs closer than this form one [`Cluster`].
const CLUSTER_GAP: usize = 2;
/// Bytes a match may reach before the first digit of its cluster: at most `zip code: ` (10
/// bytes, all ASCII — see the test `context_letters_fold_to_ascii_only`) or one context
/// character (≤ 4 bytes) plus `+`/`(`, a state, `.`, `,` and a space; rounded up.
const CLUSTER_PRE: usize = 16;
/// Bytes a match may reach after the last digit of its cluster: at most an IPv4 address's
/// trailing `.` plus one context character (≤ 4 bytes); rounded up.
const CLUSTER_POST: usize = 8;

const SEP_DASH: u8 = 1;
const SEP_SLASH: u8 = 2;
const SEP_DOT: u8 = 4;

/// A run of 4 digits, `-`, a run of 2 (`YYYY-MM`).
const FEAT_DATE_ISO: u8 = 1;
/// A run of 1 or 2 digits, `/`, a run of 4 (`D/YYYY`).
const FEAT_DATE_US: u8 = 2;
/// A run of 6–10 digits right after an `MRN` label (see [`mrn_label_before`]).
const FEAT_MRN: u8 = 4;

/// Maximal ASCII digit runs that are at most [`CLUSTER_GAP`] bytes apart, with a summary that
/// lets most detectors rule a cluster out without running their regex.
#[derive(Debug, Clone, Copy)]
struct Cluster {
    /// Byte offset of the first digit.
    start: usize,
    /// Byte offset just past the last digit.
    end: usize,
    /// Number of digits.
    digits: usize,
    /// Bit `n` set: a maximal digit run of length `n` (lengths ≥ 31 set bit 31).
    runs: u32,
    /// `SEP_*` bits of the bytes between the runs.
    seps: u8,
    /// `FEAT_*` bits.
    feats: u8,
    /// Length of the last run.
    last_len: usize,
}

impl Cluster {
    fn run(&self, len: u32) -> bool {
        self.runs & (1 << len) != 0
    }
    fn sep(&self, bit: u8) -> bool {
        self.seps & bit != 0
    }
}

impl DetectorSet {
    /// All built-in detectors, MRN included with [`DEFAULT_MRN_PATTERN`].
    pub fn standard() -> Self {
        Self::compile(&DetectorConfig::default())
            .expect("built-in patterns compile; covered by tests")
    }

    /// Compiles the given configuration. Duplicate detectors are ignored.
    pub fn compile(config: &DetectorConfig) -> Result<Self, MaskError> {
        let mut set = DetectorSet {
            kinds: Vec::new(),
            windowed: Vec::new(),
            full: Vec::new(),
            cluster_kinds: 0,
        };
        for &kind in Detector::ALL.iter() {
            if !config.detectors.contains(&kind) {
                continue;
            }
            set.kinds.push(kind);
            match (kind, config.mrn_pattern.as_deref()) {
                (Detector::Mrn, Some(pattern)) if pattern != DEFAULT_MRN_PATTERN => {
                    set.full.push(compile_mrn(Some(pattern))?);
                }
                (Detector::Mrn, _) => set.windowed.push(Windowed::new(
                    kind,
                    DEFAULT_MRN_PATTERN,
                    "mrn",
                    |_| true,
                    Gate::Cluster,
                )),
                _ => {
                    let (pattern, validate) = builtin(kind);
                    set.windowed
                        .push(Windowed::new(kind, pattern, "v", validate, gate(kind)));
                }
            }
        }
        for w in &set.windowed {
            if w.gate == Gate::Cluster {
                set.cluster_kinds |= kind_bit(w.kind);
            }
        }
        Ok(set)
    }

    /// The enabled detectors.
    pub fn detectors(&self) -> impl Iterator<Item = Detector> + '_ {
        self.kinds.iter().copied()
    }

    /// Finds PHI values in `text`: non-overlapping, leftmost-longest (ties go to the detector
    /// listed first in [`Detector::ALL`]), sorted by start offset.
    ///
    /// One pass over the bytes finds the digit runs; each built-in detector then runs its
    /// regex only on small windows around the runs (or `@` signs) that can hold one of its
    /// values, with exactly the results of a whole-text search.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let bytes = text.as_bytes();
        let mut windows: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.windowed.len()];
        let street = self.windowed.iter().position(|w| w.gate == Gate::Street);
        if self.cluster_kinds != 0 || street.is_some() {
            let mut current: Option<Cluster> = None;
            for_each_digit_run(bytes, |start, end| {
                if let Some(i) = street {
                    if let Some((lo, hi)) = street_window(bytes, (start, end)) {
                        push_window(
                            &mut windows[i],
                            floor_boundary(text, lo),
                            ceil_boundary(text, hi),
                        );
                    }
                }
                let len = end - start;
                let bit = 1u32 << len.min(31);
                let mut feats = 0;
                if (6..=10).contains(&len) && mrn_label_before(&bytes[..start]) {
                    feats |= FEAT_MRN;
                }
                if let Some(c) = current.as_mut() {
                    if start - c.end <= CLUSTER_GAP {
                        let gap = &bytes[c.end..start];
                        for &b in gap {
                            c.seps |= match b {
                                b'-' => SEP_DASH,
                                b'/' => SEP_SLASH,
                                b'.' => SEP_DOT,
                                _ => 0,
                            };
                        }
                        if c.last_len == 4 && gap == b"-" && len == 2 {
                            feats |= FEAT_DATE_ISO;
                        }
                        if (1..=2).contains(&c.last_len) && gap == b"/" && len == 4 {
                            feats |= FEAT_DATE_US;
                        }
                        c.end = end;
                        c.digits += len;
                        c.runs |= bit;
                        c.feats |= feats;
                        c.last_len = len;
                        return;
                    }
                }
                if let Some(c) = current.replace(Cluster {
                    start,
                    end,
                    digits: len,
                    runs: bit,
                    seps: 0,
                    feats,
                    last_len: len,
                }) {
                    self.cluster_windows(text, &c, &mut windows);
                }
            });
            if let Some(c) = current {
                self.cluster_windows(text, &c, &mut windows);
            }
        }
        if let Some(i) = self.windowed.iter().position(|w| w.gate == Gate::Email) {
            email_windows(bytes, &mut windows[i]);
        }
        let mut all = Vec::new();
        for (w, windows) in self.windowed.iter().zip(&windows) {
            if !windows.is_empty() {
                w.find_in(text, windows, &mut all);
            }
        }
        for c in &self.full {
            c.find_all(text, &mut all);
        }
        select(all)
    }

    /// Adds the window of cluster `c` for every detector with [`Gate::Cluster`] it admits.
    fn cluster_windows(&self, text: &str, c: &Cluster, windows: &mut [Vec<(usize, usize)>]) {
        // Every digit-based value but a street address has at least 4 digits.
        if c.digits < 4 {
            return;
        }
        let admitted = cluster_admits(c) & self.cluster_kinds;
        if admitted == 0 {
            return;
        }
        let lo = floor_boundary(text, c.start.saturating_sub(CLUSTER_PRE));
        let hi = ceil_boundary(text, (c.end + CLUSTER_POST).min(text.len()));
        for (w, windows) in self.windowed.iter().zip(windows) {
            if w.gate == Gate::Cluster && admitted & kind_bit(w.kind) != 0 {
                push_window(windows, lo, hi);
            }
        }
    }
}

/// Keeps the leftmost-longest non-overlapping findings (ties: the detector listed first in
/// [`Detector::ALL`]), sorted by start.
fn select(mut all: Vec<Finding>) -> Vec<Finding> {
    all.sort_by_key(|f| {
        (
            f.span.start,
            Reverse(f.span.end),
            Detector::ALL.iter().position(|&k| k == f.kind),
        )
    });
    let mut kept: Vec<Finding> = Vec::with_capacity(all.len());
    for f in all {
        if kept.last().is_none_or(|last| f.span.start >= last.span.end) {
            kept.push(f);
        }
    }
    kept
}

impl Compiled {
    fn find_all(&self, text: &str, out: &mut Vec<Finding>) {
        let mut locs = self.regex.capture_locations();
        let mut at = 0;
        while at <= text.len() {
            if self.regex.captures_read_at(&mut locs, text, at).is_none() {
                break;
            }
            let Some((start, end)) = locs.get(self.group) else {
                break;
            };
            at = accept(self.kind, self.validate, text, start..end, out);
        }
    }
}

/// Keeps the candidate value `span` if it validates; returns where the search goes on.
fn accept(
    kind: Detector,
    validate: fn(&str) -> bool,
    text: &str,
    span: Range<usize>,
    out: &mut Vec<Finding>,
) -> usize {
    let (start, end) = (span.start, span.end);
    if start < end && validate(&text[start..end]) {
        out.push(Finding { kind, span });
        // The trailing context (if any) was not part of the value, so it may be the leading
        // context of the next value.
        end
    } else {
        // The greedy candidate failed validation; a candidate starting one character later
        // may still be valid.
        start + text[start..].chars().next().map_or(1, char::len_utf8)
    }
}

impl Windowed {
    fn new(
        kind: Detector,
        pattern: &str,
        group: &str,
        validate: fn(&str) -> bool,
        gate: Gate,
    ) -> Self {
        let regex = meta::Regex::new(pattern).expect("built-in patterns compile");
        let group = regex
            .group_info()
            .to_index(PatternID::ZERO, group)
            .expect("built-in patterns name their value group");
        Windowed {
            kind,
            regex,
            group,
            validate,
            gate,
            value: value_kind(kind),
        }
    }

    /// [`Compiled::find_all`], window by window (`windows` sorted and disjoint).
    fn find_in(&self, text: &str, windows: &[(usize, usize)], out: &mut Vec<Finding>) {
        let bytes = text.as_bytes();
        let mut caps = self.regex.create_captures();
        for &(lo, hi) in windows {
            let mut at = lo;
            let mut first = true;
            // Every match holds a byte the gate names, and a match found from `at` lies in
            // `at..hi`: without such a byte there, the window has no further match. (A new
            // window always holds one.)
            while at <= hi
                && (std::mem::take(&mut first)
                    || bytes[at..hi].iter().any(|&b| self.gate.needed(b)))
            {
                let input = Input::new(text).range(at..hi);
                let (start, end) = if self.value == Value::Captures {
                    self.regex.search_captures(&input, &mut caps);
                    if !caps.is_match() {
                        break;
                    }
                    let Some(span) = caps.get_group(self.group) else {
                        // As in the full-text loop (built-in value groups always take part).
                        return;
                    };
                    (span.start, span.end)
                } else {
                    let Some(m) = self.regex.search(&input) else {
                        break;
                    };
                    let matched = &bytes[m.start()..m.end()];
                    let first = matched.iter().position(u8::is_ascii_digit);
                    let last = matched.iter().rposition(u8::is_ascii_digit);
                    match (self.value, first, last) {
                        (Value::Whole, _, _) => (m.start(), m.end()),
                        (Value::Digits, Some(f), Some(l)) => (m.start() + f, m.start() + l + 1),
                        (Value::FromFirstDigit, Some(f), _) => (m.start() + f, m.end()),
                        _ => unreachable!("digit-based matches hold a digit"),
                    }
                };
                at = accept(self.kind, self.validate, text, start..end, out);
            }
        }
    }
}

/// Appends `lo..hi` to sorted, disjoint `windows`, merging it with the last one if they touch.
fn push_window(windows: &mut Vec<(usize, usize)>, lo: usize, hi: usize) {
    if let Some(last) = windows.last_mut() {
        debug_assert!(lo >= last.0, "windows arrive sorted by start");
        if lo <= last.1 {
            last.1 = last.1.max(hi);
            return;
        }
    }
    windows.push((lo, hi));
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Calls `f(start, end)` for each maximal run of ASCII digits in `bytes`, in order.
fn for_each_digit_run(bytes: &[u8], mut f: impl FnMut(usize, usize)) {
    let mut run_start: Option<usize> = None;
    for (n, chunk) in bytes.chunks(64).enumerate() {
        let base = n * 64;
        let digits = match <&[u8; 64]>::try_from(chunk) {
            Ok(block) => digit_mask(block),
            Err(_) => {
                let mut block = [0u8; 64];
                block[..chunk.len()].copy_from_slice(chunk);
                digit_mask(&block)
            }
        };
        // Bits below `from` are done; padding bytes are zeros, i.e. not digits.
        let mut from = 0u32;
        loop {
            let above = u64::MAX.checked_shl(from).unwrap_or(0);
            if let Some(start) = run_start {
                let others = !digits & above;
                if others == 0 {
                    break;
                }
                let end = others.trailing_zeros();
                f(start, (base + end as usize).min(bytes.len()));
                run_start = None;
                from = end;
            } else {
                let found = digits & above;
                if found == 0 {
                    break;
                }
                let start = found.trailing_zeros();
                run_start = Some(base + start as usize);
                from = start;
            }
        }
    }
    if let Some(start) = run_start {
        f(start, bytes.len());
    }
}

/// Bit `i` set iff `block[i]` is an ASCII digit.
fn digit_mask(block: &[u8; 64]) -> u64 {
    let mut mask = 0;
    for (k, word) in block.chunks_exact(8).enumerate() {
        let mut w = [0; 8];
        w.copy_from_slice(word);
        mask |= digit_bits(u64::from_le_bytes(w)) << (8 * k);
    }
    mask
}

/// Bit `i` set iff byte `i` (little-endian) of `x` is an ASCII digit.
fn digit_bits(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x80 * ONES;
    // With the high bit forced on, subtracting at most 0x3a borrows across no byte: the high
    // bit of a byte stays set iff its low seven bits are at least the subtrahend.
    let at_least_0 = (x | HIGH) - 0x30 * ONES;
    let at_least_colon = (x | HIGH) - 0x3a * ONES;
    let flags = at_least_0 & !at_least_colon & !x & HIGH;
    // Gather the eight flags (bits 7, 15, …, 63) into the top byte, then down; the partial
    // products land on distinct bits, so nothing carries into the top byte.
    ((flags >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

/// A bit per detector, for sets of detectors.
fn kind_bit(kind: Detector) -> u16 {
    1 << (kind as u16)
}

/// The [`kind_bit`]s of the digit-based built-in detectors that can have a value in cluster
/// `c`: cheap necessary conditions, in terms of the maximal digit runs (runs are maximal
/// because every numeric value is fenced by non-digits, so a value's runs are the cluster's).
fn cluster_admits(c: &Cluster) -> u16 {
    let mut kinds = 0;
    let mut admit = |kind, ok| {
        if ok {
            kinds |= kind_bit(kind);
        }
    };
    // 9 bare digits, or runs of 3, 2 and 4.
    admit(
        Detector::Ssn,
        c.run(9) || (c.run(3) && c.run(2) && c.run(4)),
    );
    // 10 or 11 digits; exchange 3, line 4.
    admit(Detector::Phone, c.digits >= 10 && c.run(3) && c.run(4));
    // `YYYY-MM-DD` or `M/D/YYYY` (the runs are fenced by non-digits).
    admit(
        Detector::DateOfBirth,
        c.feats & (FEAT_DATE_ISO | FEAT_DATE_US) != 0,
    );
    admit(Detector::Npi, c.run(10));
    admit(Detector::PaymentCard, c.digits >= 13);
    admit(Detector::Ipv4, c.digits >= 4 && c.sep(SEP_DOT));
    admit(Detector::Zip, c.run(5));
    // The default pattern: a label, then 6–10 digits.
    admit(Detector::Mrn, c.feats & FEAT_MRN != 0);
    kinds
}

/// Whether `before` (the text before a digit run) ends like the default MRN pattern's label:
/// `MRN` (any case; no other character folds to these letters), an optional `-`, `:` or `#`,
/// an optional space. Stripping greedily is exact, since the letters are none of those.
fn mrn_label_before(before: &[u8]) -> bool {
    let before = before.strip_suffix(b" ").unwrap_or(before);
    let before = match before.last() {
        Some(b'-' | b':' | b'#') => &before[..before.len() - 1],
        _ => before,
    };
    before.len() >= 3 && before[before.len() - 3..].eq_ignore_ascii_case(b"mrn")
}

/// How each built-in detector is prefiltered.
fn gate(kind: Detector) -> Gate {
    match kind {
        Detector::StreetAddress => Gate::Street,
        Detector::Email => Gate::Email,
        _ => Gate::Cluster,
    }
}

/// The window of a street address whose house number is the digit run `start..end`, if that
/// run can be one: 1–6 digits, not preceded by an ASCII letter or digit, followed by a space
/// and a capital or digit.
///
/// The match starts at most one character (≤ 4 bytes) before the number. After it come at
/// most six space-led tokens (up to five name words and the suffix, its optional `.`
/// included), each made of bytes `[A-Za-z0-9'.-]` or non-ASCII ones (the case-insensitive
/// suffix may contain `ſ` or the Kelvin sign); a name word is followed by a space, so it ends
/// exactly where its maximal run of such bytes ends. The window therefore ends at the end of
/// the sixth such token, or where a token is not followed by a space; and a token after the
/// first must be able to hold the suffix ([`may_be_suffix`]).
fn street_window(bytes: &[u8], (start, end): (usize, usize)) -> Option<(usize, usize)> {
    if end - start > 6
        || (start > 0 && bytes[start - 1].is_ascii_alphanumeric())
        || bytes.get(end) != Some(&b' ')
        || !matches!(bytes.get(end + 1), Some(b'A'..=b'Z' | b'0'..=b'9'))
    {
        return None;
    }
    let token_byte =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'\'' | b'-' | b'.') || b >= 0x80;
    let mut pos = end;
    let mut suffix_seen = false;
    for token in 0..6 {
        if bytes.get(pos) != Some(&b' ') {
            break;
        }
        pos += 1;
        let from = pos;
        while pos < bytes.len() && token_byte(bytes[pos]) {
            pos += 1;
        }
        suffix_seen |= token > 0 && may_be_suffix(&bytes[from..pos]);
    }
    suffix_seen.then_some((start.saturating_sub(4), pos))
}

/// Whether a token (see [`street_window`]) can begin with a street suffix followed by a word
/// boundary: it holds a non-ASCII byte (`ſ` and the Kelvin sign fold to `s` and `k`), or its
/// leading ASCII letters are exactly a suffix (a further letter or digit would rule out `\b`).
fn may_be_suffix(token: &[u8]) -> bool {
    if !token.is_ascii() {
        return true;
    }
    let letters = token
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(token.len());
    let (word, rest) = token.split_at(letters);
    if rest.first().is_some_and(u8::is_ascii_digit) || !(2..=9).contains(&word.len()) {
        return false;
    }
    let mut lower = [0; 9];
    for (l, b) in lower.iter_mut().zip(word) {
        *l = b.to_ascii_lowercase();
    }
    is_street_suffix(&lower[..word.len()])
}

/// Whether `word` (lower case) is one of [`STREET_SUFFIXES`] (tested to agree with it).
fn is_street_suffix(word: &[u8]) -> bool {
    matches!(
        word,
        b"street"
            | b"st"
            | b"avenue"
            | b"ave"
            | b"road"
            | b"rd"
            | b"boulevard"
            | b"blvd"
            | b"lane"
            | b"ln"
            | b"drive"
            | b"dr"
            | b"court"
            | b"ct"
            | b"way"
            | b"place"
            | b"pl"
            | b"terrace"
            | b"ter"
            | b"circle"
            | b"cir"
            | b"parkway"
            | b"pkwy"
            | b"highway"
            | b"hwy"
            | b"square"
            | b"sq"
            | b"trail"
            | b"trl"
            | b"alley"
            | b"aly"
            | b"plaza"
            | b"plz"
    )
}

/// Appends the windows of email addresses: around each `@`, the maximal run of local-part
/// bytes before it and of domain bytes after it (the pattern's local part and domain consist
/// of exactly these bytes and hold no `@`). An `@` with an empty side cannot be in a match.
fn email_windows(bytes: &[u8], windows: &mut Vec<(usize, usize)>) {
    let local = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-');
    let domain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-');
    for at in memchr::memchr_iter(b'@', bytes) {
        let mut lo = at;
        while lo > 0 && local(bytes[lo - 1]) {
            lo -= 1;
        }
        let mut hi = at + 1;
        while hi < bytes.len() && domain(bytes[hi]) {
            hi += 1;
        }
        if lo < at && hi > at + 1 {
            push_window(windows, lo, hi);
        }
    }
}

fn group_index(regex: &Regex, name: &str) -> Option<usize> {
    regex.capture_names().position(|n| n == Some(name))
}

fn compile_mrn(pattern: Option<&str>) -> Result<Compiled, MaskError> {
    let pattern = pattern.unwrap_or(DEFAULT_MRN_PATTERN);
    let regex = Regex::new(pattern).map_err(|source| MaskError::InvalidMrnPattern {
        pattern: pattern.to_owned(),
        source,
    })?;
    if regex.is_match("") {
        return Err(MaskError::MrnPatternMatchesEmpty {
            pattern: pattern.to_owned(),
        });
    }
    let group = group_index(&regex, "mrn").unwrap_or(0);
    Ok(Compiled {
        kind: Detector::Mrn,
        regex,
        group,
        validate: |_| true,
    })
}

// Patterns use `[0-9]`, never `\d`: `\d` is Unicode-aware and would admit digits the
// validators do not understand. The value is always the group named `v`; the rest is context.
const NOT_DIGIT_BEFORE: &str = "(?:^|[^0-9])";
const NOT_DIGIT_AFTER: &str = "(?:[^0-9]|$)";

const US_STATES: &str = "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|\
MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR|GU|VI|AS|MP";

const STREET_SUFFIXES: &str = "street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|\
court|ct|way|place|pl|terrace|ter|circle|cir|parkway|pkwy|highway|hwy|square|sq|trail|trl|\
alley|aly|plaza|plz";

fn builtin(kind: Detector) -> (&'static str, fn(&str) -> bool) {
    use std::sync::OnceLock;
    // Patterns are assembled once from the constants above.
    static PATTERNS: OnceLock<Vec<(Detector, String)>> = OnceLock::new();
    let patterns = PATTERNS.get_or_init(|| {
        vec![
            (
                Detector::Ssn,
                format!(
                    "{NOT_DIGIT_BEFORE}(?P<v>[0-9]{{3}}-[0-9]{{2}}-[0-9]{{4}}|[0-9]{{3}} [0-9]{{2}} [0-9]{{4}}|[0-9]{{9}}){NOT_DIGIT_AFTER}"
                ),
            ),
            (
                Detector::Email,
                r"(?P<v>[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,})"
                    .to_owned(),
            ),
            (
                Detector::Phone,
                format!(
                    r"{NOT_DIGIT_BEFORE}(?P<v>(?:\+1[-. ]?|1[-. ])?(?:\([0-9]{{3}}\) ?|[0-9]{{3}}[-. ])[0-9]{{3}}[-. ][0-9]{{4}}){NOT_DIGIT_AFTER}"
                ),
            ),
            (
                Detector::DateOfBirth,
                format!(
                    "{NOT_DIGIT_BEFORE}(?P<v>[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}|[0-9]{{1,2}}/[0-9]{{1,2}}/[0-9]{{4}}){NOT_DIGIT_AFTER}"
                ),
            ),
            (
                Detector::Npi,
                format!("{NOT_DIGIT_BEFORE}(?P<v>[0-9]{{10}}){NOT_DIGIT_AFTER}"),
            ),
            (
                Detector::PaymentCard,
                format!("{NOT_DIGIT_BEFORE}(?P<v>[0-9](?:[ -]?[0-9]){{12,18}}){NOT_DIGIT_AFTER}"),
            ),
            (
                Detector::Ipv4,
                r"(?:^|[^0-9.])(?P<v>[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})\.?(?:[^0-9.]|$)"
                    .to_owned(),
            ),
            (
                Detector::StreetAddress,
                format!(
                    r"(?:^|[^0-9A-Za-z])(?P<v>[0-9]{{1,6}}(?: [A-Z0-9][A-Za-z0-9'\-]*\.?){{1,5}}? (?i:{STREET_SUFFIXES})\b\.?)"
                ),
            ),
            (
                Detector::Zip,
                format!(
                    r"(?:(?:^|[^A-Za-z0-9])(?:{US_STATES})\.?,?|(?i:\bzip(?: ?code)?):?) ?(?P<v>[0-9]{{5}}(?:-[0-9]{{4}})?){NOT_DIGIT_AFTER}"
                ),
            ),
        ]
    });
    let pattern = patterns
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, p)| p.as_str())
        .expect("every built-in detector has a pattern");
    let validate: fn(&str) -> bool = match kind {
        Detector::Ssn => valid_ssn,
        Detector::Phone => valid_phone,
        Detector::DateOfBirth => |s| parse_date(s).is_some(),
        Detector::Npi => valid_npi,
        Detector::PaymentCard => valid_card,
        Detector::Ipv4 => valid_ipv4,
        Detector::Email | Detector::StreetAddress | Detector::Zip | Detector::Mrn => |_| true,
    };
    (pattern, validate)
}

fn digits(s: &str) -> Vec<u8> {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect()
}

fn number(d: &[u8]) -> u32 {
    d.iter().fold(0, |n, &d| n * 10 + u32::from(d))
}

fn valid_ssn(s: &str) -> bool {
    let d = digits(s);
    if d.len() != 9 {
        return false;
    }
    let (area, group, serial) = (number(&d[..3]), number(&d[3..5]), number(&d[5..]));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

fn valid_phone(s: &str) -> bool {
    let mut d = digits(s);
    if d.len() == 11 {
        d.remove(0);
    }
    d.len() == 10 && d[0] >= 2 && d[3] >= 2
}

/// Luhn check over decimal digits (most significant first).
pub(crate) fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    sum % 10 == 0
}

fn valid_npi(s: &str) -> bool {
    let d = digits(s);
    if d.len() != 10 || !(d[0] == 1 || d[0] == 2) {
        return false;
    }
    let mut full = vec![8, 0, 8, 4, 0];
    full.extend_from_slice(&d);
    luhn(&full)
}

fn valid_card(s: &str) -> bool {
    let d = digits(s);
    (13..=19).contains(&d.len()) && luhn(&d)
}

fn valid_ipv4(s: &str) -> bool {
    s.split('.')
        .all(|o| !o.is_empty() && o.len() <= 3 && o.parse::<u16>().is_ok_and(|n| n <= 255))
}

/// The years a date must fall in to be recognised as one ([`parse_date`]).
pub(crate) const DATE_YEARS: std::ops::RangeInclusive<u32> = 1900..=2099;

/// Parses `YYYY-MM-DD` or `M/D/YYYY` (1–2 digit month and day) into `(year, month, day)`,
/// accepting years of [`DATE_YEARS`] and days valid for the month (leap years included).
pub(crate) fn parse_date(s: &str) -> Option<(u32, u32, u32)> {
    // Digits only, at most four of them (no sign, no overflow).
    let num = |p: &[u8]| -> Option<u32> {
        (!p.is_empty() && p.len() <= 4 && p.iter().all(u8::is_ascii_digit))
            .then(|| p.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let b = s.as_bytes();
    let (y, m, d) = if b.len() == 10 && b[4] == b'-' && b[7] == b'-' {
        (num(&b[..4])?, num(&b[5..7])?, num(&b[8..])?)
    } else if s.contains('-') {
        return None;
    } else {
        let mut parts = s.split('/');
        let (m, d, y) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || y.len() != 4 || m.len() > 2 || d.len() > 2 {
            return None;
        }
        (num(y.as_bytes())?, num(m.as_bytes())?, num(d.as_bytes())?)
    };
    if !DATE_YEARS.contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    (1..=days).contains(&d).then_some((y, m, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// The straightforward algorithm the windowed scan must agree with: every enabled
    /// detector's regex (`regex` crate) over the whole text, then the leftmost-longest
    /// selection.
    struct Reference(Vec<Compiled>);

    impl Reference {
        fn compile(config: &DetectorConfig) -> Self {
            let mut compiled = Vec::new();
            for &kind in Detector::ALL.iter() {
                if !config.detectors.contains(&kind) {
                    continue;
                }
                compiled.push(match kind {
                    Detector::Mrn => compile_mrn(config.mrn_pattern.as_deref()).unwrap(),
                    _ => {
                        let (pattern, validate) = builtin(kind);
                        let regex = Regex::new(pattern).unwrap();
                        let group = group_index(&regex, "v").unwrap();
                        Compiled {
                            kind,
                            regex,
                            group,
                            validate,
                        }
                    }
                });
            }
            Reference(compiled)
        }

        fn scan(&self, text: &str) -> Vec<Finding> {
            let mut all = Vec::new();
            for c in &self.0 {
                c.find_all(text, &mut all);
            }
            // The selection is shared: what is compared is which findings each side makes.
            select(all)
        }
    }

    /// Configurations compared: the standard set, each detector alone (so that the selection
    /// cannot hide a detector's own mistakes), and a custom MRN pattern.
    fn configs() -> Vec<DetectorConfig> {
        let mut v = vec![DetectorConfig::default()];
        for k in Detector::ALL {
            v.push(DetectorConfig {
                detectors: vec![k],
                mrn_pattern: None,
            });
        }
        v.push(DetectorConfig {
            detectors: vec![Detector::Mrn, Detector::Ssn, Detector::Zip],
            mrn_pattern: Some(r"\bMR[0-9]{7}\b|(?i:patient (?P<mrn>[a-z]+))".into()),
        });
        v.push(DetectorConfig {
            detectors: Detector::ALL.to_vec(),
            mrn_pattern: Some(DEFAULT_MRN_PATTERN.into()),
        });
        v
    }

    fn sets() -> &'static [(DetectorSet, Reference)] {
        static SETS: OnceLock<Vec<(DetectorSet, Reference)>> = OnceLock::new();
        SETS.get_or_init(|| {
            configs()
                .iter()
                .map(|c| (DetectorSet::compile(c).unwrap(), Reference::compile(c)))
                .collect()
        })
    }

    fn assert_agrees(text: &str) -> Result<(), TestCaseError> {
        for (i, (fast, reference)) in sets().iter().enumerate() {
            prop_assert_eq!(
                fast.scan(text),
                reference.scan(text),
                "config #{} on {:?}",
                i,
                text
            );
        }
        Ok(())
    }

    /// Pieces that, glued together in any order, make values, near-values and the contexts
    /// and edges the windows must respect.
    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[0-9]{1,11}",
            3 => "[0-9]{1,4}[-. /][0-9]{1,4}([-. /][0-9]{1,4})?",
            3 => "[ .,:;/()+#@'-]{1,3}",
            3 => "[A-Za-z]{1,6}",
            2 => " ",
            2 => "\\PC{1,3}",
            1 => "[éüſ\u{212A}漢\u{1F600}\u{00A0}]",
            3 => prop::sample::select(vec![
                "IL", "CA", "ny", "NY", "zip", "ZIP", "zip code", "Zip Code:", "ZIPCODE",
                "MRN", "mrn#", "MRN: ", "MRN-", "St", "st.", "Ave", "AVE", "street", "Road",
                "ſt", "ſquare", "par\u{212A}way", "N", "Main", "5th", "O'Neil", "Lake-View",
                "+1", "+1 ", "1-", "(", ")", "@", "x@y.co", "a.b@c-d.org", "@ex.com",
                "jane.doe", "example.com", ".com", "é", "IL.", "CA,", "patient ", "MR",
            ]).prop_map(str::to_owned),
            3 => prop::sample::select(vec![
                "219-09-9999", "219 09 9999", "219099999", "078-05-1120", "(415) 555-0132",
                "415-555-0132", "415.555.0132", "+1 415 555 0132", "1-415-555-0132",
                "1980-01-02", "01/02/1980", "2/29/2020", "1234567893", "4111 1111 1111 1111",
                "4111-1111-1111-1111", "378282246310005", "10.0.0.1", "192.168.1.254.",
                "255.255.255.255", "1600 Pennsylvania Ave", "42 N Main Street", "7 5th street.",
                "12 Oak St. apt 4", "IL 62704", "CA, 94105-1234", "zip code: 10001",
                "MRN: 12345678", "mrn#0012345", "MR1234567", "jane@example.com",
            ]).prop_map(str::to_owned),
        ]
    }

    fn mixed_text() -> impl Strategy<Value = String> {
        prop::collection::vec(fragment(), 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn windowed_scan_agrees_with_full_text_reference(text in mixed_text()) {
            assert_agrees(&text)?;
        }

        #[test]
        fn windowed_scan_agrees_on_digit_heavy_text(
            text in "[0-9 ./:,@()+#A-Za-z\\-]{0,120}"
        ) {
            assert_agrees(&text)?;
        }

        #[test]
        fn windowed_scan_agrees_on_arbitrary_text(text in "\\PC{0,120}") {
            assert_agrees(&text)?;
        }
    }

    #[test]
    fn windowed_scan_agrees_on_long_notes() {
        // Long text with many values, so windows merge and the carried-over positions matter.
        let mut pieces: Vec<&str> = Detector::EXAMPLES.iter().map(|&(_, v)| v).collect();
        pieces.extend([
            "patient",
            "reports",
            "10mg",
            "4B",
            "7",
            "12",
            "Oak",
            "St.",
            "é",
            "@",
            "zip",
            "1.2.3.4.5",
            "55555",
        ]);
        let mut state: u64 = 1;
        let mut text = String::new();
        while text.len() < 200_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (state >> 33) as usize;
            text.push_str(pieces[r % pieces.len()]);
            text.push_str([" ", " ", ". ", ", ", "-", ""][r / 7 % 6]);
        }
        for (fast, reference) in sets() {
            assert_eq!(fast.scan(&text), reference.scan(&text));
        }
    }

    #[test]
    fn context_letters_fold_to_ascii_only() {
        // `CLUSTER_PRE` counts the `MRN` and `zip code` labels as one byte per letter: no
        // non-ASCII character may match them case-insensitively.
        let re = Regex::new("(?i)^[mrnzipcode]$").unwrap();
        let mut buf = [0; 4];
        for c in (0..=0x10_FFFF).filter_map(char::from_u32) {
            if !c.is_ascii() {
                assert!(!re.is_match(c.encode_utf8(&mut buf)), "{c:?}");
            }
        }
    }

    fn naive_digit_runs(bytes: &[u8]) -> Vec<(usize, usize)> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i].is_ascii_digit() {
                let start = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                runs.push((start, i));
            } else {
                i += 1;
            }
        }
        runs
    }

    fn digit_runs(bytes: &[u8]) -> Vec<(usize, usize)> {
        let mut runs = Vec::new();
        for_each_digit_run(bytes, |s, e| runs.push((s, e)));
        runs
    }

    #[test]
    fn street_suffix_list_agrees() {
        let listed: Vec<&str> = STREET_SUFFIXES.split('|').collect();
        for s in &listed {
            assert!(is_street_suffix(s.as_bytes()), "{s}");
            assert!((2..=9).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase()));
        }
        // Nothing else: every accepted word of up to 9 letters is listed.
        fn all(prefix: &mut Vec<u8>, listed: &[&str]) {
            if is_street_suffix(prefix) {
                assert!(listed.contains(&std::str::from_utf8(prefix).unwrap()));
            }
            if prefix.len() < 9 && listed.iter().any(|s| s.as_bytes().starts_with(prefix)) {
                for b in b'a'..=b'z' {
                    prefix.push(b);
                    all(prefix, listed);
                    prefix.pop();
                }
            }
        }
        all(&mut Vec::new(), &listed);
    }

    #[test]
    fn digit_bits_is_exact() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                for fill in [b'a', b'5', 0xff, 0] {
                    let mut word = [fill; 8];
                    word[pos] = b;
                    let want = word
                        .iter()
                        .enumerate()
                        .fold(0, |m, (i, c)| m | (u64::from(c.is_ascii_digit()) << i));
                    assert_eq!(digit_bits(u64::from_le_bytes(word)), want, "{word:?}");
                }
            }
        }
    }

    #[test]
    fn digit_runs_across_blocks() {
        assert_eq!(
            digit_runs(b"a1bc22defghij333 4"),
            [(1, 2), (4, 6), (13, 16), (17, 18)]
        );
        for len in [0, 1, 63, 64, 65, 127, 128, 129, 200] {
            for b in 0..=255u8 {
                let text = vec![b; len];
                assert_eq!(digit_runs(&text), naive_digit_runs(&text), "{b:#x} x {len}");
            }
        }
    }

    proptest! {
        #[test]
        fn digit_runs_agree_with_naive(text in "[0-9a/]{0,300}") {
            prop_assert_eq!(digit_runs(text.as_bytes()), naive_digit_runs(text.as_bytes()));
        }
    }
}
