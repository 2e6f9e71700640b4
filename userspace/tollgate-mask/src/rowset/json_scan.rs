//! Byte-level JSON for chunk rows: the strict row grammar (recording each value's span in the
//! same pass that finds the row's end), finding a row's end across pieces, and unescaping and
//! escaping string values.

use memchr::{memchr, memchr2};

/// Deepest nesting accepted inside a row (VARIANT values are strings, so real rows have 1).
pub(super) const MAX_DEPTH: u32 = 64;

pub(super) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Scans one row (`[v, v, …]`, strict JSON) at the start of `b`, which may go on past the row,
/// and records each value's byte span. Returns the index just past the row's `]`. Bytes are
/// not checked to be UTF-8 here.
///
/// Running out of bytes is an error like any other: the caller tells an incomplete row from a
/// bad one with [`RowEnd`].
pub(super) fn scan_row(b: &[u8], spans: &mut Vec<(usize, usize)>) -> Result<usize, &'static str> {
    if b.first() != Some(&b'[') {
        return Err("expected `[` to start a row");
    }
    let mut p = 1;
    skip_ws(b, &mut p);
    if b.get(p) == Some(&b']') {
        return Ok(p + 1);
    }
    loop {
        skip_ws(b, &mut p);
        let s = p;
        if b.get(p) == Some(&b'"') {
            parse_string(b, &mut p)?;
        } else {
            parse_value(b, &mut p, 1)?;
        }
        spans.push((s, p));
        match b.get(p) {
            Some(b',') => p += 1,
            Some(b']') => return Ok(p + 1),
            _ => {
                skip_ws(b, &mut p);
                match b.get(p) {
                    Some(b',') => p += 1,
                    Some(b']') => return Ok(p + 1),
                    _ => return Err("expected `,` or `]` after a value"),
                }
            }
        }
    }
}

/// Parses exactly one row (`[v, v, …]`, strict JSON) and records each value's byte span.
pub(super) fn parse_row(b: &[u8], spans: &mut Vec<(usize, usize)>) -> Result<(), &'static str> {
    let end = scan_row(b, spans)?;
    if end != b.len() {
        return Err("unexpected bytes after the row");
    }
    Ok(())
}

const ONES: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// High bit set in each byte of `x` that is zero (exactly: no carries between bytes).
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// High bit set in each byte of `x` that ends or escapes a string or may not appear in one:
/// `"`, `\` and control characters.
#[inline(always)]
fn special_bytes(x: u64) -> u64 {
    let quote = zero_bytes(x ^ (ONES * u64::from(b'"')));
    let backslash = zero_bytes(x ^ (ONES * u64::from(b'\\')));
    // (b & 0x7f) + 0x60 reaches 0x80 exactly when b & 0x7f >= 0x20.
    let control = !(((x & LOW7) + ONES * 0x60) | x | LOW7);
    quote | backslash | control
}

/// Whether the raw contents of a string hold an escape.
pub(super) fn has_backslash(b: &[u8]) -> bool {
    if b.len() >= 64 {
        return memchr(b'\\', b).is_some();
    }
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_le_bytes(w.try_into().expect("eight bytes"));
        if zero_bytes(x ^ (ONES * u64::from(b'\\'))) != 0 {
            return true;
        }
    }
    words.remainder().contains(&b'\\')
}

fn skip_ws(b: &[u8], p: &mut usize) {
    while b.get(*p).copied().is_some_and(is_ws) {
        *p += 1;
    }
}

fn parse_value(b: &[u8], p: &mut usize, depth: u32) -> Result<(), &'static str> {
    if depth > MAX_DEPTH {
        return Err("row nests too deeply");
    }
    match b.get(*p) {
        Some(b'"') => parse_string(b, p),
        Some(b'n') => literal(b, p, b"null"),
        Some(b't') => literal(b, p, b"true"),
        Some(b'f') => literal(b, p, b"false"),
        Some(b'-' | b'0'..=b'9') => parse_number(b, p),
        Some(b'[') => {
            *p += 1;
            skip_ws(b, p);
            if b.get(*p) == Some(&b']') {
                *p += 1;
                return Ok(());
            }
            loop {
                skip_ws(b, p);
                parse_value(b, p, depth + 1)?;
                skip_ws(b, p);
                match b.get(*p) {
                    Some(b',') => *p += 1,
                    Some(b']') => {
                        *p += 1;
                        return Ok(());
                    }
                    _ => return Err("expected `,` or `]` in an array"),
                }
            }
        }
        Some(b'{') => {
            *p += 1;
            skip_ws(b, p);
            if b.get(*p) == Some(&b'}') {
                *p += 1;
                return Ok(());
            }
            loop {
                skip_ws(b, p);
                if b.get(*p) != Some(&b'"') {
                    return Err("expected a string key in an object");
                }
                parse_string(b, p)?;
                skip_ws(b, p);
                if b.get(*p) != Some(&b':') {
                    return Err("expected `:` in an object");
                }
                *p += 1;
                skip_ws(b, p);
                parse_value(b, p, depth + 1)?;
                skip_ws(b, p);
                match b.get(*p) {
                    Some(b',') => *p += 1,
                    Some(b'}') => {
                        *p += 1;
                        return Ok(());
                    }
                    _ => return Err("expected `,` or `}` in an object"),
                }
            }
        }
        _ => Err("expected a JSON value"),
    }
}

fn literal(b: &[u8], p: &mut usize, lit: &[u8]) -> Result<(), &'static str> {
    if b[*p..].starts_with(lit) {
        *p += lit.len();
        Ok(())
    } else {
        Err("expected a JSON value")
    }
}

/// Parses the string at `b[*p]` (a `"`), eight bytes at a time between escapes.
#[inline(always)]
fn parse_string(b: &[u8], p: &mut usize) -> Result<(), &'static str> {
    let mut i = *p + 1;
    loop {
        while let Some(word) = b.get(i..i + 8) {
            let x = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            let m = special_bytes(x);
            if m != 0 {
                i += m.trailing_zeros() as usize / 8;
                break;
            }
            i += 8;
        }
        match b.get(i) {
            None => return Err("unterminated string"),
            Some(b'"') => {
                *p = i + 1;
                return Ok(());
            }
            Some(b'\\') => match b.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') => {
                    let hex = b.get(i + 2..i + 6).ok_or("invalid string escape")?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err("invalid string escape");
                    }
                    i += 6;
                }
                _ => return Err("invalid string escape"),
            },
            Some(&c) if c < 0x20 => return Err("control character in a string"),
            Some(_) => i += 1,
        }
    }
}

fn parse_number(b: &[u8], p: &mut usize) -> Result<(), &'static str> {
    const BAD: &str = "invalid number";
    let digits = |p: &mut usize| {
        let s = *p;
        while b.get(*p).is_some_and(u8::is_ascii_digit) {
            *p += 1;
        }
        *p - s
    };
    if b.get(*p) == Some(&b'-') {
        *p += 1;
    }
    match b.get(*p) {
        Some(b'0') => *p += 1,
        Some(b'1'..=b'9') => {
            digits(p);
        }
        _ => return Err(BAD),
    }
    if b.get(*p) == Some(&b'.') {
        *p += 1;
        if digits(p) == 0 {
            return Err(BAD);
        }
    }
    if matches!(b.get(*p), Some(b'e' | b'E')) {
        *p += 1;
        if matches!(b.get(*p), Some(b'+' | b'-')) {
            *p += 1;
        }
        if digits(p) == 0 {
            return Err(BAD);
        }
    }
    Ok(())
}

/// Finds where a row ends, piece by piece, by bracket depth outside strings (the grammar is
/// checked once the row is complete).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RowEnd {
    depth: u32,
    in_str: bool,
    esc: bool,
}

/// A row nests deeper than [`MAX_DEPTH`].
pub(super) struct TooDeep;

impl RowEnd {
    /// Scans the next bytes of the row; returns the index in `b` just past the row's closing
    /// bracket, or `None` if the row goes on past `b`.
    pub(super) fn find(&mut self, b: &[u8]) -> Result<Option<usize>, TooDeep> {
        let mut p = 0;
        while p < b.len() {
            if self.in_str {
                if self.esc {
                    self.esc = false;
                    p += 1;
                    continue;
                }
                let Some(k) = memchr2(b'"', b'\\', &b[p..]) else {
                    return Ok(None);
                };
                p += k;
                if b[p] == b'\\' {
                    self.esc = true;
                } else {
                    self.in_str = false;
                }
                p += 1;
                continue;
            }
            match b[p] {
                b'"' => self.in_str = true,
                b'[' | b'{' => {
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        return Err(TooDeep);
                    }
                }
                b']' | b'}' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return Ok(Some(p + 1));
                    }
                }
                _ => {}
            }
            p += 1;
        }
        Ok(None)
    }
}

/// An escape that does not stand for a character (a lone UTF-16 surrogate).
pub(super) struct BadEscape;

/// Unescapes the contents of a JSON string that [`scan_row`] accepted into `out` (cleared
/// first), refusing what `serde_json` refuses in a string (lone surrogates).
pub(super) fn unescape(s: &str, out: &mut String) -> Result<(), BadEscape> {
    out.clear();
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(k) = memchr(b'\\', &b[i..]) {
        out.push_str(&s[i..i + k]);
        i += k;
        let c = *b.get(i + 1).ok_or(BadEscape)?;
        i += 2;
        let ch = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let n = hex4(b.get(i..i + 4))?;
                i += 4;
                let code = match n {
                    0xDC00..=0xDFFF => return Err(BadEscape),
                    0xD800..=0xDBFF => {
                        if b.get(i..i + 2) != Some(b"\\u") {
                            return Err(BadEscape);
                        }
                        let lo = hex4(b.get(i + 2..i + 6))?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err(BadEscape);
                        }
                        i += 6;
                        0x10000 + ((n - 0xD800) << 10) + (lo - 0xDC00)
                    }
                    _ => n,
                };
                char::from_u32(code).ok_or(BadEscape)?
            }
            _ => return Err(BadEscape),
        };
        out.push(ch);
    }
    out.push_str(&s[i..]);
    Ok(())
}

fn hex4(h: Option<&[u8]>) -> Result<u32, BadEscape> {
    let h = h.ok_or(BadEscape)?;
    h.iter().try_fold(0u32, |n, &d| {
        let v = char::from(d).to_digit(16).ok_or(BadEscape)?;
        Ok(n << 4 | v)
    })
}

/// Whether `b` holds a byte that a JSON string must escape.
fn needs_escape(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        if special_bytes(u64::from_le_bytes(w.try_into().expect("eight bytes"))) != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

/// Appends `s` as a JSON string, escaped as `serde_json` escapes it.
pub(super) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    if !needs_escape(b) {
        out.extend_from_slice(b);
        out.push(b'"');
        return;
    }
    let mut copied = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&b[copied..i]);
        out.extend_from_slice(esc);
        copied = i + 1;
    }
    out.extend_from_slice(&b[copied..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_bytes_are_exact() {
        for c in 0..=255u8 {
            for at in 0..8 {
                let mut w = [b'a'; 8];
                w[at] = c;
                let m = special_bytes(u64::from_le_bytes(w));
                let want = c == b'"' || c == b'\\' || c < 0x20;
                assert_eq!(m != 0, want, "byte {c:#x} at {at}");
                if want {
                    assert_eq!(m.trailing_zeros() as usize / 8, at);
                }
            }
        }
    }

    #[test]
    fn strings_escape_and_unescape_as_serde_json_does() {
        for s in [
            "",
            "plain",
            "q\"b\\s/",
            "\u{0}\u{8}\u{c}\n\r\t\u{1f}\u{7f}",
            "café 😀",
        ] {
            let mut out = Vec::new();
            write_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap());
            let mut back = String::new();
            let inner = std::str::from_utf8(&out[1..out.len() - 1]).unwrap();
            assert!(unescape(inner, &mut back).is_ok());
            assert_eq!(back, s);
        }
        for (escaped, ok) in [
            (r"\u00e9\ud83d\ude00\/", true),
            (r"\ud83d", false),
            (r"\ude00", false),
            (r"\ud83d\n", false),
            (r"\ud83dx", false),
            (r"\ud83d\u0041", false),
        ] {
            let mut back = String::new();
            let serde: Result<String, _> = serde_json::from_str(&format!("\"{escaped}\""));
            assert_eq!(unescape(escaped, &mut back).is_ok(), ok, "{escaped}");
            assert_eq!(serde.is_ok(), ok, "{escaped}");
            if let Ok(s) = serde {
                assert_eq!(back, s);
            }
        }
    }
}
