//! The layer itself: [`SnowflakeHooks`] plugs into the proxy's intercepted HTTP, and each
//! exchange ([`SnowflakeExchange`]) walks the phases in order — classify, read the body,
//! identify, decide, audit gate, hold, upstream request filter; then, on the response, observe,
//! rewrite and log. Every phase is a function of its own module; this module only sequences
//! them and carries the typed context ([`ExchangeCtx`]) from the request to the response.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tollgate_audit::Event;
use tollgate_identity::Identity;
use tollgate_policy::{Policy, StatementCache};
use tollgate_proxy::record::ConnectionRecord;
use tollgate_proxy::{
    ConnectionContext, ExchangeFilter, ExchangeHooks, HookFuture, ProxyBody, RequestAction,
    UpstreamFailure,
};
use tollgate_wire::snowflake::{
    decode_body, Endpoint, LoginRequest, QueryParams, QueryRequest, StatementRequest, TokenRequest,
};
use tracing::{info, warn};

use crate::audit_gate::{self, Auditor, Pending};
use crate::body::{self, read_request};
use crate::chunks::{self, ChunkDone, ChunkStore};
use crate::classify::{classify, Route};
use crate::config::{SnowflakeConfig, UnknownEndpoints};
use crate::context::{
    ExchangeCtx, Expect, LoginOutcome, ResultOutcome, ResultStatus, StatementCtx,
};
use crate::decide::{decide, Allowed, Decided, Statement, Verdict};
use crate::hold::{hold, Held};
use crate::identify::{
    authority, bearer_token, from_login, policy_identity, presented_session, session_of,
};
use crate::logging::{self, Record};
use crate::observe;
use crate::plan::Masking;
use crate::pool::{self, BlockingPool};
use crate::reply::{full, text_reply, Api, Refusal, RefusalKind, Withheld, WithheldReason};
use crate::rewrite::{self, process_result, ResultBody, ResultJob};
use crate::session::{Session, SessionTable};
use crate::sql_api::{self, AllowedHandles, SqlApiIdentity};
use crate::storage::StorageClient;

/// Live counters of the layer (for the admin API and `tollgate status`).
#[derive(Debug, Default)]
pub struct LayerStats {
    statements: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
    held: AtomicU64,
    refused_requests: AtomicU64,
    results_withheld: AtomicU64,
    chunks_served: AtomicU64,
    chunks_failed: AtomicU64,
}

/// A snapshot of [`LayerStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Statements decided.
    pub statements: u64,
    /// Statements allowed (masked ones included).
    pub allowed: u64,
    /// Statements denied.
    pub denied: u64,
    /// Statements held for approval.
    pub held: u64,
    /// Other requests Tollgate answered itself (paths, endpoints, handles, audit failures).
    pub refused_requests: u64,
    /// Results withheld.
    pub results_withheld: u64,
    /// Result chunks served.
    pub chunks_served: u64,
    /// Result chunks that failed.
    pub chunks_failed: u64,
    /// Live Snowflake sessions.
    pub sessions: u64,
    /// Outstanding chunk tickets.
    pub chunk_tickets: u64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The Snowflake layer's hooks. One per proxy; exchanges share it.
pub struct SnowflakeHooks {
    config: SnowflakeConfig,
    policy: RwLock<Arc<Policy>>,
    sessions: SessionTable,
    chunks: Arc<ChunkStore>,
    storage: Option<StorageClient>,
    masking: Masking,
    audit: Option<Auditor>,
    sql_handles: AllowedHandles,
    pool: BlockingPool,
    statements: StatementCache,
    stats: LayerStats,
}

impl std::fmt::Debug for SnowflakeHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnowflakeHooks")
            .field("config", &self.config)
            .field("sessions", &self.sessions)
            .finish_non_exhaustive()
    }
}

impl SnowflakeHooks {
    /// Hooks enforcing `policy`.
    pub fn new(config: SnowflakeConfig, policy: Arc<Policy>) -> Self {
        let pool = BlockingPool::new(config.rewrite_threads);
        let statements = StatementCache::new(config.statement_cache);
        SnowflakeHooks {
            config,
            policy: RwLock::new(policy),
            sessions: SessionTable::default(),
            chunks: Arc::default(),
            storage: None,
            masking: Masking::standard(),
            audit: None,
            sql_handles: AllowedHandles::default(),
            pool,
            statements,
            stats: LayerStats::default(),
        }
    }

    /// Records every login, statement, decision, result, chunk and session end in the audit
    /// spool; statements and results wait for their events to be durable and are refused when
    /// the spool cannot be written.
    pub fn with_audit(mut self, audit: Auditor) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Serves result chunks through Tollgate, fetching them from storage with `storage`.
    /// Without it, chunked results are withheld (their storage URLs are never handed out).
    pub fn with_storage(mut self, storage: StorageClient) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Sets the tokenisation key and detectors used for masking.
    pub fn with_masking(mut self, masking: Masking) -> Self {
        self.masking = masking;
        self
    }

    /// Outstanding chunk tickets.
    pub fn chunk_tickets(&self) -> &ChunkStore {
        &self.chunks
    }

    /// Replaces the policy (reload); statements already decided are not affected.
    pub fn set_policy(&self, policy: Arc<Policy>) {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = policy;
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The live sessions.
    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// The auditor, when the layer records to a spool.
    pub fn auditor(&self) -> Option<&Auditor> {
        self.audit.as_ref()
    }

    /// The live counters.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            statements: get(&s.statements),
            allowed: get(&s.allowed),
            denied: get(&s.denied),
            held: get(&s.held),
            refused_requests: get(&s.refused_requests),
            results_withheld: get(&s.results_withheld),
            chunks_served: get(&s.chunks_served),
            chunks_failed: get(&s.chunks_failed),
            sessions: self.sessions.len() as u64,
            chunk_tickets: self.chunks.len() as u64,
        }
    }

    /// Records without waiting.
    fn record_detached(&self, conn: &ConnectionContext, record: Record<'_>) {
        if let Some(audit) = &self.audit {
            audit.record_all_detached(logging::events(conn, record));
        }
    }

    /// The events of `record`, when the layer records at all.
    fn events_of(&self, conn: &ConnectionContext, record: Record<'_>) -> Vec<Event> {
        if self.audit.is_none() {
            return Vec::new();
        }
        logging::events(conn, record)
    }

    /// Writes `events` before the step proceeds; the answer waits for their durability.
    async fn gate_written(&self, events: Vec<Event>, api: Api) -> Result<Pending, Refusal> {
        audit_gate::gate_written(self.audit.as_ref(), events, api).await
    }

    /// Waits until what `pending` wrote is durable, before an answer is released.
    async fn release(&self, pending: Pending, api: Api) -> Result<(), Refusal> {
        audit_gate::release(self.audit.as_ref(), pending, api).await
    }
}

impl ExchangeHooks for SnowflakeHooks {
    fn exchange(
        self: Arc<Self>,
        _conn: &ConnectionContext,
        _index: u64,
    ) -> Box<dyn ExchangeFilter> {
        Box::new(SnowflakeExchange {
            layer: self,
            ctx: ExchangeCtx::default(),
        })
    }

    fn connection_opened<'a>(
        &'a self,
        conn: &'a ConnectionContext,
    ) -> HookFuture<'a, Result<(), String>> {
        Box::pin(async move {
            // Not gating: the login and every statement on the connection are, and refusing
            // them gives the agent a clear error instead of a dropped connection.
            self.record_detached(conn, Record::ConnectionOpened);
            Ok(())
        })
    }

    fn connection_closed(&self, record: &ConnectionRecord) {
        if let Some(audit) = &self.audit {
            // The record holds what the context held; the events need only the record.
            audit.record_all_detached(logging::connection_closed_events(record));
        }
    }
}

/// One exchange: the layer and the exchange's typed context.
pub struct SnowflakeExchange {
    layer: Arc<SnowflakeHooks>,
    ctx: ExchangeCtx,
}

impl ExchangeFilter for SnowflakeExchange {
    fn request_filter<'a>(
        &'a mut self,
        conn: &'a ConnectionContext,
        request: Request<ProxyBody>,
    ) -> HookFuture<'a, RequestAction> {
        Box::pin(self.on_request(conn, request))
    }

    fn response_filter<'a>(
        &'a mut self,
        conn: &'a ConnectionContext,
        response: Response<ProxyBody>,
    ) -> HookFuture<'a, Response<ProxyBody>> {
        Box::pin(self.on_response(conn, response))
    }

    fn upstream_failed(&mut self, conn: &ConnectionContext, failure: &UpstreamFailure) {
        if let Expect::Statement(st) = std::mem::take(&mut self.ctx.expect) {
            let mut outcome = ResultOutcome::new(ResultStatus::UpstreamFailed);
            outcome.error_code = "502".into();
            outcome.reason = format!("the request could not be forwarded: {failure}");
            self.layer.record_detached(
                conn,
                Record::Result {
                    session: st.session.as_deref(),
                    rule_id: st.plan.as_ref().map(|p| p.rule_id.as_str()),
                    statement: st.statement.as_deref(),
                    outcome: &outcome,
                    duration_us: self.elapsed_us(),
                },
            );
        }
    }
}

impl SnowflakeExchange {
    fn elapsed_us(&self) -> u64 {
        u64::try_from(self.ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Answers a request Tollgate will not forward, recording the attempt (an `error` event).
    fn refuse(
        &self,
        conn: &ConnectionContext,
        session: Option<&Session>,
        endpoint: &str,
        refusal: Refusal,
    ) -> RequestAction {
        warn!(conn = %conn.id, endpoint, kind = refusal.kind.name(), side = refusal.kind.side().name(), "request refused: {}", refusal.message);
        bump(&self.layer.stats.refused_requests);
        self.layer.record_detached(
            conn,
            Record::Refused {
                session,
                endpoint,
                refusal: &refusal,
            },
        );
        RequestAction::Respond(refusal.to_response())
    }

    /// Answers with `refusal` without an `error` event (the statement's own events, or the
    /// audit failure itself, say what happened).
    fn answer(&self, refusal: &Refusal) -> RequestAction {
        RequestAction::Respond(refusal.to_response())
    }

    /// Phase 7, then forward.
    fn forward(&self, request: Request<ProxyBody>) -> RequestAction {
        RequestAction::Forward(crate::upstream::upstream_request(request, &self.ctx.expect))
    }

    async fn on_request(
        &mut self,
        conn: &ConnectionContext,
        mut request: Request<ProxyBody>,
    ) -> RequestAction {
        // Phase 1: classify.
        let route = match classify(&mut request) {
            Ok(route) => route,
            Err(refusal) => {
                let session = session_of(&self.layer.sessions, &request);
                let endpoint = match refusal.kind {
                    RefusalKind::AmbiguousPath => "ambiguous_path",
                    _ => "unencodable_target",
                };
                return self.refuse(conn, session.as_deref(), endpoint, refusal);
            }
        };
        match route {
            Route::Chunk { ticket } => {
                let presented = presented_session(&self.layer.sessions, &request);
                RequestAction::Respond(
                    self.serve_chunk(conn, &ticket, presented.as_ref().map(Option::as_ref))
                        .await,
                )
            }
            Route::Endpoint { endpoint, params } => {
                self.on_endpoint(conn, request, endpoint, params).await
            }
        }
    }

    async fn on_endpoint(
        &mut self,
        conn: &ConnectionContext,
        request: Request<ProxyBody>,
        endpoint: Endpoint,
        params: QueryParams,
    ) -> RequestAction {
        let layer = self.layer.clone();
        let sessions = &layer.sessions;
        let limits = &layer.config.request_limits;
        match endpoint {
            Endpoint::Login => {
                // Phase 2: the body.
                let (request, body) = match read_request(request, limits, Api::Driver).await {
                    Ok(x) => x,
                    Err(r) => return self.answer(&r),
                };
                let login = match LoginRequest::parse(&params, &body) {
                    Ok(login) => login,
                    Err(e) => {
                        return self.answer(&Refusal::new(
                            RefusalKind::MalformedLogin,
                            Api::Driver,
                            format!("Tollgate could not read this login request: {e}"),
                        ))
                    }
                };
                // Phase 3: who logs in.
                let request_identity = from_login(&login);
                // Phase 5: the attempt is durable before anything reaches Snowflake.
                let events = layer.events_of(
                    conn,
                    Record::LoginAttempt {
                        request: &request_identity,
                    },
                );
                match layer.gate_written(events, Api::Driver).await {
                    Ok(pending) => self.ctx.pending = pending,
                    Err(r) => return self.answer(&r),
                }
                self.ctx.expect = Expect::Login {
                    request: request_identity,
                    process: conn.process.clone(),
                };
                self.forward(request)
            }
            Endpoint::QueryRequest => {
                let session = session_of(sessions, &request);
                let (request, body) = match read_request(request, limits, Api::Driver).await {
                    Ok(x) => x,
                    Err(r) => return self.answer(&r),
                };
                let query = match QueryRequest::parse(&params, &body) {
                    Ok(q) => q,
                    Err(e) => {
                        return self.answer(&Refusal::new(
                            RefusalKind::MalformedStatement,
                            Api::Driver,
                            format!("Tollgate could not read this query request: {e}"),
                        ))
                    }
                };
                let identity =
                    policy_identity(conn, session.as_deref(), None, layer.config.host.as_deref());
                let statement = Statement {
                    sql: &query.sql_text,
                    api: Api::Driver,
                    decided_for: None,
                };
                let (allowed, key) = match self
                    .statement(conn, session.as_ref(), &identity, statement, None)
                    .await
                {
                    Ok(x) => x,
                    Err(r) => return self.answer(&r),
                };
                let authority = authority(&request, conn);
                self.ctx.expect = Expect::Statement(StatementCtx {
                    session,
                    uses: allowed.uses,
                    plan: Some(Arc::new(allowed.plan)),
                    authority,
                    statement: key,
                });
                self.forward(request)
            }
            Endpoint::SqlApiSubmit => {
                let (request, body) = match read_request(request, limits, Api::SqlApi).await {
                    Ok(x) => x,
                    Err(r) => return self.answer(&r),
                };
                let statement = match StatementRequest::parse(&body) {
                    Ok(s) => s,
                    Err(e) => {
                        return self.answer(&Refusal::new(
                            RefusalKind::MalformedStatement,
                            Api::SqlApi,
                            format!("Tollgate could not read this statement request: {e}"),
                        ))
                    }
                };
                let bearer = bearer_token(&request);
                let host = authority(&request, conn);
                let api = SqlApiIdentity::from_request(
                    request
                        .headers()
                        .get(sql_api::TOKEN_TYPE_HEADER)
                        .and_then(|v| v.to_str().ok()),
                    bearer.as_ref().map(|t| t.expose()),
                    &statement,
                    host.split(':').next().unwrap_or(&host),
                );
                let identity =
                    policy_identity(conn, None, Some(&api), layer.config.host.as_deref());
                let decided = Statement {
                    sql: &statement.statement,
                    api: Api::SqlApi,
                    decided_for: Some(&api.source),
                };
                let allowed = match self
                    .statement(conn, None, &identity, decided, Some(&api))
                    .await
                {
                    Ok((allowed, _)) => allowed,
                    Err(r) => return self.answer(&r),
                };
                if allowed.plan.rewrites() {
                    if let Err(r) = self
                        .layer
                        .release(std::mem::take(&mut self.ctx.pending), Api::SqlApi)
                        .await
                    {
                        return self.answer(&r);
                    }
                    return self.answer(&Refusal::new(
                        RefusalKind::UnsupportedRewrite,
                        Api::SqlApi,
                        format!(
                            "Tollgate refused this statement (rule {}): its results must be masked or capped, which Tollgate applies to driver sessions only, not to the SQL API (decided for {})",
                            allowed.plan.rule_id, api.source
                        ),
                    ));
                }
                if let Some(bearer) = &bearer {
                    self.ctx.expect = Expect::SqlApiSubmit {
                        bearer: sql_api::bearer_digest(bearer.expose()),
                    };
                }
                self.forward(request)
            }
            Endpoint::SqlApiStatus { handle } => {
                let allowed = bearer_token(&request).is_some_and(|b| {
                    layer
                        .sql_handles
                        .is_allowed(&handle, &sql_api::bearer_digest(b.expose()))
                });
                if allowed {
                    return self.forward(request);
                }
                self.refuse(
                    conn,
                    None,
                    "sql_api_status",
                    Refusal::new(
                        RefusalKind::ForeignStatementHandle,
                        Api::SqlApi,
                        "Tollgate refused this statement handle: it serves SQL API results only for statements it allowed for the same token (results of driver sessions are served masked through the driver)",
                    ),
                )
            }
            Endpoint::ResultChunk => {
                let session = session_of(sessions, &request);
                self.refuse(
                    conn,
                    session.as_deref(),
                    "result_chunk",
                    Refusal::new(
                        RefusalKind::PresignedDownload,
                        Api::Driver,
                        "Tollgate refused this download: result chunks are served by Tollgate at the URLs it hands out, never by pre-signed URL",
                    ),
                )
            }
            Endpoint::TokenRequest => {
                let (request, body) = match read_request(request, limits, Api::Driver).await {
                    Ok(x) => x,
                    Err(r) => return self.answer(&r),
                };
                let session = session_of(sessions, &request).or_else(|| {
                    TokenRequest::parse(&params, &body)
                        .ok()
                        .and_then(|t| t.old_session_token)
                        .and_then(|t| sessions.get(t.expose()))
                });
                if let Some(session) = session {
                    self.ctx.expect = Expect::Renewal { session };
                }
                self.forward(request)
            }
            Endpoint::SessionDelete => {
                if let Some(session) = session_of(sessions, &request) {
                    self.ctx.expect = Expect::Logout { session };
                }
                self.forward(request)
            }
            Endpoint::QueryResult { query_id } => {
                let session = session_of(sessions, &request);
                let plan = session.as_ref().and_then(|s| s.result_plan(&query_id));
                let authority = authority(&request, conn);
                self.ctx.expect = Expect::Statement(StatementCtx {
                    session,
                    uses: Vec::new(),
                    plan,
                    authority,
                    statement: None,
                });
                self.forward(request)
            }
            Endpoint::AuthenticatorRequest
            | Endpoint::Heartbeat
            | Endpoint::AbortRequest
            | Endpoint::AbortQuery { .. }
            | Endpoint::MonitoringQuery { .. }
            | Endpoint::Telemetry
            | Endpoint::SqlApiCancel { .. } => self.forward(request),
            Endpoint::Unknown { method, path } => match layer.config.unknown_endpoints {
                UnknownEndpoints::Forward => {
                    warn!(conn = %conn.id, %method, %path, "unknown Snowflake endpoint forwarded");
                    // No decision stands behind it: a Snowflake-shaped result in the answer is
                    // withheld, as for a result fetched by an unknown query id.
                    let authority = authority(&request, conn);
                    self.ctx.expect = Expect::Statement(StatementCtx {
                        session: session_of(sessions, &request),
                        uses: Vec::new(),
                        plan: None,
                        authority,
                        statement: None,
                    });
                    self.forward(request)
                }
                UnknownEndpoints::Deny => {
                    let session = session_of(sessions, &request);
                    self.refuse(
                        conn,
                        session.as_deref(),
                        "unknown",
                        Refusal::new(
                            RefusalKind::UnknownEndpoint,
                            Api::of_path(&path),
                            format!(
                                "Tollgate refused {method} {path}: this endpoint is not understood, and the policy denies what it cannot audit"
                            ),
                        ),
                    )
                }
            },
            other => {
                let session = session_of(sessions, &request);
                self.refuse(
                    conn,
                    session.as_deref(),
                    other.name(),
                    Refusal::new(
                        RefusalKind::NotHandled,
                        Api::Driver,
                        format!(
                            "Tollgate refused the {} endpoint: not handled by this version",
                            other.name()
                        ),
                    ),
                )
            }
        }
    }

    /// Phases 4 to 6 for one statement: decide, write the decision to the audit spool, hold.
    /// `Ok` is the statement to forward, with the pending durability its answer waits for
    /// (left in the exchange's context) and its audit key; a refusal is answered only once the
    /// decision is durable.
    async fn statement(
        &mut self,
        conn: &ConnectionContext,
        session: Option<&Arc<Session>>,
        identity: &Identity,
        statement: Statement<'_>,
        api: Option<&SqlApiIdentity>,
    ) -> Result<(Allowed, Option<String>), Refusal> {
        let layer = &self.layer;
        let decided: Decided = decide(&layer.policy(), &layer.statements, identity, statement);
        bump(&layer.stats.statements);
        let session_id = session.map(|s| s.id.as_str()).unwrap_or("-");
        let verdict_name = match &decided.verdict {
            Verdict::Allow(a) if a.plan.mask.is_some() => "statement allowed with masked results",
            Verdict::Allow(_) => "statement allowed",
            Verdict::Deny(_) => "statement denied",
            Verdict::Hold(_) => "statement needs approval",
        };
        info!(conn = %conn.id, session = session_id, rule = %decided.decision.rule_id, kinds = %decided.kinds.join(","), fingerprint = %decided.fingerprint, "{verdict_name}");
        let events = layer.events_of(
            conn,
            Record::Statement {
                session: session.map(|s| s.as_ref()),
                who: identity,
                sql: statement.sql,
                decided: &decided,
                api,
            },
        );
        let key = logging::statement_key(&events);
        let pending = layer.gate_written(events, statement.api).await?;
        let verdict = match decided.verdict {
            Verdict::Allow(allowed) => {
                bump(&layer.stats.allowed);
                Ok(allowed)
            }
            Verdict::Deny(refusal) => {
                bump(&layer.stats.denied);
                Err(refusal)
            }
            Verdict::Hold(request) => {
                bump(&layer.stats.held);
                match hold(request).await {
                    Held::Approved(allowed) => Ok(allowed),
                    Held::Refused(refusal) => Err(refusal),
                }
            }
        };
        match verdict {
            Ok(allowed) => {
                self.ctx.pending = pending;
                Ok((allowed, key))
            }
            Err(refusal) => {
                layer.release(pending, statement.api).await?;
                Err(refusal)
            }
        }
    }

    async fn on_response(
        &mut self,
        conn: &ConnectionContext,
        response: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let expect = std::mem::take(&mut self.ctx.expect);
        let pending = std::mem::take(&mut self.ctx.pending);
        match expect {
            Expect::Nothing => match self.layer.release(pending, Api::Driver).await {
                Ok(()) => response,
                Err(refusal) => refusal.to_response(),
            },
            Expect::Statement(st) => self.statement_response(conn, st, pending, response).await,
            other => self.session_response(conn, other, pending, response).await,
        }
    }

    /// Phases 8 to 10 for a statement's response: check, rewrite (on the pool), record; the
    /// answer is released once the statement's decision is durable (its sync ran meanwhile)
    /// and the result's event is written.
    async fn statement_response(
        &self,
        conn: &ConnectionContext,
        st: StatementCtx,
        pending: Pending,
        response: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let layer = self.layer.clone();
        let max = layer.config.max_inspected_response;
        // What the record needs; the context itself moves into the rewrite job.
        let (session, plan, key) = (st.session.clone(), st.plan.clone(), st.statement.clone());
        let (parts, body) = response.into_parts();
        let (resp, outcome) = match body::collect_prefix(body, max).await {
            Err(e) => {
                warn!(error = %e, "upstream response body failed");
                let mut out = ResultOutcome::new(ResultStatus::UpstreamFailed);
                out.reason = format!("upstream response body failed: {e}");
                out.error_code = "502".into();
                let mut r = Response::new(full(Bytes::new()));
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                (r, out)
            }
            Ok((raw, Some(rest))) => {
                if plan.as_ref().is_none_or(|p| p.rewrites()) {
                    // A result Tollgate must rewrite but cannot inspect: withheld.
                    warn!(limit = max, "query result too large to inspect: withheld");
                    let mut out = ResultOutcome::new(ResultStatus::Withheld);
                    out.reason = "result too large to inspect".into();
                    let w = Withheld::new(
                        WithheldReason::TooLarge,
                        out.reason.clone(),
                        format!("the result is larger than {max} bytes, more than Tollgate inspects (snowflake.max_inspected_response_bytes)"),
                        None,
                    );
                    (w.to_response(), out)
                } else {
                    // Too large to inspect and nothing to rewrite: forwarded as it comes.
                    let mut out = ResultOutcome::new(ResultStatus::ForwardedUninspected);
                    out.bytes = raw.len() as u64;
                    (Response::from_parts(parts, body::chain(raw, rest)), out)
                }
            }
            Ok((raw, None)) => {
                let encoding = parts
                    .headers
                    .get(http::header::CONTENT_ENCODING)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let inline = rewrite::small_enough_inline(
                    &raw,
                    encoding.as_deref(),
                    layer.config.inline_result,
                );
                let job = ResultJob {
                    raw: raw.clone(),
                    encoding,
                    limits: layer.config.response_limits(),
                    statement: st,
                    masking: layer.masking.clone(),
                    chunks: layer.chunks.clone(),
                    ticket_lifetime: layer.storage.as_ref().map(|s| s.config().ticket_lifetime),
                };
                let processed = if inline {
                    pool::run_here(move || process_result(job))
                } else {
                    layer.pool.run(move || process_result(job)).await
                };
                let (body, out) = match processed {
                    Ok(x) => x,
                    Err(e) => {
                        let mut out = ResultOutcome::new(ResultStatus::Withheld);
                        out.reason = e.to_string();
                        let w = Withheld::new(
                            WithheldReason::RewriteFailed,
                            e.to_string(),
                            e.to_string(),
                            None,
                        );
                        (ResultBody::Withheld(w), out)
                    }
                };
                let resp = match body {
                    ResultBody::Unchanged => Response::from_parts(parts, full(raw)),
                    ResultBody::Rewritten(bytes) => {
                        let mut parts = parts;
                        parts.headers.remove(http::header::CONTENT_ENCODING);
                        parts.headers.remove(http::header::CONTENT_LENGTH);
                        parts.headers.remove(http::header::TRANSFER_ENCODING);
                        Response::from_parts(parts, full(Bytes::from(bytes)))
                    }
                    ResultBody::Withheld(w) => w.to_response(),
                };
                (resp, out)
            }
        };
        if outcome.status == ResultStatus::Withheld {
            bump(&layer.stats.results_withheld);
        }
        // Phase 5, release: the statement's decision is durable before its answer leaves; an
        // answer whose decision may be lost is withheld (and, the spool failing, unrecorded).
        if let Err(refusal) = layer.release(pending, Api::Driver).await {
            return refusal.to_response();
        }
        // Phase 10: the result's record is written before the answer is handed out.
        let events = layer.events_of(
            conn,
            Record::Result {
                session: session.as_deref(),
                rule_id: plan.as_ref().map(|p| p.rule_id.as_str()),
                statement: key.as_deref(),
                outcome: &outcome,
                duration_us: self.elapsed_us(),
            },
        );
        // Made durable by the next sync; nothing waits for it.
        match audit_gate::record_written(layer.audit.as_ref(), events, Api::Driver) {
            Ok(()) => resp,
            Err(refusal) => refusal.to_response(),
        }
    }

    /// Phase 8 for the answers that change sessions: logins, renewals, logouts, SQL API
    /// submissions.
    async fn session_response(
        &self,
        conn: &ConnectionContext,
        expect: Expect,
        pending: Pending,
        response: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let layer = self.layer.clone();
        // What the request phases wrote is durable before the answer leaves.
        let api = match expect {
            Expect::SqlApiSubmit { .. } => Api::SqlApi,
            _ => Api::Driver,
        };
        if let Err(refusal) = layer.release(pending, api).await {
            return refusal.to_response();
        }
        let max = layer.config.max_inspected_response;
        let (parts, body) = response.into_parts();
        let raw = match body::collect_prefix(body, max).await {
            Ok((raw, None)) => raw,
            Ok((raw, Some(rest))) => {
                // Too large to be a session answer Tollgate understands: passed on as it comes.
                return Response::from_parts(parts, body::chain(raw, rest));
            }
            Err(e) => {
                warn!(error = %e, "upstream response body failed");
                let mut r = Response::new(full(Bytes::new()));
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                return r;
            }
        };
        let encoding = parts
            .headers
            .get(http::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok());
        let decoded = decode_body(encoding, &raw, &layer.config.response_limits());
        let resp = Response::from_parts(parts, full(raw.clone()));
        match expect {
            Expect::Login { request, process } => {
                let outcome = match &decoded {
                    Ok(d) => observe::login(&layer.sessions, &request, process.clone(), &d.bytes),
                    Err(e) => LoginOutcome::Failed {
                        code: "-".into(),
                        message: format!("login response unreadable: {e}"),
                    },
                };
                let events = layer.events_of(
                    conn,
                    Record::LoginDone {
                        request: &request,
                        process: process.as_deref(),
                        outcome: &outcome,
                    },
                );
                match audit_gate::record_written(layer.audit.as_ref(), events, Api::Driver) {
                    Ok(()) => resp,
                    Err(refusal) => refusal.to_response(),
                }
            }
            Expect::Renewal { session } => {
                if let Ok(d) = &decoded {
                    observe::renewal(&layer.sessions, &session, &d.bytes);
                }
                resp
            }
            Expect::Logout { session } => {
                if decoded.is_ok() {
                    observe::logout(&layer.sessions, &layer.chunks, &session);
                    layer.record_detached(conn, Record::Logout { session: &session });
                }
                resp
            }
            Expect::SqlApiSubmit { bearer } => {
                if let Ok(d) = &decoded {
                    observe::sql_api_submit(&layer.sql_handles, bearer, &d.bytes);
                }
                resp
            }
            Expect::Nothing | Expect::Statement(_) => resp,
        }
    }

    /// Serves `GET /tollgate/chunks/<ticket>`.
    async fn serve_chunk(
        &self,
        conn: &ConnectionContext,
        name: &str,
        presented: Option<Option<&Arc<Session>>>,
    ) -> Response<ProxyBody> {
        let layer = self.layer.clone();
        let Some(ticket) = layer.chunks.get(name) else {
            warn!(conn = %conn.id, "unknown or expired result chunk requested");
            return text_reply(
                StatusCode::NOT_FOUND,
                "Tollgate: no such result chunk (unknown or expired); run the query again",
            );
        };
        if let Err(why) = chunks::authorize(&ticket, &layer.sessions, conn, presented) {
            warn!(conn = %conn.id, query = %ticket.query_id, chunk = ticket.index, why, "result chunk refused");
            return text_reply(
                StatusCode::FORBIDDEN,
                &format!("Tollgate refused this result chunk: {why}"),
            );
        }
        let Some(storage) = &layer.storage else {
            return text_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "Tollgate has no storage client configured",
            );
        };
        if layer.audit.as_ref().is_some_and(|a| !a.healthy()) {
            return text_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "Tollgate cannot write its audit spool, so it serves no result data (no access without audit); tell the operator of this host",
            );
        }
        let started = Instant::now();
        let conn_owned = conn.clone();
        let record_ticket = ticket.clone();
        let recorder = layer.clone();
        let done: ChunkDone = Box::new(move |result| {
            let stats = &recorder.stats;
            bump(if result.is_ok() {
                &stats.chunks_served
            } else {
                &stats.chunks_failed
            });
            recorder.record_detached(
                &conn_owned,
                Record::Chunk {
                    ticket: &record_ticket,
                    result: &result,
                    duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                },
            );
        });
        chunks::serve(ticket, storage, &layer.pool, Some(done)).await
    }
}
