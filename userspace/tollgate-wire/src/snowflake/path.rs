//! Canonical request paths: one spelling per path, so the proxy classifies what the server sees.
//!
//! A server percent-decodes the path before routing it, so `/queries/<id>/r%65sult` *is*
//! `/queries/<id>/result` to Snowflake. [`normalize_path`] decodes every escape exactly once,
//! resolves dot segments, collapses empty segments and drops a trailing slash; the endpoint
//! classifier works on that [`NormalizedPath`] only. Spellings that servers (or the frameworks
//! and caches in front of them) read in more than one way are refused with a [`PathError`]
//! rather than guessed at: an encoded `/`, a backslash, control characters, invalid escapes,
//! non-UTF-8 bytes, an encoded `?` or `#`, a `;` path parameter and a double-encoded escape.
//!
//! The canonical form re-encodes to an origin-form target ([`NormalizedPath::to_origin_form`]):
//! a proxy that forwards *that* target instead of the client's spelling forwards exactly what it
//! classified, whatever the server's own decoding rules are.

use std::fmt;

/// Why [`normalize_path`] refused a path: every variant is a spelling that is either invalid or
/// read differently by different servers, so classifying it would be a guess.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path is empty or does not start with `/` (asterisk-form `*`, a relative reference, or
    /// an authority): only origin-form paths name a Snowflake endpoint. Absolute-form targets
    /// (`https://host/path`) are reduced to their path by [`split_target`] first.
    ///
    /// [`split_target`]: super::split_target
    #[error("the request path does not start with '/'")]
    NotOriginForm,
    /// A `%` not followed by two hex digits (`%zz`, `%4`): servers either reject it or keep the
    /// `%` literally, so the decoded path is not defined.
    #[error("invalid percent-escape at byte {offset} of the path")]
    InvalidEscape {
        /// Byte offset of the `%` in the raw path.
        offset: usize,
    },
    /// `%2F`: some servers decode it into a segment separator, others keep it inside a segment
    /// (`/queries%2F<id>%2Fresult` is one segment or three, depending on who reads it).
    #[error("encoded '/' (%2F) in the path")]
    EncodedSlash,
    /// A `\`, raw or encoded (`%5C`): Windows servers, some Java containers and browsers treat it
    /// as `/`.
    #[error("backslash in the path")]
    Backslash,
    /// A `?` or `#` inside the path: encoded (`%3F`, `%23`), which a server that decodes before
    /// splitting off the query reads as a delimiter, or raw (the caller passed a whole target
    /// instead of its path: use [`split_target`] first).
    ///
    /// [`split_target`]: super::split_target
    #[error("'{}' inside the path", char::from(*byte))]
    Delimiter {
        /// The delimiter byte (`?` or `#`).
        byte: u8,
    },
    /// A control character (C0, DEL or C1), raw or encoded (`%00`, `%0A`, …): NUL truncates
    /// C strings, CR/LF split log lines and headers, and servers strip or reject the rest.
    #[error("control character U+{:04X} in the path", u32::from(*ch))]
    ControlCharacter {
        /// The control character.
        ch: char,
    },
    /// The decoded bytes are not UTF-8: servers replace, reject or pass them through.
    #[error("the decoded path is not UTF-8")]
    NotUtf8,
    /// A `;` (raw or `%3B`): Java servlet containers (Tomcat, Jetty) strip `;params` from each
    /// segment before routing (`/queries/<id>/result;x` is `/queries/<id>/result` to them), other
    /// servers keep it. No Snowflake driver sends one.
    #[error("';' path parameter in the path")]
    PathParameter,
    /// The decoded path still contains `%` and two hex digits (`%252F` decodes to `%2F`): a
    /// server, filter or cache that decodes twice would see another path.
    #[error("double-encoded escape in the path")]
    DoubleEncoded,
    /// A `..` segment climbs above the root (`/../x`): servers reject it or clamp it to `/`.
    #[error("'..' above the root of the path")]
    AboveRoot,
}

/// A decoded, canonical request path: starts with `/`, no empty, `.` or `..` segments, no
/// trailing slash (except the root `/` itself), none of the characters [`PathError`] refuses.
///
/// Built only by [`normalize_path`]; `normalize_path(p.to_origin_form(None))` gives `p` back.
/// Two normalized paths are equal when their canonical paths are, however they were spelled.
#[derive(Clone)]
pub struct NormalizedPath {
    path: String,
    canonical_input: bool,
}

impl NormalizedPath {
    /// The decoded canonical path (`/queries/01b2-x/result`); not percent-encoded, so not a
    /// request target by itself: use [`NormalizedPath::to_origin_form`] to send it.
    pub fn as_str(&self) -> &str {
        &self.path
    }

    /// The decoded segments, in order (none for the root `/`).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path[1..].split('/').filter(|s| !s.is_empty())
    }

    /// The origin-form request target for this path: unreserved characters (`A–Z a–z 0–9 - . _
    /// ~`) and `/` as they are, every other byte of the UTF-8 path percent-encoded (upper-case
    /// hex); then `?` and `query` verbatim when `query` is given (the raw query string, as
    /// [`split_target`] returns it).
    ///
    /// [`split_target`]: super::split_target
    pub fn to_origin_form(&self, query: Option<&str>) -> String {
        let mut out = String::with_capacity(self.path.len() + query.map_or(0, |q| q.len() + 1));
        encode_path_into(&self.path, &mut out);
        if let Some(query) = query {
            out.push('?');
            out.push_str(query);
        }
        out
    }

    /// Whether the raw path was already byte-for-byte its own origin form (no escapes of
    /// unreserved characters, no dot or empty segments, no trailing slash): real drivers always
    /// send canonical paths, so `false` is worth a log line.
    pub fn was_canonical(&self) -> bool {
        self.canonical_input
    }
}

impl PartialEq for NormalizedPath {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl Eq for NormalizedPath {}

impl std::hash::Hash for NormalizedPath {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.path.hash(state);
    }
}

impl fmt::Debug for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NormalizedPath").field(&self.path).finish()
    }
}

impl fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

impl AsRef<str> for NormalizedPath {
    fn as_ref(&self) -> &str {
        &self.path
    }
}

/// Decodes and canonicalises a raw request path (without its query string).
///
/// Every `%XX` is decoded exactly once (`+` is a literal `+` in a path); then the decoded path is
/// checked (see [`PathError`]), `.` segments are dropped, `..` removes the previous segment,
/// runs of `/` collapse into one and a trailing `/` is dropped. Dot segments are recognised after
/// decoding, so `%2E%2E` is `..`. The root is `/`.
pub fn normalize_path(raw: &str) -> Result<NormalizedPath, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let (byte, escaped) = match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex);
                let lo = bytes.get(i + 2).copied().and_then(hex);
                match (hi, lo) {
                    (Some(h), Some(l)) => (h << 4 | l, true),
                    _ => return Err(PathError::InvalidEscape { offset: i }),
                }
            }
            b => (b, false),
        };
        match byte {
            b'/' if escaped => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::Backslash),
            b'?' | b'#' => return Err(PathError::Delimiter { byte }),
            b';' => return Err(PathError::PathParameter),
            0x00..=0x1f | 0x7f => {
                return Err(PathError::ControlCharacter {
                    ch: char::from(byte),
                })
            }
            _ => decoded.push(byte),
        }
        i += if escaped { 3 } else { 1 };
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::NotUtf8)?;
    if let Some(ch) = decoded.chars().find(|c| c.is_control()) {
        return Err(PathError::ControlCharacter { ch });
    }
    if contains_escape(decoded.as_bytes()) {
        return Err(PathError::DoubleEncoded);
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => segments.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len().max(1));
    for s in &segments {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() {
        path.push('/');
    }
    let mut reencoded = String::with_capacity(raw.len());
    encode_path_into(&path, &mut reencoded);
    Ok(NormalizedPath {
        canonical_input: reencoded == raw,
        path,
    })
}

/// Whether `bytes` holds a `%` followed by two hex digits.
fn contains_escape(bytes: &[u8]) -> bool {
    bytes
        .windows(3)
        .any(|w| w[0] == b'%' && hex(w[1]).is_some() && hex(w[2]).is_some())
}

fn encode_path_into(path: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in path.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_are_unchanged() {
        for p in ["/", "/queries/v1/query-request", "/a.b/c~d_e-f"] {
            let n = normalize_path(p).unwrap();
            assert_eq!(n.as_str(), p);
            assert!(n.was_canonical(), "{p}");
        }
        let n = normalize_path("/a//b/").unwrap();
        assert_eq!(n.as_str(), "/a/b");
        assert!(!n.was_canonical());
    }

    #[test]
    fn encoding_round_trip() {
        let n = normalize_path("/a%20b/%C3%A9/x%25y/+").unwrap();
        assert_eq!(n.as_str(), "/a b/é/x%y/+");
        assert_eq!(n.to_origin_form(Some("q=1")), "/a%20b/%C3%A9/x%25y/%2B?q=1");
    }
}
