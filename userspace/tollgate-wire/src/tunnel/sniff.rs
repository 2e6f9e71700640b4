//! Telling the protocol of a new connection from its first bytes.

/// The protocol a client speaks first, as [`sniff`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// A TLS handshake record (`0x16 0x03`): parse it with
    /// [`parse_client_hello`](crate::parse_client_hello).
    Tls,
    /// An HTTP `CONNECT` request: parse it with [`parse_http_connect`](super::parse_http_connect).
    HttpConnect,
    /// Another HTTP/1.x request (`GET`, `HEAD`, `POST`, `PUT`, `DELETE`, `OPTIONS`, `TRACE` or
    /// `PATCH`): parse its head with [`parse_http_request_head`](super::parse_http_request_head).
    Http,
    /// A SOCKS5 greeting (`0x05`): see [`Socks5Server`](super::Socks5Server).
    Socks5,
    /// A SOCKS4 or 4a request (`0x04`): see [`parse_socks4_request`](super::parse_socks4_request).
    Socks4,
    /// Anything else: another protocol, an HTTP method not listed above (WebDAV's, `PRI` of
    /// HTTP/2 prior knowledge), a lowercase method, an SSLv2-style hello.
    Other,
}

/// The bytes so far do not decide; read more and call again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("incomplete: read more bytes and sniff again")]
pub struct Incomplete {
    /// At least this many more bytes are required before the answer can change, when known.
    pub needed: Option<usize>,
}

/// Methods recognised as HTTP, each with its trailing space.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];

/// Tells the protocol of a connection from the first bytes the client sent.
///
/// Decides on the shortest prefix that can: one byte for SOCKS and for most other protocols,
/// two for TLS, up to `CONNECT ` (8 bytes) for HTTP. Never allocates. The verdict is only a
/// routing hint: the protocol's parser still validates the message.
pub fn sniff(first_bytes: &[u8]) -> Result<Protocol, Incomplete> {
    match first_bytes.first() {
        None => Err(Incomplete { needed: Some(1) }),
        Some(0x16) => match first_bytes.get(1) {
            None => Err(Incomplete { needed: Some(1) }),
            Some(0x03) => Ok(Protocol::Tls),
            Some(_) => Ok(Protocol::Other),
        },
        Some(0x05) => Ok(Protocol::Socks5),
        Some(0x04) => Ok(Protocol::Socks4),
        Some(_) => {
            let mut needed: Option<usize> = None;
            for method in METHODS {
                if first_bytes.starts_with(method) {
                    return Ok(if method == b"CONNECT " {
                        Protocol::HttpConnect
                    } else {
                        Protocol::Http
                    });
                }
                if method.starts_with(first_bytes) {
                    let more = method.len() - first_bytes.len();
                    needed = Some(needed.map_or(more, |n| n.min(more)));
                }
            }
            match needed {
                Some(_) => Err(Incomplete { needed }),
                None => Ok(Protocol::Other),
            }
        }
    }
}
