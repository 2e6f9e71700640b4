//! Phase 7 — the upstream request filter: the last look at a request before it is forwarded to
//! Snowflake. This is where credential brokering rewrites logins and tokens; today it forwards
//! the request unchanged.

use http::Request;
use tollgate_proxy::ProxyBody;

use crate::context::Expect;

/// The request as it goes upstream.
pub fn upstream_request(request: Request<ProxyBody>, expect: &Expect) -> Request<ProxyBody> {
    let _ = expect;
    request
}
