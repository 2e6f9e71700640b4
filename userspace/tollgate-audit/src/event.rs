//! The audit event: one flat record per thing that happened, the same shape in the spool, in
//! ClickHouse and in `tollgate replay`.
//!
//! Events belong to a **chain** named by [`Event::session_id`]: a Snowflake session (login,
//! queries, decisions, results, chunks, approvals, errors, session end) or a single connection
//! (`conn:<id>`: connection, disconnect). Within a chain [`Event::seq`] counts from 0 and each
//! event carries the hash of the previous one; the chain's last event (kind
//! [`EventKind::SessionEnd`] or [`EventKind::Disconnect`]) is signed with the host's key. Across
//! all chains of a host, [`Event::host_seq`] counts every event the spool ever took, so a
//! deleted chain leaves a gap.
//!
//! What is never in an event: result values (except [`Event::result_rows`], the masked rows the
//! agent received, and only when the deciding rule asks for them), tokens, keys, passwords, SQL
//! literals (the SQL is stored with literals redacted unless the rule asks for full text).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tollgate_identity::Identity;
use uuid::Uuid;

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A connection was accepted and the gate decided (intercept, pass-through, block, reject).
    Connection,
    /// A login attempt and its outcome.
    Login,
    /// A statement received (redacted SQL and fingerprint).
    Query,
    /// The policy decision on a statement.
    Decision,
    /// What a statement returned (rows, bytes, masked counts, duration).
    Result,
    /// A result chunk served by Tollgate.
    Chunk,
    /// A statement held for a human's approval.
    ApprovalRequest,
    /// The approver's answer.
    ApprovalDecision,
    /// An error: upstream, protocol, a withheld result.
    Error,
    /// A connection closed (last event of a connection chain; signed).
    Disconnect,
    /// A Snowflake session ended: logout, expiry, or Tollgate restarting (signed).
    SessionEnd,
    /// The daemon was asked to reload its policy (SIGHUP): `decision` is `ok` (the new policy,
    /// attributes `digest` and `rules`, is in force) or `failed` (the old one stays; `reason`
    /// holds the errors). Its own one-event chain `policy:<event id>` (signed).
    PolicyReload,
}

impl EventKind {
    /// Every kind, in a stable order.
    pub const ALL: [EventKind; 12] = [
        EventKind::Connection,
        EventKind::Login,
        EventKind::Query,
        EventKind::Decision,
        EventKind::Result,
        EventKind::Chunk,
        EventKind::ApprovalRequest,
        EventKind::ApprovalDecision,
        EventKind::Error,
        EventKind::Disconnect,
        EventKind::SessionEnd,
        EventKind::PolicyReload,
    ];

    /// The name used in the spool and in ClickHouse.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connection => "connection",
            EventKind::Login => "login",
            EventKind::Query => "query",
            EventKind::Decision => "decision",
            EventKind::Result => "result",
            EventKind::Chunk => "chunk",
            EventKind::ApprovalRequest => "approval_request",
            EventKind::ApprovalDecision => "approval_decision",
            EventKind::Error => "error",
            EventKind::Disconnect => "disconnect",
            EventKind::SessionEnd => "session_end",
            EventKind::PolicyReload => "policy_reload",
        }
    }

    /// Parses [`EventKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether this kind ends its chain (and is signed).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            EventKind::Disconnect | EventKind::SessionEnd | EventKind::PolicyReload
        )
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One masked result column: which, by which rule and method, how many values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedCount {
    /// Result column name.
    pub column: String,
    /// The rule that asked for it.
    pub rule_id: String,
    /// `redact`, `partial`, `token`, `null`, `generalize` or `detect`.
    pub method: String,
    /// Values masked.
    pub values: u64,
}

/// One audit event. Fields that do not apply are empty (`""`, `[]`, `None`, `0`).
///
/// Build one with [`Event::new`] and fill the fields that apply; the spool sets the chain
/// fields (`seq`, `host_seq`, `prev_hash`, `hash`, `signature`, `key_id`) when it appends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Unique id (random UUID).
    pub event_id: Uuid,
    /// The chain: a Snowflake session id, or `conn:<connection id>`.
    pub session_id: String,
    /// Position in the chain, from 0.
    pub seq: u64,
    /// Position in the host's spool, from 0, across all chains.
    pub host_seq: u64,
    /// When it happened: microseconds since the Unix epoch, UTC.
    pub ts_us: i64,
    /// What happened.
    pub kind: EventKind,
    /// The host that recorded it.
    pub host: String,
    /// The connection it happened on.
    pub connection_id: String,
    /// Process id (thread group) of the workload.
    pub pid: Option<u32>,
    /// Its user id.
    pub uid: Option<u32>,
    /// Its command name.
    pub comm: String,
    /// Its executable.
    pub exe: String,
    /// Its cgroup path.
    pub cgroup: String,
    /// Snowflake account.
    pub sf_account: String,
    /// Snowflake user.
    pub sf_user: String,
    /// Snowflake role.
    pub sf_role: String,
    /// Snowflake warehouse.
    pub sf_warehouse: String,
    /// Current database.
    pub sf_database: String,
    /// Current schema.
    pub sf_schema: String,
    /// OIDC subject of the workload's token, when one was presented and verified.
    pub oidc_subject: String,
    /// Its issuer.
    pub oidc_issuer: String,
    /// Statement kind (`select`, `insert`, …; several joined by `,`).
    pub statement_kind: String,
    /// Tables the statement touches, `DB.SCHEMA.TABLE`.
    pub tables: Vec<String>,
    /// The deciding rule (`default:…` for a default).
    pub rule_id: String,
    /// `allow`, `deny`, `mask`, `require_approval`, or an outcome (`ok`, `failed`, `withheld`).
    pub decision: String,
    /// Why (a deny's reason, an error's cause). Never values.
    pub reason: String,
    /// Snowflake query id.
    pub query_id: String,
    /// The statement, literals redacted (or in full where the rule says so).
    pub sql: String,
    /// Whether `sql` is the full text (the rule asked for it).
    pub sql_full: bool,
    /// Fingerprint of the normalised statement (same shape → same fingerprint).
    pub sql_fingerprint: String,
    /// Rows returned to the agent.
    pub rows: u64,
    /// Bytes returned to the agent (uncompressed result bytes).
    pub bytes: u64,
    /// Masked columns and counts.
    pub masked: Vec<MaskedCount>,
    /// Duration in microseconds (statement: request to response; connection: accept to close).
    pub duration_us: u64,
    /// Error code (Snowflake code, HTTP status, or Tollgate's).
    pub error_code: String,
    /// More facts by name (SNI, original destination, bytes up/down, chunk index, approval id…).
    pub attrs: BTreeMap<String, String>,
    /// Masked result rows as the agent received them (JSON array of arrays), only when the
    /// deciding rule records results; otherwise empty.
    pub result_rows: String,
    /// Hex SHA-256 of the previous event of the chain (64 zeros for the first).
    pub prev_hash: String,
    /// Hex SHA-256 of this event's canonical form (everything above).
    pub hash: String,
    /// Hex Ed25519 signature of `hash` by the host key (final events only).
    pub signature: String,
    /// Id of the signing key (first 16 hex digits of the SHA-256 of the public key).
    pub key_id: String,
}

impl Event {
    /// A new event of `kind` in chain `session_id`, stamped now, with a fresh id.
    pub fn new(kind: EventKind, session_id: impl Into<String>) -> Self {
        Event {
            event_id: Uuid::new_v4(),
            session_id: session_id.into(),
            seq: 0,
            host_seq: 0,
            ts_us: now_us(),
            kind,
            host: String::new(),
            connection_id: String::new(),
            pid: None,
            uid: None,
            comm: String::new(),
            exe: String::new(),
            cgroup: String::new(),
            sf_account: String::new(),
            sf_user: String::new(),
            sf_role: String::new(),
            sf_warehouse: String::new(),
            sf_database: String::new(),
            sf_schema: String::new(),
            oidc_subject: String::new(),
            oidc_issuer: String::new(),
            statement_kind: String::new(),
            tables: Vec::new(),
            rule_id: String::new(),
            decision: String::new(),
            reason: String::new(),
            query_id: String::new(),
            sql: String::new(),
            sql_full: false,
            sql_fingerprint: String::new(),
            rows: 0,
            bytes: 0,
            masked: Vec::new(),
            duration_us: 0,
            error_code: String::new(),
            attrs: BTreeMap::new(),
            result_rows: String::new(),
            prev_hash: String::new(),
            hash: String::new(),
            signature: String::new(),
            key_id: String::new(),
        }
    }

    /// Fills the who-fields from `who` — the one place they are filled: `sf_*` from the
    /// Snowflake identity, `pid` (the thread group, i.e. the process id), `uid`, `comm`, `exe`
    /// and `cgroup` (the cgroup v2 path) from the process, `oidc_subject` and `oidc_issuer` from
    /// the verified claims. Every who-field is set: what `who` does not know is left empty
    /// (`""`, `None`). `host` is the recording host's, set by the spool, not `who.host`.
    pub fn with_identity(&mut self, who: &Identity) {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let sf = &who.snowflake;
        self.sf_account = text(&sf.account);
        self.sf_user = text(&sf.user);
        self.sf_role = text(&sf.role);
        self.sf_warehouse = text(&sf.warehouse);
        self.sf_database = text(&sf.database);
        self.sf_schema = text(&sf.schema);
        let p = who.process.as_ref();
        self.pid = p.map(|p| p.tgid);
        self.uid = p.map(|p| p.uid);
        self.comm = p.map(|p| p.comm.clone()).unwrap_or_default();
        self.exe = p.and_then(|p| p.exe.clone()).unwrap_or_default();
        self.cgroup = p.and_then(|p| p.cgroup_path.clone()).unwrap_or_default();
        self.oidc_subject = who.claims.subject().unwrap_or_default().to_owned();
        self.oidc_issuer = who.claims.issuer().unwrap_or_default().to_owned();
    }

    /// Copies every who-field (the ones [`Event::with_identity`] fills) from `other`: for an
    /// event Tollgate records on behalf of an earlier one, such as the `lost` result of a
    /// statement recovered after a crash.
    pub fn with_identity_of(&mut self, other: &Event) {
        self.sf_account.clone_from(&other.sf_account);
        self.sf_user.clone_from(&other.sf_user);
        self.sf_role.clone_from(&other.sf_role);
        self.sf_warehouse.clone_from(&other.sf_warehouse);
        self.sf_database.clone_from(&other.sf_database);
        self.sf_schema.clone_from(&other.sf_schema);
        self.pid = other.pid;
        self.uid = other.uid;
        self.comm.clone_from(&other.comm);
        self.exe.clone_from(&other.exe);
        self.cgroup.clone_from(&other.cgroup);
        self.oidc_subject.clone_from(&other.oidc_subject);
        self.oidc_issuer.clone_from(&other.oidc_issuer);
    }

    /// Sets an attribute (builder style).
    pub fn attr(mut self, key: &str, value: impl ToString) -> Self {
        self.attrs.insert(key.to_owned(), value.to_string());
        self
    }

    /// The chain name of connection `id`.
    pub fn connection_chain(id: &str) -> String {
        format!("conn:{id}")
    }

    /// The timestamp as RFC 3339 with microseconds, UTC.
    pub fn ts_rfc3339(&self) -> String {
        format_us(self.ts_us)
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// RFC 3339 with six fractional digits, UTC, of a µs timestamp.
pub fn format_us(us: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| us.to_string())
}

/// Parses RFC 3339 (`2026-11-26T10:00:00Z`, fractions allowed) into µs since the epoch.
pub fn parse_rfc3339_us(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_by_name() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            let j = serde_json::to_string(&k).unwrap();
            assert_eq!(j, format!("\"{}\"", k.as_str()));
        }
        assert!(EventKind::Disconnect.is_final() && !EventKind::Query.is_final());
    }

    #[test]
    fn who_fields_come_from_the_identity() {
        use tollgate_identity::{ProcessIdentity, SnowflakeIdentity};
        let who = Identity {
            snowflake: SnowflakeIdentity {
                account: Some("ACME".into()),
                user: Some("AGENT".into()),
                role: Some("ANALYST".into()),
                warehouse: Some("WH".into()),
                database: Some("CLINICAL".into()),
                schema: Some("EHR".into()),
                authenticator: Some("SNOWFLAKE".into()),
                client: None,
            },
            process: Some(ProcessIdentity {
                pid: 4243,
                tgid: 4242,
                uid: 1000,
                comm: "python3".into(),
                exe: Some("/usr/bin/python3".into()),
                cgroup_path: Some("/agents.slice/a.scope".into()),
                ..ProcessIdentity::default()
            }),
            host: Some("not-recorded".into()),
            claims: [("iss", "https://idp"), ("sub", "agent-7")]
                .into_iter()
                .collect(),
        };
        let mut e = Event::new(EventKind::Query, "s");
        e.with_identity(&who);
        let sf = [
            &e.sf_account,
            &e.sf_user,
            &e.sf_role,
            &e.sf_warehouse,
            &e.sf_database,
            &e.sf_schema,
        ];
        assert_eq!(sf, ["ACME", "AGENT", "ANALYST", "WH", "CLINICAL", "EHR"]);
        assert_eq!((e.pid, e.uid), (Some(4242), Some(1000)), "pid is the tgid");
        assert_eq!(
            [&e.comm, &e.exe, &e.cgroup],
            ["python3", "/usr/bin/python3", "/agents.slice/a.scope"]
        );
        assert_eq!(
            [&e.oidc_subject, &e.oidc_issuer],
            ["agent-7", "https://idp"]
        );
        assert_eq!(e.host, "", "the spool sets the host");
        // Nothing known: every who-field empty again.
        e.with_identity(&Identity::default());
        assert_eq!(e.pid, None);
        assert_eq!(e.uid, None);
        assert!([&e.sf_user, &e.comm, &e.exe, &e.cgroup, &e.oidc_subject]
            .iter()
            .all(|f| f.is_empty()));
    }

    #[test]
    fn timestamps_format_and_parse() {
        let us = 1_795_000_000_123_456;
        let s = format_us(us);
        assert!(s.ends_with(".123456Z"), "{s}");
        assert_eq!(parse_rfc3339_us(&s), Some(us));
    }
}
