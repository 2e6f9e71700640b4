//! The first bytes of any connection through every tunnel parser: sniffing, HTTP CONNECT and
//! request heads, SOCKS5 (greeting, request, the handshake state machine) and SOCKS4/4a.
//! Nothing may panic, `consumed` never exceeds the input, a message re-parses from its own
//! bytes, and a verdict other than "incomplete" on a prefix is final.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use tollgate_wire::tunnel::{
    parse_http_connect, parse_http_request_head, parse_http_request_head_with_limit,
    parse_socks4_request, parse_socks5_greeting, parse_socks5_request, sniff, HttpHeadError,
    Socks5Event, Socks5Server, SocksError,
};

fn check<T: PartialEq + Debug, E: Debug>(
    data: &[u8],
    parse: impl Fn(&[u8]) -> Result<T, E>,
    consumed: impl Fn(&T) -> usize,
    incomplete: impl Fn(&E) -> bool,
) {
    let full = parse(data);
    if let Ok(v) = &full {
        let used = consumed(v);
        assert!(used <= data.len(), "consumed {used} of {}", data.len());
        assert_eq!(
            parse(&data[..used]).ok().as_ref(),
            Some(v),
            "re-parse from its own bytes"
        );
    }
    if data.len() > 1 {
        for cut in [data.len() / 2, data.len() - 1] {
            match (parse(&data[..cut]), &full) {
                (Err(e), _) if incomplete(&e) => {}
                (Ok(a), Ok(b)) => assert_eq!(&a, b),
                (Err(_), Err(b)) => assert!(!incomplete(b), "an error on a prefix became {b:?}"),
                (a, b) => panic!("prefix {cut} gave {a:?}, the whole input {b:?}"),
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let head = |e: &HttpHeadError| matches!(e, HttpHeadError::Incomplete { .. });
    let socks = |e: &SocksError| matches!(e, SocksError::Incomplete { .. });
    check(data, sniff, |_| data.len(), |_| true);
    check(data, parse_http_connect, |c| c.consumed, head);
    check(data, parse_http_request_head, |h| h.consumed, head);
    check(
        data,
        |b| parse_http_request_head_with_limit(b, 256),
        |h| h.consumed,
        head,
    );
    check(data, parse_socks5_greeting, |g| g.consumed, socks);
    check(data, parse_socks5_request, |r| r.consumed, socks);
    check(data, parse_socks4_request, |r| r.consumed, socks);
    if let Ok(h) = parse_http_request_head(data) {
        let _ = (h.is_forward_proxy(), h.target(80).map(|t| t.to_string()));
    }
    let mut server = Socks5Server::new();
    if let Ok(Socks5Event::MethodSelected { consumed, .. }) = server.advance(data) {
        assert!(consumed <= data.len());
        if let Ok(Socks5Event::Connect(r)) = server.advance(&data[consumed..]) {
            assert!(consumed + r.consumed <= data.len());
            let _ = r.target.to_string();
        }
    }
});
