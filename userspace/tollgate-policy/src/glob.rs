//! Glob patterns, compiled once when a policy is built.
//!
//! Two flavours:
//! - [`TextGlob`]: `*` (any run of characters, `/` included) and `?` (one character) over a whole
//!   string, optionally ASCII-case-insensitive — identities (user, role, comm, exe, cgroup, …).
//! - [`NameGlob`]: a dotted Snowflake object name (`DB.SCHEMA.TABLE[.COLUMN]`), one [`TextGlob`]
//!   per segment, so `*` never crosses a dot. Unquoted segments are folded to upper case the
//!   Snowflake way; a `"Quoted"` segment is kept as written and taken literally.

use std::fmt;

/// A compiled whole-string glob: `*` matches any run of characters, `?` exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextGlob {
    pattern: String,
    case_insensitive: bool,
    /// No wildcard at all: a plain comparison is enough (the common case).
    literal: bool,
}

impl TextGlob {
    /// Compiles `pattern`. Never fails: every string is a valid glob; emptiness is checked by
    /// the policy validator, which knows the field path.
    pub fn new(pattern: &str, case_insensitive: bool) -> Self {
        Self {
            pattern: pattern.to_owned(),
            case_insensitive,
            literal: !pattern.contains(['*', '?']),
        }
    }

    /// A glob that matches `literal` only (wildcard characters included, taken literally).
    pub fn exact(literal: &str) -> Self {
        Self {
            pattern: literal.to_owned(),
            case_insensitive: false,
            literal: true,
        }
    }

    /// Whether this glob matches every string (`*`).
    pub fn is_match_all(&self) -> bool {
        !self.pattern.is_empty() && self.pattern.bytes().all(|b| b == b'*')
    }

    /// Whether `candidate` matches the whole pattern.
    pub fn matches(&self, candidate: &str) -> bool {
        if self.literal {
            return if self.case_insensitive {
                self.pattern.eq_ignore_ascii_case(candidate)
            } else {
                self.pattern == candidate
            };
        }
        wildcard_match(
            self.pattern.as_bytes(),
            candidate.as_bytes(),
            self.case_insensitive,
        )
    }
}

impl fmt::Display for TextGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// Iterative wildcard matching with a single back-track point: linear in practice and never
/// exponential, whatever the pattern. `?` and the back-track step move by whole UTF-8
/// characters so a literal can only ever be compared at a character boundary.
fn wildcard_match(p: &[u8], s: &[u8], ci: bool) -> bool {
    let eq = |a: u8, b: u8| {
        if ci {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let char_len = |b: u8| match b {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    };
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == b'?' {
            pi += 1;
            si = (si + char_len(s[si])).min(s.len());
        } else if pi < p.len() && eq(p[pi], s[si]) {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            let next = (ss + char_len(s[ss])).min(s.len());
            star = Some((sp, next));
            pi = sp + 1;
            si = next;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Why a dotted name pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameGlobError {
    /// The pattern does not have the number of dot-separated segments the field needs.
    #[error("expected {expected} dot-separated segments ({shape}), found {found}")]
    SegmentCount {
        /// Segments the field needs (3 for tables, 4 for columns).
        expected: usize,
        /// Segments found in the pattern.
        found: usize,
        /// The shape, for the message (`DB.SCHEMA.TABLE`).
        shape: &'static str,
    },
    /// A segment is empty (`CLINICAL..PATIENTS`).
    #[error("segment {index} is empty")]
    EmptySegment {
        /// Zero-based index of the empty segment.
        index: usize,
    },
    /// A double quote is not closed.
    #[error("unterminated quoted segment")]
    UnterminatedQuote,
}

/// A compiled glob over a dotted Snowflake object name; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameGlob {
    source: String,
    segments: Vec<TextGlob>,
}

impl NameGlob {
    /// Compiles `pattern`, which must have exactly `expected` segments (`shape` names them in
    /// errors).
    pub fn new(pattern: &str, expected: usize, shape: &'static str) -> Result<Self, NameGlobError> {
        let raw = split_name_pattern(pattern)?;
        if raw.len() != expected {
            return Err(NameGlobError::SegmentCount {
                expected,
                found: raw.len(),
                shape,
            });
        }
        let mut segments = Vec::with_capacity(raw.len());
        for (index, (text, quoted)) in raw.into_iter().enumerate() {
            if text.is_empty() {
                return Err(NameGlobError::EmptySegment { index });
            }
            segments.push(if quoted {
                TextGlob::exact(&text)
            } else {
                TextGlob::new(&text.to_uppercase(), false)
            });
        }
        Ok(Self {
            source: pattern.to_owned(),
            segments,
        })
    }

    /// Matches resolved name segments; `None` is a segment that could not be resolved (no
    /// current database, say). `unknown_matches` says what such a segment does: restrictive
    /// rules pass `true` (it could be anything, so it could be this), permissive rules pass
    /// `false` unless the pattern segment is `*`.
    pub fn matches(&self, parts: &[Option<&str>], unknown_matches: bool) -> bool {
        parts.len() == self.segments.len()
            && self
                .segments
                .iter()
                .zip(parts)
                .all(|(glob, part)| match part {
                    Some(value) => glob.matches(value),
                    None => unknown_matches || glob.is_match_all(),
                })
    }

    /// The pattern as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// Splits `a."B.c".d` into `[("a", false), ("B.c", true), ("d", false)]`.
fn split_name_pattern(pattern: &str) -> Result<Vec<(String, bool)>, NameGlobError> {
    crate::names::split_quoted(pattern).ok_or(NameGlobError::UnterminatedQuote)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_globs() {
        assert!(TextGlob::new("/usr/bin/python3*", false).matches("/usr/bin/python3.11"));
        assert!(!TextGlob::new("/usr/bin/python3*", false).matches("/usr/local/bin/python3"));
        assert!(TextGlob::new("/agents.slice/*", false).matches("/agents.slice/a/b.scope"));
        assert!(TextGlob::new("analyst", true).matches("ANALYST"));
        assert!(!TextGlob::new("analyst", false).matches("ANALYST"));
        assert!(TextGlob::new("ci-?", true).matches("CI-é"));
        assert!(TextGlob::new("*a*b*c", false).matches("xxaxxbxxbc"));
        assert!(!TextGlob::new("*a*b*c", false).matches("xxaxxbxxb"));
        assert!(TextGlob::new("*", false).matches(""));
    }

    #[test]
    fn name_globs_fold_and_never_cross_dots() {
        let g = NameGlob::new("clinical.public.*", 3, "DB.SCHEMA.TABLE").unwrap();
        assert!(g.matches(&[Some("CLINICAL"), Some("PUBLIC"), Some("PATIENTS")], false));
        assert!(!g.matches(&[Some("CLINICAL"), Some("EHR"), Some("PATIENTS")], false));
        let q = NameGlob::new(r#"CLINICAL."Mixed.Case".*"#, 3, "DB.SCHEMA.TABLE").unwrap();
        assert!(q.matches(&[Some("CLINICAL"), Some("Mixed.Case"), Some("T")], false));
        assert!(!q.matches(&[Some("CLINICAL"), Some("MIXED.CASE"), Some("T")], false));
        // `*` stays inside its segment.
        let s = NameGlob::new("*.*.PATIENTS", 3, "DB.SCHEMA.TABLE").unwrap();
        assert!(!s.matches(&[Some("A"), Some("B.C"), Some("X")], false));
        assert_eq!(
            NameGlob::new("A.B", 3, "DB.SCHEMA.TABLE").unwrap_err(),
            NameGlobError::SegmentCount {
                expected: 3,
                found: 2,
                shape: "DB.SCHEMA.TABLE"
            }
        );
        assert!(NameGlob::new("A..B", 3, "DB.SCHEMA.TABLE").is_err());
        assert!(NameGlob::new("\"A.B.C", 3, "DB.SCHEMA.TABLE").is_err());
    }

    #[test]
    fn unknown_segments() {
        let g = NameGlob::new("CLINICAL.*.PATIENTS", 3, "DB.SCHEMA.TABLE").unwrap();
        assert!(g.matches(&[None, Some("PUBLIC"), Some("PATIENTS")], true));
        assert!(!g.matches(&[None, Some("PUBLIC"), Some("PATIENTS")], false));
        assert!(g.matches(&[Some("CLINICAL"), None, Some("PATIENTS")], false));
    }
}
