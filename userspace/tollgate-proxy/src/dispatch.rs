//! What a redirected connection speaks, and where it really goes: the first flight is sniffed
//! and every protocol meets the gate.
//!
//! The redirect sends every TCP connection of the agents here, not only port 443, because a
//! tunnel on another port (an HTTP `CONNECT` proxy on 3128, SOCKS5 on 1080) is a path to
//! Snowflake like any other. So:
//! - **TLS**: the ClientHello goes to the gate (name, destination, certificate).
//! - **HTTP `CONNECT`, SOCKS5, SOCKS4/4a**: Tollgate answers the tunnel handshake itself, then
//!   treats the tunnelled bytes as a connection to the tunnel's target: the same decision,
//!   with the upstream reached *through the client's proxy* ([`Route::Tunnel`]). A storage host
//!   as the target is refused at once; a tunnel inside a tunnel is refused.
//! - **Plain HTTP**: a request naming a Snowflake or storage host (a forward-proxy request for
//!   `https://acct.snowflakecomputing.com/...`, or `Host:`) or sent to a Snowflake address is
//!   blocked; the rest follows `other_protocols`.
//! - **Anything else**, and clients that stay silent (server-first protocols): blocked at a
//!   Snowflake address or when the destination presents a Snowflake certificate; otherwise
//!   `other_protocols`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tollgate_wire::tunnel::{
    self, parse_http_connect, parse_http_request_head, parse_socks4_request, socks4_reply,
    socks5_reply, HttpHeadError, Protocol, Socks5Event, Socks5Reply, Socks5Server, SocksError,
    TunnelTarget,
};

use crate::gate::{GateAction, GateReason};
use crate::hooks::ConnectionContext;
use crate::identity::ProcessIdentity;
use crate::intercept::{self, InterceptEnv};
use crate::passthrough;
use crate::peek::{peek_client_hello_after, PeekError, PrefixedIo};
use crate::record::{CloseReason, Decision};
use crate::server::{ConnState, Shared};
use crate::upstream::{Route, TunnelKind};

/// One connection on its way through the gate.
pub(crate) struct Conn<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) id: &'a str,
    pub(crate) client: SocketAddr,
    pub(crate) original_dst: SocketAddr,
    pub(crate) process: Option<ProcessIdentity>,
    pub(crate) state: &'a Arc<ConnState>,
    pub(crate) drain: watch::Receiver<bool>,
}

/// How reading a client message ended without one.
enum ReadEnd {
    /// Nothing (more) arrived in time.
    Silent,
    /// The client closed after `read` bytes.
    Eof { read: usize },
    /// The bytes are not the message (why).
    Malformed(String),
    /// Reading failed.
    Io(std::io::Error),
}

/// Reads into `buf` until `parse` answers, or `deadline`.
async fn read_until<T>(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: Instant,
    mut parse: impl FnMut(&[u8]) -> Option<Result<T, String>>,
) -> Result<T, ReadEnd> {
    loop {
        if let Some(answer) = parse(buf) {
            return answer.map_err(ReadEnd::Malformed);
        }
        buf.reserve(1024);
        let read = buf.len();
        match tokio::time::timeout_at(deadline.into(), stream.read_buf(buf)).await {
            Err(_) => return Err(ReadEnd::Silent),
            Ok(Ok(0)) => return Err(ReadEnd::Eof { read }),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ReadEnd::Io(e)),
        }
    }
}

fn sniffed(b: &[u8]) -> Option<Result<Protocol, String>> {
    tunnel::sniff(b).ok().map(Ok)
}

fn head<T>(r: Result<T, HttpHeadError>) -> Option<Result<T, String>> {
    match r {
        Err(HttpHeadError::Incomplete { .. }) => None,
        other => Some(other.map_err(|e| e.to_string())),
    }
}

fn socks<T>(r: Result<T, SocksError>) -> Option<Result<T, String>> {
    match r {
        Err(SocksError::Incomplete { .. }) => None,
        other => Some(other.map_err(|e| e.to_string())),
    }
}

impl Conn<'_> {
    fn config(&self) -> &crate::config::ProxyConfig {
        &self.shared.config
    }

    fn set(&self, protocol: &'static str, decision: Decision) {
        let mut draft = self.state.draft();
        draft.protocol = Some(protocol);
        draft.decision = decision;
    }

    /// Serves the connection from its first byte; returns the close reason.
    pub(crate) async fn serve(self, mut stream: TcpStream) -> CloseReason {
        let mut buf = BytesMut::with_capacity(1024);
        let config = self.config();
        // Server-first protocols (SMTP, MySQL, SSH banners) send nothing until the server
        // speaks: after `server_first_after` of silence they are judged by the destination.
        let first_wait = match config.other_protocols {
            GateAction::Passthrough => config.server_first_after.min(config.peek_timeout),
            _ => config.peek_timeout,
        };
        let deadline = Instant::now() + first_wait;
        let route = Route::Direct(self.original_dst);
        match read_until(&mut stream, &mut buf, deadline, sniffed).await {
            Ok(protocol) => self.dispatch(protocol, buf, stream, route, 0).await,
            Err(ReadEnd::Silent) => self.server_first(buf, stream, route).await,
            Err(ReadEnd::Eof { read: 0 }) => CloseReason::Eof,
            Err(ReadEnd::Eof { read }) => CloseReason::ClientClosedEarly { read },
            Err(ReadEnd::Malformed(why)) => CloseReason::Malformed(why),
            Err(ReadEnd::Io(e)) => CloseReason::ClientIo(e.to_string()),
        }
    }

    async fn dispatch(
        self,
        protocol: Protocol,
        buf: BytesMut,
        stream: TcpStream,
        route: Route,
        depth: u8,
    ) -> CloseReason {
        match protocol {
            Protocol::Tls => self.tls(buf, stream, route).await,
            Protocol::HttpConnect | Protocol::Socks5 | Protocol::Socks4 if depth > 0 => {
                self.set("tunnel_in_tunnel", Decision::Block);
                CloseReason::BlockedByPolicy(format!(
                    "a tunnel inside the {} tunnel (not supported)",
                    route.target().map(ToString::to_string).unwrap_or_default()
                ))
            }
            Protocol::HttpConnect => self.http_connect(buf, stream).await,
            Protocol::Socks5 => self.socks5(buf, stream).await,
            Protocol::Socks4 => self.socks4(buf, stream).await,
            Protocol::Http => self.plain_http(buf, stream, route).await,
            _ => self.other("other", buf, stream, route).await,
        }
    }

    /// Whether `route` ends at a Snowflake address (or, through a tunnel, names a Snowflake
    /// host).
    fn snowflake_destination(&self, route: &Route) -> bool {
        let book = |ip| {
            self.shared
                .snowflake_addresses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .lookup(ip, Instant::now())
                .is_some()
        };
        match route.target() {
            None => book(route.first_hop().ip()),
            Some(TunnelTarget {
                host: tunnel::Host::Ip(ip),
                ..
            }) => book(*ip),
            Some(TunnelTarget {
                host: tunnel::Host::Name(name),
                ..
            }) => self.config().gate.is_guarded(name),
        }
    }

    async fn tls(self, buf: BytesMut, stream: TcpStream, route: Route) -> CloseReason {
        let config = self.config();
        let peeked = peek_client_hello_after(
            buf,
            stream,
            config.peek_timeout,
            config.max_client_hello_len,
        )
        .await;
        let (hello, io) = match peeked {
            Ok(peeked) => peeked,
            Err(PeekError::Timeout(_)) => return CloseReason::PeekTimeout,
            Err(PeekError::Eof { read: 0 }) => return CloseReason::Eof,
            Err(PeekError::NotTls) => return CloseReason::NotTls(None),
            Err(e @ PeekError::Eof { .. }) => {
                return CloseReason::MalformedClientHello(e.to_string())
            }
            Err(PeekError::Malformed(reason)) => {
                return CloseReason::MalformedClientHello(reason.to_string())
            }
            Err(e) => return CloseReason::ClientIo(e.to_string()),
        };
        let snowflake_destination = self.snowflake_destination(&route);
        let (action, reason) = self
            .shared
            .gate(hello.sni.as_deref(), &route, snowflake_destination)
            .await;
        {
            let mut draft = self.state.draft();
            draft.protocol.get_or_insert("tls");
            draft.sni = hello.sni.clone();
            draft.alpn = hello
                .alpn
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            draft.decision = match action {
                GateAction::Intercept => Decision::Intercept,
                GateAction::Passthrough => Decision::Passthrough,
                GateAction::Block => Decision::Block,
            };
        }
        match (action, hello.sni) {
            (GateAction::Passthrough, _) => self.passthrough(io, &route).await,
            (GateAction::Intercept, Some(sni)) => self.intercept(io, route, sni).await,
            (_, sni) => {
                tracing::info!(id = %self.id, client = %self.client, original_dst = %self.original_dst, ?sni, %reason, "connection blocked");
                CloseReason::BlockedByPolicy(reason.to_string())
            }
        }
    }

    async fn passthrough(&self, io: PrefixedIo<TcpStream>, route: &Route) -> CloseReason {
        let config = self.config();
        passthrough::run(
            io,
            route,
            config.upstream_mark,
            config.upstream_connect_timeout,
            self.state.counters.clone(),
        )
        .await
    }

    async fn intercept(self, io: PrefixedIo<TcpStream>, route: Route, sni: String) -> CloseReason {
        let shared = self.shared;
        let config = &shared.config;
        let ctx = ConnectionContext {
            id: self.id.to_string(),
            client: self.client,
            original_dst: self.original_dst,
            sni,
            process: self.process.map(Arc::new),
            client_version: http::Version::HTTP_11,
        };
        if let Err(why) = shared.hooks.connection_opened(&ctx).await {
            tracing::error!(id = %self.id, client = %self.client, error = %why, "intercepted connection closed: it cannot be audited");
            return CloseReason::AuditUnavailable(why.to_string());
        }
        let direct = matches!(route, Route::Direct(_));
        let env = InterceptEnv {
            acceptor: shared.acceptor.clone(),
            handshake_timeout: config.client_handshake_timeout,
            upstream_tls: shared.upstream.clone(),
            route,
            mark: config.upstream_mark,
            connect_timeout: config.upstream_connect_timeout,
            hooks: shared.hooks.clone(),
        };
        let learn = (ctx.sni.clone(), self.original_dst);
        let reason = intercept::run(io, ctx, env, self.state.clone(), self.drain).await;
        if direct && self.state.upstream_verified.load(Ordering::Relaxed) {
            // The real Snowflake server answered there: other names to this address are
            // now fronting.
            shared.learn_snowflake(&learn.0, learn.1);
        }
        reason
    }

    /// After a tunnel handshake: the tunnelled bytes, judged as a connection to the target.
    async fn tunnelled(
        self,
        kind: TunnelKind,
        target: TunnelTarget,
        mut buf: BytesMut,
        mut stream: TcpStream,
    ) -> CloseReason {
        self.state.draft().tunnel = Some(format!("{} {target}", kind.name()));
        let route = Route::Tunnel {
            via: self.original_dst,
            kind,
            target,
        };
        let deadline = Instant::now() + self.config().peek_timeout;
        match read_until(&mut stream, &mut buf, deadline, sniffed).await {
            Ok(protocol) => Box::pin(self.dispatch(protocol, buf, stream, route, 1)).await,
            Err(ReadEnd::Silent) => self.server_first(buf, stream, route).await,
            Err(ReadEnd::Eof { .. }) => CloseReason::Eof,
            Err(ReadEnd::Malformed(why)) => CloseReason::Malformed(why),
            Err(ReadEnd::Io(e)) => CloseReason::ClientIo(e.to_string()),
        }
    }

    /// A tunnel to a storage host is refused before it opens; everything else is judged by
    /// what goes through it.
    fn refuse_tunnel(&self, target: &TunnelTarget) -> Option<GateReason> {
        match &target.host {
            tunnel::Host::Name(name) => match self.config().gate.classify(name) {
                Some((_, crate::gate::NameClass::Storage)) => Some(GateReason::StorageName),
                _ => None,
            },
            tunnel::Host::Ip(_) => None,
        }
    }

    /// Answers a tunnel request: `granted` when its target may be tunnelled to, else the
    /// `refused` reply, the connection recorded as blocked, and the close reason as `Err`.
    async fn answer_tunnel(
        &self,
        kind: TunnelKind,
        target: &TunnelTarget,
        stream: &mut TcpStream,
        granted: &[u8],
        refused: impl FnOnce(&GateReason) -> Vec<u8>,
    ) -> Result<(), CloseReason> {
        if let Some(reason) = self.refuse_tunnel(target) {
            self.set(kind.name(), Decision::Block);
            self.state.draft().tunnel = Some(format!("{} {target}", kind.name()));
            let _ = stream.write_all(&refused(&reason)).await;
            return Err(CloseReason::BlockedByPolicy(reason.to_string()));
        }
        stream
            .write_all(granted)
            .await
            .map_err(|e| CloseReason::ClientIo(e.to_string()))
    }

    async fn http_connect(self, mut buf: BytesMut, mut stream: TcpStream) -> CloseReason {
        self.set("http_connect", Decision::Reject);
        let deadline = Instant::now() + self.config().peek_timeout;
        let req = match read_until(&mut stream, &mut buf, deadline, |b| {
            head(parse_http_connect(b))
        })
        .await
        {
            Ok(req) => req,
            Err(ReadEnd::Malformed(why)) => {
                let _ = stream
                    .write_all(&tunnel::http_forbidden("malformed CONNECT"))
                    .await;
                return CloseReason::Malformed(format!("CONNECT: {why}"));
            }
            Err(_) => return CloseReason::PeekTimeout,
        };
        let kind = TunnelKind::HttpConnect;
        if let Err(end) = self
            .answer_tunnel(
                kind,
                &req.target,
                &mut stream,
                tunnel::http_connect_established(),
                |r| tunnel::http_forbidden(&format!("Tollgate refused this tunnel: {r}")),
            )
            .await
        {
            return end;
        }
        buf.advance(req.consumed);
        self.tunnelled(TunnelKind::HttpConnect, req.target, buf, stream)
            .await
    }

    async fn socks5(self, mut buf: BytesMut, mut stream: TcpStream) -> CloseReason {
        self.set("socks5", Decision::Reject);
        let deadline = Instant::now() + self.config().peek_timeout;
        let mut handshake = Socks5Server::new();
        loop {
            let event = read_until(&mut stream, &mut buf, deadline, |b| {
                socks(handshake.advance(b))
            })
            .await;
            match event {
                Ok(Socks5Event::MethodSelected { reply, consumed }) => {
                    if let Err(e) = stream.write_all(&reply).await {
                        return CloseReason::ClientIo(e.to_string());
                    }
                    buf.advance(consumed);
                }
                Ok(Socks5Event::NoAcceptableMethod { reply }) => {
                    let _ = stream.write_all(&reply).await;
                    return CloseReason::Socks5("no acceptable authentication method".into());
                }
                Ok(Socks5Event::Connect(req)) => {
                    let granted = socks5_reply(Socks5Reply::Succeeded, None);
                    if let Err(end) = self
                        .answer_tunnel(
                            TunnelKind::Socks5,
                            &req.target,
                            &mut stream,
                            &granted,
                            |_| socks5_reply(Socks5Reply::NotAllowed, None),
                        )
                        .await
                    {
                        return end;
                    }
                    buf.advance(req.consumed);
                    return self
                        .tunnelled(TunnelKind::Socks5, req.target, buf, stream)
                        .await;
                }
                Ok(_) => return CloseReason::Socks5("unexpected handshake step".into()),
                Err(ReadEnd::Malformed(why)) => {
                    if handshake.awaits_request() || why.contains("command") {
                        let _ = stream
                            .write_all(&socks5_reply(Socks5Reply::CommandNotSupported, None))
                            .await;
                    }
                    return CloseReason::Malformed(format!("SOCKS5: {why}"));
                }
                Err(_) => return CloseReason::PeekTimeout,
            }
        }
    }

    async fn socks4(self, mut buf: BytesMut, mut stream: TcpStream) -> CloseReason {
        self.set("socks4", Decision::Reject);
        let deadline = Instant::now() + self.config().peek_timeout;
        let req = match read_until(&mut stream, &mut buf, deadline, |b| {
            socks(parse_socks4_request(b))
        })
        .await
        {
            Ok(req) => req,
            Err(ReadEnd::Malformed(why)) => {
                let _ = stream.write_all(&socks4_reply(false)).await;
                return CloseReason::Malformed(format!("SOCKS4: {why}"));
            }
            Err(_) => return CloseReason::PeekTimeout,
        };
        if let Err(end) = self
            .answer_tunnel(
                TunnelKind::Socks4,
                &req.target,
                &mut stream,
                &socks4_reply(true),
                |_| socks4_reply(false).to_vec(),
            )
            .await
        {
            return end;
        }
        buf.advance(req.consumed);
        self.tunnelled(TunnelKind::Socks4, req.target, buf, stream)
            .await
    }

    async fn plain_http(
        self,
        mut buf: BytesMut,
        mut stream: TcpStream,
        route: Route,
    ) -> CloseReason {
        self.set("http", Decision::Reject);
        let deadline = Instant::now() + self.config().peek_timeout;
        let head = match read_until(&mut stream, &mut buf, deadline, |b| {
            head(parse_http_request_head(b))
        })
        .await
        {
            Ok(h) => h,
            Err(ReadEnd::Malformed(why)) => {
                self.set("http", Decision::Block);
                return CloseReason::NotTls(Some(format!("malformed HTTP ({why})")));
            }
            Err(_) => return CloseReason::PeekTimeout,
        };
        let named = match &head.host {
            Some(tunnel::Host::Name(name)) => self.config().gate.is_guarded(name),
            _ => false,
        };
        if named || self.snowflake_destination(&route) {
            self.set("http", Decision::Block);
            return CloseReason::BlockedByPolicy(
                "plain HTTP to a Snowflake or storage host".into(),
            );
        }
        self.other_protocol("http", buf, stream, route).await
    }

    async fn other(
        self,
        protocol: &'static str,
        buf: BytesMut,
        stream: TcpStream,
        route: Route,
    ) -> CloseReason {
        self.set(protocol, Decision::Reject);
        if self.snowflake_destination(&route) {
            self.set(protocol, Decision::Block);
            return CloseReason::BlockedByPolicy(format!(
                "{protocol} traffic to {}",
                GateReason::SnowflakeAddress
            ));
        }
        self.other_protocol(protocol, buf, stream, route).await
    }

    /// `other_protocols` for a connection that is not TLS and not for Snowflake.
    async fn other_protocol(
        self,
        protocol: &'static str,
        buf: BytesMut,
        stream: TcpStream,
        route: Route,
    ) -> CloseReason {
        match self.config().other_protocols {
            GateAction::Passthrough => {
                self.set(protocol, Decision::Passthrough);
                self.passthrough(PrefixedIo::new(buf.freeze(), stream), &route)
                    .await
            }
            _ => {
                self.set(protocol, Decision::Block);
                CloseReason::NotTls(Some(format!(
                    "{protocol} blocked (intercept.other_protocols)"
                )))
            }
        }
    }

    /// A client that sent nothing: a server-first protocol, or one waiting to see what the
    /// gate does. Passed through (when `other_protocols` allows) unless the destination is
    /// Snowflake's or presents a Snowflake or storage certificate.
    async fn server_first(self, buf: BytesMut, stream: TcpStream, route: Route) -> CloseReason {
        if self.config().other_protocols != GateAction::Passthrough {
            return CloseReason::PeekTimeout;
        }
        self.set("server_first", Decision::Reject);
        if self.snowflake_destination(&route) {
            self.set("server_first", Decision::Block);
            return CloseReason::BlockedByPolicy(format!(
                "a silent client to {}",
                GateReason::SnowflakeAddress
            ));
        }
        if let Ok(cert) = self.shared.prober.certificate(&route, None).await {
            if let Some(name) = cert
                .names
                .iter()
                .find(|n| self.config().gate.certificate_is_guarded(n))
            {
                self.set("server_first", Decision::Block);
                return CloseReason::BlockedByPolicy(format!(
                    "a silent client to a destination with a certificate for {name}"
                ));
            }
        }
        self.set("server_first", Decision::Passthrough);
        self.passthrough(PrefixedIo::new(buf.freeze(), stream), &route)
            .await
    }
}
