//! The Snowflake layer: [`SnowflakeHooks`] plugs into intercepted HTTP ([`ExchangeHooks`]),
//! understands the driver's requests with `tollgate_wire::snowflake`, keeps one
//! [`Session`] per Snowflake session across connections, and enforces the policy on every
//! statement before it can reach Snowflake.
//!
//! Phases per exchange:
//! - `request_filter`: classify the endpoint; for a login, remember who logs in; for a query (or
//!   an SQL API statement), analyse the SQL against the session's current database and schema,
//!   evaluate the policy, and either forward the request unchanged or answer with a
//!   Snowflake-shaped error so the real driver raises its usual ProgrammingError — a refused
//!   statement never reaches Snowflake. Unknown endpoints follow a configurable default (deny
//!   by default).
//! - `response_filter`: a successful login creates the session (its tokens are remembered only
//!   as digests); a renewal maps the new token to the same session; `final*Name` and `USE`
//!   keep the identity current; a logout forgets the session.
//!
//! Bodies are inspected up to configured caps and re-emitted byte for byte; gzip is detected by
//! header and magic bytes. SQL text, literals and tokens are never logged: decisions are logged
//! with the rule id, statement kinds and the literal-free fingerprint.

mod body;
pub mod chunks;
pub mod result;
mod session;
pub mod sql_api;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use std::time::Instant;
use tollgate_policy::{
    analyze, fingerprint, Action, Analysis, AnalysisError, Decision, EvalInput, Identity,
    NameContext, Policy, StatementKind,
};
use tollgate_wire::snowflake::{
    classify_target, decode_body, error_response, parse_authorization, split_target,
    sql_api_error_response, BodyLimits, Endpoint, ErrorReply, LoginRequest, LoginResponse,
    QueryParams, QueryRequest, QueryResponse, StatementRequest, TokenRequest, TokenResponse,
};

use tollgate_audit::{Event, EventKind, MaskedCount};
use tracing::{error, info, warn};

use crate::audit::{with_process, with_snowflake, Auditor};

pub use chunks::{ChunkStore, StorageClient, StorageConfig, CHUNK_PATH_PREFIX};
pub use result::{Masking, ResultPlan, RewriteReport};
pub use session::{Session, SessionTable, SnowflakeIdentity};
use sql_api::AllowedHandles;
pub use sql_api::SqlApiIdentity;

use crate::hooks::{
    ConnectionContext, Exchange, ExchangeHooks, HookFuture, ProxyBody, RequestAction,
};

/// Error code of every statement Tollgate refuses (Snowflake-shaped replies).
pub const TOLLGATE_DENIED_CODE: &str = "390901";

/// What to do with requests to endpoints the wire model does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownEndpoints {
    /// Refuse them with an error (the HIPAA default: nothing unaudited).
    Deny,
    /// Forward them (logged with method and path).
    Forward,
}

/// Settings of the Snowflake layer.
#[derive(Debug, Clone)]
pub struct SnowflakeConfig {
    /// Unknown endpoints: deny (default) or forward.
    pub unknown_endpoints: UnknownEndpoints,
    /// Caps on request bodies (size, decompressed size, gzip ratio).
    pub request_limits: BodyLimits,
    /// Responses larger than this (as received) are forwarded without inspection.
    pub max_inspected_response: usize,
    /// This host's name, for policies that match on it.
    pub host: Option<String>,
}

impl Default for SnowflakeConfig {
    fn default() -> Self {
        SnowflakeConfig {
            unknown_endpoints: UnknownEndpoints::Deny,
            request_limits: BodyLimits::default(),
            max_inspected_response: 64 << 20,
            host: None,
        }
    }
}

/// The Snowflake layer's hooks. Cheap to share: one per proxy.
pub struct SnowflakeHooks {
    config: SnowflakeConfig,
    policy: RwLock<Arc<Policy>>,
    sessions: SessionTable,
    chunks: ChunkStore,
    storage: Option<StorageClient>,
    masking: Masking,
    audit: Option<Auditor>,
    sql_handles: AllowedHandles,
}

impl std::fmt::Debug for SnowflakeHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnowflakeHooks")
            .field("config", &self.config)
            .field("sessions", &self.sessions)
            .finish_non_exhaustive()
    }
}

/// What `request_filter` leaves for `response_filter`.
enum Pending {
    Login {
        request: SnowflakeIdentity,
        process: Option<Arc<crate::ProcessIdentity>>,
    },
    Statement {
        /// When the request arrived.
        started: Instant,
        session: Option<Arc<Session>>,
        uses: Vec<(tollgate_policy::UseKind, String)>,
        /// What the decision asks of the result; `None` only when no decision is known
        /// (a result fetched by query id that Tollgate did not see decided).
        plan: Option<Arc<ResultPlan>>,
        /// `host[:port]` the driver addressed (chunk URLs point there).
        authority: String,
    },
    Renewal {
        session: Arc<Session>,
    },
    Logout {
        session: Arc<Session>,
    },
    /// An allowed SQL API submission: its handles become fetchable for this bearer token.
    SqlApiSubmit {
        bearer: [u8; 32],
    },
}

/// Masked counts of a served chunk: the filter's per-column counts (JSON of
/// [`tollgate_mask::rowset::ColumnCounts`]) named by the result's masked columns.
fn chunk_masked(columns: &[Option<(String, String, String)>], summary: &str) -> Vec<MaskedCount> {
    let counts: serde_json::Value = serde_json::from_str(summary).unwrap_or_default();
    let per_column = counts["columns"].as_array().cloned().unwrap_or_default();
    columns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let (column, rule_id, method) = c.as_ref()?;
            Some(MaskedCount {
                column: column.clone(),
                rule_id: rule_id.clone(),
                method: method.clone(),
                values: per_column
                    .get(i)
                    .and_then(|c| c["masked"].as_u64())
                    .unwrap_or(0),
            })
        })
        .collect()
}

/// A statement's decision: the `USE` targets and the result plan, or the refusal.
type Decided = Result<(Vec<(tollgate_policy::UseKind, String)>, ResultPlan), Refusal>;

/// What a response did, for the audit record.
#[derive(Default)]
struct Outcome {
    query_id: Option<String>,
    outcome: &'static str,
    rows: u64,
    bytes: u64,
    masked: Vec<MaskedCount>,
    error_code: String,
    reason: String,
    attrs: std::collections::BTreeMap<String, String>,
    /// Login: the session created, or the failure (code, message).
    login: Option<Result<Arc<Session>, (String, String)>>,
    /// The rows the agent received, when the rule records them (JSON).
    result_rows: String,
}

/// Keeps the agent's rows in the outcome (a failure to read them is noted, never fatal: the
/// rows were already checked or rewritten).
fn record_rows(out: &mut Outcome, resp: &QueryResponse, limit: u64) {
    match result::recorded_rows(resp, limit) {
        Ok(rows) => out.result_rows = rows,
        Err(e) => {
            out.attrs
                .insert("result_rows_error".into(), e.chars().take(200).collect());
        }
    }
}

/// Why a request was answered by Tollgate itself.
struct Refusal {
    sql_api: bool,
    sql_state: &'static str,
    message: String,
    /// The request body was not read to its end: the connection must close after the reply,
    /// or a client still uploading would wait for its own timeout.
    close: bool,
}

impl Refusal {
    fn into_response(self) -> Response<ProxyBody> {
        let reply = ErrorReply {
            code: TOLLGATE_DENIED_CODE,
            sql_state: self.sql_state,
            message: &self.message,
            query_id: None,
        };
        let (status, body) = if self.sql_api {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                sql_api_error_response(reply),
            )
        } else {
            // Drivers turn HTTP 200 + success:false into ProgrammingError; a 4xx/5xx would be
            // retried or reported as a network failure.
            (StatusCode::OK, error_response(reply))
        };
        let mut resp = Response::new(full(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert("x-tollgate-decision", HeaderValue::from_static("refused"));
        if self.close && !self.sql_api {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// A Snowflake error envelope in place of a result Tollgate may not hand out.
fn withheld(query_id: Option<&str>, why: &str) -> Response<ProxyBody> {
    let message = format!("Tollgate withheld this result: {why}");
    let reply = ErrorReply {
        code: TOLLGATE_DENIED_CODE,
        sql_state: "22000",
        message: &message,
        query_id,
    };
    let mut resp = Response::new(full(Bytes::from(error_response(reply))));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert("x-tollgate-decision", HeaderValue::from_static("withheld"));
    resp
}

/// The bearer token of a SQL API request.
fn bearer_token(req: &Request<ProxyBody>) -> Option<tollgate_wire::snowflake::Secret> {
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    match parse_authorization(header)? {
        tollgate_wire::snowflake::AuthToken::Bearer(t) => Some(t),
        _ => None,
    }
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

impl SnowflakeHooks {
    /// Hooks enforcing `policy`.
    pub fn new(config: SnowflakeConfig, policy: Arc<Policy>) -> Self {
        SnowflakeHooks {
            config,
            policy: RwLock::new(policy),
            sessions: SessionTable::default(),
            chunks: ChunkStore::default(),
            storage: None,
            masking: Masking {
                key: None,
                detectors: Arc::new(tollgate_mask::DetectorSet::standard()),
            },
            audit: None,
            sql_handles: AllowedHandles::default(),
        }
    }

    /// Records every login, statement, decision, result, chunk and session end in the audit
    /// spool; statements and results wait for their events to be durable and are refused when
    /// the spool cannot be written.
    pub fn with_audit(mut self, audit: Auditor) -> Self {
        self.audit = Some(audit);
        self
    }

    /// An event of `kind` for this connection and session, with the process and Snowflake
    /// identity filled in.
    fn event(&self, kind: EventKind, conn: &ConnectionContext, session: Option<&Session>) -> Event {
        let chain = session
            .map(|s| s.id.clone())
            .unwrap_or_else(|| Event::connection_chain(&conn.id));
        let mut e = Event::new(kind, chain);
        e.connection_id.clone_from(&conn.id);
        let process = session
            .and_then(|s| s.process.clone())
            .or_else(|| conn.process.clone());
        with_process(&mut e, process.as_deref());
        if let Some(s) = session {
            with_snowflake(&mut e, &s.identity());
        }
        e
    }

    /// Answers a request Tollgate refuses to forward (an endpoint it does not serve, a path
    /// it cannot read unambiguously, a result it has no decision for) and records the attempt
    /// as an `error` event.
    fn refuse_endpoint(
        &self,
        conn: &ConnectionContext,
        session: Option<&Session>,
        endpoint: &str,
        refusal: Refusal,
    ) -> RequestAction {
        warn!(conn = %conn.id, endpoint, "request refused: {}", refusal.message);
        if let Some(audit) = &self.audit {
            let mut e = self.event(EventKind::Error, conn, session);
            e.decision = "refused".into();
            e.reason.clone_from(&refusal.message);
            e.error_code = TOLLGATE_DENIED_CODE.into();
            e.attrs.insert("endpoint".into(), endpoint.to_owned());
            audit.record_detached(e);
        }
        RequestAction::Respond(refusal.into_response())
    }

    /// Appends events that gate a step; on failure, the refusal to send instead.
    async fn audit_gate(
        &self,
        events: Vec<Event>,
        sql_api: bool,
    ) -> Result<(), Response<ProxyBody>> {
        let Some(audit) = &self.audit else {
            return Ok(());
        };
        if events.is_empty() {
            return Ok(());
        }
        audit.record(events).await.map_err(|e| {
            error!(error = %e, "statement refused: the audit spool cannot be written");
            Refusal {
                sql_api,
                sql_state: "58030",
                message: format!(
                    "Tollgate refused this request because it cannot be audited: {e}. No access without audit; tell the operator of this host."
                ),
                close: false,
            }
            .into_response()
        })
    }

    /// Serves result chunks through Tollgate, fetching them from storage with `storage`.
    /// Without it, chunked results are refused (their storage URLs are never handed out).
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
        *self.policy.write().expect("policy lock") = policy;
    }

    /// The live sessions.
    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    fn policy(&self) -> Arc<Policy> {
        self.policy.read().expect("policy lock").clone()
    }

    fn session_of(&self, req: &Request<ProxyBody>) -> Option<Arc<Session>> {
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        let token = parse_authorization(header)?;
        self.sessions.get(token.secret().expose())
    }

    /// What the request's `Authorization` header names: `None` without a token, `Some(None)`
    /// for a token of no live session.
    fn presented_session(&self, req: &Request<ProxyBody>) -> Option<Option<Arc<Session>>> {
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        let token = parse_authorization(header)?;
        Some(self.sessions.get(token.secret().expose()))
    }

    fn identity(
        &self,
        conn: &ConnectionContext,
        session: Option<&Session>,
        sql_api: Option<&SqlApiIdentity>,
    ) -> Identity {
        let sf = match sql_api {
            Some(api) => api.snowflake.clone(),
            None => session.map(Session::identity).unwrap_or_default(),
        };
        let process = session
            .and_then(|s| s.process.clone())
            .or_else(|| conn.process.clone());
        Identity {
            account: sf.account,
            user: sf.user,
            role: sf.role,
            warehouse: sf.warehouse,
            database: sf.database,
            schema: sf.schema,
            uid: process.as_ref().map(|p| p.uid),
            comm: process.as_ref().map(|p| p.comm.clone()),
            exe: process.as_ref().and_then(|p| p.exe.clone()),
            cgroup_path: process.as_ref().and_then(|p| p.cgroup_path.clone()),
            host: self.config.host.clone(),
            claims: Default::default(),
        }
    }

    /// Analyses and decides one SQL text for a session; `Err` carries the refusal.
    fn decide(
        &self,
        conn: &ConnectionContext,
        session: Option<&Arc<Session>>,
        sql: &str,
        api: Option<&SqlApiIdentity>,
    ) -> (Decided, Vec<Event>) {
        let sql_api = api.is_some();
        let identity = self.identity(conn, session.map(|s| s.as_ref()), api);
        let ctx = NameContext {
            database: identity.database.clone(),
            schema: identity.schema.clone(),
        };
        let analysis: Result<Analysis, AnalysisError> = analyze(sql, &ctx);
        let policy = self.policy();
        let decision: Decision = policy.evaluate(&EvalInput {
            identity: &identity,
            analysis: analysis.as_ref(),
        });
        let kinds: Vec<String> = match &analysis {
            Ok(a) => a
                .statements
                .iter()
                .map(|s| format!("{:?}", s.kind))
                .collect(),
            Err(_) => vec!["unparseable".into()],
        };
        let session_id = session.map(|s| s.id.as_str()).unwrap_or("-");
        let fp = fingerprint(sql);
        let events = if self.audit.is_some() {
            let mut tables: Vec<String> = decision
                .statements
                .iter()
                .flat_map(|s| s.tables.iter().map(ToString::to_string))
                .collect();
            tables.sort();
            tables.dedup();
            let kind_names = match &analysis {
                Ok(a) => a
                    .statements
                    .iter()
                    .map(|s| s.kind.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                Err(_) => "unparseable".into(),
            };
            let mut q = self.event(EventKind::Query, conn, session.map(|s| s.as_ref()));
            if decision.record.sql_full {
                sql.clone_into(&mut q.sql);
                q.sql_full = true;
            } else {
                q.sql = tollgate_policy::redact_literals(sql);
            }
            q.sql_fingerprint.clone_from(&fp);
            q.statement_kind.clone_from(&kind_names);
            q.tables.clone_from(&tables);
            if let Some(api) = api {
                q.attrs.insert("api".into(), "sql_api".into());
                q.attrs.insert("identity_source".into(), api.source.clone());
                with_snowflake(&mut q, &api.snowflake);
            }
            let mut d = self.event(EventKind::Decision, conn, session.map(|s| s.as_ref()));
            if let Some(api) = api {
                with_snowflake(&mut d, &api.snowflake);
            }
            d.rule_id.clone_from(&decision.rule_id);
            d.decision = decision.action.name().to_owned();
            d.statement_kind = kind_names;
            d.tables = tables;
            d.sql_fingerprint.clone_from(&fp);
            d.sql.clone_from(&q.sql);
            d.sql_full = q.sql_full;
            match &decision.action {
                Action::Deny { reason } | Action::RequireApproval { reason } => {
                    d.reason.clone_from(reason);
                }
                _ => {}
            }
            if let Some(n) = decision.max_rows {
                d.attrs.insert("max_rows".into(), n.to_string());
            }
            if let Some(n) = decision.max_bytes {
                d.attrs.insert("max_bytes".into(), n.to_string());
            }
            vec![q, d]
        } else {
            Vec::new()
        };
        let decided_with = api
            .map(|a| format!(" (decided for {})", a.source))
            .unwrap_or_default();
        let refuse = |what: &str, reason: &str, sql_state: &'static str| Refusal {
            sql_api,
            sql_state,
            message: format!(
                "Tollgate {what} this statement (rule {}): {reason}{decided_with}",
                decision.rule_id
            ),
            close: false,
        };
        let plan = |mask: Option<&tollgate_policy::MaskPlan>| ResultPlan {
            rule_id: decision.rule_id.clone(),
            mask: mask.cloned(),
            max_rows: decision.max_rows,
            max_bytes: decision.max_bytes,
            record_rows: decision.record.result_rows,
            policy: policy.clone(),
        };
        let outcome = match &decision.action {
            Action::Allow => {
                info!(conn = %conn.id, session = session_id, rule = %decision.rule_id, ?kinds, fingerprint = %fp, "statement allowed");
                let uses = analysis
                    .map(|a| {
                        a.statements
                            .iter()
                            .filter(|s| matches!(s.kind, StatementKind::Use(_)))
                            .filter_map(|s| s.use_target.as_ref())
                            .map(|u| (u.kind, u.name.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok((uses, plan(None)))
            }
            Action::Deny { reason } => {
                info!(conn = %conn.id, session = session_id, rule = %decision.rule_id, ?kinds, fingerprint = %fp, "statement denied");
                Err(refuse("denied", reason, "42501"))
            }
            Action::RequireApproval { reason } => {
                info!(conn = %conn.id, session = session_id, rule = %decision.rule_id, ?kinds, fingerprint = %fp, "statement needs approval");
                Err(refuse(
                    "requires approval for",
                    &format!("approval required: {reason}"),
                    "42501",
                ))
            }
            Action::Mask { plan: mask } => {
                info!(conn = %conn.id, session = session_id, rule = %decision.rule_id, ?kinds, fingerprint = %fp, "statement allowed with masked results");
                Ok((Vec::new(), plan(Some(mask))))
            }
        };
        (outcome, events)
    }

    async fn on_request(
        &self,
        conn: &ConnectionContext,
        exchange: &mut Exchange,
        mut request: Request<ProxyBody>,
    ) -> RequestAction {
        let raw_target = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        // Classified on the normalized path, and forwarded as classified: the server routes
        // exactly the path Tollgate decided on. An ambiguous path is refused, never guessed.
        let classified = match classify_target(request.method().as_str(), &raw_target) {
            Ok(c) => c,
            Err(e) => {
                let session = self.session_of(&request);
                let path = split_target(&raw_target).0.to_owned();
                return self.refuse_endpoint(
                    conn,
                    session.as_deref(),
                    "ambiguous_path",
                    Refusal {
                        sql_api: path.starts_with("/api/"),
                        sql_state: "0A000",
                        message: format!(
                            "Tollgate refused {} {path}: {e}; send the path in its plain form",
                            request.method()
                        ),
                        close: false,
                    },
                );
            }
        };
        let target = classified.canonical_target();
        if target != raw_target {
            let mut parts = request.uri().clone().into_parts();
            match target.parse() {
                Ok(pq) => parts.path_and_query = Some(pq),
                Err(_) => {
                    return RequestAction::Respond(
                        Refusal {
                            sql_api: false,
                            sql_state: "0A000",
                            message: "Tollgate refused a request target it cannot re-encode".into(),
                            close: false,
                        }
                        .into_response(),
                    )
                }
            }
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
        if request.method() == http::Method::GET && target.starts_with(CHUNK_PATH_PREFIX) {
            let presented = self.presented_session(&request);
            return RequestAction::Respond(
                self.serve_chunk(conn, &target, presented.as_ref().map(Option::as_ref))
                    .await,
            );
        }
        let endpoint = classified.endpoint;
        let started = Instant::now();
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| conn.sni.clone());
        let params = QueryParams::from_target(&target);
        match endpoint {
            Endpoint::Login => {
                let (request, body) = match self.read_request(request).await {
                    Ok(x) => x,
                    Err(r) => return RequestAction::Respond(r.into_response()),
                };
                match LoginRequest::parse(&params, &body) {
                    Ok(login) => {
                        let request_identity = SnowflakeIdentity {
                            account: login.account.clone(),
                            user: login.login_name.clone(),
                            role: login.role.clone(),
                            warehouse: login.warehouse.clone(),
                            database: login.database.clone(),
                            schema: login.schema.clone(),
                            authenticator: Some(login.authenticator.as_wire().to_owned()),
                            client: login.client_app_id.clone().map(|app| {
                                format!(
                                    "{app} {}",
                                    login.client_app_version.clone().unwrap_or_default()
                                )
                            }),
                        };
                        // The attempt is recorded before anything reaches Snowflake.
                        if self.audit.is_some() {
                            let mut e = self.event(EventKind::Login, conn, None);
                            with_snowflake(&mut e, &request_identity);
                            e.decision = "attempt".into();
                            if let Some(a) = &request_identity.authenticator {
                                e.attrs.insert("authenticator".into(), a.clone());
                            }
                            if let Err(refusal) = self.audit_gate(vec![e], false).await {
                                return RequestAction::Respond(refusal);
                            }
                        }
                        exchange.state.insert(Arc::new(Pending::Login {
                            request: request_identity,
                            process: conn.process.clone(),
                        }));
                        RequestAction::Forward(request)
                    }
                    Err(e) => RequestAction::Respond(
                        Refusal {
                            sql_api: false,
                            sql_state: "08004",
                            message: format!("Tollgate could not read this login request: {e}"),
                            close: false,
                        }
                        .into_response(),
                    ),
                }
            }
            Endpoint::QueryRequest => {
                let session = self.session_of(&request);
                let (request, body) = match self.read_request(request).await {
                    Ok(x) => x,
                    Err(r) => return RequestAction::Respond(r.into_response()),
                };
                let query = match QueryRequest::parse(&params, &body) {
                    Ok(q) => q,
                    Err(e) => {
                        return RequestAction::Respond(
                            Refusal {
                                sql_api: false,
                                sql_state: "42601",
                                message: format!("Tollgate could not read this query request: {e}"),
                                close: false,
                            }
                            .into_response(),
                        )
                    }
                };
                let (decided, events) = self.decide(conn, session.as_ref(), &query.sql_text, None);
                if let Err(refusal) = self.audit_gate(events, false).await {
                    return RequestAction::Respond(refusal);
                }
                match decided {
                    Ok((uses, plan)) => {
                        exchange.state.insert(Arc::new(Pending::Statement {
                            started,
                            session,
                            uses,
                            plan: Some(Arc::new(plan)),
                            authority,
                        }));
                        RequestAction::Forward(request)
                    }
                    Err(refusal) => RequestAction::Respond(refusal.into_response()),
                }
            }
            Endpoint::SqlApiSubmit => {
                let (request, body) = match self.read_request(request).await {
                    Ok(x) => x,
                    Err(r) => return RequestAction::Respond(r.into_response()),
                };
                let statement = match StatementRequest::parse(&body) {
                    Ok(s) => s,
                    Err(e) => {
                        return RequestAction::Respond(
                            Refusal {
                                sql_api: true,
                                sql_state: "42601",
                                message: format!(
                                    "Tollgate could not read this statement request: {e}"
                                ),
                                close: false,
                            }
                            .into_response(),
                        )
                    }
                };
                let bearer = bearer_token(&request);
                let api = SqlApiIdentity::from_request(
                    request
                        .headers()
                        .get(sql_api::TOKEN_TYPE_HEADER)
                        .and_then(|v| v.to_str().ok()),
                    bearer.as_ref().map(|t| t.expose()),
                    &statement,
                    authority.split(':').next().unwrap_or(&authority),
                );
                let (decided, events) = self.decide(conn, None, &statement.statement, Some(&api));
                if let Err(refusal) = self.audit_gate(events, true).await {
                    return RequestAction::Respond(refusal);
                }
                match decided {
                    Ok((_, plan)) if plan.rewrites() => {
                        RequestAction::Respond(
                            Refusal {
                                sql_api: true,
                                sql_state: "0A000",
                                message: format!(
                                    "Tollgate refused this statement (rule {}): its results must be masked or capped, which Tollgate applies to driver sessions only, not to the SQL API (decided for {})",
                                    plan.rule_id, api.source
                                ),
                                close: false,
                            }
                            .into_response(),
                        )
                    }
                    Ok(_) => {
                        if let Some(bearer) = &bearer {
                            exchange.state.insert(Arc::new(Pending::SqlApiSubmit {
                                bearer: sql_api::bearer_digest(bearer.expose()),
                            }));
                        }
                        RequestAction::Forward(request)
                    }
                    Err(refusal) => RequestAction::Respond(refusal.into_response()),
                }
            }
            Endpoint::SqlApiStatus { handle } => {
                let allowed = bearer_token(&request).is_some_and(|b| {
                    self.sql_handles
                        .is_allowed(&handle, &sql_api::bearer_digest(b.expose()))
                });
                if allowed {
                    return RequestAction::Forward(request);
                }
                self.refuse_endpoint(
                    conn,
                    None,
                    "sql_api_status",
                    Refusal {
                        sql_api: true,
                        sql_state: "42501",
                        message: "Tollgate refused this statement handle: it serves SQL API results only for statements it allowed for the same token (results of driver sessions are served masked through the driver)".into(),
                        close: false,
                    },
                )
            }
            Endpoint::ResultChunk => {
                let session = self.session_of(&request);
                self.refuse_endpoint(
                    conn,
                    session.as_deref(),
                    "result_chunk",
                    Refusal {
                        sql_api: false,
                        sql_state: "42501",
                        message: "Tollgate refused this download: result chunks are served by Tollgate at the URLs it hands out, never by pre-signed URL".into(),
                        close: false,
                    },
                )
            }
            Endpoint::TokenRequest => {
                let (request, body) = match self.read_request(request).await {
                    Ok(x) => x,
                    Err(r) => return RequestAction::Respond(r.into_response()),
                };
                let session = self.session_of(&request).or_else(|| {
                    TokenRequest::parse(&params, &body)
                        .ok()
                        .and_then(|t| t.old_session_token)
                        .and_then(|t| self.sessions.get(t.expose()))
                });
                if let Some(session) = session {
                    exchange
                        .state
                        .insert(Arc::new(Pending::Renewal { session }));
                }
                RequestAction::Forward(request)
            }
            Endpoint::SessionDelete => {
                if let Some(session) = self.session_of(&request) {
                    exchange.state.insert(Arc::new(Pending::Logout { session }));
                }
                RequestAction::Forward(request)
            }
            Endpoint::QueryResult { query_id } => {
                let session = self.session_of(&request);
                let plan = session.as_ref().and_then(|s| s.result_plan(&query_id));
                exchange.state.insert(Arc::new(Pending::Statement {
                    started,
                    session,
                    uses: Vec::new(),
                    plan,
                    authority,
                }));
                RequestAction::Forward(request)
            }
            Endpoint::AuthenticatorRequest
            | Endpoint::Heartbeat
            | Endpoint::AbortRequest
            | Endpoint::AbortQuery { .. }
            | Endpoint::MonitoringQuery { .. }
            | Endpoint::Telemetry
            | Endpoint::SqlApiCancel { .. } => RequestAction::Forward(request),
            Endpoint::Unknown { method, path } => match self.config.unknown_endpoints {
                UnknownEndpoints::Forward => {
                    warn!(conn = %conn.id, %method, %path, "unknown Snowflake endpoint forwarded");
                    // No decision stands behind it: a Snowflake-shaped result in the answer is
                    // withheld, as for a result fetched by an unknown query id.
                    exchange.state.insert(Arc::new(Pending::Statement {
                        started,
                        session: self.session_of(&request),
                        uses: Vec::new(),
                        plan: None,
                        authority,
                    }));
                    RequestAction::Forward(request)
                }
                UnknownEndpoints::Deny => {
                    let session = self.session_of(&request);
                    self.refuse_endpoint(
                        conn,
                        session.as_deref(),
                        "unknown",
                        Refusal {
                            sql_api: path.starts_with("/api/"),
                            sql_state: "0A000",
                            message: format!(
                                "Tollgate refused {method} {path}: this endpoint is not understood, and the policy denies what it cannot audit"
                            ),
                            close: false,
                        },
                    )
                }
            },
            other => {
                warn!(conn = %conn.id, endpoint = other.name(), "endpoint not handled: refused");
                RequestAction::Respond(
                    Refusal {
                        sql_api: false,
                        sql_state: "0A000",
                        message: format!(
                            "Tollgate refused the {} endpoint: not handled by this version",
                            other.name()
                        ),
                        close: false,
                    }
                    .into_response(),
                )
            }
        }
    }

    /// Buffers and decodes a request body within the caps; the request keeps its original
    /// bytes.
    async fn read_request(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<(Request<ProxyBody>, Vec<u8>), Refusal> {
        let (parts, body) = request.into_parts();
        let raw = body::collect_capped(body, self.config.request_limits.max_compressed)
            .await
            .map_err(|e| Refusal {
                sql_api: false,
                sql_state: "54000",
                message: format!("Tollgate refused the request body: {e}"),
                close: true,
            })?;
        let encoding = parts
            .headers
            .get(http::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok());
        let decoded =
            decode_body(encoding, &raw, &self.config.request_limits).map_err(|e| Refusal {
                sql_api: false,
                sql_state: "54000",
                message: format!("Tollgate refused the request body: {e}"),
                close: false,
            })?;
        Ok((Request::from_parts(parts, full(raw)), decoded.bytes))
    }

    async fn on_response(
        &self,
        conn: &ConnectionContext,
        exchange: &mut Exchange,
        response: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let Some(pending) = exchange.state.get::<Arc<Pending>>().cloned() else {
            return response;
        };
        let mut out = Outcome::default();
        let resp = self.respond(&pending, response, &mut out).await;
        if self.audit.is_none() {
            return resp;
        }
        let events = self.outcome_events(conn, &pending, out);
        match &*pending {
            Pending::Statement { .. } | Pending::Login { .. } => {
                if let Err(refusal) = self.audit_gate(events, false).await {
                    return refusal;
                }
            }
            _ => {
                if let Some(audit) = &self.audit {
                    for e in events {
                        audit.record_detached(e);
                    }
                }
            }
        }
        resp
    }

    /// The audit events for what a response did.
    fn outcome_events(
        &self,
        conn: &ConnectionContext,
        pending: &Pending,
        out: Outcome,
    ) -> Vec<Event> {
        match pending {
            Pending::Statement {
                started,
                session,
                plan,
                ..
            } => {
                let mut e = self.event(EventKind::Result, conn, session.as_deref());
                e.query_id = out.query_id.unwrap_or_default();
                e.decision = out.outcome.to_owned();
                e.rule_id = plan.as_ref().map(|p| p.rule_id.clone()).unwrap_or_default();
                e.rows = out.rows;
                e.bytes = out.bytes;
                e.masked = out.masked;
                e.error_code = out.error_code;
                e.reason = out.reason;
                e.attrs = out.attrs;
                e.result_rows = out.result_rows;
                e.duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                vec![e]
            }
            Pending::Login { request, process } => match out.login {
                Some(Ok(session)) => {
                    let mut e = self.event(EventKind::Login, conn, Some(&session));
                    e.decision = "ok".into();
                    if let Some(a) = &request.authenticator {
                        e.attrs.insert("authenticator".into(), a.clone());
                    }
                    if let Some(c) = &request.client {
                        e.attrs.insert("client".into(), c.clone());
                    }
                    vec![e]
                }
                Some(Err((code, message))) => {
                    let mut e = self.event(EventKind::Login, conn, None);
                    with_process(&mut e, process.as_deref());
                    with_snowflake(&mut e, request);
                    e.decision = "failed".into();
                    e.error_code = code;
                    e.reason = message;
                    vec![e]
                }
                None => Vec::new(),
            },
            Pending::Logout { session } => {
                let mut e = self.event(EventKind::SessionEnd, conn, Some(session));
                e.decision = "logout".into();
                vec![e]
            }
            Pending::Renewal { .. } | Pending::SqlApiSubmit { .. } => Vec::new(),
        }
    }

    async fn respond(
        &self,
        pending: &Arc<Pending>,
        response: Response<ProxyBody>,
        out: &mut Outcome,
    ) -> Response<ProxyBody> {
        let (parts, body) = response.into_parts();
        let (raw, rest) = match body::collect_prefix(body, self.config.max_inspected_response).await
        {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "upstream response body failed");
                out.outcome = "upstream_failed";
                out.reason = format!("upstream response body failed: {e}");
                out.error_code = "502".into();
                let mut r = Response::new(full(Bytes::new()));
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                return r;
            }
        };
        if let Some(rest) = rest {
            if let Pending::Statement { plan, .. } = &**pending {
                if plan.as_ref().is_none_or(|p| p.rewrites()) {
                    // A result Tollgate must rewrite but cannot inspect: withheld.
                    warn!(
                        limit = self.config.max_inspected_response,
                        "query result too large to inspect: withheld"
                    );
                    out.outcome = "withheld";
                    out.reason = "result too large to inspect".into();
                    return withheld(
                        None,
                        &format!(
                            "the result is larger than {} bytes, more than Tollgate inspects (snowflake.max_inspected_response_bytes)",
                            self.config.max_inspected_response
                        ),
                    );
                }
            }
            // Too large to inspect: forwarded as it comes.
            out.outcome = "forwarded_uninspected";
            out.bytes = raw.len() as u64;
            return Response::from_parts(parts, body::chain(raw, rest));
        }
        let encoding = parts
            .headers
            .get(http::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let limits = BodyLimits {
            max_compressed: self.config.max_inspected_response,
            max_decompressed: self.config.max_inspected_response.saturating_mul(4),
            ..BodyLimits::default()
        };
        let decoded = decode_body(encoding.as_deref(), &raw, &limits);
        let decoded_len = decoded.as_ref().map_or(raw.len(), |d| d.bytes.len());
        if let Pending::Statement {
            session,
            uses,
            plan,
            authority,
            ..
        } = &**pending
        {
            let resp = decoded
                .map_err(|e| e.to_string())
                .and_then(|d| QueryResponse::parse(&d.bytes).map_err(|e| e.to_string()));
            let mut resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    out.reason = format!("the response could not be read: {e}");
                    if plan.as_ref().is_some_and(|p| p.mask.is_some()) {
                        out.outcome = "withheld";
                        return withheld(None, &format!("the result could not be read: {e}"));
                    }
                    out.outcome = "forwarded_unparsed";
                    out.bytes = raw.len() as u64;
                    return Response::from_parts(parts, full(raw));
                }
            };
            out.query_id.clone_from(&resp.query_id);
            out.bytes = decoded_len as u64;
            out.rows = resp.total.or(resp.returned).unwrap_or(0).max(0) as u64;
            if resp.success {
                out.outcome = if resp.is_in_progress() {
                    "running"
                } else {
                    "ok"
                };
            } else {
                out.outcome = "failed";
                out.error_code = resp.code.clone().unwrap_or_default();
                out.reason = resp
                    .sql_state
                    .clone()
                    .map(|s| format!("SQLSTATE {s}"))
                    .unwrap_or_default();
            }
            self.observe_statement(session.as_ref(), uses, &resp);
            let Some(plan) = plan else {
                if resp.success && (!resp.rowtype.is_empty() || !resp.chunks.is_empty()) {
                    out.outcome = "withheld";
                    out.reason = "no decision known for this query id".into();
                    return withheld(
                        resp.query_id.as_deref(),
                        "Tollgate has no decision for this query (it was issued before a restart or by another session); run it again",
                    );
                }
                return Response::from_parts(parts, full(raw));
            };
            if let (Some(s), Some(q)) = (session, &resp.query_id) {
                s.remember_result_plan(q, plan.clone());
            }
            if !result::needs_rewrite(plan, &resp) {
                if plan.record_rows > 0 && resp.success {
                    record_rows(out, &resp, plan.record_rows);
                }
                return Response::from_parts(parts, full(raw));
            }
            let lifetime = self
                .storage
                .as_ref()
                .map(|s| s.config().ticket_lifetime)
                .unwrap_or_default();
            if !resp.chunks.is_empty() && self.storage.is_none() {
                out.outcome = "withheld";
                out.reason = "chunked result and no storage client".into();
                return withheld(
                    resp.query_id.as_deref(),
                    "the result is chunked and this Tollgate has no storage client to serve chunks",
                );
            }
            let ctx = result::RewriteContext {
                plan,
                masking: &self.masking,
                chunks: &self.chunks,
                session: session.as_ref(),
                authority,
                ticket_lifetime: lifetime,
            };
            let query_id = resp.query_id.clone();
            return match result::rewrite(&mut resp, &ctx) {
                Ok(report) => {
                    info!(
                        session = session.as_ref().map(|s| s.id.as_str()).unwrap_or("-"),
                        query = query_id.as_deref().unwrap_or("-"),
                        rule = %plan.rule_id,
                        masked = %serde_json::to_string(&report.masked).unwrap_or_default(),
                        chunks = report.chunks,
                        chunks_dropped = report.chunks_dropped,
                        chunk_bytes = report.chunk_bytes,
                        rows = report.rows.unwrap_or(0),
                        capped = report.capped,
                        capped_by = report.capped_by.unwrap_or("-"),
                        "result rewritten"
                    );
                    out.rows = report.rows.unwrap_or(out.rows);
                    out.masked = report
                        .masked
                        .iter()
                        .map(|m| MaskedCount {
                            column: m.column.clone(),
                            rule_id: m.rule_id.clone(),
                            method: m.method.clone(),
                            values: m.values,
                        })
                        .collect();
                    if report.chunks > 0 || report.chunks_dropped > 0 {
                        out.attrs.insert("chunks".into(), report.chunks.to_string());
                        out.attrs
                            .insert("chunks_dropped".into(), report.chunks_dropped.to_string());
                        out.attrs
                            .insert("chunk_bytes".into(), report.chunk_bytes.to_string());
                    }
                    if let Some(by) = report.capped_by {
                        out.attrs.insert("capped_by".into(), by.to_owned());
                    }
                    if plan.record_rows > 0 {
                        record_rows(out, &resp, plan.record_rows);
                    }
                    let mut parts = parts;
                    parts.headers.remove(http::header::CONTENT_ENCODING);
                    parts.headers.remove(http::header::CONTENT_LENGTH);
                    parts.headers.remove(http::header::TRANSFER_ENCODING);
                    Response::from_parts(parts, full(Bytes::from(resp.to_json_bytes())))
                }
                Err(e) => {
                    warn!(query = query_id.as_deref().unwrap_or("-"), error = %e, "result withheld");
                    out.outcome = "withheld";
                    out.reason.clone_from(&e);
                    withheld(query_id.as_deref(), &e)
                }
            };
        }
        match decoded {
            Ok(decoded) => self.observe(pending, &decoded.bytes, out),
            Err(e) => {
                if matches!(&**pending, Pending::Login { .. }) {
                    out.login = Some(Err(("-".into(), format!("login response unreadable: {e}"))));
                }
            }
        }
        Response::from_parts(parts, full(raw))
    }

    /// Serves `GET /tollgate/chunks/<ticket>`.
    async fn serve_chunk(
        &self,
        conn: &ConnectionContext,
        target: &str,
        presented: Option<Option<&Arc<Session>>>,
    ) -> Response<ProxyBody> {
        let name = target[CHUNK_PATH_PREFIX.len()..]
            .split(['?', '/'])
            .next()
            .unwrap_or("");
        let Some(ticket) = self.chunks.get(name) else {
            warn!(conn = %conn.id, "unknown or expired result chunk requested");
            return chunks::error_reply(
                StatusCode::NOT_FOUND,
                "Tollgate: no such result chunk (unknown or expired); run the query again",
            );
        };
        if let Err(why) = chunks::authorize(&ticket, &self.sessions, conn, presented) {
            warn!(conn = %conn.id, query = %ticket.query_id, chunk = ticket.index, why, "result chunk refused");
            return chunks::error_reply(
                StatusCode::FORBIDDEN,
                &format!("Tollgate refused this result chunk: {why}"),
            );
        }
        let Some(storage) = &self.storage else {
            return chunks::error_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "Tollgate has no storage client configured",
            );
        };
        let done = match &self.audit {
            None => None,
            Some(audit) => {
                if !audit.healthy() {
                    return chunks::error_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Tollgate cannot write its audit spool, so it serves no result data (no access without audit); tell the operator of this host",
                    );
                }
                let audit = audit.clone();
                let mut e = self.event(EventKind::Chunk, conn, Some(&ticket.session));
                e.query_id.clone_from(&ticket.query_id);
                e.rows = ticket.rows;
                e.bytes = ticket.bytes;
                e.attrs.insert("chunk".into(), ticket.index.to_string());
                let masked = ticket.masked.clone();
                let started = Instant::now();
                let done: chunks::ChunkDone = Box::new(move |result| {
                    e.duration_us =
                        u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    e.ts_us = tollgate_audit::event::now_us();
                    match result {
                        Ok(None) => e.decision = "served".into(),
                        Ok(Some(summary)) => {
                            e.decision = "served".into();
                            e.masked = chunk_masked(&masked, &summary);
                        }
                        Err(why) => {
                            e.decision = "failed".into();
                            e.reason = why;
                        }
                    }
                    audit.record_detached(e);
                });
                Some(done)
            }
        };
        chunks::serve(ticket, storage, done).await
    }

    /// Updates sessions from a (decoded) response body.
    fn observe(&self, pending: &Pending, body: &[u8], out: &mut Outcome) {
        match pending {
            Pending::Login { request, process } => {
                let resp = match LoginResponse::parse(body) {
                    Ok(r) => r,
                    Err(e) => {
                        out.login =
                            Some(Err(("-".into(), format!("login response unreadable: {e}"))));
                        return;
                    }
                };
                if !resp.success {
                    out.login = Some(Err((
                        resp.code.clone().unwrap_or_default(),
                        "login failed".into(),
                    )));
                    return;
                }
                let mut identity = request.clone();
                let info = &resp.session_info;
                identity.database = info.database_name.clone().or(identity.database);
                identity.schema = info.schema_name.clone().or(identity.schema);
                identity.warehouse = info.warehouse_name.clone().or(identity.warehouse);
                identity.role = info.role_name.clone().or(identity.role);
                let validity =
                    Duration::from_secs(resp.validity_in_seconds.unwrap_or(3600).max(0) as u64);
                let master_validity = Duration::from_secs(
                    resp.master_validity_in_seconds.unwrap_or(14400).max(0) as u64,
                );
                let mut tokens = Vec::new();
                if let Some(t) = &resp.token {
                    tokens.push((t.expose(), validity));
                }
                if let Some(t) = &resp.master_token {
                    tokens.push((t.expose(), master_validity));
                }
                let session = self.sessions.create(identity, process.clone(), &tokens);
                info!(session = %session.id, "snowflake session started");
                out.login = Some(Ok(session));
            }
            Pending::Renewal { session } => {
                if let Ok(resp) = TokenResponse::parse(body) {
                    if let Some(t) = &resp.session_token {
                        let validity = Duration::from_secs(
                            resp.validity_in_seconds.unwrap_or(3600).max(0) as u64,
                        );
                        self.sessions.register(t.expose(), session, validity);
                    }
                    if let Some(t) = &resp.master_token {
                        self.sessions
                            .register(t.expose(), session, Duration::from_secs(14400));
                    }
                }
            }
            Pending::Logout { session } => {
                self.sessions.remove(session);
                self.chunks.forget_session(session);
                info!(session = %session.id, "snowflake session ended");
            }
            Pending::Statement { session, uses, .. } => {
                if let Ok(resp) = QueryResponse::parse(body) {
                    self.observe_statement(session.as_ref(), uses, &resp);
                }
            }
            Pending::SqlApiSubmit { bearer } => {
                for handle in sql_api::response_handles(body) {
                    self.sql_handles.allow(handle, *bearer);
                }
            }
        }
    }

    /// Keeps the session's identity current after a statement.
    fn observe_statement(
        &self,
        session: Option<&Arc<Session>>,
        uses: &[(tollgate_policy::UseKind, String)],
        resp: &QueryResponse,
    ) {
        {
            {
                let Some(session) = session else {
                    return;
                };
                if !resp.success {
                    return;
                }
                session.update(|id| {
                    for (kind, name) in uses {
                        match kind {
                            tollgate_policy::UseKind::Database => {
                                id.database = Some(name.clone());
                                id.schema = None;
                            }
                            tollgate_policy::UseKind::Schema => id.schema = Some(name.clone()),
                            tollgate_policy::UseKind::Warehouse => {
                                id.warehouse = Some(name.clone())
                            }
                            tollgate_policy::UseKind::Role => id.role = Some(name.clone()),
                            _ => {}
                        }
                    }
                    if let Some(d) = &resp.final_database_name {
                        id.database = Some(d.clone());
                    }
                    if let Some(s) = &resp.final_schema_name {
                        id.schema = Some(s.clone());
                    }
                    if let Some(w) = &resp.final_warehouse_name {
                        id.warehouse = Some(w.clone());
                    }
                    if let Some(r) = &resp.final_role_name {
                        id.role = Some(r.clone());
                    }
                });
            }
        }
    }
}

impl ExchangeHooks for SnowflakeHooks {
    fn connection_opened<'a>(
        &'a self,
        conn: &'a ConnectionContext,
    ) -> HookFuture<'a, Result<(), String>> {
        Box::pin(async move {
            // Not gating: the login and every statement on the connection are, and refusing
            // them gives the agent a clear error instead of a dropped connection.
            if let Some(audit) = &self.audit {
                audit.record_detached(crate::audit::connection_opened(conn));
            }
            Ok(())
        })
    }

    fn connection_closed(&self, record: &crate::record::ConnectionRecord) {
        if let Some(audit) = &self.audit {
            for e in crate::audit::connection_closed(record) {
                audit.record_detached(e);
            }
        }
    }

    fn request_filter<'a>(
        &'a self,
        conn: &'a ConnectionContext,
        exchange: &'a mut Exchange,
        request: Request<ProxyBody>,
    ) -> HookFuture<'a, RequestAction> {
        Box::pin(self.on_request(conn, exchange, request))
    }

    fn response_filter<'a>(
        &'a self,
        conn: &'a ConnectionContext,
        exchange: &'a mut Exchange,
        response: Response<ProxyBody>,
    ) -> HookFuture<'a, Response<ProxyBody>> {
        Box::pin(self.on_response(conn, exchange, response))
    }
}
