//! Protocol sniffing, HTTP CONNECT and request heads, SOCKS5 and SOCKS4/4a on hand-built
//! messages (as curl, Python `requests`/`PySocks` and Node agents send them), malformed inputs,
//! size caps, every strict prefix, and property tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use tollgate_wire::tunnel::{
    http_connect_established, http_forbidden, parse_http_connect, parse_http_connect_with_limit,
    parse_http_request_head, parse_http_request_head_with_limit, parse_socks4_request,
    parse_socks5_greeting, parse_socks5_request, sniff, socks4_reply, socks5_method_reply,
    socks5_reply, Host, HttpHeadError, HttpVersion, Incomplete, Protocol, Scheme, Socks5Event,
    Socks5Reply, Socks5Server, SocksError, TargetError, TargetForm, TunnelTarget,
    DEFAULT_MAX_HEAD_LEN, SOCKS4_MAX_FIELD_LEN,
};

const HELLO: &[u8] = include_bytes!("fixtures/rustls_sni_alpn.bin");
const SNOWFLAKE: &str = "acct.snowflakecomputing.com";

fn name(n: &str) -> Host {
    Host::Name(n.to_owned())
}

fn ip(s: &str) -> Host {
    Host::Ip(s.parse().unwrap())
}

fn target(host: Host, port: u16) -> TunnelTarget {
    TunnelTarget { host, port }
}

/// curl 8's `CONNECT` (with `-x http://proxy`), with a pipelined ClientHello behind it.
fn curl_connect(authority: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: curl/8.5.0\r\nProxy-Connection: Keep-Alive\r\n{extra_headers}\r\n"
    )
    .into_bytes()
}

/// Asserts that every strict prefix of `full[..len]` is `Incomplete` with a `needed` that does
/// not overshoot `len`.
fn every_prefix_incomplete<T: std::fmt::Debug, E: std::fmt::Debug>(
    what: &str,
    full: &[u8],
    len: usize,
    parse: impl Fn(&[u8]) -> Result<T, E>,
    needed: impl Fn(&E) -> Option<Option<usize>>,
) {
    for cut in 0..len {
        match parse(&full[..cut]) {
            Err(e) => match needed(&e) {
                Some(Some(n)) => {
                    assert!(n >= 1, "{what}: prefix {cut}: needed 0");
                    assert!(
                        cut + n <= len,
                        "{what}: prefix {cut}: needed {n} overshoots {len}"
                    );
                }
                Some(None) => {}
                None => panic!("{what}: prefix of {cut} bytes gave {e:?}"),
            },
            Ok(v) => panic!("{what}: prefix of {cut} bytes parsed: {v:?}"),
        }
    }
}

fn head_needed(e: &HttpHeadError) -> Option<Option<usize>> {
    match e {
        HttpHeadError::Incomplete { needed } => Some(*needed),
        _ => None,
    }
}

fn socks_needed(e: &SocksError) -> Option<Option<usize>> {
    match e {
        SocksError::Incomplete { needed } => Some(*needed),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// sniff

#[test]
fn sniff_tells_protocols_apart() {
    let cases: [(&[u8], Protocol); 14] = [
        (HELLO, Protocol::Tls),
        (&[0x16, 0x03], Protocol::Tls),
        (b"CONNECT acct:443 HTTP/1.1\r\n", Protocol::HttpConnect),
        (b"GET / HTTP/1.1\r\n", Protocol::Http),
        (b"POST /queries/v1/query-request HTTP/1.1", Protocol::Http),
        (b"PATCH ", Protocol::Http),
        (b"OPTIONS * HTTP/1.1", Protocol::Http),
        (&[0x05, 0x01, 0x00], Protocol::Socks5),
        (&[0x04, 0x01, 0x01, 0xbb], Protocol::Socks4),
        (&[0x16, 0x01], Protocol::Other),
        (b"get / HTTP/1.1", Protocol::Other),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Protocol::Other),
        (b"SSH-2.0-OpenSSH_9.6\r\n", Protocol::Other),
        (b"GETX / HTTP/1.1", Protocol::Other),
    ];
    for (bytes, expected) in cases {
        assert_eq!(sniff(bytes), Ok(expected), "{bytes:?}");
    }
    assert_eq!(sniff(b""), Err(Incomplete { needed: Some(1) }));
    assert_eq!(sniff(&[0x16]), Err(Incomplete { needed: Some(1) }));
    // "P" may become POST, PUT or PATCH: the shortest is "PUT ".
    assert_eq!(sniff(b"P"), Err(Incomplete { needed: Some(3) }));
    assert_eq!(sniff(b"CONNEC"), Err(Incomplete { needed: Some(2) }));
    assert_eq!(sniff(b"GET"), Err(Incomplete { needed: Some(1) }));
    // Decided on the first byte when no method starts with it.
    assert_eq!(sniff(b"\x00"), Ok(Protocol::Other));
    assert_eq!(sniff(b"Z"), Ok(Protocol::Other));
}

#[test]
fn sniff_every_prefix_is_incomplete_or_final() {
    let messages: [&[u8]; 5] = [
        HELLO,
        b"CONNECT a:1 HTTP/1.1\r\n\r\n",
        b"DELETE /x HTTP/1.1\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\n\r\n",
        b"HEAD / HTTP/1.0\r\n\r\n",
    ];
    for full in messages {
        let verdict = sniff(full).unwrap();
        for cut in 0..full.len() {
            match sniff(&full[..cut]) {
                Err(Incomplete { needed: Some(n) }) => assert!(cut + n <= full.len()),
                Err(Incomplete { needed: None }) => {}
                Ok(p) => assert_eq!(p, verdict, "{full:?} cut {cut}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP CONNECT

#[test]
fn connect_requests() {
    let mut bytes = curl_connect(&format!("{SNOWFLAKE}:443"), "");
    let head_len = bytes.len();
    bytes.extend_from_slice(HELLO);
    let c = parse_http_connect(&bytes).unwrap();
    assert_eq!(c.target, target(name(SNOWFLAKE), 443));
    assert_eq!(c.version, HttpVersion::Http11);
    assert!(!c.has_proxy_auth);
    assert_eq!(
        c.consumed, head_len,
        "the pipelined ClientHello is not consumed"
    );
    assert_eq!(&bytes[c.consumed..], HELLO);
    assert_eq!(c.target.to_string(), format!("{SNOWFLAKE}:443"));

    let cases = [
        (
            "ACCT.SnowflakeComputing.COM.:443",
            target(name(SNOWFLAKE), 443),
        ),
        ("10.1.2.3:8443", target(ip("10.1.2.3"), 8443)),
        ("[2001:db8::1]:443", target(ip("2001:db8::1"), 443)),
        ("[::ffff:10.0.0.1]:443", target(ip("10.0.0.1"), 443)),
        (
            "org-acct_x.privatelink.snowflakecomputing.com:443",
            target(name("org-acct_x.privatelink.snowflakecomputing.com"), 443),
        ),
        ("h:65535", target(name("h"), 65535)),
    ];
    for (authority, expected) in cases {
        let c = parse_http_connect(&curl_connect(authority, "")).unwrap();
        assert_eq!(c.target, expected, "{authority}");
    }
    assert_eq!(
        target(ip("2001:db8::1"), 443).to_string(),
        "[2001:db8::1]:443"
    );

    // Python's http.client (requests, urllib3): HTTP/1.1, Host, no User-Agent; HTTP/1.0 too.
    let c = parse_http_connect(b"CONNECT h:443 HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(c.version, HttpVersion::Http10);
    assert_eq!(c.consumed, 26);
}

#[test]
fn proxy_authorization_is_noted_never_kept() {
    let bytes = curl_connect(
        "h:443",
        "Proxy-Authorization: Basic c2VjcmV0LXVzZXI6aHVudGVyMg==\r\n",
    );
    let c = parse_http_connect(&bytes).unwrap();
    assert!(c.has_proxy_auth);
    assert!(!format!("{c:?}").contains("c2VjcmV0"));
    let lower = curl_connect("h:443", "proxy-authorization:Bearer x\r\n");
    assert!(parse_http_connect(&lower).unwrap().has_proxy_auth);
    let head = parse_http_request_head(&bytes).unwrap();
    assert!(head.has_proxy_auth);
    assert!(!format!("{head:?}").contains("c2VjcmV0"));
}

#[test]
fn every_prefix_of_a_connect_is_incomplete() {
    for extra in ["", "Proxy-Authorization: Basic eDp5\r\nX-Empty:\r\n"] {
        let mut bytes = curl_connect(&format!("{SNOWFLAKE}:443"), extra);
        let len = bytes.len();
        bytes.extend_from_slice(HELLO);
        every_prefix_incomplete("connect", &bytes, len, parse_http_connect, head_needed);
        every_prefix_incomplete(
            "connect head",
            &bytes,
            len,
            parse_http_request_head,
            head_needed,
        );
    }
    let minimal = b"CONNECT h:1 HTTP/1.1\r\n\r\n";
    every_prefix_incomplete(
        "minimal",
        minimal,
        minimal.len(),
        parse_http_connect,
        head_needed,
    );
}

#[test]
fn malformed_connects() {
    use HttpHeadError as E;
    let cases: Vec<(&[u8], HttpHeadError)> = vec![
        (
            b"CONNECT h HTTP/1.1\r\n\r\n",
            E::InvalidAuthority(TargetError::MissingPort),
        ),
        (
            b"CONNECT h: HTTP/1.1\r\n\r\n",
            E::InvalidAuthority(TargetError::InvalidPort),
        ),
        (
            b"CONNECT h:0 HTTP/1.1\r\n\r\n",
            E::InvalidAuthority(TargetError::InvalidPort),
        ),
        (
            b"CONNECT h:65536 HTTP/1.1\r\n\r\n",
            E::InvalidAuthority(TargetError::InvalidPort),
        ),
        (
            b"CONNECT h:+443 HTTP/1.1\r\n\r\n",
            E::InvalidAuthority(TargetError::InvalidPort),
        ),
        (
            b"CONNECT :443 HTTP/1.1\r\n\r\n",
            E::InvalidAuthority(TargetError::EmptyHost),
        ),
        (
            b"CONNECT u:p@h:443 HTTP/1.1\r\n\r\n",
            E::InvalidAuthority(TargetError::UserInfo),
        ),
        (
            b"CONNECT 127.1:443 HTTP/1.1\r\n\r\n",
            E::InvalidAuthority(TargetError::AmbiguousIpv4),
        ),
        (
            b"CONNECT 2130706433:443 HTTP/1.1\r\n\r\n",
            E::InvalidAuthority(TargetError::AmbiguousIpv4),
        ),
        (
            b"CONNECT [::1:443 HTTP/1.1\r\n\r\n",
            E::InvalidAuthority(TargetError::InvalidIpv6),
        ),
        (
            b"CONNECT [fe80::1%25eth0]:443 HTTP/1.1\r\n\r\n",
            E::InvalidAuthority(TargetError::InvalidIpv6),
        ),
        (
            b"CONNECT ::1:443 HTTP/1.1\r\n\r\n",
            E::InvalidAuthority(TargetError::EmptyHost),
        ),
        (
            b"CONNECT h_%41:443 HTTP/1.1\r\n\r\n",
            E::InvalidAuthority(TargetError::InvalidName {
                why: "character other than a letter, digit, '-' or '_'",
            }),
        ),
        (
            b"CONNECT https://h:443/ HTTP/1.1\r\n\r\n",
            E::InvalidTarget {
                why: "CONNECT takes host:port",
            },
        ),
        (b"CONNECT h:443 HTTP/2.0\r\n\r\n", E::UnsupportedVersion),
        (
            b"CONNECT h:443 HTTP/1.1 \r\n\r\n",
            E::InvalidRequestLine {
                why: "not three fields separated by single spaces",
            },
        ),
        (
            b"CONNECT  h:443 HTTP/1.1\r\n\r\n",
            E::InvalidRequestLine {
                why: "not three fields separated by single spaces",
            },
        ),
        (
            b"CONNECT h:443 FTP/1.1\r\n\r\n",
            E::InvalidRequestLine {
                why: "no HTTP version",
            },
        ),
        (b"CONNECT h:443 HTTP/1.1\n\n", E::InvalidLineEnding),
        (
            b"CONNECT h:443 HTTP/1.1\r\nHost: h\n\r\n",
            E::InvalidLineEnding,
        ),
        (b"CONNECT h:443 HTTP/1.1\rX", E::InvalidLineEnding),
        (
            b"CONNECT h:443\x00 HTTP/1.1\r\n\r\n",
            E::InvalidByte { byte: 0 },
        ),
        (
            b"CONNECT h\xc3\xa9:443 HTTP/1.1\r\n\r\n",
            E::InvalidByte { byte: 0xc3 },
        ),
        (
            b"CONNECT h:443 HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            E::InvalidByte { byte: 1 },
        ),
        (
            b"CONNECT h:443 HTTP/1.1\r\nHost : h\r\n\r\n",
            E::InvalidHeader {
                why: "invalid field name (or whitespace before the colon)",
            },
        ),
        (
            b"CONNECT h:443 HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            E::InvalidHeader {
                why: "obsolete line folding",
            },
        ),
        (
            b"CONNECT h:443 HTTP/1.1\r\nNoColon\r\n\r\n",
            E::InvalidHeader { why: "no colon" },
        ),
        (
            b"CONNECT h:443 HTTP/1.1\r\n: v\r\n\r\n",
            E::InvalidHeader {
                why: "invalid field name (or whitespace before the colon)",
            },
        ),
        (
            b"\r\n\r\n",
            E::InvalidRequestLine {
                why: "empty request line",
            },
        ),
        (
            b" CONNECT h:443 HTTP/1.1\r\n\r\n",
            E::InvalidRequestLine {
                why: "empty method",
            },
        ),
        (b"GET / HTTP/1.1\r\n\r\n", E::NotConnect),
        (b"connect h:443 HTTP/1.1\r\n\r\n", E::NotConnect),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            parse_http_connect(bytes).unwrap_err(),
            expected,
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
    // Decided early: the method, a bad byte or a bad line ending needs no more bytes.
    assert_eq!(parse_http_connect(b"GET ").unwrap_err(), E::NotConnect);
    assert_eq!(
        parse_http_connect(b"CONN(").unwrap_err(),
        E::InvalidRequestLine {
            why: "invalid method"
        }
    );
    assert_eq!(
        parse_http_connect(b"CONNECT h:1 HTTP/1.1\n").unwrap_err(),
        E::InvalidLineEnding
    );
    // Binary garbage is refused on its first byte, not after 16 KiB.
    assert!(matches!(
        parse_http_request_head(&[0x16, 0x03, 0x01, 0x00]),
        Err(E::InvalidByte { byte: 0x16 })
    ));
}

#[test]
fn head_size_is_capped() {
    let mut big = b"CONNECT h:443 HTTP/1.1\r\nX-Pad: ".to_vec();
    big.resize(DEFAULT_MAX_HEAD_LEN + 10, b'a');
    assert_eq!(
        parse_http_connect(&big).unwrap_err(),
        HttpHeadError::TooLarge {
            max: DEFAULT_MAX_HEAD_LEN
        }
    );
    // Refused as soon as the head cannot end within the limit.
    let exact = b"CONNECT h:443 HTTP/1.1\r\nX: y\r\n\r\n";
    let len = exact.len();
    assert!(parse_http_connect_with_limit(exact, len).is_ok());
    assert_eq!(
        parse_http_connect_with_limit(exact, len - 1).unwrap_err(),
        HttpHeadError::TooLarge { max: len - 1 }
    );
    assert_eq!(
        parse_http_connect_with_limit(&exact[..len - 2], len - 1).unwrap_err(),
        HttpHeadError::TooLarge { max: len - 1 },
        "two bytes missing, one allowed"
    );
    assert_eq!(
        parse_http_connect_with_limit(&exact[..len - 2], len).unwrap_err(),
        HttpHeadError::Incomplete { needed: Some(2) }
    );
    every_prefix_incomplete(
        "limit",
        exact,
        len,
        |b| parse_http_connect_with_limit(b, len),
        head_needed,
    );
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP heads

#[test]
fn plain_http_heads() {
    let bytes = b"POST /queries/v1/query-request?requestId=1&X-Amz-Signature=s HTTP/1.1\r\nHost: Acct.SnowflakeComputing.com:8080\r\nContent-Length: 2\r\n\r\n{}";
    let h = parse_http_request_head(bytes).unwrap();
    assert_eq!(h.method, "POST");
    assert_eq!(h.form, TargetForm::Origin);
    assert_eq!(h.host, Some(name(SNOWFLAKE)));
    assert_eq!(h.port, Some(8080));
    assert_eq!(h.path.as_deref(), Some("/queries/v1/query-request"));
    assert!(!format!("{h:?}").contains("X-Amz"), "the query is not kept");
    assert_eq!(&bytes[h.consumed..], b"{}");
    assert!(!h.is_forward_proxy());
    assert_eq!(h.target(80), Some(target(name(SNOWFLAKE), 8080)));

    // A forward-proxy request for an https:// URL: the proxy would originate the TLS.
    let h = parse_http_request_head(
        b"GET https://ACCT.snowflakecomputing.com/queries/q/result HTTP/1.1\r\nHost: acct.snowflakecomputing.com\r\n\r\n",
    )
    .unwrap();
    assert_eq!(h.form, TargetForm::Absolute(Scheme::Https));
    assert!(h.is_forward_proxy());
    assert_eq!(h.path.as_deref(), Some("/queries/q/result"));
    assert_eq!(h.target(80), Some(target(name(SNOWFLAKE), 443)));

    let h =
        parse_http_request_head(b"GET HTTP://h:8080?x HTTP/1.1\r\nhost: h:8080\r\n\r\n").unwrap();
    assert_eq!(h.form, TargetForm::Absolute(Scheme::Http));
    assert_eq!(h.path.as_deref(), Some("/"));
    assert_eq!(h.target(1), Some(target(name("h"), 8080)));
    // Host with the scheme's default port spelled out agrees with a target without one.
    assert!(parse_http_request_head(b"GET http://h/ HTTP/1.1\r\nHost: h:80\r\n\r\n").is_ok());
    // No Host at all with absolute-form: the target decides.
    assert!(parse_http_request_head(b"GET http://[::1]:81/ HTTP/1.1\r\n\r\n").is_ok());

    // HTTP/1.0 may omit Host; the caller's default port applies to origin-form.
    let h = parse_http_request_head(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!((h.host.clone(), h.version), (None, HttpVersion::Http10));
    assert_eq!(h.target(80), None);
    let h = parse_http_request_head(b"OPTIONS * HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n").unwrap();
    assert_eq!(h.form, TargetForm::Asterisk);
    assert_eq!(h.target(8080), Some(target(ip("10.0.0.1"), 8080)));
    assert_eq!(h.path, None);

    // CONNECT through the general parser.
    let h = parse_http_request_head(b"CONNECT h:443 HTTP/1.1\r\nHost: other\r\n\r\n").unwrap();
    assert_eq!(h.form, TargetForm::Authority);
    assert_eq!(h.target(0), Some(target(name("h"), 443)));
    assert!(h.is_forward_proxy());

    let head = b"GET https://acct.snowflakecomputing.com/x HTTP/1.1\r\nHost: acct.snowflakecomputing.com\r\nAccept: */*\r\n\r\n";
    every_prefix_incomplete(
        "absolute",
        head,
        head.len(),
        parse_http_request_head,
        head_needed,
    );
}

#[test]
fn ambiguous_plain_http_heads() {
    use HttpHeadError as E;
    let cases: Vec<(&[u8], HttpHeadError)> = vec![
        (b"GET / HTTP/1.1\r\n\r\n", E::MissingHost),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            E::DuplicateHost,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nhOST: b\r\n\r\n",
            E::DuplicateHost,
        ),
        (
            b"GET http://benign.example/ HTTP/1.1\r\nHost: acct.snowflakecomputing.com\r\n\r\n",
            E::ConflictingHost,
        ),
        (
            b"GET http://h/ HTTP/1.1\r\nHost: h:8080\r\n\r\n",
            E::ConflictingHost,
        ),
        (
            b"GET https://h/ HTTP/1.1\r\nHost: h:80\r\n\r\n",
            E::ConflictingHost,
        ),
        (
            b"GET http://u@h/ HTTP/1.1\r\n\r\n",
            E::InvalidAuthority(TargetError::UserInfo),
        ),
        (
            b"GET http:///x HTTP/1.1\r\n\r\n",
            E::InvalidAuthority(TargetError::EmptyHost),
        ),
        (
            b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
            E::InvalidAuthority(TargetError::EmptyHost),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            E::InvalidAuthority(TargetError::InvalidName {
                why: "character other than a letter, digit, '-' or '_'",
            }),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: h\xc3\xa9\r\n\r\n",
            E::InvalidAuthority(TargetError::InvalidName {
                why: "non-ASCII host",
            }),
        ),
        (
            b"GET /#f HTTP/1.1\r\nHost: h\r\n\r\n",
            E::InvalidTarget {
                why: "fragment in the request target",
            },
        ),
        (
            b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
            E::InvalidTarget {
                why: "'*' is for OPTIONS only",
            },
        ),
        (
            b"GET ftp://h/ HTTP/1.1\r\n\r\n",
            E::InvalidTarget {
                why: "neither origin-form nor an http(s) absolute URI",
            },
        ),
        (
            b"GET h:443 HTTP/1.1\r\n\r\n",
            E::InvalidTarget {
                why: "neither origin-form nor an http(s) absolute URI",
            },
        ),
        (
            b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
            E::InvalidRequestLine {
                why: "invalid method",
            },
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            parse_http_request_head(bytes).unwrap_err(),
            expected,
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
    // Header values may carry obs-text; only Host has to be ASCII.
    assert!(parse_http_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nX: \xe9t\xe9\r\n\r\n").is_ok());
}

#[test]
fn http_replies() {
    assert_eq!(
        http_connect_established(),
        b"HTTP/1.1 200 Connection established\r\n\r\n"
    );
    let body = "Tollgate refused this tunnel: acct.snowflakecomputing.com:443 is intercepted.\n";
    let reply = http_forbidden(body);
    let text = String::from_utf8(reply).unwrap();
    let (head, got) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"));
    assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
    assert!(head.contains("\r\nConnection: close"));
    assert_eq!(got, body);
    let empty = http_forbidden("");
    assert!(empty.ends_with(b"Content-Length: 0\r\nConnection: close\r\n\r\n"));
}

// ---------------------------------------------------------------------------------------------
// SOCKS5

fn socks5_connect(atyp: u8, addr: &[u8], port: u16) -> Vec<u8> {
    let mut out = vec![0x05, 0x01, 0x00, atyp];
    out.extend_from_slice(addr);
    out.extend_from_slice(&port.to_be_bytes());
    out
}

fn socks5_domain(name: &str, port: u16) -> Vec<u8> {
    let mut addr = vec![name.len() as u8];
    addr.extend_from_slice(name.as_bytes());
    socks5_connect(0x03, &addr, port)
}

#[test]
fn socks5_handshake_with_pipelining() {
    // PySocks / curl --socks5-hostname: greeting [no auth, user/pass], then the request.
    let greeting = [0x05, 0x02, 0x00, 0x02];
    let request = socks5_domain(SNOWFLAKE, 443);
    let mut stream = greeting.to_vec();
    stream.extend_from_slice(&request);
    stream.extend_from_slice(HELLO);

    let mut server = Socks5Server::new();
    assert!(!server.awaits_request());
    assert!(matches!(
        server.advance(&stream[..1]),
        Err(SocksError::Incomplete { .. })
    ));
    let consumed = match server.advance(&stream).unwrap() {
        Socks5Event::MethodSelected { reply, consumed } => {
            assert_eq!(reply, [0x05, 0x00]);
            consumed
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(consumed, greeting.len());
    assert!(server.awaits_request());
    let rest = &stream[consumed..];
    assert!(matches!(
        server.advance(&rest[..3]),
        Err(SocksError::Incomplete { .. })
    ));
    let Socks5Event::Connect(req) = server.advance(rest).unwrap() else {
        panic!("no connect");
    };
    assert_eq!(req.target, target(name(SNOWFLAKE), 443));
    assert_eq!(req.consumed, request.len());
    assert_eq!(&rest[req.consumed..], HELLO);
    assert_eq!(server.advance(rest), Err(SocksError::HandshakeOver));

    // Only user/password offered: 05 FF, and the handshake is over.
    let mut server = Socks5Server::default();
    assert_eq!(
        server.advance(&[0x05, 0x01, 0x02]),
        Ok(Socks5Event::NoAcceptableMethod {
            reply: [0x05, 0xff]
        })
    );
    assert_eq!(server.advance(&request), Err(SocksError::HandshakeOver));

    // An error ends the handshake too, and says what to reply.
    let mut server = Socks5Server::new();
    server.advance(&greeting).unwrap();
    let bind = [0x05, 0x02, 0x00, 0x01, 1, 2, 3, 4, 0, 80];
    let err = server.advance(&bind).unwrap_err();
    assert_eq!(err, SocksError::UnsupportedCommand { command: 2 });
    assert_eq!(err.socks5_reply(), Socks5Reply::CommandNotSupported);
    assert_eq!(server.advance(&request), Err(SocksError::HandshakeOver));
}

#[test]
fn socks5_requests() {
    let r = parse_socks5_request(&socks5_connect(0x01, &[10, 1, 2, 3], 443)).unwrap();
    assert_eq!(r.target, target(ip("10.1.2.3"), 443));
    assert_eq!(r.consumed, 10);
    let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
    let r = parse_socks5_request(&socks5_connect(0x04, &v6.octets(), 8443)).unwrap();
    assert_eq!(r.target, target(ip("2001:db8::7"), 8443));
    assert_eq!(r.consumed, 22);
    // Java's IPv4-mapped IPv6 is the IPv4 destination.
    let mapped = Ipv4Addr::new(10, 0, 0, 9).to_ipv6_mapped();
    let r = parse_socks5_request(&socks5_connect(0x04, &mapped.octets(), 443)).unwrap();
    assert_eq!(r.target.host, ip("10.0.0.9"));
    let r = parse_socks5_request(&socks5_domain("ACCT.snowflakecomputing.com", 443)).unwrap();
    assert_eq!(r.target.host, name(SNOWFLAKE));
    // A domain that is an address literal is that address.
    let r = parse_socks5_request(&socks5_domain("10.0.0.1", 443)).unwrap();
    assert_eq!(r.target.host, ip("10.0.0.1"));

    let g = parse_socks5_greeting(&[0x05, 0x03, 0x02, 0x00, 0x80, 0xaa]).unwrap();
    assert_eq!(g.methods, vec![0x02, 0x00, 0x80]);
    assert!(g.offers_no_auth());
    assert_eq!(g.consumed, 5);
    assert_eq!(socks5_method_reply(0x00), [0x05, 0x00]);
}

#[test]
fn malformed_socks5() {
    use SocksError as E;
    let cases: Vec<(Vec<u8>, SocksError)> = vec![
        (vec![0x04, 0x01, 0x00, 0x01], E::BadVersion { version: 4 }),
        (vec![0x05, 0x02], E::UnsupportedCommand { command: 2 }),
        (
            vec![0x05, 0x03, 0x00, 0x01],
            E::UnsupportedCommand { command: 3 },
        ),
        (vec![0x05, 0x09], E::UnsupportedCommand { command: 9 }),
        (vec![0x05, 0x01, 0x01], E::NonZeroReserved),
        (
            vec![0x05, 0x01, 0x00, 0x02],
            E::UnsupportedAddressType { atyp: 2 },
        ),
        (
            vec![0x05, 0x01, 0x00, 0x03, 0x00],
            E::InvalidTarget(TargetError::EmptyHost),
        ),
        (
            socks5_connect(0x01, &[1, 2, 3, 4], 0),
            E::InvalidTarget(TargetError::InvalidPort),
        ),
        (
            socks5_connect(0x01, &[0, 0, 0, 0], 443),
            E::InvalidTarget(TargetError::UnspecifiedAddress),
        ),
        (
            socks5_connect(0x04, &[0; 16], 443),
            E::InvalidTarget(TargetError::UnspecifiedAddress),
        ),
        (
            socks5_domain("0.0.0.0", 443),
            E::InvalidTarget(TargetError::UnspecifiedAddress),
        ),
        (
            socks5_domain("127.1", 443),
            E::InvalidTarget(TargetError::AmbiguousIpv4),
        ),
        (
            socks5_domain("a/b", 443),
            E::InvalidTarget(TargetError::InvalidName {
                why: "character other than a letter, digit, '-' or '_'",
            }),
        ),
        (
            socks5_domain("é", 443),
            E::InvalidTarget(TargetError::InvalidName {
                why: "non-ASCII host",
            }),
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            parse_socks5_request(&bytes).unwrap_err(),
            expected,
            "{bytes:?}"
        );
    }
    assert_eq!(
        SocksError::UnsupportedAddressType { atyp: 2 }.socks5_reply(),
        Socks5Reply::AddressTypeNotSupported
    );
    assert_eq!(
        SocksError::NonZeroReserved.socks5_reply(),
        Socks5Reply::GeneralFailure
    );
    assert_eq!(parse_socks5_greeting(&[0x05, 0x00]), Err(E::NoMethods));
    assert_eq!(
        parse_socks5_greeting(&[0x04, 0x01]),
        Err(E::BadVersion { version: 4 })
    );
}

#[test]
fn every_prefix_of_a_socks5_message_is_incomplete() {
    let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
    let messages = [
        socks5_connect(0x01, &[10, 1, 2, 3], 443),
        socks5_connect(0x04, &v6.octets(), 443),
        socks5_domain(SNOWFLAKE, 443),
        socks5_domain("h", 1),
    ];
    for msg in messages {
        let mut stream = msg.clone();
        stream.extend_from_slice(b"tail");
        assert_eq!(parse_socks5_request(&stream).unwrap().consumed, msg.len());
        every_prefix_incomplete(
            "socks5",
            &stream,
            msg.len(),
            parse_socks5_request,
            socks_needed,
        );
    }
    let greeting = [0x05, 0x02, 0x00, 0x02, 0x05];
    every_prefix_incomplete(
        "greeting",
        &greeting,
        4,
        parse_socks5_greeting,
        socks_needed,
    );
}

#[test]
fn socks5_replies() {
    assert_eq!(
        socks5_reply(Socks5Reply::Succeeded, None),
        [0x05, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(socks5_reply(Socks5Reply::NotAllowed, None)[1], 0x02);
    assert_eq!(socks5_reply(Socks5Reply::ConnectionRefused, None)[1], 0x05);
    assert_eq!(
        socks5_reply(Socks5Reply::CommandNotSupported, None)[1],
        0x07
    );
    let bound = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1), 15001));
    assert_eq!(
        socks5_reply(Socks5Reply::Succeeded, Some(bound)),
        [0x05, 0x00, 0x00, 0x01, 127, 0, 0, 1, 0x3a, 0x99]
    );
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 443));
    let r = socks5_reply(Socks5Reply::Succeeded, Some(v6));
    assert_eq!(r.len(), 22);
    assert_eq!(r[3], 0x04);
    assert_eq!(&r[20..], &[0x01, 0xbb]);
}

// ---------------------------------------------------------------------------------------------
// SOCKS4 / 4a

fn socks4(port: u16, ip: [u8; 4], user: &[u8], host: Option<&[u8]>) -> Vec<u8> {
    let mut out = vec![0x04, 0x01];
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&ip);
    out.extend_from_slice(user);
    out.push(0);
    if let Some(h) = host {
        out.extend_from_slice(h);
        out.push(0);
    }
    out
}

#[test]
fn socks4_requests() {
    let r = parse_socks4_request(&socks4(443, [10, 0, 0, 1], b"", None)).unwrap();
    assert_eq!(r.target, target(ip("10.0.0.1"), 443));
    assert!(!r.is_4a && !r.has_user_id);
    assert_eq!(r.consumed, 9);
    let r = parse_socks4_request(&socks4(443, [10, 0, 0, 1], b"agent-secret", None)).unwrap();
    assert!(r.has_user_id);
    assert!(!format!("{r:?}").contains("agent-secret"));
    let r =
        parse_socks4_request(&socks4(443, [0, 0, 0, 1], b"u", Some(SNOWFLAKE.as_bytes()))).unwrap();
    assert!(r.is_4a);
    assert_eq!(r.target, target(name(SNOWFLAKE), 443));
    assert_eq!(r.consumed, 8 + 2 + SNOWFLAKE.len() + 1);
    assert_eq!(socks4_reply(true), [0x00, 0x5a, 0, 0, 0, 0, 0, 0]);
    assert_eq!(socks4_reply(false), [0x00, 0x5b, 0, 0, 0, 0, 0, 0]);

    for msg in [
        socks4(443, [10, 0, 0, 1], b"", None),
        socks4(443, [10, 0, 0, 1], b"user", None),
        socks4(443, [0, 0, 0, 9], b"", Some(b"h")),
        socks4(443, [0, 0, 0, 9], b"user", Some(SNOWFLAKE.as_bytes())),
    ] {
        let mut stream = msg.clone();
        stream.extend_from_slice(HELLO);
        assert_eq!(parse_socks4_request(&stream).unwrap().consumed, msg.len());
        every_prefix_incomplete(
            "socks4",
            &stream,
            msg.len(),
            parse_socks4_request,
            socks_needed,
        );
    }
}

#[test]
fn malformed_socks4() {
    use SocksError as E;
    let long = vec![b'u'; SOCKS4_MAX_FIELD_LEN + 1];
    let cases: Vec<(Vec<u8>, SocksError)> = vec![
        (vec![0x05, 0x01], E::BadVersion { version: 5 }),
        (vec![0x04, 0x02], E::UnsupportedCommand { command: 2 }),
        (
            vec![0x04, 0x01, 0x00, 0x00],
            E::InvalidTarget(TargetError::InvalidPort),
        ),
        (
            socks4(443, [0, 0, 0, 0], b"", None),
            E::InvalidTarget(TargetError::UnspecifiedAddress),
        ),
        (
            socks4(443, [0, 0, 0, 1], b"", Some(b"")),
            E::InvalidTarget(TargetError::EmptyHost),
        ),
        (
            socks4(443, [0, 0, 0, 1], b"", Some(b"0x7f.1")),
            E::InvalidTarget(TargetError::AmbiguousIpv4),
        ),
        (
            socks4(443, [0, 0, 0, 1], b"", Some(b"0.0.0.0")),
            E::InvalidTarget(TargetError::UnspecifiedAddress),
        ),
        (
            socks4(443, [1, 2, 3, 4], &long, None),
            E::FieldTooLong {
                field: "user id",
                max: SOCKS4_MAX_FIELD_LEN,
            },
        ),
        (
            socks4(443, [0, 0, 0, 1], b"", Some(&long)),
            E::FieldTooLong {
                field: "host name",
                max: SOCKS4_MAX_FIELD_LEN,
            },
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            parse_socks4_request(&bytes).unwrap_err(),
            expected,
            "{bytes:?}"
        );
    }
    // The longest accepted fields pass; the cap is decided without waiting for a NUL.
    let max = vec![b'u'; SOCKS4_MAX_FIELD_LEN];
    assert!(parse_socks4_request(&socks4(443, [1, 2, 3, 4], &max, None)).is_ok());
    let mut unterminated = socks4(443, [1, 2, 3, 4], b"", None);
    unterminated.pop();
    unterminated.extend_from_slice(&long);
    assert!(matches!(
        parse_socks4_request(&unterminated),
        Err(E::FieldTooLong { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Properties

/// Checks what every parser promises on any input: no panic, `consumed` within the input, and
/// a verdict other than `Incomplete` on a prefix is final.
fn check_all(data: &[u8]) {
    fn check<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
        data: &[u8],
        parse: impl Fn(&[u8]) -> Result<T, E>,
        consumed: impl Fn(&T) -> usize,
        incomplete: impl Fn(&E) -> bool,
    ) {
        let full = parse(data);
        if let Ok(v) = &full {
            assert!(consumed(v) <= data.len());
            assert!(parse(&data[..consumed(v)]).as_ref().ok() == Some(v));
        }
        for cut in [data.len() / 2, data.len().saturating_sub(1)] {
            match (parse(&data[..cut]), &full) {
                (Err(e), _) if incomplete(&e) => {}
                (Ok(a), Ok(b)) => assert_eq!(&a, b),
                (Err(_), Err(b)) => assert!(!incomplete(b)),
                (a, b) => panic!("prefix {cut} gave {a:?}, the whole input {b:?}"),
            }
        }
    }
    let head_incomplete = |e: &HttpHeadError| matches!(e, HttpHeadError::Incomplete { .. });
    let socks_incomplete = |e: &SocksError| matches!(e, SocksError::Incomplete { .. });
    check(data, sniff, |_| data.len(), |_| true);
    check(data, parse_http_connect, |c| c.consumed, head_incomplete);
    check(
        data,
        parse_http_request_head,
        |h| h.consumed,
        head_incomplete,
    );
    check(
        data,
        |b| parse_http_request_head_with_limit(b, 64),
        |h| h.consumed,
        head_incomplete,
    );
    check(
        data,
        parse_socks5_greeting,
        |g| g.consumed,
        socks_incomplete,
    );
    check(data, parse_socks5_request, |r| r.consumed, socks_incomplete);
    check(data, parse_socks4_request, |r| r.consumed, socks_incomplete);
    let mut server = Socks5Server::new();
    if let Ok(Socks5Event::MethodSelected { consumed, .. }) = server.advance(data) {
        assert!(consumed <= data.len());
        let _ = server.advance(&data[consumed..]);
    }
}

fn head_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"CONNECT ".to_vec()),
        Just(b"GET ".to_vec()),
        Just(b"http://".to_vec()),
        Just(b"https://".to_vec()),
        Just(b"[::1]".to_vec()),
        Just(b":443".to_vec()),
        Just(b" HTTP/1.1".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r\n\r\n".to_vec()),
        Just(b"Host: ".to_vec()),
        Just(b"Proxy-Authorization: x".to_vec()),
        Just(b"/".to_vec()),
        Just(b"*".to_vec()),
        "[a-z0-9.:@]{1,8}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 1..4),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_break_a_promise(data in prop::collection::vec(any::<u8>(), 0..300)) {
        check_all(&data);
        for first in [0x04u8, 0x05, 0x16] {
            let mut d = vec![first];
            d.extend_from_slice(&data);
            check_all(&d);
        }
    }

    #[test]
    fn head_shaped_bytes_never_break_a_promise(pieces in prop::collection::vec(head_piece(), 0..16)) {
        check_all(&pieces.concat());
    }

    #[test]
    fn connect_targets_round_trip(host in "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9_-]{0,10}){0,3}", port in 1u16..) {
        let bytes = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
        let c = parse_http_connect(bytes.as_bytes()).unwrap();
        prop_assert_eq!(c.target.to_string(), format!("{host}:{port}"));
        let r = parse_socks5_request(&socks5_domain(&host, port)).unwrap();
        prop_assert_eq!(&r.target, &c.target);
        let r4 = parse_socks4_request(&socks4(port, [0, 0, 0, 1], b"", Some(host.as_bytes()))).unwrap();
        prop_assert_eq!(&r4.target, &c.target);
    }

    #[test]
    fn address_targets_round_trip(v4 in any::<[u8; 4]>(), v6 in any::<[u8; 16]>(), port in 1u16..) {
        let v4 = Ipv4Addr::from(v4);
        prop_assume!(!v4.is_unspecified());
        let c = parse_http_connect(format!("CONNECT {v4}:{port} HTTP/1.1\r\n\r\n").as_bytes()).unwrap();
        prop_assert_eq!(&c.target, &target(Host::Ip(IpAddr::V4(v4)), port));
        let s = parse_socks5_request(&socks5_connect(0x01, &v4.octets(), port)).unwrap();
        prop_assert_eq!(&s.target, &c.target);
        let v6 = Ipv6Addr::from(v6);
        prop_assume!(!v6.is_unspecified());
        let c = parse_http_connect(format!("CONNECT [{v6}]:{port} HTTP/1.1\r\n\r\n").as_bytes()).unwrap();
        let s = parse_socks5_request(&socks5_connect(0x04, &v6.octets(), port)).unwrap();
        prop_assert_eq!(&s.target, &c.target);
    }
}
