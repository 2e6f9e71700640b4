//! The seam where the Snowflake layer plugs into intercepted HTTP: [`ExchangeHooks`], called
//! for every request and response with the connection's context. The default implementations
//! pass everything through unchanged.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, Uri, Version};
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

/// One request/response exchange on an intercepted connection.
#[derive(Debug)]
#[non_exhaustive]
pub struct Exchange {
    /// 0-based index of the request on its connection.
    pub index: u64,
    /// Request method as received.
    pub method: Method,
    /// Request URI as received.
    pub uri: Uri,
    /// Per-exchange state: a hook may stash typed values in `request_filter` and read them
    /// back in `response_filter`.
    pub state: http::Extensions,
}

impl Exchange {
    pub(crate) fn new(index: u64, method: Method, uri: Uri) -> Self {
        Exchange {
            index,
            method,
            uri,
            state: http::Extensions::new(),
        }
    }
}

/// What to do with a request after [`ExchangeHooks::request_filter`].
#[derive(Debug)]
pub enum RequestAction {
    /// Send this (possibly modified) request upstream.
    Forward(Request<ProxyBody>),
    /// Answer the client with this response; nothing is sent upstream.
    Respond(Response<ProxyBody>),
}

/// Per-request hooks on intercepted HTTP (named after pingora's phases). Called on the
/// connection's task: a slow hook delays that connection only.
pub trait ExchangeHooks: Send + Sync + 'static {
    /// Inspects or rewrites a request before it goes upstream, or answers it directly.
    fn request_filter<'a>(
        &'a self,
        conn: &'a ConnectionContext,
        exchange: &'a mut Exchange,
        request: Request<ProxyBody>,
    ) -> HookFuture<'a, RequestAction> {
        let _ = (conn, exchange);
        Box::pin(async move { RequestAction::Forward(request) })
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

    /// Inspects or rewrites an upstream response before it goes to the client.
    fn response_filter<'a>(
        &'a self,
        conn: &'a ConnectionContext,
        exchange: &'a mut Exchange,
        response: Response<ProxyBody>,
    ) -> HookFuture<'a, Response<ProxyBody>> {
        let _ = (conn, exchange);
        Box::pin(async move { response })
    }
}

/// Hooks that change nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThroughHooks;

impl ExchangeHooks for PassThroughHooks {}
