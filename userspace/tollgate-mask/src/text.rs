//! Masking PHI inside free text.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::detect::{Detector, DetectorSet};
use crate::method::{Method, REDACTED};

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

    /// Adds every count of `other` to these counts.
    pub fn merge(&mut self, other: &MaskCounts) {
        for (kind, n) in other.iter() {
            *self.by_kind.entry(kind).or_insert(0) += n;
        }
    }

    pub(crate) fn add(&mut self, kind: Detector) {
        *self.by_kind.entry(kind).or_insert(0) += 1;
    }
}

/// Replaces every value `detectors` find in `text` by its masked form, leaving the rest of the
/// text untouched. [`Method::Null`] has no meaning inside text, so such values become
/// [`REDACTED`].
pub fn mask_text(text: &str, detectors: &DetectorSet, method: &Method) -> (String, MaskCounts) {
    let mut counts = MaskCounts::default();
    match mask_text_by_kind(text, detectors, |_| method, &mut counts) {
        Some(out) => (out, counts),
        None => (text.to_owned(), counts),
    }
}

/// Like [`mask_text`], but each finding is masked with the method `method_for` picks for its
/// detector; counts are added to `counts`. Returns `None` (and adds nothing) when nothing was
/// found, so callers can keep the original text without copying it.
pub(crate) fn mask_text_by_kind<'m>(
    text: &str,
    detectors: &DetectorSet,
    method_for: impl Fn(Detector) -> &'m Method,
    counts: &mut MaskCounts,
) -> Option<String> {
    let findings = detectors.scan(text);
    if findings.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for f in findings {
        out.push_str(&text[copied..f.span.start]);
        if !method_for(f.kind).apply_into(&text[f.span.clone()], &mut out) {
            out.push_str(REDACTED);
        }
        copied = f.span.end;
        counts.add(f.kind);
    }
    out.push_str(&text[copied..]);
    Some(out)
}
