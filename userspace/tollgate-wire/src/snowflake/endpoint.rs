//! Which Snowflake endpoint a request targets, and its query string.
//!
//! Classification runs on the [`NormalizedPath`] of the target (see [`normalize_path`]), never on
//! the client's spelling: `/queries/<id>/r%65sult` is a [`Endpoint::QueryResult`], and a path
//! that servers read in more than one way is refused ([`classify_target`]) or classified as
//! [`Endpoint::AmbiguousPath`] ([`classify`]).

use std::borrow::Cow;

use super::path::{normalize_path, NormalizedPath, PathError};

/// A Snowflake REST endpoint, as told by the request's method and path.
///
/// Anything not recognised is [`Endpoint::Unknown`]; a proxy that enforces policy should treat
/// that as "not understood" (fail closed or pass through by configuration), never as harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /session/v1/login-request`: every authenticator's login (body: [`LoginRequest`]).
    ///
    /// [`LoginRequest`]: super::LoginRequest
    Login,
    /// `POST /session/authenticator-request`: step 1 of external-browser (and Okta) logins.
    AuthenticatorRequest,
    /// `POST /session/token-request`: session renewal with the master token
    /// (body `{oldSessionToken, requestType:"RENEW"}`).
    TokenRequest,
    /// `POST /session/heartbeat`: keep-alive.
    Heartbeat,
    /// `POST /session?delete=true`: log out.
    SessionDelete,
    /// `POST /queries/v1/query-request`: run a statement (body: [`QueryRequest`]).
    ///
    /// [`QueryRequest`]: super::QueryRequest
    QueryRequest,
    /// `POST /queries/v1/abort-request`: cancel the statement with a given `requestId`.
    AbortRequest,
    /// `POST /queries/<qid>/abort-request`: cancel by query id (Python's `abort_query`).
    AbortQuery {
        /// The query id from the path.
        query_id: String,
    },
    /// `GET /queries/<qid>/result`: poll or fetch a result (the `getResultUrl` of 333333/333334).
    QueryResult {
        /// The query id from the path.
        query_id: String,
    },
    /// `GET /monitoring/queries/<qid>`: status of an (async) query.
    MonitoringQuery {
        /// The query id from the path.
        query_id: String,
    },
    /// `POST /telemetry/send`: driver telemetry.
    Telemetry,
    /// `POST /api/v2/statements`: SQL API submission (body: [`StatementRequest`]).
    ///
    /// [`StatementRequest`]: super::StatementRequest
    SqlApiSubmit,
    /// `GET /api/v2/statements/<handle>`: SQL API status / result partition.
    SqlApiStatus {
        /// The statement handle from the path.
        handle: String,
    },
    /// `POST /api/v2/statements/<handle>/cancel`: SQL API cancellation.
    SqlApiCancel {
        /// The statement handle from the path.
        handle: String,
    },
    /// `GET` of a pre-signed result chunk URL (`X-Amz-Signature`, `X-Goog-Signature` or an
    /// Azure SAS `sig`): the `chunks[].url` of a large result. Real Snowflake points these at
    /// cloud storage, so they reach Tollgate only when it rewrote the URLs to itself (or in the
    /// test stand-in, which serves them on the Snowflake host).
    ResultChunk,
    /// Anything else.
    Unknown {
        /// The request method as given.
        method: String,
        /// The normalized path (decoded, without the query string; see [`NormalizedPath`]).
        path: String,
    },
    /// A target whose path [`normalize_path`] refuses (an encoded `/`, a backslash, a double
    /// escape, …): what the server would route it to is not known, so it must not be forwarded.
    /// Only [`classify`] returns it; [`classify_target`] returns the [`PathError`] instead.
    AmbiguousPath {
        /// The request method as given.
        method: String,
        /// The raw path as the client sent it (without the query string).
        path: String,
        /// Why the path was refused.
        error: PathError,
    },
}

impl Endpoint {
    /// A short stable name for logs and metrics (no ids).
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::Login => "login",
            Endpoint::AuthenticatorRequest => "authenticator_request",
            Endpoint::TokenRequest => "token_request",
            Endpoint::Heartbeat => "heartbeat",
            Endpoint::SessionDelete => "session_delete",
            Endpoint::QueryRequest => "query_request",
            Endpoint::AbortRequest => "abort_request",
            Endpoint::AbortQuery { .. } => "abort_query",
            Endpoint::QueryResult { .. } => "query_result",
            Endpoint::MonitoringQuery { .. } => "monitoring_query",
            Endpoint::Telemetry => "telemetry",
            Endpoint::SqlApiSubmit => "sql_api_submit",
            Endpoint::SqlApiStatus { .. } => "sql_api_status",
            Endpoint::SqlApiCancel { .. } => "sql_api_cancel",
            Endpoint::ResultChunk => "result_chunk",
            Endpoint::Unknown { .. } => "unknown",
            Endpoint::AmbiguousPath { .. } => "ambiguous_path",
        }
    }

    /// Whether this endpoint's responses may contain result rows, i.e. whether a response must
    /// go through masking and row caps before it reaches the client.
    ///
    /// `true` for statements and their results ([`QueryRequest`](Endpoint::QueryRequest),
    /// [`QueryResult`](Endpoint::QueryResult), [`SqlApiSubmit`](Endpoint::SqlApiSubmit),
    /// [`SqlApiStatus`](Endpoint::SqlApiStatus), [`ResultChunk`](Endpoint::ResultChunk)) and for
    /// whatever is not understood ([`Unknown`](Endpoint::Unknown),
    /// [`AmbiguousPath`](Endpoint::AmbiguousPath)); `false` for session management (login,
    /// authenticator, token renewal, heartbeat, logout), telemetry, cancellations (whose answers
    /// carry a status only) and [`MonitoringQuery`](Endpoint::MonitoringQuery) (status, error
    /// code and timings of a query, no rows: a client reads its rows from
    /// `/queries/<qid>/result`).
    pub fn carries_rows(&self) -> bool {
        match self {
            Endpoint::QueryRequest
            | Endpoint::QueryResult { .. }
            | Endpoint::SqlApiSubmit
            | Endpoint::SqlApiStatus { .. }
            | Endpoint::ResultChunk
            | Endpoint::Unknown { .. }
            | Endpoint::AmbiguousPath { .. } => true,
            Endpoint::Login
            | Endpoint::AuthenticatorRequest
            | Endpoint::TokenRequest
            | Endpoint::Heartbeat
            | Endpoint::SessionDelete
            | Endpoint::AbortRequest
            | Endpoint::AbortQuery { .. }
            | Endpoint::MonitoringQuery { .. }
            | Endpoint::Telemetry
            | Endpoint::SqlApiCancel { .. } => false,
        }
    }
}

/// A request target classified on its normalized path: the endpoint, and the canonical target
/// to forward so that the server sees exactly what was classified.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Classified {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The normalized path.
    pub path: NormalizedPath,
    /// The raw query string (without `?`), as the client sent it; `None` when there was no `?`.
    pub query: Option<String>,
}

impl Classified {
    /// The origin-form target to forward: the normalized path re-encoded, and the query string
    /// verbatim (`path.to_origin_form(query)`).
    pub fn canonical_target(&self) -> String {
        self.path.to_origin_form(self.query.as_deref())
    }
}

/// Splits a request target into path and query string (without the `?`).
///
/// An absolute-form target (`https://host/path?q`) is reduced to its path (`/` when it has
/// none: `https://host?q` is `/` and `q`); a fragment is dropped.
pub fn split_target(path_and_query: &str) -> (&str, Option<&str>) {
    let mut target = path_and_query;
    if let Some(hash) = target.find('#') {
        target = &target[..hash];
    }
    let mut absolute = false;
    for scheme in ["https://", "http://"] {
        if target
            .get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        {
            let rest = &target[scheme.len()..];
            target = rest.find(['/', '?']).map_or("/", |i| &rest[i..]);
            absolute = true;
            break;
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if absolute && path.is_empty() {
        ("/", query)
    } else {
        (path, query)
    }
}

/// Classifies a request by method and target (origin-form `path?query`, or absolute-form) on
/// its normalized path; a path [`normalize_path`] refuses is an error, not a guess.
///
/// Forward [`Classified::canonical_target`] rather than the client's target: then the server
/// routes exactly the path that was classified.
pub fn classify_target(method: &str, path_and_query: &str) -> Result<Classified, PathError> {
    let (path, query) = split_target(path_and_query);
    let path = normalize_path(path)?;
    let params = QueryParams::parse(query.unwrap_or(""));
    Ok(Classified {
        endpoint: classify_normalized(method, &path, &params),
        path,
        query: query.map(str::to_owned),
    })
}

/// Classifies a request by method and target, like [`classify_target`], folding a refused path
/// into [`Endpoint::AmbiguousPath`] (which a caller must refuse: it is not [`Endpoint::Unknown`],
/// so a "forward unknown endpoints" setting does not let it through).
pub fn classify(method: &str, path_and_query: &str) -> Endpoint {
    match classify_target(method, path_and_query) {
        Ok(classified) => classified.endpoint,
        Err(error) => Endpoint::AmbiguousPath {
            method: method.to_owned(),
            path: split_target(path_and_query).0.to_owned(),
            error,
        },
    }
}

fn classify_normalized(method: &str, path: &NormalizedPath, params: &QueryParams) -> Endpoint {
    let segments: Vec<&str> = path.segments().collect();
    let found = match (method, segments.as_slice()) {
        ("POST", ["session", "v1", "login-request"]) => Some(Endpoint::Login),
        ("POST", ["session", "authenticator-request"]) => Some(Endpoint::AuthenticatorRequest),
        ("POST", ["session", "token-request"]) => Some(Endpoint::TokenRequest),
        ("POST", ["session", "heartbeat"]) => Some(Endpoint::Heartbeat),
        ("POST", ["session"]) if params.is_delete() => Some(Endpoint::SessionDelete),
        ("POST", ["queries", "v1", "query-request"]) => Some(Endpoint::QueryRequest),
        ("POST", ["queries", "v1", "abort-request"]) => Some(Endpoint::AbortRequest),
        ("POST", ["queries", qid, "abort-request"]) => Some(Endpoint::AbortQuery {
            query_id: (*qid).to_owned(),
        }),
        ("GET", ["queries", qid, "result"]) => Some(Endpoint::QueryResult {
            query_id: (*qid).to_owned(),
        }),
        ("GET", ["monitoring", "queries", qid]) => Some(Endpoint::MonitoringQuery {
            query_id: (*qid).to_owned(),
        }),
        ("POST", ["telemetry", "send"]) => Some(Endpoint::Telemetry),
        ("POST", ["api", "v2", "statements"]) => Some(Endpoint::SqlApiSubmit),
        ("GET", ["api", "v2", "statements", handle]) => Some(Endpoint::SqlApiStatus {
            handle: (*handle).to_owned(),
        }),
        ("POST", ["api", "v2", "statements", handle, "cancel"]) => Some(Endpoint::SqlApiCancel {
            handle: (*handle).to_owned(),
        }),
        ("GET", _) if params.is_presigned() => Some(Endpoint::ResultChunk),
        _ => None,
    };
    // Segments of a normalized path are never empty, so ids need no further check.
    found.unwrap_or_else(|| Endpoint::Unknown {
        method: method.to_owned(),
        path: path.as_str().to_owned(),
    })
}

/// The decoded query string of a request, in order, duplicates kept.
///
/// Names and values are percent-decoded (`+` is a space, as in form encoding; invalid escapes
/// are kept literally; invalid UTF-8 is replaced with U+FFFD). Lookups return the first
/// occurrence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryParams {
    pairs: Vec<(String, String)>,
}

impl QueryParams {
    /// Parses a query string (without the leading `?`).
    pub fn parse(query: &str) -> Self {
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (
                    percent_decode(name).into_owned(),
                    percent_decode(value).into_owned(),
                )
            })
            .collect();
        Self { pairs }
    }

    /// Parses the query string of a full request target (`/path?query`).
    pub fn from_target(path_and_query: &str) -> Self {
        Self::parse(split_target(path_and_query).1.unwrap_or(""))
    }

    /// The first value of `name` (exact, case-sensitive match).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The request id: `requestId` (queries, Node login) or `request_id` (Python login).
    ///
    /// A driver retrying a statement after a session renewal re-sends the same id.
    pub fn request_id(&self) -> Option<&str> {
        self.get("requestId").or_else(|| self.get("request_id"))
    }

    /// `request_guid`, a per-HTTP-attempt id (differs between retries of one request).
    pub fn request_guid(&self) -> Option<&str> {
        self.get("request_guid")
    }

    /// `databaseName` (login).
    pub fn database_name(&self) -> Option<&str> {
        self.get("databaseName")
    }

    /// `schemaName` (login).
    pub fn schema_name(&self) -> Option<&str> {
        self.get("schemaName")
    }

    /// `warehouse` (login).
    pub fn warehouse(&self) -> Option<&str> {
        self.get("warehouse")
    }

    /// `roleName` (login).
    pub fn role_name(&self) -> Option<&str> {
        self.get("roleName")
    }

    /// Whether `delete=true` is present (session delete).
    pub fn is_delete(&self) -> bool {
        self.get("delete")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// Whether the query string carries a cloud-storage pre-signature.
    pub fn is_presigned(&self) -> bool {
        self.pairs.iter().any(|(n, _)| {
            n.eq_ignore_ascii_case("X-Amz-Signature")
                || n.eq_ignore_ascii_case("X-Goog-Signature")
                || n == "sig"
        })
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%41"), "A");
        assert_eq!(percent_decode("x%zz"), "x%zz");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%FF"), "\u{FFFD}");
    }
}
