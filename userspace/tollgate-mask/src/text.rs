//! Masking PHI inside free text.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::detect::{Detector, DetectorSet};
use crate::method::{MaskedValue, Method, REDACTED};

/// How many values of each kind were masked; for the audit record (never the values).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MaskCounts {
    by_kind: BTreeMap<Detector, usize>,
}

impl MaskCounts {
    /// Values of `kind` masked.
    pub fn get(&self, kind: Detector) -> usize {
        self.by_kind.get(&kind).copied().unwrap_or(0)
    }

    /// Values masked, all kinds together.
    pub fn total(&self) -> usize {
        self.by_kind.values().sum()
    }

    /// Kinds with a non-zero count, in [`Detector`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Detector, usize)> + '_ {
        self.by_kind.iter().map(|(&k, &n)| (k, n))
    }

    fn add(&mut self, kind: Detector) {
        *self.by_kind.entry(kind).or_insert(0) += 1;
    }
}

/// Replaces every value `detectors` find in `text` by its masked form, leaving the rest of the
/// text untouched. [`Method::Null`] has no meaning inside text, so such values become
/// [`REDACTED`].
pub fn mask_text(text: &str, detectors: &DetectorSet, method: &Method) -> (String, MaskCounts) {
    let findings = detectors.scan(text);
    let mut counts = MaskCounts::default();
    if findings.is_empty() {
        return (text.to_owned(), counts);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for f in findings {
        out.push_str(&text[copied..f.span.start]);
        match method.apply(&text[f.span.clone()]) {
            MaskedValue::Text(s) => out.push_str(&s),
            MaskedValue::Null => out.push_str(REDACTED),
        }
        copied = f.span.end;
        counts.add(f.kind);
    }
    out.push_str(&text[copied..]);
    (out, counts)
}
