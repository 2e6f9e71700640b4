//! The ClickHouse sink: schema and migrations, the shipper that drains the spool exactly once,
//! and the reader behind `tollgate replay` / `tollgate audit verify --clickhouse`.
//!
//! # Schema (version 4)
//! `events`: one row per event, the columns of [`Event`] (masked counts as four parallel
//! arrays, attributes as `Map(String, String)`), `ENGINE = ReplacingMergeTree` ordered by
//! `(toDate(ts), host, session_id, seq, event_id)` — a re-delivered event has the same key and
//! merges away — partitioned by month, with a TTL (default six years, HIPAA) and
//! `non_replicated_deduplication_window` so a re-sent batch (same
//! `insert_deduplication_token`) is dropped at insert. Views for analysts: `phi_access`,
//! `denied_statements`, `approvals`, `masked_values`, `sessions` (session and connection chains
//! only: policy reloads are not sessions). `schema_migrations` records
//! what was applied. Migrations run at start with the admin credentials, each once.
//!
//! # Exactly once
//! The shipper keeps `shipped.json` in the spool: the next host sequence to ship and the batch
//! in flight. A batch's bounds are written (fsync) **before** it is sent, and a batch is always
//! re-sent with the same bounds and the same deduplication token
//! (`<host>:<from>-<to>`), so after a ClickHouse outage or a Tollgate crash the re-sent batch is
//! recognised by ClickHouse and stored once. The cursor moves only after ClickHouse answered.
//!
//! # Errors
//! Network errors, timeouts and server errors are retried with exponential back-off (0.5 s to
//! 30 s). Errors about the data (a parse or type error) are not retried as they are: the batch
//! is split until the offending event is alone, which is set aside in `quarantine/` (it stays in
//! the spool too) and logged, and shipping goes on. Configuration errors (unknown table, access
//! denied, authentication) pause shipping with a long back-off and a clear log line.
//!
//! # SQL
//! No value is ever spliced into SQL text: values travel as ClickHouse server-side query
//! parameters (`{session:String}` in the statement, `param_session=…` beside it, sent by the
//! client as form fields), so a session id, host name or password holding quotes, backslashes
//! or braces reaches the server unchanged and can change nothing but the value. The names
//! that ClickHouse cannot take as parameters everywhere (the database, the cluster and the
//! writer user, in DDL and view bodies, where a `{name:Identifier}` would make a view
//! parameterised) come from the configuration, are checked by
//! [`ClickHouseConfig::validate`] (letters, digits, `_`, `-`, `.`) and are written
//! back-quoted. The retention in days is a typed integer formatted into the table's TTL:
//! ClickHouse stores a TTL's expression text with the table, where a parameter would persist
//! as a cast and no longer compare equal to the configured retention.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::event::{Event, EventKind, MaskedCount};
use crate::spool;

/// Where and how to reach ClickHouse.
#[derive(Clone)]
pub struct ClickHouseConfig {
    /// `http://host:8123` or `https://…`.
    pub url: String,
    /// Database (created by migrations).
    pub database: String,
    /// The writer: inserts only.
    pub user: String,
    /// Its password.
    pub password: Option<String>,
    /// The user that runs migrations (creates the database, tables, views and the writer's
    /// grants); `None`: the writer does (it then needs DDL rights).
    pub admin_user: Option<String>,
    /// Its password.
    pub admin_password: Option<String>,
    /// Whether migrations create the writer user and grant it INSERT (admin needs access
    /// management).
    pub create_writer: bool,
    /// Retention of events, in days (TTL).
    pub retention_days: u32,
    /// Events per insert at most.
    pub batch_max: usize,
    /// How long the shipper waits to fill a batch.
    pub linger: Duration,
    /// Cluster name for the `ON CLUSTER` schema variant (Replicated + Distributed); `None`:
    /// a single server.
    pub cluster: Option<String>,
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("admin_user", &self.admin_user)
            .field("retention_days", &self.retention_days)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl ClickHouseConfig {
    /// Defaults for `url`: database `tollgate`, user `default`, six years, 5,000 per batch.
    pub fn new(url: impl Into<String>) -> Self {
        ClickHouseConfig {
            url: url.into(),
            database: "tollgate".into(),
            user: "default".into(),
            password: None,
            admin_user: None,
            admin_password: None,
            create_writer: false,
            retention_days: 6 * 365 + 2,
            batch_max: 5000,
            linger: Duration::from_millis(200),
            cluster: None,
        }
    }

    /// Checks the names that are written into SQL (database, cluster, writer user): each
    /// must be 1 to 255 ASCII letters, digits, `_`, `-` or `.`. Called by [`migrate`] and
    /// [`fetch`] before any statement is sent; the first bad name is the error. A configuration
    /// check reports them early and all at once with [`ClickHouseConfig::invalid_names`], the
    /// check this is made of.
    pub fn validate(&self) -> Result<(), ShipError> {
        match self.invalid_names().into_iter().next() {
            Some((field, detail)) => Err(ShipError::Config {
                what: format!("checking the ClickHouse {field} name"),
                code: 0,
                detail,
            }),
            None => Ok(()),
        }
    }

    /// Every name [`ClickHouseConfig::validate`] refuses, as (field, what is wrong and what to
    /// use), fields named as in this struct (`database`, `cluster`, `user`); empty when it
    /// passes. The writer's name counts only when Tollgate creates it (`create_writer`).
    pub fn invalid_names(&self) -> Vec<(&'static str, String)> {
        let mut names = vec![("database", self.database.as_str())];
        if let Some(cluster) = &self.cluster {
            names.push(("cluster", cluster.as_str()));
        }
        if self.create_writer {
            names.push(("user", self.user.as_str()));
        }
        names
            .into_iter()
            .filter(|(_, name)| !is_identifier(name))
            .map(|(field, name)| {
                (
                    field,
                    format!(
                        "{name:?} is not a usable {field} name: use 1 to 255 ASCII letters, digits, `_`, `-` or `.`"
                    ),
                )
            })
            .collect()
    }

    fn client(&self, user: &str, password: Option<&str>) -> Client {
        let mut c = Client::default()
            .with_url(&self.url)
            .with_user(user)
            .with_setting("date_time_output_format", "iso");
        if let Some(p) = password {
            c = c.with_password(p);
        }
        c
    }

    /// A client as the writer, on the database.
    pub fn writer(&self) -> Client {
        self.client(&self.user, self.password.as_deref())
            .with_database(&self.database)
    }

    /// A client as the admin (or the writer when no admin is set).
    pub fn admin(&self) -> Client {
        match &self.admin_user {
            Some(u) => self.client(u, self.admin_password.as_deref()),
            None => self.client(&self.user, self.password.as_deref()),
        }
    }
}

/// One row of `events`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct EventRow {
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: uuid::Uuid,
    session_id: String,
    seq: u64,
    host_seq: u64,
    ts: i64,
    kind: String,
    host: String,
    connection_id: String,
    pid: Option<u32>,
    uid: Option<u32>,
    comm: String,
    exe: String,
    cgroup: String,
    sf_account: String,
    sf_user: String,
    sf_role: String,
    sf_warehouse: String,
    sf_database: String,
    sf_schema: String,
    oidc_subject: String,
    oidc_issuer: String,
    statement_kind: String,
    tables: Vec<String>,
    rule_id: String,
    decision: String,
    reason: String,
    query_id: String,
    sql: String,
    sql_full: bool,
    sql_fingerprint: String,
    rows: u64,
    bytes: u64,
    masked_column: Vec<String>,
    masked_rule: Vec<String>,
    masked_method: Vec<String>,
    masked_values: Vec<u64>,
    duration_us: u64,
    error_code: String,
    attrs: Vec<(String, String)>,
    result_rows: String,
    prev_hash: String,
    hash: String,
    signature: String,
    key_id: String,
}

impl From<&Event> for EventRow {
    fn from(e: &Event) -> Self {
        EventRow {
            event_id: e.event_id,
            session_id: e.session_id.clone(),
            seq: e.seq,
            host_seq: e.host_seq,
            ts: e.ts_us,
            kind: e.kind.as_str().to_owned(),
            host: e.host.clone(),
            connection_id: e.connection_id.clone(),
            pid: e.pid,
            uid: e.uid,
            comm: e.comm.clone(),
            exe: e.exe.clone(),
            cgroup: e.cgroup.clone(),
            sf_account: e.sf_account.clone(),
            sf_user: e.sf_user.clone(),
            sf_role: e.sf_role.clone(),
            sf_warehouse: e.sf_warehouse.clone(),
            sf_database: e.sf_database.clone(),
            sf_schema: e.sf_schema.clone(),
            oidc_subject: e.oidc_subject.clone(),
            oidc_issuer: e.oidc_issuer.clone(),
            statement_kind: e.statement_kind.clone(),
            tables: e.tables.clone(),
            rule_id: e.rule_id.clone(),
            decision: e.decision.clone(),
            reason: e.reason.clone(),
            query_id: e.query_id.clone(),
            sql: e.sql.clone(),
            sql_full: e.sql_full,
            sql_fingerprint: e.sql_fingerprint.clone(),
            rows: e.rows,
            bytes: e.bytes,
            masked_column: e.masked.iter().map(|m| m.column.clone()).collect(),
            masked_rule: e.masked.iter().map(|m| m.rule_id.clone()).collect(),
            masked_method: e.masked.iter().map(|m| m.method.clone()).collect(),
            masked_values: e.masked.iter().map(|m| m.values).collect(),
            duration_us: e.duration_us,
            error_code: e.error_code.clone(),
            attrs: e
                .attrs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            result_rows: e.result_rows.clone(),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
            signature: e.signature.clone(),
            key_id: e.key_id.clone(),
        }
    }
}

impl EventRow {
    /// Back to an event; `None` when the kind is unknown (a row not written by Tollgate).
    pub fn into_event(self) -> Option<Event> {
        let kind = EventKind::parse(&self.kind)?;
        let masked = self
            .masked_column
            .into_iter()
            .zip(self.masked_rule)
            .zip(self.masked_method)
            .zip(self.masked_values)
            .map(|(((column, rule_id), method), values)| MaskedCount {
                column,
                rule_id,
                method,
                values,
            })
            .collect();
        Some(Event {
            event_id: self.event_id,
            session_id: self.session_id,
            seq: self.seq,
            host_seq: self.host_seq,
            ts_us: self.ts,
            kind,
            host: self.host,
            connection_id: self.connection_id,
            pid: self.pid,
            uid: self.uid,
            comm: self.comm,
            exe: self.exe,
            cgroup: self.cgroup,
            sf_account: self.sf_account,
            sf_user: self.sf_user,
            sf_role: self.sf_role,
            sf_warehouse: self.sf_warehouse,
            sf_database: self.sf_database,
            sf_schema: self.sf_schema,
            oidc_subject: self.oidc_subject,
            oidc_issuer: self.oidc_issuer,
            statement_kind: self.statement_kind,
            tables: self.tables,
            rule_id: self.rule_id,
            decision: self.decision,
            reason: self.reason,
            query_id: self.query_id,
            sql: self.sql,
            sql_full: self.sql_full,
            sql_fingerprint: self.sql_fingerprint,
            rows: self.rows,
            bytes: self.bytes,
            masked,
            duration_us: self.duration_us,
            error_code: self.error_code,
            attrs: self.attrs.into_iter().collect(),
            result_rows: self.result_rows,
            prev_hash: self.prev_hash,
            hash: self.hash,
            signature: self.signature,
            key_id: self.key_id,
        })
    }
}

/// The `events` columns, in [`EventRow`] order.
const EVENT_COLUMNS: &str = "
    event_id UUID,
    session_id String,
    seq UInt64,
    host_seq UInt64,
    ts DateTime64(6, 'UTC'),
    kind LowCardinality(String),
    host LowCardinality(String),
    connection_id String,
    pid Nullable(UInt32),
    uid Nullable(UInt32),
    comm LowCardinality(String),
    exe LowCardinality(String),
    cgroup LowCardinality(String),
    sf_account LowCardinality(String),
    sf_user LowCardinality(String),
    sf_role LowCardinality(String),
    sf_warehouse LowCardinality(String),
    sf_database LowCardinality(String),
    sf_schema LowCardinality(String),
    oidc_subject String,
    oidc_issuer LowCardinality(String),
    statement_kind LowCardinality(String),
    tables Array(String),
    rule_id LowCardinality(String),
    decision LowCardinality(String),
    reason String,
    query_id String,
    sql String CODEC(ZSTD(3)),
    sql_full Bool,
    sql_fingerprint String,
    rows UInt64,
    bytes UInt64,
    masked_column Array(String),
    masked_rule Array(LowCardinality(String)),
    masked_method Array(LowCardinality(String)),
    masked_values Array(UInt64),
    duration_us UInt64,
    error_code LowCardinality(String),
    attrs Map(String, String),
    result_rows String CODEC(ZSTD(3)),
    prev_hash String,
    hash String,
    signature String,
    key_id LowCardinality(String)";

/// One migration: a version, what it does, and its statements (`{db}`, `{on_cluster}`,
/// `{retention_days}`, `{engine}` are substituted).
struct Migration {
    version: u32,
    description: &'static str,
    statements: &'static [&'static str],
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "events table",
        statements: &["CREATE TABLE IF NOT EXISTS {db}.events {on_cluster} ({columns})
ENGINE = {engine}
PARTITION BY toYYYYMM(ts)
ORDER BY (toDate(ts), host, session_id, seq, event_id)
TTL toDateTime(ts) + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000"],
    },
    Migration {
        version: 2,
        description: "analyst views",
        statements: &[
            // Who touched PHI: every decided statement that read classified data, with identity.
            "CREATE OR REPLACE VIEW {db}.phi_access {on_cluster} AS
SELECT ts, host, session_id, query_id, sf_account, sf_user, sf_role, oidc_subject, comm, exe, uid,
       cgroup, statement_kind, tables, rule_id, decision, sql_fingerprint, sql
FROM {db}.events FINAL
WHERE kind = 'decision' AND decision IN ('allow', 'mask') AND (notEmpty(tables))",
            "CREATE OR REPLACE VIEW {db}.denied_statements {on_cluster} AS
SELECT ts, host, session_id, sf_user, sf_role, oidc_subject, comm, exe, statement_kind, tables,
       rule_id, reason, sql_fingerprint, sql
FROM {db}.events FINAL
WHERE kind = 'decision' AND decision = 'deny'",
            "CREATE OR REPLACE VIEW {db}.approvals {on_cluster} AS
SELECT ts, host, session_id, kind, sf_user, sf_role, rule_id, decision, reason,
       attrs['approval_id'] AS approval_id, attrs['approver'] AS approver, sql_fingerprint, sql
FROM {db}.events FINAL
WHERE kind IN ('approval_request', 'approval_decision')",
            "CREATE OR REPLACE VIEW {db}.masked_values {on_cluster} AS
SELECT ts, host, session_id, query_id, sf_user, sf_role, oidc_subject, rule_id,
       m.1 AS column, m.2 AS mask_rule, m.3 AS method, m.4 AS values
FROM {db}.events FINAL
ARRAY JOIN arrayZip(masked_column, masked_rule, masked_method, masked_values) AS m
WHERE kind IN ('result', 'chunk')",
            "CREATE OR REPLACE VIEW {db}.sessions {on_cluster} AS
SELECT session_id, host, min(ts) AS started, max(ts) AS last_event,
       anyIf(sf_user, kind = 'login') AS sf_user, anyIf(sf_role, kind = 'login') AS sf_role,
       anyIf(comm, kind = 'login') AS comm, countIf(kind = 'query') AS queries,
       countIf(kind = 'decision' AND decision = 'deny') AS denied,
       sumIf(rows, kind = 'result') AS rows_returned,
       countIf(kind IN ('session_end', 'disconnect')) > 0 AS closed
FROM {db}.events FINAL
GROUP BY session_id, host",
        ],
    },
    Migration {
        version: 3,
        description: "insert-only writer",
        statements: &[
            // The password is a server-side parameter (`param_password`), never SQL text.
            "CREATE USER IF NOT EXISTS {writer} {on_cluster} IDENTIFIED WITH sha256_password BY {password:String} HOST LOCAL",
            "GRANT {on_cluster} INSERT ON {db}.events TO {writer}",
        ],
    },
    Migration {
        version: 4,
        description: "sessions view: session chains only",
        statements: &[SESSIONS_VIEW],
    },
];

/// The `sessions` view: one row per chain of a Snowflake session or of a connection
/// (`conn:<id>`). A policy reload is a one-event chain of its own (`policy:<event id>`, kind
/// `policy_reload`) and no session: its events are left out (by kind, and by chain name should
/// a later kind share such a chain), so it is never listed, least of all as an open session.
/// Version 2 created the view without that filter; version 4 replaces it.
const SESSIONS_VIEW: &str = "CREATE OR REPLACE VIEW {db}.sessions {on_cluster} AS
SELECT session_id, host, min(ts) AS started, max(ts) AS last_event,
       anyIf(sf_user, kind = 'login') AS sf_user, anyIf(sf_role, kind = 'login') AS sf_role,
       anyIf(comm, kind = 'login') AS comm, countIf(kind = 'query') AS queries,
       countIf(kind = 'decision' AND decision = 'deny') AS denied,
       sumIf(rows, kind = 'result') AS rows_returned,
       countIf(kind IN ('session_end', 'disconnect')) > 0 AS closed
FROM {db}.events FINAL
WHERE kind != 'policy_reload' AND NOT startsWith(session_id, 'policy:')
GROUP BY session_id, host";

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 4;

/// Whether `s` is a name [`ClickHouseConfig::validate`] accepts.
fn is_identifier(s: &str) -> bool {
    (1..=255).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A validated name (see [`is_identifier`]), back-quoted for SQL.
fn ident(s: &str) -> String {
    debug_assert!(is_identifier(s), "{s:?} was not validated");
    format!("`{s}`")
}

/// Creates or migrates the schema; returns the versions applied now.
pub async fn migrate(cfg: &ClickHouseConfig) -> Result<Vec<u32>, ShipError> {
    cfg.validate()?;
    let admin = cfg.admin();
    let db = ident(&cfg.database);
    let on_cluster = cfg
        .cluster
        .as_deref()
        .map(|c| format!("ON CLUSTER {}", ident(c)))
        .unwrap_or_default();
    let engine = if cfg.cluster.is_some() {
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/events', '{replica}')"
    } else {
        "ReplacingMergeTree"
    };
    let run = |query: clickhouse::query::Query| async move {
        query
            .execute()
            .await
            .map_err(|e| ShipError::from_clickhouse(&e, "migrating the audit schema"))
    };
    run(admin.query(&format!("CREATE DATABASE IF NOT EXISTS {db} {on_cluster}"))).await?;
    run(admin.query(&format!(
        "CREATE TABLE IF NOT EXISTS {db}.schema_migrations {on_cluster} (version UInt32, description String, applied_at DateTime64(6, 'UTC') DEFAULT now64(6)) ENGINE = MergeTree ORDER BY version"
    )))
    .await?;
    let applied: Vec<u32> = admin
        .query(&format!("SELECT version FROM {db}.schema_migrations"))
        .fetch_all::<u32>()
        .await
        .map_err(|e| ShipError::from_clickhouse(&e, "reading schema_migrations"))?;
    let mut now = Vec::new();
    for m in MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        if m.version == 3 && !cfg.create_writer {
            continue;
        }
        for st in m.statements {
            let sql = st
                .replace("{db}", &db)
                .replace("{on_cluster}", &on_cluster)
                .replace("{columns}", EVENT_COLUMNS)
                .replace("{engine}", engine)
                .replace("{retention_days}", &cfg.retention_days.to_string());
            // Only the writer migration names the writer (it runs only with create_writer,
            // which is when validate checked the name).
            let sql = if sql.contains("{writer}") {
                sql.replace("{writer}", &ident(&cfg.user))
            } else {
                sql
            };
            let mut query = admin.query(&sql);
            if sql.contains("{password:String}") {
                query = query.param("password", cfg.password.as_deref().unwrap_or(""));
            }
            run(query).await?;
        }
        run(admin
            .query(&format!(
                "INSERT INTO {db}.schema_migrations (version, description) VALUES ({{version:UInt32}}, {{description:String}})"
            ))
            .param("version", m.version)
            .param("description", m.description))
        .await?;
        now.push(m.version);
    }
    // Retention follows the configuration.
    let want = format!("toIntervalDay({})", cfg.retention_days);
    let ddl: String = admin
        .query("SELECT engine_full FROM system.tables WHERE database = {database:String} AND name = 'events'")
        .param("database", cfg.database.as_str())
        .fetch_one::<String>()
        .await
        .unwrap_or_default();
    if !ddl.is_empty() && !ddl.contains(&want) {
        run(admin.query(&format!(
            "ALTER TABLE {db}.events {on_cluster} MODIFY TTL toDateTime(ts) + INTERVAL {} DAY",
            cfg.retention_days
        )))
        .await?;
        info!(days = cfg.retention_days, "audit retention changed");
    }
    Ok(now)
}

/// Shipping failures.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ShipError {
    /// ClickHouse could not be reached or did not answer in time: retried.
    #[error("ClickHouse unreachable while {what}: {detail}")]
    Unavailable {
        /// What was being done.
        what: String,
        /// The error.
        detail: String,
    },
    /// ClickHouse refused the data: not retried as is.
    #[error("ClickHouse refused the data while {what} (code {code}): {detail}")]
    Data {
        /// What was being done.
        what: String,
        /// ClickHouse error code.
        code: u32,
        /// The error.
        detail: String,
    },
    /// Configuration or permissions: shipping pauses.
    #[error("ClickHouse configuration problem while {what} (code {code}): {detail}; check the clickhouse settings (url, database, user, password file) and the writer's grants")]
    Config {
        /// What was being done.
        what: String,
        /// ClickHouse error code (0: not from the server).
        code: u32,
        /// The error.
        detail: String,
    },
    /// The spool could not be read or the cursor written.
    #[error("{0}")]
    Spool(String),
}

/// ClickHouse error codes that mean the data is at fault.
/// (Parse and type errors, values out of range, a violated CHECK constraint, …)
const DATA_CODES: &[u32] = &[6, 26, 27, 38, 41, 53, 69, 70, 72, 117, 130, 131, 241, 469];
/// Codes that mean configuration or permissions.
const CONFIG_CODES: &[u32] = &[16, 47, 60, 81, 192, 194, 195, 497, 516];

fn error_code(msg: &str) -> Option<u32> {
    let i = msg.find("Code: ")?;
    let digits: String = msg[i + 6..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

impl ShipError {
    /// Classifies a client error.
    pub fn from_clickhouse(e: &clickhouse::error::Error, what: &str) -> Self {
        use clickhouse::error::Error as E;
        let detail = e.to_string();
        let what = what.to_owned();
        match e {
            E::BadResponse(msg) => match error_code(msg) {
                Some(code) if DATA_CODES.contains(&code) => ShipError::Data { what, code, detail },
                Some(code) if CONFIG_CODES.contains(&code) => {
                    ShipError::Config { what, code, detail }
                }
                _ => ShipError::Unavailable { what, detail },
            },
            E::SchemaMismatch(_) | E::InvalidColumnsHeader(_) | E::InvalidParams(_) => {
                ShipError::Config {
                    what,
                    code: 0,
                    detail,
                }
            }
            _ => ShipError::Unavailable { what, detail },
        }
    }
}

/// The shipper's cursor, in `<spool>/shipped.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Host sequence of the next event to ship.
    pub next: u64,
    /// A batch `[from, to)` sent or about to be sent, not yet acknowledged.
    pub inflight: Option<(u64, u64)>,
    /// Events set aside as refused by ClickHouse.
    pub quarantined: u64,
}

const CURSOR_FILE: &str = "shipped.json";

impl Cursor {
    /// Reads the cursor of `spool_dir` (absent: from the start).
    pub fn load(spool_dir: &Path) -> Result<Cursor, ShipError> {
        match std::fs::read(spool_dir.join(CURSOR_FILE)) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                ShipError::Spool(format!(
                    "{}: {e}; remove it to re-ship the spool (ClickHouse drops the repeats)",
                    spool_dir.join(CURSOR_FILE).display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::default()),
            Err(e) => Err(ShipError::Spool(format!(
                "{}: {e}",
                spool_dir.join(CURSOR_FILE).display()
            ))),
        }
    }

    fn store(&self, spool_dir: &Path) -> Result<(), ShipError> {
        let tmp = spool_dir.join(".shipped.json.tmp");
        let res = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(self).unwrap_or_default())?;
            f.sync_all()?;
            std::fs::rename(&tmp, spool_dir.join(CURSOR_FILE))?;
            std::fs::File::open(spool_dir)?.sync_all()
        })();
        res.map_err(|e| ShipError::Spool(format!("writing the shipping cursor: {e}")))
    }
}

/// Shipping state, for status and tests.
#[derive(Debug, Default)]
pub struct ShipStats {
    /// Events acknowledged by ClickHouse.
    pub shipped: AtomicU64,
    /// Batches sent.
    pub batches: AtomicU64,
    /// Failed attempts.
    pub failures: AtomicU64,
    /// Events set aside.
    pub quarantined: AtomicU64,
    /// The last error, if the last attempt failed.
    pub last_error: Mutex<Option<String>>,
}

/// Drains the spool into ClickHouse until `stop` turns true.
pub struct Shipper {
    cfg: ClickHouseConfig,
    spool_dir: PathBuf,
    durable: watch::Receiver<u64>,
    stats: Arc<ShipStats>,
    /// Where the last read stopped (so a batch does not rescan its segment).
    pos: Mutex<Option<spool::ReadPos>>,
}

impl Shipper {
    /// A shipper for the spool at `spool_dir`, woken by `durable` (see
    /// [`crate::Spool::durable`]).
    pub fn new(cfg: ClickHouseConfig, spool_dir: PathBuf, durable: watch::Receiver<u64>) -> Self {
        Shipper {
            cfg,
            spool_dir,
            durable,
            stats: Arc::new(ShipStats::default()),
            pos: Mutex::new(None),
        }
    }

    /// Counters.
    pub fn stats(&self) -> Arc<ShipStats> {
        self.stats.clone()
    }

    async fn insert(
        &self,
        client: &Client,
        events: &[Event],
        token: &str,
    ) -> Result<(), ShipError> {
        let client = client
            .clone()
            .with_setting("insert_deduplication_token", token)
            .with_setting("insert_deduplicate", "1");
        let what = "inserting audit events";
        let mut ins = client
            .insert::<EventRow>("events")
            .await
            .map_err(|e| ShipError::from_clickhouse(&e, what))?
            .with_timeouts(Some(Duration::from_secs(30)), Some(Duration::from_secs(60)));
        for e in events {
            ins.write(&EventRow::from(e))
                .await
                .map_err(|e| ShipError::from_clickhouse(&e, what))?;
        }
        ins.end()
            .await
            .map_err(|e| ShipError::from_clickhouse(&e, what))
    }

    /// Ships `events` (the batch `[from, to)`), splitting on data errors; events ClickHouse
    /// refuses alone are quarantined. Returns once every event is stored or set aside.
    async fn ship_batch(
        &self,
        client: &Client,
        events: &[Event],
        from: u64,
        to: u64,
        cursor: &mut Cursor,
    ) -> Result<(), ShipError> {
        let token = format!(
            "{}:{from}-{to}",
            events.first().map_or("", |e| e.host.as_str())
        );
        match self.insert(client, events, &token).await {
            Ok(()) => Ok(()),
            Err(ShipError::Data { code, detail, .. }) if events.len() > 1 => {
                warn!(code, %detail, events = events.len(), "ClickHouse refused a batch: splitting it to find the event at fault");
                let mid = events.len() / 2;
                let split = from + mid as u64;
                Box::pin(self.ship_batch(client, &events[..mid], from, split, cursor)).await?;
                Box::pin(self.ship_batch(client, &events[mid..], split, to, cursor)).await
            }
            Err(ShipError::Data { code, detail, .. }) => {
                let e = &events[0];
                let dir = self.spool_dir.join("quarantine");
                let write = std::fs::create_dir_all(&dir).and_then(|()| {
                    std::fs::write(
                        dir.join(format!("{:020}.json", e.host_seq)),
                        serde_json::to_vec(&serde_json::json!({
                            "code": code, "error": detail, "event": e,
                        }))
                        .unwrap_or_default(),
                    )
                });
                if let Err(err) = write {
                    return Err(ShipError::Spool(format!("quarantining an event: {err}")));
                }
                error!(code, %detail, host_seq = e.host_seq, session = %e.session_id, "ClickHouse refused an audit event: set aside in the spool's quarantine/ (it stays in the spool; `tollgate audit verify --clickhouse` will show it missing)");
                cursor.quarantined += 1;
                self.stats.quarantined.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Runs until `stop` is true and everything durable has been shipped (or ClickHouse is
    /// unreachable at that moment).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let client = self.cfg.writer();
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.step(&client).await {
                Ok(true) => {
                    backoff = Duration::from_millis(500);
                    continue;
                }
                Ok(false) => {
                    backoff = Duration::from_millis(500);
                    if *stop.borrow() {
                        return;
                    }
                    tokio::select! {
                        _ = self.durable.changed() => {
                            tokio::time::sleep(self.cfg.linger).await;
                        }
                        _ = stop.changed() => {}
                    }
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    *self.stats.last_error.lock().expect("stats lock") = Some(e.to_string());
                    let wait = match &e {
                        ShipError::Config { .. } => Duration::from_secs(60),
                        _ => backoff,
                    };
                    warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "audit shipping to ClickHouse failed; events stay in the spool");
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    if *stop.borrow() {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => { if *stop.borrow() { return; } }
                    }
                }
            }
        }
    }

    /// Ships one batch if there is one; `Ok(true)` when it did.
    pub async fn step(&self, client: &Client) -> Result<bool, ShipError> {
        let mut cursor = Cursor::load(&self.spool_dir)?;
        let (from, to, events) = match cursor.inflight {
            Some((from, to)) => {
                let events = spool::read_from(&self.spool_dir, from, (to - from) as usize)
                    .map_err(|e| ShipError::Spool(e.to_string()))?;
                (from, to, events)
            }
            None => {
                let durable = *self.durable.borrow();
                if durable <= cursor.next {
                    return Ok(false);
                }
                let n = ((durable - cursor.next) as usize).min(self.cfg.batch_max);
                let hint = self
                    .pos
                    .lock()
                    .expect("pos lock")
                    .clone()
                    .filter(|p| p.next == cursor.next)
                    .unwrap_or(spool::ReadPos {
                        next: cursor.next,
                        segment: u64::MAX,
                        offset: 0,
                    });
                let (events, after) = spool::read_at(&self.spool_dir, &hint, n)
                    .map_err(|e| ShipError::Spool(e.to_string()))?;
                *self.pos.lock().expect("pos lock") = Some(after);
                if events.is_empty() {
                    return Ok(false);
                }
                let from = cursor.next;
                let to = events.last().map_or(from, |e| e.host_seq + 1);
                cursor.inflight = Some((from, to));
                cursor.store(&self.spool_dir)?;
                (from, to, events)
            }
        };
        if !events.is_empty() {
            self.ship_batch(client, &events, from, to, &mut cursor)
                .await?;
        }
        cursor.next = to;
        cursor.inflight = None;
        cursor.store(&self.spool_dir)?;
        self.stats
            .shipped
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        *self.stats.last_error.lock().expect("stats lock") = None;
        Ok(true)
    }
}

/// What to read back from ClickHouse.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// One chain.
    pub session: Option<String>,
    /// Events at or after (µs).
    pub since_us: Option<i64>,
    /// Events before (µs).
    pub until_us: Option<i64>,
    /// Only this host.
    pub host: Option<String>,
}

/// Reads events back (every copy, not merged: verification must see duplicates and
/// conflicts). For a time range, whole chains that have an event in the range are read.
pub async fn fetch(cfg: &ClickHouseConfig, sel: &Selection) -> Result<Vec<Event>, ShipError> {
    cfg.validate()?;
    let client = cfg.admin().with_database(&cfg.database);
    let sql = select_events_sql(sel);
    let mut query = client.query(&sql);
    if let Some(s) = &sel.session {
        query = query.param("session", s.as_str());
    }
    if let Some(h) = &sel.host {
        query = query.param("host", h.as_str());
    }
    if let Some(t) = sel.since_us {
        query = query.param("since_us", t);
    }
    if let Some(t) = sel.until_us {
        query = query.param("until_us", t);
    }
    let rows = query
        .fetch_all::<EventRow>()
        .await
        .map_err(|e| ShipError::from_clickhouse(&e, "reading audit events"))?;
    Ok(rows.into_iter().filter_map(EventRow::into_event).collect())
}

/// The statement behind [`fetch`]: every value of `sel` is a server-side parameter
/// (`{session:String}`, `{host:String}`, `{since_us:Int64}`, `{until_us:Int64}`), never text.
fn select_events_sql(sel: &Selection) -> String {
    let mut conds: Vec<String> = Vec::new();
    if sel.session.is_some() {
        conds.push("session_id = {session:String}".into());
    }
    if sel.host.is_some() {
        conds.push("host = {host:String}".into());
    }
    let mut range: Vec<String> = Vec::new();
    if sel.since_us.is_some() {
        range.push("ts >= fromUnixTimestamp64Micro({since_us:Int64}, 'UTC')".into());
    }
    if sel.until_us.is_some() {
        range.push("ts < fromUnixTimestamp64Micro({until_us:Int64}, 'UTC')".into());
    }
    if !range.is_empty() {
        let mut inner = range;
        inner.extend(conds.iter().cloned());
        conds.push(format!(
            "session_id IN (SELECT DISTINCT session_id FROM events WHERE {})",
            inner.join(" AND ")
        ));
    }
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    format!("SELECT ?fields FROM events {where_} ORDER BY host, host_seq")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_events() {
        let mut e = Event::new(EventKind::Result, "s1");
        e.masked.push(MaskedCount {
            column: "SSN".into(),
            rule_id: "r".into(),
            method: "partial".into(),
            values: 3,
        });
        e.attrs.insert("chunk".into(), "2".into());
        e.pid = Some(7);
        let back = EventRow::from(&e).into_event().unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn error_codes_classify() {
        let data = clickhouse::error::Error::BadResponse(
            "Code: 27. DB::Exception: Cannot parse input".into(),
        );
        assert!(matches!(
            ShipError::from_clickhouse(&data, "x"),
            ShipError::Data { code: 27, .. }
        ));
        let denied = clickhouse::error::Error::BadResponse(
            "Code: 497. DB::Exception: tollgate_writer: Not enough privileges".into(),
        );
        assert!(matches!(
            ShipError::from_clickhouse(&denied, "x"),
            ShipError::Config { code: 497, .. }
        ));
        let down = clickhouse::error::Error::TimedOut;
        assert!(matches!(
            ShipError::from_clickhouse(&down, "x"),
            ShipError::Unavailable { .. }
        ));
    }

    #[test]
    fn names_written_into_sql_are_validated() {
        let mut cfg = ClickHouseConfig::new("http://127.0.0.1:8123");
        assert!(cfg.validate().is_ok());
        for bad in [
            "",
            "a`b",
            "a b",
            "db;DROP",
            "x'y",
            "{db}",
            "a\\b",
            &"x".repeat(256),
        ] {
            cfg.database = bad.to_owned();
            assert!(
                matches!(cfg.validate(), Err(ShipError::Config { code: 0, .. })),
                "{bad:?}"
            );
        }
        cfg.database = "tollgate_audit-2.prod".into();
        cfg.cluster = Some("main cluster".into());
        assert!(cfg.validate().is_err());
        cfg.cluster = Some("main".into());
        cfg.user = "writer`@corp".into();
        assert!(
            cfg.validate().is_ok(),
            "the user is written into SQL only when Tollgate creates it"
        );
        cfg.create_writer = true;
        assert!(cfg.validate().is_err());
        assert_eq!(ident("tollgate"), "`tollgate`");
        // Every bad name is listed, by field; validate reports the first.
        cfg.database = "a b".into();
        cfg.cluster = Some("c;d".into());
        let fields: Vec<&str> = cfg.invalid_names().iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["database", "cluster", "user"]);
        assert!(
            matches!(cfg.validate(), Err(ShipError::Config { ref detail, .. }) if detail.contains("\"a b\" is not a usable database name")),
            "{:?}",
            cfg.validate()
        );
    }

    #[test]
    fn selections_are_parameters_never_text() {
        let sel = Selection {
            session: Some("s' OR 1=1 --".into()),
            host: Some("h\\{x}".into()),
            since_us: Some(1),
            until_us: Some(2),
        };
        let sql = select_events_sql(&sel);
        assert_eq!(
            sql,
            "SELECT ?fields FROM events WHERE session_id = {session:String} AND host = {host:String} \
             AND session_id IN (SELECT DISTINCT session_id FROM events WHERE \
             ts >= fromUnixTimestamp64Micro({since_us:Int64}, 'UTC') AND \
             ts < fromUnixTimestamp64Micro({until_us:Int64}, 'UTC') AND \
             session_id = {session:String} AND host = {host:String}) ORDER BY host, host_seq"
        );
        assert_eq!(
            select_events_sql(&Selection::default()),
            "SELECT ?fields FROM events  ORDER BY host, host_seq"
        );
    }

    #[test]
    fn no_migration_statement_takes_a_value_as_text() {
        for m in MIGRATIONS {
            for st in m.statements {
                // What is substituted before sending is names and DDL fragments only; the one
                // value (the writer's password) is a server-side parameter.
                let rest = [
                    "{db}",
                    "{on_cluster}",
                    "{columns}",
                    "{engine}",
                    "{retention_days}",
                    "{writer}",
                    "{password:String}",
                ]
                .iter()
                .fold(st.to_string(), |s, p| s.replace(p, ""));
                assert!(!rest.contains('{'), "{st}");
            }
        }
    }

    #[test]
    fn every_migration_statement_names_its_database() {
        for m in MIGRATIONS {
            for st in m.statements {
                assert!(st.contains("{db}") || st.starts_with("CREATE USER"), "{st}");
            }
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }
}
