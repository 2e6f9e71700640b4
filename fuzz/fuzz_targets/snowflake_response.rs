//! A response body: the first byte picks the parser (as the request's endpoint would), bit 7
//! says whether to treat the rest as gzip'd. Nothing may panic, and a parsed result must
//! survive a chunk-URL rewrite and re-serialisation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_wire::snowflake::{
    decode_body, AuthenticatorResponse, BodyLimits, Envelope, LoginResponse, MonitoringResponse,
    QueryResponse, StatementResponse, TokenResponse,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let encoding = (selector & 0x80 != 0).then_some("gzip");
    let limits = BodyLimits {
        max_compressed: 1 << 16,
        max_decompressed: 1 << 20,
        ..BodyLimits::default()
    };
    let Ok(decoded) = decode_body(encoding, body, &limits) else {
        return;
    };
    let body = &decoded.bytes;
    match selector & 0x07 {
        0 => {
            if let Ok(mut r) = QueryResponse::parse(body) {
                let _ = format!("{r:?}");
                if !r.chunks.is_empty() {
                    r.set_chunk_url(0, "https://tollgate.invalid/chunk/0")
                        .unwrap();
                    let again = QueryResponse::parse(&r.to_json_bytes()).expect("re-parse");
                    assert_eq!(
                        again.chunks[0].url.expose(),
                        "https://tollgate.invalid/chunk/0"
                    );
                }
            }
        }
        1 => drop(LoginResponse::parse(body).map(|r| format!("{r:?}"))),
        2 => drop(TokenResponse::parse(body)),
        3 => drop(MonitoringResponse::parse(body)),
        4 => drop(AuthenticatorResponse::parse(body)),
        5 => drop(StatementResponse::parse(body)),
        _ => drop(Envelope::parse(body)),
    }
});
