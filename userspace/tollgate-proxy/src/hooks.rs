//! The seam where protocol layers plug into intercepted HTTP: [`ExchangeHooks`] hears of
//! connections and makes an [`ExchangeFilter`] for every request — the exchange's typed context,
//! called for its request, its response, or the upstream's failure. The defaults pass
//! everything through unchanged.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::combinators::BoxBody;

use crate::identity::ProcessIdentity;

/// Error type of bodies flowing through the proxy.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
/// A request or response body as hooks see it: streaming, replaceable.
pub type ProxyBody = BoxBody<Bytes, BodyError>;
/// The future a hook returns.
pub type HookFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Facts about an intercepted connection, shared by all its exchanges.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionContext {
    /// The connection record id.
    pub id: String,
    /// The client's address.
    pub client: SocketAddr,
    /// Where the client meant to connect.
    pub original_dst: SocketAddr,
    /// The SNI, also the name verified on the upstream certificate.
    pub sni: String,
    /// The process behind the connection, when known.
    pub process: Option<Arc<ProcessIdentity>>,
    /// HTTP version spoken with the client.
    pub client_version: Version,
}

impl ConnectionContext {
    /// The context of connection `id` from `client` to `original_dst` under `sni` (HTTP/1.1,
    /// no process known); layers' tests drive exchanges with it.
    pub fn new(
        id: impl Into<String>,
        client: SocketAddr,
        original_dst: SocketAddr,
        sni: impl Into<String>,
    ) -> Self {
        ConnectionContext {
            id: id.into(),
            client,
            original_dst,
            sni: sni.into(),
            process: None,
            client_version: Version::HTTP_11,
        }
    }

    /// The same context with `process` behind it.
    pub fn with_process(mut self, process: ProcessIdentity) -> Self {
        self.process = Some(Arc::new(process));
        self
    }
}

/// What to do with a request after [`ExchangeFilter::request_filter`].
#[derive(Debug)]
pub enum RequestAction {
    /// Send this (possibly modified) request upstream.
    Forward(Request<ProxyBody>),
    /// Answer the client with this response; nothing is sent upstream.
    Respond(Response<ProxyBody>),
}

/// The phases of one request/response exchange, as a layer sees them: the object *is* the
/// exchange's typed context (whatever the layer keeps between the request and the response
/// lives in its fields). Made by [`ExchangeHooks::exchange`] for every request.
pub trait ExchangeFilter: Send {
    /// Inspects or rewrites the request before it goes upstream, or answers it directly.
    fn request_filter<'a>(
        &'a mut self,
        conn: &'a ConnectionContext,
        request: Request<ProxyBody>,
    ) -> HookFuture<'a, RequestAction>;

    /// Inspects or rewrites the upstream's response before it goes to the client.
    fn response_filter<'a>(
        &'a mut self,
        conn: &'a ConnectionContext,
        response: Response<ProxyBody>,
    ) -> HookFuture<'a, Response<ProxyBody>>;

    /// The forwarded request never got a response: the upstream could not be reached, failed
    /// verification or broke the exchange (`failure` says which; the client gets a 502).
    fn upstream_failed(
        &mut self,
        conn: &ConnectionContext,
        failure: &crate::upstream::UpstreamFailure,
    ) {
        let _ = (conn, failure);
    }
}

/// A layer on intercepted HTTP (named after pingora's phases): it hears of connections and
/// makes one [`ExchangeFilter`] per request. Called on the connection's task: a slow hook
/// delays that connection only.
pub trait ExchangeHooks: Send + Sync + 'static {
    /// The filter of exchange `index` (0-based) on `conn`.
    fn exchange(self: Arc<Self>, conn: &ConnectionContext, index: u64) -> Box<dyn ExchangeFilter> {
        let _ = (conn, index);
        Box::new(PassThrough)
    }

    /// Called when the gate decided to intercept a connection, before its TLS handshake. An
    /// error closes the connection (e.g. the audit spool cannot record it).
    fn connection_opened<'a>(
        &'a self,
        conn: &'a ConnectionContext,
    ) -> HookFuture<'a, Result<(), String>> {
        let _ = conn;
        Box::pin(async { Ok(()) })
    }

    /// Called with the record of every connection when it closes.
    fn connection_closed(&self, record: &crate::record::ConnectionRecord) {
        let _ = record;
    }
}

/// Hooks that change nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThroughHooks;

impl ExchangeHooks for PassThroughHooks {}

/// The filter that changes nothing.
struct PassThrough;

impl ExchangeFilter for PassThrough {
    fn request_filter<'a>(
        &'a mut self,
        _conn: &'a ConnectionContext,
        request: Request<ProxyBody>,
    ) -> HookFuture<'a, RequestAction> {
        Box::pin(async move { RequestAction::Forward(request) })
    }

    fn response_filter<'a>(
        &'a mut self,
        _conn: &'a ConnectionContext,
        response: Response<ProxyBody>,
    ) -> HookFuture<'a, Response<ProxyBody>> {
        Box::pin(async move { response })
    }
}
