//! Masking methods on a single value.
//!
//! Masking never fails: a value a method cannot handle (e.g. `Generalize` on something that is
//! not a date, ZIP code or age) is redacted instead — fail closed.

use std::fmt;

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes256;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// The keyed function behind [`Method::Token`]. Both give 128-bit tags under keys of at least
/// [`MIN_KEY_LEN`] bytes, and both are NIST-approved MACs; their tokens differ, so a deployment
/// keeps one (tokens are only comparable under the same key and function).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TokenMac {
    /// HMAC-SHA256 (RFC 2104, FIPS 198-1), the first 128 bits. The default: the tokens of
    /// earlier releases.
    #[default]
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    /// AES-256-CMAC (NIST SP 800-38B) under a key derived from the masking key with
    /// HMAC-SHA256. A value of up to 16 bytes costs one AES encryption (AES-NI where the CPU
    /// has it) instead of two SHA-256 compressions: several times faster per value.
    #[serde(rename = "aes-256-cmac")]
    Aes256Cmac,
}

impl TokenMac {
    /// The name used in settings (`hmac-sha256`, `aes-256-cmac`).
    pub fn name(self) -> &'static str {
        match self {
            TokenMac::HmacSha256 => "hmac-sha256",
            TokenMac::Aes256Cmac => "aes-256-cmac",
        }
    }
}

impl std::str::FromStr for TokenMac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hmac-sha256" => Ok(TokenMac::HmacSha256),
            "aes-256-cmac" => Ok(TokenMac::Aes256Cmac),
            other => Err(format!(
                "`{other}` is not a token function: use `hmac-sha256` or `aes-256-cmac`"
            )),
        }
    }
}

/// A tokenisation key. It never prints its bytes: `Debug` shows `MaskKey(<redacted>)`, and there
/// is no `Display` or `Serialize`.
///
/// Everything that depends only on the key is computed once, when it is built: for HMAC-SHA256
/// (computed on SHA-256's compression function) the key's inner and outer pads are absorbed,
/// so a value of up to 55 bytes costs exactly two compressions; for AES-256-CMAC the AES key
/// schedule and both subkeys. No token allocates. Outputs are the `hmac` and `cmac` crates',
/// bit for bit (the tests compare them).
#[derive(Clone)]
pub struct MaskKey {
    mac: Keyed,
}

#[derive(Clone)]
enum Keyed {
    Hmac(HmacKey),
    Cmac(Box<CmacKey>),
}

#[derive(Clone)]
struct HmacKey {
    /// SHA-256 state after the block `key ^ ipad`.
    inner: [u32; 8],
    /// SHA-256 state after the block `key ^ opad`.
    outer: [u32; 8],
}

#[derive(Clone)]
struct CmacKey {
    cipher: Aes256,
    /// Subkey for a complete last block.
    k1: [u8; 16],
    /// Subkey for a padded last block.
    k2: [u8; 16],
}

/// What the AES-256-CMAC key is derived with (HMAC-SHA256 under the masking key): it separates
/// that key from any other use of the masking key.
const CMAC_KEY_LABEL: &[u8] = b"tollgate token key: AES-256-CMAC";

/// SHA-256's block size.
const BLOCK: usize = 64;

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

type Block = sha2::digest::generic_array::GenericArray<u8, sha2::digest::consts::U64>;

impl MaskKey {
    /// Builds an HMAC-SHA256 key ([`TokenMac::HmacSha256`]) from raw bytes loaded by the caller;
    /// refuses keys shorter than [`MIN_KEY_LEN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MaskError> {
        Self::new(bytes, TokenMac::HmacSha256)
    }

    /// Builds a key for `mac` from raw bytes loaded by the caller; refuses keys shorter than
    /// [`MIN_KEY_LEN`] bytes.
    pub fn new(bytes: &[u8], mac: TokenMac) -> Result<Self, MaskError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(MaskError::KeyTooShort {
                len: bytes.len(),
                min: MIN_KEY_LEN,
            });
        }
        let hmac = HmacKey::new(bytes);
        let mac = match mac {
            TokenMac::HmacSha256 => Keyed::Hmac(hmac),
            TokenMac::Aes256Cmac => Keyed::Cmac(Box::new(CmacKey::new(&hmac.mac(CMAC_KEY_LABEL)))),
        };
        Ok(MaskKey { mac })
    }

    /// The keyed function this key computes.
    pub fn token_mac(&self) -> TokenMac {
        match self.mac {
            Keyed::Hmac(_) => TokenMac::HmacSha256,
            Keyed::Cmac(_) => TokenMac::Aes256Cmac,
        }
    }

    /// The token for `value` under this key.
    pub fn token(&self, value: &str) -> String {
        let mut out = String::with_capacity(TOKEN_PREFIX.len() + 32);
        self.push_token(value, &mut out);
        out
    }

    /// Appends the token for `value` under this key to `out`.
    pub fn push_token(&self, value: &str, out: &mut String) {
        self.put_token(value, out);
    }

    fn put_token(&self, value: &str, out: &mut impl Out) {
        let tag: [u8; 16] = match &self.mac {
            Keyed::Hmac(k) => {
                let full = k.mac(value.as_bytes());
                let mut t = [0; 16];
                t.copy_from_slice(&full[..16]);
                t
            }
            Keyed::Cmac(k) => k.mac(value.as_bytes()),
        };
        let mut hex = [0u8; 32];
        for (pair, b) in hex.chunks_exact_mut(2).zip(&tag) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
        }
        out.put(TOKEN_PREFIX);
        out.put_ascii(&hex);
    }
}

impl HmacKey {
    fn new(bytes: &[u8]) -> Self {
        // A key longer than a block is hashed first (RFC 2104, section 2).
        let mut k = [0u8; BLOCK];
        if bytes.len() > BLOCK {
            k[..32].copy_from_slice(&Sha256::digest(bytes));
        } else {
            k[..bytes.len()].copy_from_slice(bytes);
        }
        let pad = |byte: u8| {
            let mut block = Block::default();
            for (b, kb) in block.iter_mut().zip(k) {
                *b = kb ^ byte;
            }
            let mut state = SHA256_IV;
            sha2::compress256(&mut state, &[block]);
            state
        };
        HmacKey {
            inner: pad(0x36),
            outer: pad(0x5c),
        }
    }

    /// HMAC-SHA256(key, message).
    fn mac(&self, message: &[u8]) -> [u8; 32] {
        let inner = finish(self.inner, message);
        digest_bytes(&finish(self.outer, &digest_bytes(&inner)))
    }
}

impl CmacKey {
    fn new(key: &[u8; 32]) -> Self {
        let cipher = Aes256::new(key.into());
        // SP 800-38B, 6.1: L = AES(0), K1 = dbl(L), K2 = dbl(K1).
        let mut l = aes::Block::default();
        cipher.encrypt_block(&mut l);
        let k1 = dbl(l.into());
        let k2 = dbl(k1);
        CmacKey { cipher, k1, k2 }
    }

    /// AES-256-CMAC(key, message) (SP 800-38B, 6.2).
    fn mac(&self, message: &[u8]) -> [u8; 16] {
        let mut state = aes::Block::default();
        // Every block but the last is chained as it is; the last (complete, or padded with
        // `0x80 0…`) is masked with K1 or K2. The empty message is one padded block.
        let last_len = match message.len() % 16 {
            0 if !message.is_empty() => 16,
            r => r,
        };
        let (body, last) = message.split_at(message.len() - last_len);
        for block in body.chunks_exact(16) {
            for (s, b) in state.iter_mut().zip(block) {
                *s ^= b;
            }
            self.cipher.encrypt_block(&mut state);
        }
        let mut tail = [0u8; 16];
        tail[..last.len()].copy_from_slice(last);
        let subkey = if last.len() == 16 {
            &self.k1
        } else {
            tail[last.len()] = 0x80;
            &self.k2
        };
        for ((s, t), k) in state.iter_mut().zip(tail).zip(subkey) {
            *s ^= t ^ k;
        }
        self.cipher.encrypt_block(&mut state);
        state.into()
    }
}

/// Doubling in GF(2^128) (SP 800-38B, 6.1): shift left by one bit, and reduce by `0x87` when
/// the top bit falls out.
fn dbl(block: [u8; 16]) -> [u8; 16] {
    let v = u128::from_be_bytes(block);
    let reduced = (v << 1) ^ if v >> 127 == 1 { 0x87 } else { 0 };
    reduced.to_be_bytes()
}

/// Continues SHA-256 from `state` (one block already absorbed) over `message` and its padding;
/// returns the final state.
fn finish(mut state: [u32; 8], message: &[u8]) -> [u32; 8] {
    let mut blocks = message.chunks_exact(BLOCK);
    for b in &mut blocks {
        sha2::compress256(&mut state, &[*Block::from_slice(b)]);
    }
    let rest = blocks.remainder();
    let bits = ((BLOCK + message.len()) as u64) * 8;
    let mut tail = [0u8; 2 * BLOCK];
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    // The length ends the first block if it fits after the `0x80`, else the second.
    let n = if rest.len() < BLOCK - 8 { 1 } else { 2 };
    tail[n * BLOCK - 8..n * BLOCK].copy_from_slice(&bits.to_be_bytes());
    let blocks = [
        *Block::from_slice(&tail[..BLOCK]),
        *Block::from_slice(&tail[BLOCK..]),
    ];
    sha2::compress256(&mut state, &blocks[..n]);
    state
}

/// A SHA-256 state as the digest's bytes.
fn digest_bytes(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
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
        self.apply_to(value, out)
    }

    /// [`apply_into`](Self::apply_into) for an output assembled as bytes (an Arrow values
    /// buffer), which its owner checks as UTF-8 once, as a whole.
    pub(crate) fn apply_bytes(&self, value: &str, out: &mut Vec<u8>) -> bool {
        self.apply_to(value, out)
    }

    fn apply_to(&self, value: &str, out: &mut impl Out) -> bool {
        match self {
            Method::Redact => out.put(REDACTED),
            Method::Partial { keep_last } => partial(value, *keep_last, out),
            Method::Token { key } => key.put_token(value, out),
            Method::Null => return false,
            Method::Generalize => {
                if !generalize(value, out) {
                    out.put(REDACTED);
                }
            }
        }
        true
    }
}

/// Where the methods write: a `String`, or bytes whose owner checks them as UTF-8 as a whole
/// (every method writes whole characters, so the bytes are UTF-8 by construction).
pub(crate) trait Out {
    /// Appends text.
    fn put(&mut self, s: &str);
    /// Appends bytes that are ASCII (masks, digits, hex).
    fn put_ascii(&mut self, bytes: &[u8]);
}

impl Out for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
    fn put_ascii(&mut self, bytes: &[u8]) {
        self.push_str(std::str::from_utf8(bytes).expect("ASCII bytes are UTF-8"));
    }
}

impl Out for Vec<u8> {
    fn put(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
    fn put_ascii(&mut self, bytes: &[u8]) {
        debug_assert!(bytes.is_ascii());
        self.extend_from_slice(bytes);
    }
}

fn partial(value: &str, keep_last: usize, out: &mut impl Out) {
    if value.is_ascii() {
        // The common case, byte by byte: ASCII letters and digits are the alphanumerics.
        let bytes = value.as_bytes();
        let maskable = bytes.iter().filter(|b| b.is_ascii_alphanumeric()).count();
        let hidden = maskable - if keep_last >= maskable { 0 } else { keep_last };
        let mut seen = 0;
        // Built on the stack, 64 bytes at a time (a short value at once).
        let mut buf = [0u8; 64];
        for piece in bytes.chunks(buf.len()) {
            for (o, &b) in buf.iter_mut().zip(piece) {
                let alnum = b.is_ascii_alphanumeric();
                seen += usize::from(alnum);
                *o = if alnum && seen <= hidden { b'*' } else { b };
            }
            out.put_ascii(&buf[..piece.len()]);
        }
        return;
    }
    let maskable = value.chars().filter(|c| c.is_alphanumeric()).count();
    // Revealing every letter and digit would not mask anything.
    let keep = if keep_last >= maskable { 0 } else { keep_last };
    let mut seen = 0;
    let mut utf8 = [0u8; 4];
    for c in value.chars() {
        let c = if !c.is_alphanumeric() {
            c
        } else {
            seen += 1;
            if seen > maskable - keep {
                c
            } else {
                '*'
            }
        };
        out.put(c.encode_utf8(&mut utf8));
    }
}

/// Appends the Safe Harbor generalisation of a date, ZIP code or age to `out`; `false` (nothing
/// appended) if `value` is none of these.
fn generalize(value: &str, out: &mut impl Out) -> bool {
    let v = value.trim();
    let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // ISO timestamps (`1980-01-02T03:04:05Z`, `1980-01-02 03:04`) generalise like their date.
    let date_part = match v.get(..10) {
        Some(d) if v.len() > 10 && matches!(v.as_bytes()[10], b'T' | b' ') => d,
        _ => v,
    };
    if let Some((year, _, _)) = parse_date(date_part) {
        push_year(year, out);
        return true;
    }
    let zip5 = match v.split_once('-') {
        Some((five, four)) if four.len() == 4 && is_digits(four) => five,
        Some(_) => return false,
        None => v,
    };
    if zip5.len() == 5 && is_digits(zip5) {
        let zip3 = &zip5[..3];
        if RESTRICTED_ZIP3.contains(&zip3) {
            out.put("00000");
        } else {
            out.put(zip3);
            out.put("00");
        }
        return true;
    }
    if v.len() <= 3 && is_digits(v) {
        let Ok(age) = v.parse::<u32>() else {
            return false;
        };
        if age > 89 {
            out.put("90+");
        } else {
            // Without leading zeros, as the number it is.
            out.put(v.trim_start_matches('0'));
            if age == 0 {
                out.put("0");
            }
        }
        return true;
    }
    false
}

/// Appends a year of [`DATE_YEARS`](crate::detect::DATE_YEARS) as its four digits.
pub(crate) fn push_year(year: u32, out: &mut impl Out) {
    debug_assert!((1000..10_000).contains(&year));
    let digits = [
        b'0' + (year / 1000 % 10) as u8,
        b'0' + (year / 100 % 10) as u8,
        b'0' + (year / 10 % 10) as u8,
        b'0' + (year % 10) as u8,
    ];
    out.put_ascii(&digits);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The straightforward forms the allocation-free ones must agree with.
    fn parse_date_reference(s: &str) -> Option<(u32, u32, u32)> {
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

    fn generalize_reference(value: &str) -> String {
        let v = value.trim();
        let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let date_part = match v.get(..10) {
            Some(d) if v.len() > 10 && matches!(v.as_bytes()[10], b'T' | b' ') => d,
            _ => v,
        };
        if let Some((year, _, _)) = parse_date_reference(date_part) {
            return year.to_string();
        }
        let zip5 = match v.split_once('-') {
            Some((five, four)) if four.len() == 4 && is_digits(four) => five,
            Some(_) => return REDACTED.to_owned(),
            None => v,
        };
        if zip5.len() == 5 && is_digits(zip5) {
            let zip3 = &zip5[..3];
            return if RESTRICTED_ZIP3.contains(&zip3) {
                "00000".to_owned()
            } else {
                format!("{zip3}00")
            };
        }
        if v.len() <= 3 && is_digits(v) {
            let age: u32 = v.parse().unwrap();
            return if age > 89 {
                "90+".to_owned()
            } else {
                age.to_string()
            };
        }
        REDACTED.to_owned()
    }

    /// Dates, ZIP codes, ages and near misses of each, with surrounding noise.
    fn date_like() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9]{1,5}[-/][0-9]{1,3}[-/][0-9]{1,5}",
            "(19|20)[0-9]{2}-[01][0-9]-[0-3][0-9]([T ][0-9:]{0,8}Z?)?",
            "[01]?[0-9]/[0-3]?[0-9]/(19|20)[0-9]{2}",
            " ?[0-9]{1,6}(-[0-9]{0,5})? ?",
            "(?s).{0,14}",
        ]
    }

    proptest! {
        #[test]
        fn parse_date_agrees_with_its_reference(s in date_like()) {
            prop_assert_eq!(parse_date(&s), parse_date_reference(&s));
        }

        #[test]
        fn generalize_agrees_with_its_reference(s in date_like()) {
            let mut out = String::from("prefix");
            Method::Generalize.apply_into(&s, &mut out);
            prop_assert_eq!(&out["prefix".len()..], generalize_reference(&s));
        }

    }

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// NIST SP 800-38B, appendix D.3 (AES-256): messages of 0, 16, 40 and 64 bytes.
    #[test]
    fn cmac_of_the_nist_examples() {
        let key: [u8; 32] =
            unhex("603deb10 15ca71be 2b73aef0 857d7781 1f352c07 3b6108d7 2d9810a3 0914dff4")
                .try_into()
                .unwrap();
        let m = unhex(
            "6bc1bee2 2e409f96 e93d7e11 7393172a ae2d8a57 1e03ac9c 9eb76fac 45af8e51
             30c81c46 a35ce411 e5fbc119 1a0a52ef f69f2445 df4f9b17 ad2b417b e66c3710",
        );
        let k = CmacKey::new(&key);
        for (len, tag) in [
            (0, "028962f6 1b7bf89e fc6b551f 4667d983"),
            (16, "28a7023f 452e8f82 bd4bf28d 8c37c35c"),
            (40, "aaf3d8f1 de5640c2 32f5b169 b9c911e6"),
            (64, "e1992190 549f6ed5 696a2c05 6c315410"),
        ] {
            assert_eq!(k.mac(&m[..len]).to_vec(), unhex(tag), "{len} bytes");
        }
    }

    proptest! {
        /// Our CMAC is the `cmac` crate's, and the token key is derived as documented.
        #[test]
        fn cmac_tokens_are_the_cmac_crate_s(
            key in proptest::collection::vec(any::<u8>(), MIN_KEY_LEN..100),
            value in "(?s).{0,70}",
        ) {
            use cmac::Mac;
            let derived = HmacKey::new(&key).mac(CMAC_KEY_LABEL);
            let mut reference = <cmac::Cmac<Aes256> as Mac>::new_from_slice(&derived).unwrap();
            reference.update(value.as_bytes());
            let tag = reference.finalize().into_bytes();
            let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
            let k = MaskKey::new(&key, TokenMac::Aes256Cmac).unwrap();
            prop_assert_eq!(k.token_mac(), TokenMac::Aes256Cmac);
            prop_assert_eq!(k.token(&value), format!("tok_{hex}"));
            // A different function under the same key gives an unrelated token.
            prop_assert_ne!(MaskKey::from_bytes(&key).unwrap().token(&value), k.token(&value));
        }
    }

    #[test]
    fn token_mac_names_round_trip() {
        for mac in [TokenMac::HmacSha256, TokenMac::Aes256Cmac] {
            assert_eq!(mac.name().parse::<TokenMac>(), Ok(mac));
            assert_eq!(
                serde_json::to_string(&mac).unwrap(),
                format!("\"{}\"", mac.name())
            );
        }
        let err = "sha1".parse::<TokenMac>().unwrap_err();
        assert!(
            err.contains("hmac-sha256") && err.contains("aes-256-cmac"),
            "{err}"
        );
    }

    #[test]
    fn every_date_of_the_range_and_around_it() {
        for y in [1899, 1900, 1999, 2000, 2024, 2099, 2100] {
            for m in 0..=13 {
                for d in 0..=32 {
                    for s in [format!("{y:04}-{m:02}-{d:02}"), format!("{m}/{d}/{y:04}")] {
                        assert_eq!(parse_date(&s), parse_date_reference(&s), "{s}");
                    }
                }
            }
        }
    }
}
