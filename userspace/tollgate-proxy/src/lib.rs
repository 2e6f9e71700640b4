//! Tollgate's data path: the tokio/rustls/hyper glue between redirected client connections
//! and the real servers.
//!
//! For every accepted connection the [`Proxy`] finds the original destination
//! (`SO_ORIGINAL_DST`, emulated by the eBPF hooks), takes the process identity recorded at
//! `connect()` through [`Redirects`], peeks the TLS ClientHello (parsed by the pure
//! `tollgate-wire` crate) and lets the [`SniGate`] decide: pass the bytes through unchanged,
//! block, or intercept — terminate TLS with a leaf minted by the [`CertificateAuthority`],
//! relay HTTP/1.1 or HTTP/2 through [`ExchangeHooks`] to a verified TLS connection to the
//! real server. Each connection ends in one [`ConnectionRecord`] written by a [`RecordSink`].
//!
//! Protocol layers plug in through [`ExchangeHooks`]: each exchange gets an [`ExchangeFilter`]
//! that is its typed context. The Snowflake layer is its own crate (`tollgate-snowflake`); this
//! crate names no Snowflake type.
//!
//! What it does not do: load or talk to eBPF (the binary supplies a [`Redirects`] backed by
//! the maps), or read configuration files ([`ProxyConfig`] is a plain struct).
//! It never disables upstream certificate verification and never logs payloads, tokens or
//! keys.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod ca;
pub mod config;
mod counting;
mod dispatch;
pub mod gate;
pub mod hooks;
pub mod identity;
mod intercept;
mod listener;
pub mod orig_dst;
mod passthrough;
pub mod peek;
mod probe;
pub mod record;
pub mod server;
mod sockopt;
pub mod upstream;

pub use ca::{CaError, CertificateAuthority, LeafResolver};
pub use config::ProxyConfig;
pub use gate::{
    DestinationCertificate, GateAction, GateError, GateReason, SniGate, SniPattern,
    SnowflakeAddresses,
};
pub use hooks::{
    BodyError, ConnectionContext, ExchangeFilter, ExchangeHooks, HookFuture, PassThroughHooks,
    ProxyBody, RequestAction,
};
pub use identity::{KernelRedirectsOnly, ProcFs, ProcessIdentity, Redirects};
pub use record::{
    CloseReason, ConnectionRecord, Decision, ParseCloseReasonError, RecordSink, RecordSinkError,
};
pub use server::{BoundProxy, Proxy, ProxyError, ProxyStats};
pub use upstream::{Route, TunnelKind, UpstreamFailure, UpstreamTls, UpstreamTlsError};
