//! Masking methods on a single value.
//!
//! Masking never fails: a value a method cannot handle (e.g. `Generalize` on something that is
//! not a date, ZIP code or age) is redacted instead — fail closed.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::detect::parse_date;
use crate::MaskError;

/// The fixed marker that replaces a redacted value.
pub const REDACTED: &str = "***";

/// Prefix of every token produced by [`Method::Token`].
pub const TOKEN_PREFIX: &str = "tok_";

/// How to mask a value: the runtime form of a policy `mask` directive (`method`, `keep_last`),
/// with the tokenisation key resolved.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Method {
    /// Replace the value with [`REDACTED`].
    Redact,
    /// Keep the last `keep_last` letters/digits; replace the other letters/digits with `*` and
    /// keep separators (`-`, spaces, `.`, `@`, …) so the shape stays readable. If `keep_last`
    /// would reveal every letter and digit, none is kept.
    Partial {
        /// How many trailing letters/digits stay visible.
        keep_last: usize,
    },
    /// Replace the value with a keyed deterministic token: `tok_` + hex of the first 16 bytes
    /// of HMAC-SHA256(key, value). Same value and key → same token (joins and counts still
    /// work); a different key → unrelated tokens.
    Token {
        /// The tokenisation key.
        key: MaskKey,
    },
    /// Replace the value with SQL `NULL` (in free text: with [`REDACTED`]).
    Null,
    /// HIPAA Safe Harbor generalisation: dates → year (`1980-01-02` → `1980`); ZIP codes → first
    /// three digits + `00`, or `00000` for the restricted three-digit prefixes
    /// ([`RESTRICTED_ZIP3`]); ages over 89 → `90+` (ages up to 89 are kept). Anything else is
    /// redacted.
    Generalize,
}

/// A masked value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskedValue {
    /// The value's replacement text.
    Text(String),
    /// The value becomes `NULL`.
    Null,
}

impl MaskedValue {
    /// The replacement text, or `None` for `NULL`.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            MaskedValue::Text(s) => Some(s),
            MaskedValue::Null => None,
        }
    }
}

/// Three-digit ZIP prefixes whose areas hold 20,000 people or fewer (HHS Safe Harbor guidance,
/// 2000 Census); they generalise to `000`.
pub const RESTRICTED_ZIP3: [&str; 17] = [
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
];

/// Minimum length of a [`MaskKey`], in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// A tokenisation key. It never prints its bytes: `Debug` shows `MaskKey(<redacted>)`, and there
/// is no `Display` or `Serialize`.
#[derive(Clone)]
pub struct MaskKey {
    // Keyed once; cloning the keyed state is cheaper than re-keying per value.
    mac: Hmac<Sha256>,
}

impl MaskKey {
    /// Builds a key from raw bytes loaded by the caller; refuses keys shorter than
    /// [`MIN_KEY_LEN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MaskError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(MaskError::KeyTooShort {
                len: bytes.len(),
                min: MIN_KEY_LEN,
            });
        }
        let mac =
            <Hmac<Sha256> as Mac>::new_from_slice(bytes).expect("HMAC accepts keys of any length");
        Ok(MaskKey { mac })
    }

    /// The token for `value` under this key.
    pub fn token(&self, value: &str) -> String {
        let mut out = String::with_capacity(TOKEN_PREFIX.len() + 32);
        self.push_token(value, &mut out);
        out
    }

    /// Appends the token for `value` under this key to `out`.
    pub fn push_token(&self, value: &str, out: &mut String) {
        let mut mac = self.mac.clone();
        mac.update(value.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut hex = [0u8; 32];
        for (pair, b) in hex.chunks_exact_mut(2).zip(&tag[..16]) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
        }
        out.push_str(TOKEN_PREFIX);
        out.push_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"));
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for MaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MaskKey(<redacted>)")
    }
}

impl Method {
    /// Masks one value.
    pub fn apply(&self, value: &str) -> MaskedValue {
        let mut out = String::new();
        if self.apply_into(value, &mut out) {
            MaskedValue::Text(out)
        } else {
            MaskedValue::Null
        }
    }

    /// Masks one value into `out` (appended), without allocating when `out` has room; returns
    /// `false` when the value becomes `NULL` (nothing is appended).
    pub fn apply_into(&self, value: &str, out: &mut String) -> bool {
        match self {
            Method::Redact => out.push_str(REDACTED),
            Method::Partial { keep_last } => partial(value, *keep_last, out),
            Method::Token { key } => key.push_token(value, out),
            Method::Null => return false,
            Method::Generalize => match generalize(value) {
                Some(g) => out.push_str(&g),
                None => out.push_str(REDACTED),
            },
        }
        true
    }
}

fn partial(value: &str, keep_last: usize, out: &mut String) {
    if value.is_ascii() {
        // The common case, byte by byte: ASCII letters and digits are the alphanumerics.
        let bytes = value.as_bytes();
        let maskable = bytes.iter().filter(|b| b.is_ascii_alphanumeric()).count();
        let keep = if keep_last >= maskable { 0 } else { keep_last };
        let mut seen = 0;
        out.reserve(bytes.len());
        for &b in bytes {
            if b.is_ascii_alphanumeric() {
                seen += 1;
                out.push(if seen > maskable - keep {
                    char::from(b)
                } else {
                    '*'
                });
            } else {
                out.push(char::from(b));
            }
        }
        return;
    }
    let maskable = value.chars().filter(|c| c.is_alphanumeric()).count();
    // Revealing every letter and digit would not mask anything.
    let keep = if keep_last >= maskable { 0 } else { keep_last };
    let mut seen = 0;
    out.extend(value.chars().map(|c| {
        if !c.is_alphanumeric() {
            return c;
        }
        seen += 1;
        if seen > maskable - keep {
            c
        } else {
            '*'
        }
    }));
}

/// Safe Harbor generalisation of a date, ZIP code or age; `None` if `value` is none of these.
fn generalize(value: &str) -> Option<String> {
    let v = value.trim();
    let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // ISO timestamps (`1980-01-02T03:04:05Z`, `1980-01-02 03:04`) generalise like their date.
    let date_part = match v.get(..10) {
        Some(d) if v.len() > 10 && matches!(v.as_bytes()[10], b'T' | b' ') => d,
        _ => v,
    };
    if let Some((year, _, _)) = parse_date(date_part) {
        return Some(year.to_string());
    }
    let zip5 = match v.split_once('-') {
        Some((five, four)) if four.len() == 4 && is_digits(four) => five,
        Some(_) => return None,
        None => v,
    };
    if zip5.len() == 5 && is_digits(zip5) {
        let zip3 = &zip5[..3];
        return Some(if RESTRICTED_ZIP3.contains(&zip3) {
            "00000".to_owned()
        } else {
            format!("{zip3}00")
        });
    }
    if v.len() <= 3 && is_digits(v) {
        let age: u32 = v.parse().ok()?;
        return Some(if age > 89 {
            "90+".to_owned()
        } else {
            age.to_string()
        });
    }
    None
}
