//! Interception: terminate the client's TLS with a minted leaf, serve HTTP/1.1 or HTTP/2 with
//! hyper, and relay each exchange — through the [`ExchangeHooks`] — to a verified TLS
//! connection to the original destination under the original SNI.
//!
//! The upstream connection is opened lazily on the first request, so a client that completes
//! the handshake and leaves costs no upstream connection. When the upstream cannot be reached
//! or fails verification, the request is answered with a 502 carrying `x-tollgate-error` and
//! nothing is forwarded. HTTP versions are translated when client and upstream differ
//! (`Host` ↔ `:authority`, origin-form ↔ absolute URIs, hop-by-hop headers dropped).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, CONNECTION, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client_h1, http2 as client_h2};
use hyper::server::conn::{http1 as server_h1, http2 as server_h2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::counting::CountingIo;
use crate::hooks::{BodyError, ConnectionContext, ExchangeHooks, ProxyBody, RequestAction};
use crate::peek::PrefixedIo;
use crate::record::CloseReason;
use crate::server::{signalled, ConnState};
use crate::upstream::{Route, UpstreamFailure, UpstreamTls};

/// Everything an intercepted connection needs besides its socket.
pub(crate) struct InterceptEnv {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) handshake_timeout: Duration,
    pub(crate) upstream_tls: UpstreamTls,
    /// How the upstream is reached (directly, or through the client's tunnel).
    pub(crate) route: Route,
    pub(crate) mark: Option<u32>,
    pub(crate) connect_timeout: Duration,
    pub(crate) hooks: Arc<dyn ExchangeHooks>,
}

/// Serves one intercepted connection until it ends; returns the close reason.
pub(crate) async fn run(
    io: PrefixedIo<TcpStream>,
    mut ctx: ConnectionContext,
    env: InterceptEnv,
    state: Arc<ConnState>,
    mut drain: watch::Receiver<bool>,
) -> CloseReason {
    let tls = match tokio::time::timeout(env.handshake_timeout, env.acceptor.accept(io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return CloseReason::ClientTls(e.to_string()),
        Err(_) => {
            return CloseReason::ClientTls(format!(
                "handshake not completed within {:?}",
                env.handshake_timeout
            ))
        }
    };
    let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let h2 = negotiated.as_deref() == Some(b"h2");
    state.set_negotiated_alpn(negotiated.map(|p| String::from_utf8_lossy(&p).into_owned()));
    ctx.client_version = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    let relay = Arc::new(Relay {
        ctx,
        hooks: env.hooks,
        upstream_tls: env.upstream_tls,
        route: env.route,
        mark: env.mark,
        connect_timeout: env.connect_timeout,
        state: state.clone(),
        session: tokio::sync::Mutex::new(None),
        next_index: AtomicU64::new(0),
    });
    let service = service_fn(move |request| {
        let relay = relay.clone();
        async move { Ok::<_, Infallible>(relay.handle(request).await) }
    });
    let io = TokioIo::new(CountingIo::new(tls, state.counters.clone()));

    // Both connection types offer the same graceful shutdown, without a common trait.
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            let mut drained = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => break (result, drained),
                    _ = signalled(&mut drain), if !drained => {
                        drained = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }};
    }
    let (result, drained) = if h2 {
        drive!(server_h2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, service))
    } else {
        drive!(server_h1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(io, service))
    };
    if let Some(failure) = state.upstream_failure() {
        return failure;
    }
    match result {
        Err(e) => CloseReason::ClientHttp(e.to_string()),
        Ok(()) if drained => CloseReason::Shutdown,
        Ok(()) => CloseReason::Eof,
    }
}

enum UpstreamSender {
    H1(client_h1::SendRequest<ProxyBody>),
    H2(client_h2::SendRequest<ProxyBody>),
}

struct Relay {
    ctx: ConnectionContext,
    hooks: Arc<dyn ExchangeHooks>,
    upstream_tls: UpstreamTls,
    route: Route,
    mark: Option<u32>,
    connect_timeout: Duration,
    state: Arc<ConnState>,
    /// The upstream connection, opened on first use and re-opened when it has closed.
    /// HTTP/1.1 upstreams carry one exchange at a time, so the lock is held until the
    /// response head arrives; HTTP/2 senders are cloned and the lock released at once.
    session: tokio::sync::Mutex<Option<UpstreamSender>>,
    next_index: AtomicU64,
}

impl Relay {
    async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let index = self.next_index.fetch_add(1, Ordering::Relaxed);
        self.state.requests.fetch_add(1, Ordering::Relaxed);
        let request = request.map(|body| body.map_err(BodyError::from).boxed());
        let mut filter = self.hooks.clone().exchange(&self.ctx, index);
        let request = match filter.request_filter(&self.ctx, request).await {
            RequestAction::Forward(request) => request,
            RequestAction::Respond(response) => return response,
        };
        let response = match self.send_upstream(request).await {
            Ok(response) => response,
            Err(failure) => {
                tracing::warn!(id = %self.ctx.id, sni = %self.ctx.sni, %failure, "request not forwarded");
                self.state.note_upstream_failure(&failure);
                filter.upstream_failed(&self.ctx, &failure);
                return error_response(&self.ctx, &failure);
            }
        };
        let response = prepare_response(response, self.ctx.client_version);
        filter.response_filter(&self.ctx, response).await
    }

    async fn send_upstream(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, UpstreamFailure> {
        let mut session = self.session.lock().await;
        let usable = match session.as_mut() {
            Some(UpstreamSender::H1(sender)) => sender.ready().await.is_ok(),
            Some(UpstreamSender::H2(sender)) => sender.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            *session = Some(self.connect().await?);
        }
        let http_failure = |e: hyper::Error| UpstreamFailure::Http(e.to_string());
        let response = match session.as_mut() {
            Some(UpstreamSender::H2(sender)) => {
                let mut sender = sender.clone();
                drop(session);
                let request = prepare_request(request, true, &self.ctx.sni);
                sender.send_request(request).await.map_err(http_failure)?
            }
            Some(UpstreamSender::H1(sender)) => {
                let request = prepare_request(request, false, &self.ctx.sni);
                sender.send_request(request).await.map_err(http_failure)?
            }
            None => unreachable!("a session was just established"),
        };
        Ok(response.map(|body| body.map_err(BodyError::from).boxed()))
    }

    async fn connect(&self) -> Result<UpstreamSender, UpstreamFailure> {
        let tcp = self.route.connect(self.mark, self.connect_timeout).await?;
        let tls = tokio::time::timeout(
            self.connect_timeout,
            self.upstream_tls.handshake(tcp, &self.ctx.sni),
        )
        .await
        .map_err(|_| {
            UpstreamFailure::Tls(format!(
                "handshake not completed within {:?}",
                self.connect_timeout
            ))
        })??;
        self.state.upstream_verified.store(true, Ordering::Relaxed);
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let id = self.ctx.id.clone();
        let io = TokioIo::new(tls);
        let handshake_failure = |e: hyper::Error| UpstreamFailure::Http(e.to_string());
        // The connection drivers end on their own once every sender is dropped.
        if h2 {
            let (sender, conn) = client_h2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(handshake_failure)?;
            tokio::spawn(async move {
                if let Err(error) = conn.await {
                    tracing::debug!(%id, %error, "upstream HTTP/2 connection ended");
                }
            });
            Ok(UpstreamSender::H2(sender))
        } else {
            let (sender, conn) = client_h1::handshake(io).await.map_err(handshake_failure)?;
            tokio::spawn(async move {
                if let Err(error) = conn.await {
                    tracing::debug!(%id, %error, "upstream HTTP/1.1 connection ended");
                }
            });
            Ok(UpstreamSender::H1(sender))
        }
    }
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus those HTTP/2
/// forbids outright (RFC 9113 §8.2.2).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    // `TE: trailers` is the one TE value that survives (and the only one HTTP/2 allows).
    if headers
        .get("te")
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove("te");
    }
}

/// Fits a client request to the upstream's HTTP version.
fn prepare_request(
    mut request: Request<ProxyBody>,
    upstream_h2: bool,
    sni: &str,
) -> Request<ProxyBody> {
    strip_hop_by_hop(request.headers_mut());
    // HTTP/2 clients give :authority (in the URI), HTTP/1.1 clients a Host header; the SNI
    // is the fallback when neither is present.
    let authority = request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            request
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| sni.to_string());
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_string());
    if upstream_h2 {
        if let Ok(uri) = Uri::builder()
            .scheme("https")
            .authority(authority.as_str())
            .path_and_query(path_and_query.as_str())
            .build()
        {
            *request.uri_mut() = uri;
        }
        request.headers_mut().remove(HOST);
        *request.version_mut() = Version::HTTP_2;
    } else {
        if let Ok(uri) = path_and_query.parse::<Uri>() {
            *request.uri_mut() = uri;
        }
        if !request.headers().contains_key(HOST) {
            if let Ok(host) = HeaderValue::from_str(&authority) {
                request.headers_mut().insert(HOST, host);
            }
        }
        *request.version_mut() = Version::HTTP_11;
    }
    request
}

fn prepare_response(
    mut response: Response<ProxyBody>,
    client_version: Version,
) -> Response<ProxyBody> {
    strip_hop_by_hop(response.headers_mut());
    *response.version_mut() = client_version;
    response
}

/// The 502 a client gets when its request could not be forwarded.
fn error_response(ctx: &ConnectionContext, failure: &UpstreamFailure) -> Response<ProxyBody> {
    let what = match failure {
        UpstreamFailure::Connect(_) => "could not connect to the real server",
        UpstreamFailure::Tls(_) => {
            "could not establish a verified TLS connection to the real server"
        }
        UpstreamFailure::Http(_) => "the exchange with the real server failed",
    };
    let text = format!(
        "tollgate: {what} {} at {}; the request was not forwarded.\nreason: {failure}\n",
        ctx.sni, ctx.original_dst
    );
    let body = Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("x-tollgate-error", HeaderValue::from_static(failure.kind()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;

    fn empty() -> ProxyBody {
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed()
    }

    #[test]
    fn h1_request_becomes_h2() {
        let request = Request::builder()
            .uri("/queries/v1/query-request?requestId=1")
            .header(HOST, "acct.snowflakecomputing.com")
            .header(CONNECTION, "keep-alive, x-private")
            .header("x-private", "1")
            .header("te", "gzip")
            .body(empty())
            .unwrap();
        let out = prepare_request(request, true, "fallback");
        assert_eq!(
            out.uri().to_string(),
            "https://acct.snowflakecomputing.com/queries/v1/query-request?requestId=1"
        );
        assert!(out.headers().get(HOST).is_none());
        assert!(out.headers().get("x-private").is_none());
        assert!(out.headers().get("te").is_none());
        assert_eq!(out.version(), Version::HTTP_2);
    }

    #[test]
    fn h2_request_becomes_h1() {
        let request = Request::builder()
            .uri("https://acct.snowflakecomputing.com/session/v1/login-request")
            .version(Version::HTTP_2)
            .header("te", "trailers")
            .body(empty())
            .unwrap();
        let out = prepare_request(request, false, "fallback");
        assert_eq!(out.uri().to_string(), "/session/v1/login-request");
        assert_eq!(out.headers()[HOST], "acct.snowflakecomputing.com");
        assert_eq!(out.headers()["te"], "trailers");
        assert_eq!(out.version(), Version::HTTP_11);
    }
}
