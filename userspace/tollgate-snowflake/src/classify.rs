//! Phase 1 — classify: which Snowflake endpoint a request is for, read from its normalised
//! path. The request is then forwarded with the canonical target, so the server routes exactly
//! the path Tollgate decided on; a path with more than one reading is refused, never guessed.

use http::Request;
use tollgate_proxy::ProxyBody;
use tollgate_wire::snowflake::{classify_target, split_target, Endpoint, QueryParams};

use crate::chunks::ticket_name;
use crate::reply::{Api, Refusal, RefusalKind};

/// What a request is.
#[derive(Debug)]
pub enum Route {
    /// `GET /tollgate/chunks/<ticket>`: a result chunk Tollgate serves itself.
    Chunk {
        /// The ticket name.
        ticket: String,
    },
    /// A Snowflake endpoint.
    Endpoint {
        /// Which.
        endpoint: Endpoint,
        /// The query parameters of the canonical target.
        params: QueryParams,
    },
}

/// Classifies `request` and rewrites its target to the canonical form.
pub fn classify(request: &mut Request<ProxyBody>) -> Result<Route, Refusal> {
    let raw_target = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let classified = classify_target(request.method().as_str(), &raw_target).map_err(|e| {
        let path = split_target(&raw_target).0;
        Refusal::new(
            RefusalKind::AmbiguousPath,
            Api::of_path(path),
            format!(
                "Tollgate refused {} {path}: {e}; send the path in its plain form",
                request.method()
            ),
        )
    })?;
    let target = classified.canonical_target();
    if target != raw_target {
        let mut parts = request.uri().clone().into_parts();
        parts.path_and_query = Some(target.parse().map_err(|_| {
            Refusal::new(
                RefusalKind::UnencodableTarget,
                Api::Driver,
                "Tollgate refused a request target it cannot re-encode",
            )
        })?);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    if request.method() == http::Method::GET {
        if let Some(ticket) = ticket_name(&target) {
            return Ok(Route::Chunk {
                ticket: ticket.to_owned(),
            });
        }
    }
    Ok(Route::Endpoint {
        endpoint: classified.endpoint,
        params: QueryParams::from_target(&target),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::full;

    fn req(method: &str, target: &str) -> Request<ProxyBody> {
        Request::builder()
            .method(method)
            .uri(target)
            .body(full(bytes::Bytes::new()))
            .unwrap()
    }

    #[test]
    fn the_canonical_target_is_what_is_forwarded() {
        let mut r = req("POST", "/queries/v1/./query-request?requestId=1");
        let route = classify(&mut r).unwrap();
        assert!(matches!(
            route,
            Route::Endpoint {
                endpoint: Endpoint::QueryRequest,
                ..
            }
        ));
        assert_eq!(r.uri().path(), "/queries/v1/query-request");
    }

    #[test]
    fn ambiguous_paths_are_refused_in_the_api_they_address() {
        let mut r = req("GET", "/api/v2/statements%2Fx");
        let e = classify(&mut r).unwrap_err();
        assert_eq!(e.kind, RefusalKind::AmbiguousPath);
        assert_eq!(e.api, Api::SqlApi);
        let mut r = req("POST", "/queries/v1/query%2Frequest");
        assert_eq!(classify(&mut r).unwrap_err().api, Api::Driver);
    }

    #[test]
    fn chunk_paths_are_routed_to_tollgate_only_for_get() {
        let mut r = req("GET", "/tollgate/chunks/abcd");
        assert!(matches!(classify(&mut r).unwrap(), Route::Chunk { ticket } if ticket == "abcd"));
        let mut r = req("POST", "/tollgate/chunks/abcd");
        assert!(matches!(classify(&mut r).unwrap(), Route::Endpoint { .. }));
    }
}
