//! HTTP/1.x request heads: `CONNECT host:port` tunnels and plain requests (origin-form or a
//! forward-proxy's absolute-form), and the two replies a tunnelling proxy sends.
//!
//! The grammar is RFC 9112's, read strictly where leniency lets two readers disagree (request
//! smuggling territory): CRLF line endings only, single spaces in the request line, no
//! whitespace before a header's colon, no obsolete line folding, no control characters, one
//! `Host` header, and an absolute-form URI whose authority must agree with `Host`.

use super::target::{parse_authority, Host, TargetError, TunnelTarget};

/// Largest request head (request line, headers and the blank line) the parsers accept.
///
/// Real clients send a few hundred bytes before a tunnel or a request body; 16 KiB bounds what
/// a peer can make the proxy buffer before it decides.
pub const DEFAULT_MAX_HEAD_LEN: usize = 16 * 1024;

/// The protocol version of a request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HttpVersion {
    /// `HTTP/1.0`.
    Http10,
    /// `HTTP/1.1`.
    Http11,
}

/// The scheme of an absolute-form target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `http://`.
    Http,
    /// `https://`: a proxy may originate TLS for it, so the client never does its own.
    Https,
}

impl Scheme {
    /// 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// The form of a request target (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetForm {
    /// `/path?query`: a request to an origin server; the host is in the `Host` header.
    Origin,
    /// `http(s)://host[:port]/path?query`: a request to a forward proxy.
    Absolute(Scheme),
    /// `host:port`: `CONNECT` only.
    Authority,
    /// `*`: `OPTIONS` only.
    Asterisk,
}

/// A parsed HTTP/1.x request head.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestHead {
    /// The method, case preserved (methods are case-sensitive).
    pub method: String,
    /// The request target's form.
    pub form: TargetForm,
    /// The host: from the target for absolute- and authority-form, else from `Host`. `None`
    /// only for an HTTP/1.0 request without `Host`.
    pub host: Option<Host>,
    /// The explicit port, if the target (or `Host`) gave one; see [`RequestHead::target`].
    pub port: Option<u16>,
    /// The raw, undecoded path of an origin- or absolute-form target, without its query (`/`
    /// when an absolute-form target has none); `None` for authority- and asterisk-form. The
    /// query is not kept: pre-signed URLs carry their signatures there.
    pub path: Option<String>,
    /// The protocol version.
    pub version: HttpVersion,
    /// Whether a `Proxy-Authorization` header is present (its value is never kept).
    pub has_proxy_auth: bool,
    /// Bytes of the head, blank line included; what follows belongs to the body or the tunnel.
    pub consumed: usize,
}

impl RequestHead {
    /// Whether the client addresses a proxy: absolute-form or `CONNECT`.
    pub fn is_forward_proxy(&self) -> bool {
        matches!(self.form, TargetForm::Absolute(_) | TargetForm::Authority)
    }

    /// The destination the request names: its host, with the explicit port, else the scheme's
    /// default port (absolute-form), else `default_port` (what the connection's own port
    /// implies, 80 for plain HTTP). `None` without a host.
    pub fn target(&self, default_port: u16) -> Option<TunnelTarget> {
        let port = self.port.unwrap_or(match self.form {
            TargetForm::Absolute(scheme) => scheme.default_port(),
            _ => default_port,
        });
        self.host.clone().map(|host| TunnelTarget { host, port })
    }
}

/// A parsed `CONNECT host:port HTTP/1.x` head.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectRequest {
    /// Where the client wants the tunnel to go (the `Host` header is not consulted).
    pub target: TunnelTarget,
    /// The protocol version.
    pub version: HttpVersion,
    /// Whether a `Proxy-Authorization` header is present (its value is never kept).
    pub has_proxy_auth: bool,
    /// Bytes of the head, blank line included. Anything after them (a pipelined ClientHello)
    /// is tunnel payload: keep it.
    pub consumed: usize,
}

/// Why an HTTP head parser returned no head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpHeadError {
    /// The bytes so far are a valid prefix of a request head; read more and call again.
    /// `needed` is a lower bound on the number of additional bytes, when known.
    #[error("incomplete HTTP request head: read more bytes and parse again")]
    Incomplete {
        /// At least this many more bytes are required before the answer can change.
        needed: Option<usize>,
    },
    /// No end of head (CRLF CRLF) within the limit.
    #[error("HTTP request head exceeds the {max}-byte limit")]
    TooLarge {
        /// The limit in force.
        max: usize,
    },
    /// A CR not followed by LF, or a bare LF: readers disagree on where such lines end.
    #[error("line ending other than CRLF in the HTTP head")]
    InvalidLineEnding,
    /// A byte no head may contain there: a control character, or non-ASCII in the request line.
    #[error("invalid byte 0x{byte:02x} in the HTTP head")]
    InvalidByte {
        /// The byte.
        byte: u8,
    },
    /// The request line is not `method SP target SP version`.
    #[error("invalid request line: {why}")]
    InvalidRequestLine {
        /// What is wrong with it.
        why: &'static str,
    },
    /// An HTTP version other than 1.0 and 1.1.
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    /// A header line is malformed.
    #[error("invalid header line: {why}")]
    InvalidHeader {
        /// What is wrong with it.
        why: &'static str,
    },
    /// The request target has no acceptable form for its method.
    #[error("invalid request target: {why}")]
    InvalidTarget {
        /// What is wrong with it.
        why: &'static str,
    },
    /// The host or port of the target or of `Host` is invalid.
    #[error("invalid authority: {0}")]
    InvalidAuthority(TargetError),
    /// An HTTP/1.1 origin-form request without `Host` (RFC 9112 §3.2 requires it).
    #[error("missing Host header")]
    MissingHost,
    /// More than one `Host` header (RFC 9112 §3.2: reject).
    #[error("more than one Host header")]
    DuplicateHost,
    /// An absolute-form target and a `Host` header that name different destinations: one
    /// reader would go to one, another to the other.
    #[error("the Host header disagrees with the request target")]
    ConflictingHost,
    /// [`parse_http_connect`] was given a request whose method is not `CONNECT`.
    #[error("not a CONNECT request")]
    NotConnect,
}

impl From<TargetError> for HttpHeadError {
    fn from(e: TargetError) -> Self {
        HttpHeadError::InvalidAuthority(e)
    }
}

/// Parses a `CONNECT` head from the start of `buf`, accepting at most [`DEFAULT_MAX_HEAD_LEN`]
/// bytes of head.
pub fn parse_http_connect(buf: &[u8]) -> Result<ConnectRequest, HttpHeadError> {
    parse_http_connect_with_limit(buf, DEFAULT_MAX_HEAD_LEN)
}

/// Parses a `CONNECT host:port HTTP/1.x` head from the start of `buf`; a head longer than
/// `max_len` is [`HttpHeadError::TooLarge`]. Any other method is [`HttpHeadError::NotConnect`],
/// as soon as the method is complete (the first space has arrived).
pub fn parse_http_connect_with_limit(
    buf: &[u8],
    max_len: usize,
) -> Result<ConnectRequest, HttpHeadError> {
    // Decided as soon as the method is complete.
    if let Some(sp) = buf.iter().take(max_len).position(|&b| b == b' ') {
        if sp > 0 && &buf[..sp] != b"CONNECT" {
            return Err(HttpHeadError::NotConnect);
        }
    }
    let head = parse_http_request_head_with_limit(buf, max_len)?;
    let (TargetForm::Authority, Some(host), Some(port)) = (head.form, head.host, head.port) else {
        return Err(HttpHeadError::NotConnect);
    };
    Ok(ConnectRequest {
        target: TunnelTarget { host, port },
        version: head.version,
        has_proxy_auth: head.has_proxy_auth,
        consumed: head.consumed,
    })
}

/// Parses any HTTP/1.x request head from the start of `buf`, accepting at most
/// [`DEFAULT_MAX_HEAD_LEN`] bytes of head.
pub fn parse_http_request_head(buf: &[u8]) -> Result<RequestHead, HttpHeadError> {
    parse_http_request_head_with_limit(buf, DEFAULT_MAX_HEAD_LEN)
}

/// Parses any HTTP/1.x request head from the start of `buf` (`CONNECT` included, as
/// [`TargetForm::Authority`]); a head longer than `max_len` is [`HttpHeadError::TooLarge`].
///
/// The body is not read: [`RequestHead::consumed`] says where it starts.
pub fn parse_http_request_head_with_limit(
    buf: &[u8],
    max_len: usize,
) -> Result<RequestHead, HttpHeadError> {
    let consumed = scan_head(buf, max_len)?;
    // The scan admitted only ASCII in the request line; header values may hold obs-text.
    let head = &buf[..consumed - 4];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let (method, target, version) = request_line_parts(request_line)?;

    let mut host_header: Option<&[u8]> = None;
    let mut has_proxy_auth = false;
    for line in lines {
        let (name, value) = header_parts(line)?;
        if name.eq_ignore_ascii_case(b"host") {
            if host_header.is_some() {
                return Err(HttpHeadError::DuplicateHost);
            }
            host_header = Some(value);
        } else if name.eq_ignore_ascii_case(b"proxy-authorization") {
            has_proxy_auth = true;
        }
    }
    let parse_host_header = |value: &[u8]| -> Result<(Host, Option<u16>), HttpHeadError> {
        let value = std::str::from_utf8(value)
            .ok()
            .filter(|v| v.is_ascii())
            .ok_or(TargetError::InvalidName {
                why: "non-ASCII host",
            })?;
        Ok(parse_authority(value)?)
    };

    let (form, host, port, path) = if method == "CONNECT" {
        if target.contains('/') {
            return Err(HttpHeadError::InvalidTarget {
                why: "CONNECT takes host:port",
            });
        }
        let (host, port) = parse_authority(target)?;
        let port = port.ok_or(TargetError::MissingPort)?;
        (TargetForm::Authority, Some(host), Some(port), None)
    } else if target.contains('#') {
        return Err(HttpHeadError::InvalidTarget {
            why: "fragment in the request target",
        });
    } else if target == "*" {
        if method != "OPTIONS" {
            return Err(HttpHeadError::InvalidTarget {
                why: "'*' is for OPTIONS only",
            });
        }
        let (host, port) = origin_host(host_header, version, parse_host_header)?;
        (TargetForm::Asterisk, host, port, None)
    } else if target.starts_with('/') {
        let path = target.split('?').next().unwrap_or(target);
        let (host, port) = origin_host(host_header, version, parse_host_header)?;
        (TargetForm::Origin, host, port, Some(path.to_owned()))
    } else {
        let (scheme, rest) = if let Some(rest) = strip_prefix_ci(target, "http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = strip_prefix_ci(target, "https://") {
            (Scheme::Https, rest)
        } else {
            return Err(HttpHeadError::InvalidTarget {
                why: "neither origin-form nor an http(s) absolute URI",
            });
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (host, port) = parse_authority(authority)?;
        if let Some(value) = host_header {
            let (h, p) = parse_host_header(value)?;
            let default = scheme.default_port();
            if h != host || p.unwrap_or(default) != port.unwrap_or(default) {
                return Err(HttpHeadError::ConflictingHost);
            }
        }
        let path = tail.split('?').next().unwrap_or_default();
        let path = if path.is_empty() { "/" } else { path };
        (
            TargetForm::Absolute(scheme),
            Some(host),
            port,
            Some(path.to_owned()),
        )
    };
    Ok(RequestHead {
        method: method.to_owned(),
        form,
        host,
        port,
        path,
        version,
        has_proxy_auth,
        consumed,
    })
}

/// The reply that opens a tunnel: `HTTP/1.1 200 Connection established`, no headers.
pub fn http_connect_established() -> &'static [u8] {
    b"HTTP/1.1 200 Connection established\r\n\r\n"
}

/// A `403 Forbidden` reply with a plain-text body (the caller's explanation, sent as is) and
/// `Connection: close`.
pub fn http_forbidden(body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

fn origin_host(
    host_header: Option<&[u8]>,
    version: HttpVersion,
    parse: impl Fn(&[u8]) -> Result<(Host, Option<u16>), HttpHeadError>,
) -> Result<(Option<Host>, Option<u16>), HttpHeadError> {
    match host_header {
        Some(value) => parse(value).map(|(h, p)| (Some(h), p)),
        None if version == HttpVersion::Http10 => Ok((None, None)),
        None => Err(HttpHeadError::MissingHost),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.get(..prefix.len())
        .filter(|p| p.eq_ignore_ascii_case(prefix))
        .map(|_| &s[prefix.len()..])
}

/// `tchar` (RFC 9110 §5.6.2): the characters of methods and field names.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn request_line_parts(line: &[u8]) -> Result<(&str, &str, HttpVersion), HttpHeadError> {
    let invalid = |why| HttpHeadError::InvalidRequestLine { why };
    // Only printable ASCII and spaces got past the scan.
    let line = std::str::from_utf8(line).map_err(|_| invalid("not ASCII"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("not three fields separated by single spaces"));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(invalid("invalid method"));
    }
    if target.is_empty() {
        return Err(invalid("empty request target"));
    }
    let version = match version {
        "HTTP/1.1" => HttpVersion::Http11,
        "HTTP/1.0" => HttpVersion::Http10,
        v if v.starts_with("HTTP/") => return Err(HttpHeadError::UnsupportedVersion),
        _ => return Err(invalid("no HTTP version")),
    };
    Ok((method, target, version))
}

fn header_parts(line: &[u8]) -> Result<(&[u8], &[u8]), HttpHeadError> {
    let invalid = |why| HttpHeadError::InvalidHeader { why };
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(invalid("obsolete line folding"));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(invalid("no colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().copied().all(is_tchar) {
        return Err(invalid(
            "invalid field name (or whitespace before the colon)",
        ));
    }
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    Ok((name, &value[start..end]))
}

/// Finds the end of the head (the index after CRLF CRLF), checking bytes and line endings on
/// the way so that garbage is refused early; never allocates.
fn scan_head(buf: &[u8], max: usize) -> Result<usize, HttpHeadError> {
    let limit = buf.len().min(max);
    let mut line_start = 0;
    let mut lines = 0usize;
    let mut in_method = true;
    for i in 0..limit {
        let b = buf[i];
        match b {
            b'\n' => {
                if i == line_start || buf[i - 1] != b'\r' {
                    return Err(HttpHeadError::InvalidLineEnding);
                }
                if i - 1 == line_start {
                    // The blank line.
                    if lines == 0 {
                        return Err(HttpHeadError::InvalidRequestLine {
                            why: "empty request line",
                        });
                    }
                    return Ok(i + 1);
                }
                lines += 1;
                line_start = i + 1;
            }
            b'\r' => {
                if buf.get(i + 1).is_some_and(|&n| n != b'\n') {
                    return Err(HttpHeadError::InvalidLineEnding);
                }
            }
            _ if lines == 0 => {
                // The request line: printable ASCII and spaces, a token first.
                if !(0x20..0x7f).contains(&b) {
                    return Err(HttpHeadError::InvalidByte { byte: b });
                }
                if in_method {
                    if b == b' ' {
                        if i == line_start {
                            return Err(HttpHeadError::InvalidRequestLine {
                                why: "empty method",
                            });
                        }
                        in_method = false;
                    } else if !is_tchar(b) {
                        return Err(HttpHeadError::InvalidRequestLine {
                            why: "invalid method",
                        });
                    }
                }
            }
            b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
            _ => return Err(HttpHeadError::InvalidByte { byte: b }),
        }
    }
    if buf.len() >= max {
        return Err(HttpHeadError::TooLarge { max });
    }
    // Lower bound on what completes the head from here.
    let partial = &buf[line_start..];
    let needed = match partial {
        [] if lines > 0 => 2,
        [b'\r'] if lines > 0 => 1,
        [.., b'\r'] => 3,
        _ => 4,
    };
    if buf.len() + needed > max {
        return Err(HttpHeadError::TooLarge { max });
    }
    Err(HttpHeadError::Incomplete {
        needed: Some(needed),
    })
}
