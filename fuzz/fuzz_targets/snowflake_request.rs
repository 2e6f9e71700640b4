//! A request as the proxy sees it: the first line is `METHOD target`, an optional second line
//! `gzip` stands for `Content-Encoding: gzip`, the rest is the body. Classify, decode (with
//! small caps), and parse as the endpoint says; nothing may panic, and a parsed statement must
//! survive its own re-serialisation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_wire::snowflake::{
    classify, decode_body, parse_authorization, AbortRequest, AuthenticatorRequest, BodyLimits,
    Endpoint, LoginRequest, QueryParams, QueryRequest, StatementRequest, TokenRequest,
};

fuzz_target!(|data: &[u8]| {
    let (line, rest) = split_line(data);
    let line = String::from_utf8_lossy(line);
    let (method, target) = line.split_once(' ').unwrap_or((&line, "/"));
    let (encoding, body) = match split_line(rest) {
        (b"gzip", body) => (Some("gzip"), body),
        _ => (None, rest),
    };
    let endpoint = classify(method, target);
    let _ = endpoint.name();
    let query = QueryParams::from_target(target);
    let _ = parse_authorization(target);
    let limits = BodyLimits {
        max_compressed: 1 << 16,
        max_decompressed: 1 << 20,
        ..BodyLimits::default()
    };
    let Ok(decoded) = decode_body(encoding, body, &limits) else {
        return;
    };
    let body = &decoded.bytes;
    match endpoint {
        Endpoint::Login => {
            if let Ok(login) = LoginRequest::parse(&query, body) {
                let again = LoginRequest::parse(&query, &login.to_json_bytes()).expect("re-parse");
                assert_eq!(again.json(), login.json());
                let _ = format!("{login:?}");
            }
        }
        Endpoint::QueryRequest => {
            if let Ok(mut q) = QueryRequest::parse(&query, body) {
                let again = QueryRequest::parse(&query, &q.to_json_bytes()).expect("re-parse");
                assert_eq!(again.json(), q.json());
                q.set_sql_text("select 1");
                assert_eq!(
                    QueryRequest::parse(&query, &q.to_json_bytes())
                        .unwrap()
                        .sql_text,
                    "select 1"
                );
            }
        }
        Endpoint::TokenRequest => drop(TokenRequest::parse(&query, body)),
        Endpoint::AuthenticatorRequest => drop(AuthenticatorRequest::parse(body)),
        Endpoint::AbortRequest => drop(AbortRequest::parse(body)),
        Endpoint::SqlApiSubmit => drop(StatementRequest::parse(body)),
        _ => {}
    }
});

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
