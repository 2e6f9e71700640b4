//! Pure parsers for the bytes Tollgate sees on the wire.
//!
//! Today this crate parses the first flight of a TLS client — the ClientHello — far enough to
//! route a connection: the SNI host name, the offered ALPN protocols and the versions. It is
//! written for a proxy that *peeks*: [`parse_client_hello`] takes whatever prefix of the stream
//! has arrived and says either "here is the hello", "not TLS", "malformed (why)" or
//! "incomplete, read more" — the last one is cheap so that the caller can simply retry after
//! every read.
//!
//! What it does not do: no I/O (no sockets, no async runtime, no timeouts — the caller owns
//! those), no cryptography, no validation of cipher suites or key shares, no TLS state machine.
//! It never allocates more than the ClientHello it returns and never panics on any input
//! (property-tested and fuzzed, see `fuzz/`).
//!
//! [`tunnel`] does the same for connections that are not TLS from the first byte: [`sniff`]
//! tells TLS, HTTP `CONNECT`, plain HTTP, SOCKS5 and SOCKS4 apart, and incomplete-aware parsers
//! extract the destination a tunnel or a forward-proxy request names (so it goes through the
//! same decision as a direct connection), with the proxy's reply builders.
//!
//! [`snowflake`] models Snowflake's REST protocol the same way: endpoint classification on a
//! canonical, percent-decoded path ([`snowflake::normalize_path`], which refuses ambiguous
//! spellings), body decoding with bomb-proof caps, credentials kept in [`snowflake::Secret`],
//! and typed views of login, query, result and SQL API messages that re-serialise without
//! losing fields.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client_hello;
pub mod snowflake;
pub mod tunnel;

pub use client_hello::{
    parse_client_hello, parse_client_hello_with_limit, ClientHello, HelloError, MalformedReason,
    DEFAULT_MAX_CLIENT_HELLO_LEN,
};
pub use tunnel::{sniff, Protocol};
