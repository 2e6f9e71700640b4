//! What a client opening a plain TCP connection asks for: protocol sniffing, HTTP `CONNECT`,
//! plain HTTP request heads, SOCKS5 and SOCKS4/4a.
//!
//! A proxy that receives every TCP connection of an agent (all ports, not only TLS) must know
//! where a tunnelled connection really goes, so that the destination inside an HTTP `CONNECT`
//! or a SOCKS request goes through the same decision as a direct connection. [`sniff`] tells
//! the protocol from the first bytes; the parsers then extract the [`TunnelTarget`] (or, for
//! plain HTTP, the host a forward-proxy request names), and the reply builders produce the
//! proxy's answers.
//!
//! Same contract as [`parse_client_hello`](crate::parse_client_hello): every parser takes the
//! bytes read so far and answers "here it is (and this many bytes were consumed)", "malformed
//! (why)" or "incomplete, read more" — the last one cheap and allocation-free, so a caller can
//! retry after every read; every strict prefix of a valid message is incomplete. Bytes after a
//! message (a client may pipeline its ClientHello behind `CONNECT`, or its SOCKS5 request
//! behind the greeting) are not touched: each parsed message reports `consumed`, and the caller
//! keeps the rest. Heads and SOCKS fields are size-capped.
//!
//! Host names come back lowercased and validated ([`Host`]); spellings that resolvers read as
//! addresses (`127.1`, `0x7f.0.0.1`, `2130706433`) are refused rather than passed on as names,
//! and IPv4-mapped IPv6 addresses come back as IPv4, so that one destination has one spelling.
//! Credentials are never stored: `Proxy-Authorization` and the SOCKS4 user id are reported as
//! present or not, nothing more. No I/O, no DNS.

mod http;
mod sniff;
mod socks;
mod target;

pub use http::{
    http_connect_established, http_forbidden, parse_http_connect, parse_http_connect_with_limit,
    parse_http_request_head, parse_http_request_head_with_limit, ConnectRequest, HttpHeadError,
    HttpVersion, RequestHead, Scheme, TargetForm, DEFAULT_MAX_HEAD_LEN,
};
pub use sniff::{sniff, Incomplete, Protocol};
pub use socks::{
    parse_socks4_request, parse_socks5_greeting, parse_socks5_request, socks4_reply,
    socks5_method_reply, socks5_reply, Socks4Request, Socks5Event, Socks5Greeting, Socks5Reply,
    Socks5Request, Socks5Server, SocksError, SOCKS4_MAX_FIELD_LEN, SOCKS5_NO_ACCEPTABLE_METHODS,
    SOCKS5_NO_AUTH,
};
pub use target::{parse_authority, parse_host, Host, TargetError, TunnelTarget};
