//! Value detectors for PHI in free text.
//!
//! Each detector is a candidate regular expression plus a validator (SSN number rules, Luhn,
//! calendar dates, octet ranges, NANP rules). Numeric detectors require that the value is not
//! glued to further digits (`1234-56-78901` is not an SSN), but they do accept letters right
//! before the value (`SSN123-45-6789`), because in a HIPAA fallback a missed value costs more
//! than an extra mask.
//!
//! [`DetectorSet::scan`] runs every enabled detector and keeps a non-overlapping,
//! leftmost-longest selection of the findings, sorted by start offset.

use std::cmp::Reverse;
use std::ops::Range;

use regex::Regex;
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
    compiled: Vec<Compiled>,
}

#[derive(Debug, Clone)]
struct Compiled {
    kind: Detector,
    regex: Regex,
    /// Capture group holding the value; the rest of the match is context.
    group: usize,
    validate: fn(&str) -> bool,
}

impl DetectorSet {
    /// All built-in detectors, MRN included with [`DEFAULT_MRN_PATTERN`].
    pub fn standard() -> Self {
        Self::compile(&DetectorConfig::default())
            .expect("built-in patterns compile; covered by tests")
    }

    /// Compiles the given configuration. Duplicate detectors are ignored.
    pub fn compile(config: &DetectorConfig) -> Result<Self, MaskError> {
        let mut compiled: Vec<Compiled> = Vec::new();
        for &kind in Detector::ALL.iter() {
            if !config.detectors.contains(&kind) {
                continue;
            }
            let c = match kind {
                Detector::Mrn => compile_mrn(config.mrn_pattern.as_deref())?,
                _ => {
                    let (pattern, validate) = builtin(kind);
                    let regex = Regex::new(pattern).expect("built-in patterns compile");
                    let group = group_index(&regex, "v").expect("built-in patterns name `v`");
                    Compiled {
                        kind,
                        regex,
                        group,
                        validate,
                    }
                }
            };
            compiled.push(c);
        }
        Ok(DetectorSet { compiled })
    }

    /// The enabled detectors.
    pub fn detectors(&self) -> impl Iterator<Item = Detector> + '_ {
        self.compiled.iter().map(|c| c.kind)
    }

    /// Finds PHI values in `text`: non-overlapping, leftmost-longest (ties go to the detector
    /// listed first in [`Detector::ALL`]), sorted by start offset.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let mut all = Vec::new();
        for c in &self.compiled {
            c.find_all(text, &mut all);
        }
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
            if start < end && (self.validate)(&text[start..end]) {
                out.push(Finding {
                    kind: self.kind,
                    span: start..end,
                });
                // The trailing context (if any) was not part of the value, so it may be the
                // leading context of the next value.
                at = end;
            } else {
                // The greedy candidate failed validation; a candidate starting one character
                // later may still be valid.
                at = start + text[start..].chars().next().map_or(1, char::len_utf8);
            }
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

/// Parses `YYYY-MM-DD` or `M/D/YYYY` (1–2 digit month and day) into `(year, month, day)`,
/// accepting years 1900–2099 and days valid for the month (leap years included).
pub(crate) fn parse_date(s: &str) -> Option<(u32, u32, u32)> {
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let (y, m, d) = if let [y, m, d] = s.split('-').collect::<Vec<_>>()[..] {
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return None;
        }
        (y, m, d)
    } else if let [m, d, y] = s.split('/').collect::<Vec<_>>()[..] {
        if y.len() != 4 || m.is_empty() || m.len() > 2 || d.is_empty() || d.len() > 2 {
            return None;
        }
        (y, m, d)
    } else {
        return None;
    };
    if !(all_digits(y) && all_digits(m) && all_digits(d)) {
        return None;
    }
    let (y, m, d): (u32, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1900..=2099).contains(&y) || !(1..=12).contains(&m) {
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
