//! An incomplete-aware parser for the TLS ClientHello (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2).
//!
//! The caller hands over the bytes read so far; the parser walks the record layer, reassembles
//! the handshake message when it spans several records, and extracts what routing needs: the
//! SNI host name (RFC 6066 §3), the ALPN list (RFC 7301) and the offered versions.
//!
//! Two things keep a peeking caller cheap: every check that can reject the stream runs on the
//! smallest prefix that decides it (the first byte already tells TLS from not-TLS), and the
//! `Incomplete` path never allocates.

use std::borrow::Cow;

/// Largest ClientHello (handshake message, header included) accepted by [`parse_client_hello`].
///
/// Real hellos are 200 B – 2 KiB (post-quantum key shares push them to ~1.8 KiB); 16 KiB leaves
/// room for padding and large PSK identities while bounding what a peer can make us buffer.
pub const DEFAULT_MAX_CLIENT_HELLO_LEN: usize = 16 * 1024;

const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
/// TLSPlaintext.length must not exceed 2^14 (RFC 8446 §5.1).
const MAX_PLAINTEXT_RECORD_LEN: usize = 1 << 14;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_TYPE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const NAME_TYPE_HOST_NAME: u8 = 0;
const MAX_HOST_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// What a ClientHello tells a router, extracted from a complete, well-formed hello.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientHello {
    /// The version in the first record header (usually 0x0301 or 0x0303; informational only).
    pub record_version: u16,
    /// `ClientHello.legacy_version` (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// The `host_name` from the server_name extension: ASCII, lowercased, without trailing dot.
    /// `None` when the client sent no server_name extension (or no host_name entry in it).
    pub sni: Option<String>,
    /// ALPN protocol names offered by the client, in the client's order; empty when none.
    pub alpn: Vec<Vec<u8>>,
    /// The supported_versions extension (TLS 1.3 clients), in the client's order; may contain
    /// GREASE values.
    pub supported_versions: Vec<u16>,
    /// Number of bytes from the start of the buffer up to and including the hello's last byte
    /// (record headers included).
    pub wire_len: usize,
}

impl ClientHello {
    /// Whether the client offers TLS 1.3 (through supported_versions).
    pub fn offers_tls13(&self) -> bool {
        self.supported_versions.contains(&0x0304)
    }
}

/// Why [`parse_client_hello`] returned no hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// The bytes so far are a valid prefix of a ClientHello; read more and call again.
    /// `needed` is a lower bound on the number of additional bytes, when known.
    #[error("incomplete ClientHello: read more bytes and parse again")]
    Incomplete {
        /// At least this many more bytes are required before the answer can change.
        needed: Option<usize>,
    },
    /// The stream does not start with a TLS handshake record: some other protocol.
    #[error("not TLS: the stream does not start with a TLS handshake record")]
    NotTls,
    /// The stream starts like TLS but the ClientHello violates the protocol.
    #[error("malformed ClientHello: {0}")]
    Malformed(MalformedReason),
}

impl From<MalformedReason> for HelloError {
    fn from(reason: MalformedReason) -> Self {
        HelloError::Malformed(reason)
    }
}

/// The protocol violation behind [`HelloError::Malformed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedReason {
    /// A record announces more than the 2^14 bytes a plaintext record may carry.
    #[error("record length {len} exceeds the 16384-byte TLS limit")]
    RecordTooLong {
        /// The announced record length.
        len: usize,
    },
    /// A handshake record with no payload (forbidden by RFC 8446 §5.1).
    #[error("empty handshake record")]
    EmptyRecord,
    /// A record other than a handshake record interrupts the ClientHello.
    #[error("record of content type {content_type} interleaved with the ClientHello")]
    UnexpectedContentType {
        /// The content type found.
        content_type: u8,
    },
    /// A continuation record whose version major byte is not 3.
    #[error("record version major {major} is not TLS")]
    BadRecordVersion {
        /// The major version byte found.
        major: u8,
    },
    /// The first handshake message is not a ClientHello.
    #[error("first handshake message has type {handshake_type}, expected ClientHello (1)")]
    NotClientHello {
        /// The handshake type found.
        handshake_type: u8,
    },
    /// The ClientHello is larger than the configured limit.
    #[error("ClientHello of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The announced handshake message length (header included).
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A length-prefixed field runs past the end of its enclosing structure.
    #[error("truncated {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// Bytes left over after a structure that must be consumed exactly.
    #[error("trailing bytes after {field}")]
    TrailingBytes {
        /// The structure that should have ended.
        field: &'static str,
    },
    /// A field holds a value the protocol forbids.
    #[error("invalid {field}: {why}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The same extension appears twice (RFC 8446 §4.2).
    #[error("duplicate extension {extension}")]
    DuplicateExtension {
        /// The extension type.
        extension: u16,
    },
    /// The SNI host name is not an acceptable DNS name.
    #[error("invalid SNI host name: {why}")]
    InvalidServerName {
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Parses a ClientHello from the start of `buf`, accepting at most
/// [`DEFAULT_MAX_CLIENT_HELLO_LEN`] bytes of handshake message.
pub fn parse_client_hello(buf: &[u8]) -> Result<ClientHello, HelloError> {
    parse_client_hello_with_limit(buf, DEFAULT_MAX_CLIENT_HELLO_LEN)
}

/// Parses a ClientHello from the start of `buf`; a hello whose handshake message (header
/// included) is longer than `max_len` is [`MalformedReason::TooLarge`].
///
/// Bytes after the hello (e.g. TLS 1.3 early data) are ignored; see [`ClientHello::wire_len`].
pub fn parse_client_hello_with_limit(
    buf: &[u8],
    max_len: usize,
) -> Result<ClientHello, HelloError> {
    let scan = scan_records(buf, max_len)?;
    let message = assemble(buf, scan.message_len);
    let mut hello = parse_message_body(&message[HANDSHAKE_HEADER_LEN..scan.message_len])?;
    hello.record_version = u16::from_be_bytes([buf[1], buf[2]]);
    hello.wire_len = scan.wire_len;
    Ok(hello)
}

struct Scan {
    /// Handshake message length, header included.
    message_len: usize,
    wire_len: usize,
}

/// Walks the record headers until the whole handshake message is present, without copying.
fn scan_records(buf: &[u8], max_len: usize) -> Result<Scan, HelloError> {
    let mut pos = 0;
    // The 4-byte handshake header may itself straddle records, so collect it byte by byte.
    let mut header = [0u8; HANDSHAKE_HEADER_LEN];
    let mut have = 0usize;
    let mut message_len: Option<usize> = None;
    loop {
        let rest = &buf[pos..];
        let first = pos == 0;
        // Decide as early as possible: one byte tells TLS from not-TLS.
        if let Some(&content_type) = rest.first() {
            if content_type != CONTENT_TYPE_HANDSHAKE {
                return Err(if first {
                    HelloError::NotTls
                } else {
                    MalformedReason::UnexpectedContentType { content_type }.into()
                });
            }
        }
        if let Some(&major) = rest.get(1) {
            if major != 3 {
                return Err(if first {
                    HelloError::NotTls
                } else {
                    MalformedReason::BadRecordVersion { major }.into()
                });
            }
        }
        if rest.len() < RECORD_HEADER_LEN {
            let missing_handshake = match message_len {
                Some(total) => total - have,
                None => HANDSHAKE_HEADER_LEN - have,
            };
            return Err(HelloError::Incomplete {
                needed: Some(RECORD_HEADER_LEN - rest.len() + missing_handshake),
            });
        }
        let record_len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if record_len == 0 {
            return Err(MalformedReason::EmptyRecord.into());
        }
        if record_len > MAX_PLAINTEXT_RECORD_LEN {
            return Err(MalformedReason::RecordTooLong { len: record_len }.into());
        }
        let fragment_start = pos + RECORD_HEADER_LEN;
        let available = record_len.min(buf.len() - fragment_start);
        let fragment = &buf[fragment_start..fragment_start + available];

        let mut used = 0;
        while have < HANDSHAKE_HEADER_LEN && used < fragment.len() {
            header[have] = fragment[used];
            have += 1;
            used += 1;
        }
        if message_len.is_none() && have == HANDSHAKE_HEADER_LEN {
            if header[0] != HANDSHAKE_TYPE_CLIENT_HELLO {
                return Err(MalformedReason::NotClientHello {
                    handshake_type: header[0],
                }
                .into());
            }
            let body_len = (usize::from(header[1]) << 16)
                | (usize::from(header[2]) << 8)
                | usize::from(header[3]);
            let total = HANDSHAKE_HEADER_LEN + body_len;
            if total > max_len {
                return Err(MalformedReason::TooLarge {
                    len: total,
                    max: max_len,
                }
                .into());
            }
            message_len = Some(total);
        }
        have += fragment.len() - used;
        if let Some(total) = message_len {
            if have >= total {
                // The hello ends inside this fragment.
                let wire_len = fragment_start + available - (have - total);
                return Ok(Scan {
                    message_len: total,
                    wire_len,
                });
            }
        }
        if available < record_len {
            return Err(HelloError::Incomplete {
                needed: Some(record_len - available),
            });
        }
        pos = fragment_start + record_len;
    }
}

/// Returns the handshake message bytes: borrowed when one record carries it (the common case),
/// copied together otherwise. Only called after [`scan_records`] validated the records.
fn assemble(buf: &[u8], message_len: usize) -> Cow<'_, [u8]> {
    let first_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    let first = &buf[RECORD_HEADER_LEN..];
    if first_len >= message_len && first.len() >= message_len {
        return Cow::Borrowed(&first[..message_len]);
    }
    let mut message = Vec::with_capacity(message_len);
    let mut pos = 0;
    while message.len() < message_len {
        let record_len = usize::from(u16::from_be_bytes([buf[pos + 3], buf[pos + 4]]));
        let start = pos + RECORD_HEADER_LEN;
        let take = record_len
            .min(message_len - message.len())
            .min(buf.len() - start);
        message.extend_from_slice(&buf[start..start + take]);
        pos = start + record_len;
    }
    Cow::Owned(message)
}

/// A bounds-checked cursor; every read names the field so errors say what was cut short.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], MalformedReason> {
        if self.buf.len() < n {
            return Err(MalformedReason::Truncated { field });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, MalformedReason> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, MalformedReason> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self, field: &'static str) -> Result<&'a [u8], MalformedReason> {
        let len = self.u8(field)?;
        self.take(usize::from(len), field)
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self, field: &'static str) -> Result<&'a [u8], MalformedReason> {
        let len = self.u16(field)?;
        self.take(usize::from(len), field)
    }

    fn finish(&self, field: &'static str) -> Result<(), MalformedReason> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(MalformedReason::TrailingBytes { field })
        }
    }
}

fn parse_message_body(body: &[u8]) -> Result<ClientHello, MalformedReason> {
    let mut r = Reader::new(body);
    let legacy_version = r.u16("legacy_version")?;
    r.take(32, "random")?;
    let session_id = r.vec8("legacy_session_id")?;
    if session_id.len() > 32 {
        return Err(MalformedReason::InvalidField {
            field: "legacy_session_id",
            why: "longer than 32 bytes",
        });
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(MalformedReason::InvalidField {
            field: "cipher_suites",
            why: "empty or odd length",
        });
    }
    if r.vec8("legacy_compression_methods")?.is_empty() {
        return Err(MalformedReason::InvalidField {
            field: "legacy_compression_methods",
            why: "empty",
        });
    }

    let mut hello = ClientHello {
        record_version: 0,
        legacy_version,
        sni: None,
        alpn: Vec::new(),
        supported_versions: Vec::new(),
        wire_len: 0,
    };
    // Extensions are optional in a TLS 1.2 hello: nothing after the compression methods.
    if r.is_empty() {
        return Ok(hello);
    }
    let extensions = r.vec16("extensions")?;
    r.finish("ClientHello")?;

    let mut seen: Vec<u16> = Vec::new();
    let mut r = Reader::new(extensions);
    while !r.is_empty() {
        let extension = r.u16("extension type")?;
        let data = r.vec16("extension data")?;
        if seen.contains(&extension) {
            return Err(MalformedReason::DuplicateExtension { extension });
        }
        seen.push(extension);
        match extension {
            EXT_SERVER_NAME => hello.sni = parse_server_name(data)?,
            EXT_ALPN => hello.alpn = parse_alpn(data)?,
            EXT_SUPPORTED_VERSIONS => hello.supported_versions = parse_supported_versions(data)?,
            _ => {}
        }
    }
    Ok(hello)
}

fn parse_server_name(data: &[u8]) -> Result<Option<String>, MalformedReason> {
    let mut r = Reader::new(data);
    let list = r.vec16("server_name_list")?;
    r.finish("server_name extension")?;
    if list.is_empty() {
        return Err(MalformedReason::InvalidField {
            field: "server_name_list",
            why: "empty",
        });
    }
    let mut host = None;
    let mut r = Reader::new(list);
    while !r.is_empty() {
        let name_type = r.u8("server name type")?;
        let name = r.vec16("server name")?;
        // Unknown name types are skipped (RFC 6066 leaves room for them); two host names are
        // ambiguous, and an ambiguous routing key is refused.
        if name_type == NAME_TYPE_HOST_NAME {
            if host.is_some() {
                return Err(MalformedReason::InvalidServerName {
                    why: "more than one host_name",
                });
            }
            host = Some(normalize_host_name(name)?);
        }
    }
    Ok(host)
}

/// Validates an SNI host name and returns it lowercased.
///
/// Accepted: ASCII letters, digits, `-` and `_` (real Snowflake account names contain
/// underscores), dot-separated labels of 1–63 bytes, 253 bytes in total, no trailing dot
/// (RFC 6066 §3 forbids it). IDNs arrive as A-labels (`xn--…`) and pass unchanged.
fn normalize_host_name(name: &[u8]) -> Result<String, MalformedReason> {
    let invalid = |why| Err(MalformedReason::InvalidServerName { why });
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > MAX_HOST_NAME_LEN {
        return invalid("longer than 253 bytes");
    }
    if name.last() == Some(&b'.') {
        return invalid("trailing dot");
    }
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() {
            return invalid("empty label");
        }
        if label.len() > MAX_LABEL_LEN {
            return invalid("label longer than 63 bytes");
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid("characters other than letters, digits, '-', '_' and '.'");
        }
    }
    // Every byte is ASCII by now, so this conversion cannot fail or lose anything.
    Ok(name
        .iter()
        .map(|&b| char::from(b.to_ascii_lowercase()))
        .collect())
}

fn parse_alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, MalformedReason> {
    let mut r = Reader::new(data);
    let list = r.vec16("ALPN protocol_name_list")?;
    r.finish("ALPN extension")?;
    if list.is_empty() {
        return Err(MalformedReason::InvalidField {
            field: "ALPN protocol_name_list",
            why: "empty",
        });
    }
    let mut protocols = Vec::new();
    let mut r = Reader::new(list);
    while !r.is_empty() {
        let protocol = r.vec8("ALPN protocol name")?;
        if protocol.is_empty() {
            return Err(MalformedReason::InvalidField {
                field: "ALPN protocol name",
                why: "empty",
            });
        }
        protocols.push(protocol.to_vec());
    }
    Ok(protocols)
}

fn parse_supported_versions(data: &[u8]) -> Result<Vec<u16>, MalformedReason> {
    let mut r = Reader::new(data);
    let list = r.vec8("supported_versions")?;
    r.finish("supported_versions extension")?;
    if list.is_empty() || list.len() % 2 != 0 {
        return Err(MalformedReason::InvalidField {
            field: "supported_versions",
            why: "empty or odd length",
        });
    }
    Ok(list
        .chunks_exact(2)
        .map(|v| u16::from_be_bytes([v[0], v[1]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_lowercased_and_checked() {
        assert_eq!(
            normalize_host_name(b"ACME_1.SnowflakeComputing.com").unwrap(),
            "acme_1.snowflakecomputing.com"
        );
        for bad in [
            &b"a..b"[..],
            b"a.b.",
            b".a",
            b"",
            b"a b",
            b"\xc3\xa9.com",
            b"*.a.com",
        ] {
            assert!(normalize_host_name(bad).is_err(), "{bad:?}");
        }
        let long_label = [b'a'; 64];
        assert!(normalize_host_name(&long_label).is_err());
        let long_name = [b"a.".repeat(126).as_slice(), b"ab"].concat();
        assert_eq!(long_name.len(), 254);
        assert!(normalize_host_name(&long_name).is_err());
    }

    #[test]
    fn first_byte_decides_not_tls() {
        assert_eq!(parse_client_hello(b"G"), Err(HelloError::NotTls));
        assert_eq!(parse_client_hello(b"\x16\x04"), Err(HelloError::NotTls));
        assert!(matches!(
            parse_client_hello(b""),
            Err(HelloError::Incomplete { .. })
        ));
    }
}
