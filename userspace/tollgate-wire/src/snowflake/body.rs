//! Request and response bodies as they travel: plain or gzip'd.
//!
//! snowflake-connector-python gzips every request body (`Content-Encoding: gzip`); Node and Go
//! send plain JSON; result chunks come gzip'd from storage. A body is treated as gzip when the
//! header says so *or* when it starts with the gzip magic bytes, so a missing header cannot
//! smuggle a compressed body past inspection. Decoding streams into a buffer with a hard cap:
//! a gzip bomb stops at the cap (or at the ratio limit), it is never inflated in full.

use std::io::{Read, Write};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Caps applied by [`decode_body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Largest body accepted as received (compressed size for gzip, plain size otherwise).
    pub max_compressed: usize,
    /// Largest decoded body.
    pub max_decompressed: usize,
    /// Largest decompressed/compressed ratio, enforced once the output passes
    /// `ratio_grace_bytes` (small bodies compress well without being bombs).
    pub max_ratio: u32,
    /// Output size below which the ratio is not enforced.
    pub ratio_grace_bytes: usize,
}

impl Default for BodyLimits {
    /// 16 MiB in, 64 MiB out, ratio 200 beyond the first 1 MiB.
    ///
    /// Login and query bodies are kilobytes; array bindings and JSON result chunks are the
    /// large ones (tens of MiB at most, typical ratios 3–30).
    fn default() -> Self {
        Self {
            max_compressed: 16 << 20,
            max_decompressed: 64 << 20,
            max_ratio: 200,
            ratio_grace_bytes: 1 << 20,
        }
    }
}

/// A body after transfer decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedBody {
    /// The decoded bytes (JSON for Snowflake's REST messages).
    pub bytes: Vec<u8>,
    /// Whether the body arrived gzip'd (re-encode it the same way with [`encode_body`]).
    pub was_gzip: bool,
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The body as received is larger than `BodyLimits::max_compressed`.
    #[error("the body is {len} bytes as received; expected at most {limit} bytes")]
    CompressedTooLarge {
        /// The configured cap.
        limit: usize,
        /// The received size.
        len: usize,
    },
    /// The decoded body would exceed `BodyLimits::max_decompressed` (decoding stopped there).
    #[error("the decoded body exceeds {limit} bytes; expected at most {limit} bytes")]
    TooLarge {
        /// The configured cap.
        limit: usize,
    },
    /// The body inflates faster than `BodyLimits::max_ratio` allows: a compression bomb.
    #[error(
        "the gzip body inflates at least {ratio}:1; expected at most {limit}:1 (compression bomb?)"
    )]
    Bomb {
        /// The ratio reached when decoding stopped.
        ratio: u64,
        /// The configured cap.
        limit: u32,
    },
    /// The gzip stream ends before its trailer.
    #[error("the gzip body is truncated; expected a complete gzip stream with its trailer")]
    TruncatedGzip,
    /// The gzip stream is malformed (bad header, bad deflate data, CRC or length mismatch,
    /// trailing bytes that are not another gzip member).
    #[error("the gzip body is corrupt ({source}); expected a valid gzip stream")]
    CorruptGzip {
        /// What the decoder reported.
        #[source]
        source: std::io::Error,
    },
    /// `Content-Encoding: gzip`, but the body is not gzip.
    #[error("Content-Encoding says gzip but the body does not start with the gzip magic bytes 1f 8b; expected a gzip stream")]
    NotGzip,
    /// `Content-Encoding` names an encoding Snowflake's drivers do not use.
    #[error("unsupported Content-Encoding `{encoding}`; expected gzip or identity")]
    UnsupportedEncoding {
        /// The header value (an encoding name, not payload).
        encoding: String,
    },
}

/// The size `bytes` will have once decoded as [`decode_body`] would: for gzip (by header or
/// by its magic), the size its trailer states (modulo 2³²; a trailer that lies makes the decoder
/// fail at its end, still within its caps); otherwise their length. Reads nothing but the ends.
pub fn decoded_size_hint(content_encoding: Option<&str>, bytes: &[u8]) -> usize {
    let gzip = bytes.starts_with(&GZIP_MAGIC) || header_says_gzip(content_encoding).unwrap_or(true);
    match bytes.len().checked_sub(4).map(|at| &bytes[at..]) {
        Some(&[a, b, c, d]) if gzip => u32::from_le_bytes([a, b, c, d]) as usize,
        _ => bytes.len(),
    }
}

fn header_says_gzip(content_encoding: Option<&str>) -> Result<bool, BodyError> {
    let Some(raw) = content_encoding else {
        return Ok(false);
    };
    let mut gzip = false;
    // `Content-Encoding: gzip, identity` and friends: each coding must be one we handle.
    for coding in raw.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            if gzip {
                return Err(BodyError::UnsupportedEncoding {
                    encoding: raw.chars().take(64).collect(),
                });
            }
            gzip = true;
        } else if !coding.eq_ignore_ascii_case("identity") {
            return Err(BodyError::UnsupportedEncoding {
                encoding: raw.chars().take(64).collect(),
            });
        }
    }
    Ok(gzip)
}

/// Decodes a body given its `Content-Encoding` header value (if any).
///
/// Gzip is recognised by the header or by the magic bytes `1f 8b`; concatenated gzip members
/// are decoded as one stream (as servers do), anything else after a member is an error. An
/// empty body decodes to an empty body whatever the header says.
pub fn decode_body(
    content_encoding: Option<&str>,
    bytes: &[u8],
    limits: &BodyLimits,
) -> Result<DecodedBody, BodyError> {
    let by_header = header_says_gzip(content_encoding)?;
    if bytes.len() > limits.max_compressed {
        return Err(BodyError::CompressedTooLarge {
            limit: limits.max_compressed,
            len: bytes.len(),
        });
    }
    if bytes.is_empty() {
        return Ok(DecodedBody {
            bytes: Vec::new(),
            was_gzip: false,
        });
    }
    if !by_header && !bytes.starts_with(&GZIP_MAGIC) {
        if bytes.len() > limits.max_decompressed {
            return Err(BodyError::TooLarge {
                limit: limits.max_decompressed,
            });
        }
        return Ok(DecodedBody {
            bytes: bytes.to_vec(),
            was_gzip: false,
        });
    }
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Err(BodyError::NotGzip);
    }
    Ok(DecodedBody {
        bytes: gunzip_capped(bytes, limits)?,
        was_gzip: true,
    })
}

fn gunzip_capped(compressed: &[u8], limits: &BodyLimits) -> Result<Vec<u8>, BodyError> {
    let mut decoder = MultiGzDecoder::new(compressed);
    // Grow with the data, never to the cap up front: most bodies are small.
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(1 << 20));
    let mut buf = [0u8; 16 * 1024];
    let clen = compressed.len().max(1) as u64;
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(BodyError::TruncatedGzip)
            }
            Err(source) => return Err(BodyError::CorruptGzip { source }),
        };
        let total = out.len() + n;
        if total > limits.ratio_grace_bytes {
            let ratio = total as u64 / clen;
            if ratio > u64::from(limits.max_ratio) {
                return Err(BodyError::Bomb {
                    ratio,
                    limit: limits.max_ratio,
                });
            }
        }
        if total > limits.max_decompressed {
            return Err(BodyError::TooLarge {
                limit: limits.max_decompressed,
            });
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Re-serialises a body in the shape the client used: gzip'd when `gzip` (pair it with the
/// [`DecodedBody::was_gzip`] of the original), verbatim otherwise.
pub fn encode_body(bytes: &[u8], gzip: bool) -> Vec<u8> {
    if !gzip {
        return bytes.to_vec();
    }
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(bytes.len() / 2 + 64),
        Compression::default(),
    );
    // Writing into a Vec cannot fail, and deflate has no failure mode of its own.
    encoder
        .write_all(bytes)
        .expect("gzip into memory cannot fail");
    encoder.finish().expect("gzip into memory cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_encoding_header_values() {
        assert!(!header_says_gzip(None).unwrap());
        assert!(header_says_gzip(Some("gzip")).unwrap());
        assert!(header_says_gzip(Some(" GZIP ")).unwrap());
        assert!(header_says_gzip(Some("x-gzip")).unwrap());
        assert!(!header_says_gzip(Some("identity")).unwrap());
        assert!(matches!(
            header_says_gzip(Some("br")),
            Err(BodyError::UnsupportedEncoding { .. })
        ));
        assert!(matches!(
            header_says_gzip(Some("gzip, gzip")),
            Err(BodyError::UnsupportedEncoding { .. })
        ));
    }

    #[test]
    fn round_trip_and_magic_detection() {
        let body = br#"{"sqlText":"select 1"}"#;
        let gz = encode_body(body, true);
        assert_eq!(&gz[..2], &GZIP_MAGIC);
        let limits = BodyLimits::default();
        for header in [Some("gzip"), None] {
            let d = decode_body(header, &gz, &limits).unwrap();
            assert_eq!(d.bytes, body);
            assert!(d.was_gzip);
        }
        let plain = decode_body(None, body, &limits).unwrap();
        assert!(!plain.was_gzip);
        assert_eq!(encode_body(body, false), body);
    }
}
