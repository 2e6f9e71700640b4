//! Snowflake sessions as Tollgate sees them: one per Snowflake session, tied across every TCP
//! connection the driver opens (pools, parallel chunk fetches) by its session token — never by
//! socket.
//!
//! Tokens are not kept: the table is keyed by the SHA-256 of each token, which is enough to
//! recognise a token a driver presents again and useless to anyone reading memory dumps or logs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tollgate_identity::{ProcessIdentity, SnowflakeIdentity};

use crate::plan::ResultPlan;
use crate::sync::lock;

/// Result plans remembered for `GET /queries/<qid>/result`, all sessions together: about
/// 100 bytes each, so memory stays bounded however many sessions are open. The least recently
/// used go first; a result fetched for a forgotten query is withheld, as for an unknown one.
const MAX_RESULT_PLANS: usize = 65_536;

/// Result plans by session number and query id.
type Plans = quick_cache::sync::Cache<(u64, String), Arc<ResultPlan>>;

/// One Snowflake session.
#[derive(Debug)]
pub struct Session {
    /// Tollgate's id for the session (stable across token renewals), for logs and audit.
    pub id: String,
    /// The process that logged in (from the redirect), when known.
    pub process: Option<Arc<ProcessIdentity>>,
    state: Mutex<SnowflakeIdentity>,
    created: Instant,
    /// Its number in the table (the key of its result plans).
    number: u64,
    /// The table's result plans.
    plans: Arc<Plans>,
    /// How long a master token lives, as Snowflake said at login.
    master_validity: Duration,
    /// The latest expiry of any of its tokens, in milliseconds after `created`.
    live_until_ms: AtomicU64,
    ended: AtomicBool,
    /// Its entries in the table (changed only under the table's lock).
    tokens: AtomicUsize,
}

impl Session {
    /// A snapshot of the current Snowflake identity.
    pub fn identity(&self) -> SnowflakeIdentity {
        lock(&self.state).clone()
    }

    /// Applies a change to the identity (a `USE`, a response's `final*Name`).
    pub fn update(&self, f: impl FnOnce(&mut SnowflakeIdentity)) {
        f(&mut lock(&self.state));
    }

    /// Remembers what the decision of query `query_id` asks of its result, for a later
    /// `GET /queries/<qid>/result` (polling, async queries).
    pub fn remember_result_plan(&self, query_id: &str, plan: Arc<ResultPlan>) {
        self.plans.insert((self.number, query_id.to_owned()), plan);
    }

    /// The plan remembered for `query_id`.
    pub fn result_plan(&self, query_id: &str) -> Option<Arc<ResultPlan>> {
        self.plans.get(&(self.number, query_id.to_owned()))
    }

    /// Time since login.
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    /// How long a master token of this session lives (Snowflake's figure at login).
    pub fn master_validity(&self) -> Duration {
        self.master_validity
    }

    /// Extends the session's life to `until` (a token registered for it).
    fn live_until(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.created).as_millis();
        self.live_until_ms
            .fetch_max(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Whether some token of the session is unexpired and it has not logged out: O(1).
    fn is_live_at(&self, now: Instant) -> bool {
        if self.ended.load(Ordering::Relaxed) {
            return false;
        }
        let until =
            self.created + Duration::from_millis(self.live_until_ms.load(Ordering::Relaxed));
        now < until
    }
}

/// A master token's validity when the login answer does not say (Snowflake's default).
pub const DEFAULT_MASTER_VALIDITY: Duration = Duration::from_secs(4 * 3600);
/// A session token's validity when the answer does not say (Snowflake's default).
pub const DEFAULT_SESSION_VALIDITY: Duration = Duration::from_secs(3600);

/// Drivers renew before expiry and Snowflake answers 390112 after it; a token is kept this much
/// longer so a late renewal still finds its session.
const TOKEN_GRACE: Duration = Duration::from_secs(600);

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

struct Entry {
    session: Arc<Session>,
    expires: Instant,
}

/// The token map and how many sessions it holds, under one lock.
#[derive(Default)]
struct Tokens {
    map: HashMap<[u8; 32], Entry>,
    /// Sessions with at least one entry in `map`.
    sessions: usize,
}

impl Tokens {
    /// Counts a new entry of `session` (call before inserting it).
    fn add(&mut self, session: &Session) {
        if session.tokens.fetch_add(1, Ordering::Relaxed) == 0 {
            self.sessions += 1;
        }
    }

    /// Counts an entry of `session` gone (call for every entry removed or replaced).
    fn forget(sessions: &mut usize, session: &Session) {
        if session.tokens.fetch_sub(1, Ordering::Relaxed) == 1 {
            *sessions -= 1;
        }
    }

    /// Keeps the entries `keep` says, counting the others gone.
    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        let Tokens { map, sessions } = self;
        map.retain(|_, e| {
            let kept = keep(e);
            if !kept {
                Self::forget(sessions, &e.session);
            }
            kept
        });
    }
}

/// Sessions by token digest (session token and master token both map to the session).
pub struct SessionTable {
    by_token: Mutex<Tokens>,
    next: AtomicU64,
    plans: Arc<Plans>,
}

impl Default for SessionTable {
    fn default() -> Self {
        SessionTable {
            by_token: Mutex::default(),
            next: AtomicU64::default(),
            plans: Arc::new(Plans::new(MAX_RESULT_PLANS)),
        }
    }
}

impl std::fmt::Debug for SessionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTable")
            .field(
                "tokens",
                &self.by_token.lock().map(|t| t.map.len()).unwrap_or(0),
            )
            .finish()
    }
}

/// Upper bound on remembered tokens; the oldest-expiring are evicted beyond it.
const MAX_TOKENS: usize = 100_000;

/// A random prefix per process run: session ids stay unique across restarts and hosts (they
/// name audit chains for years).
fn epoch() -> &'static str {
    static EPOCH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    EPOCH.get_or_init(|| {
        let mut b = [0u8; 6];
        if getrandom::getrandom(&mut b).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            b.copy_from_slice(&t.to_le_bytes()[..6]);
        }
        b.iter().map(|x| format!("{x:02x}")).collect()
    })
}

impl SessionTable {
    /// Creates a session after a successful login and registers its tokens; `master_validity`
    /// is how long Snowflake said its master tokens live.
    pub fn create(
        &self,
        identity: SnowflakeIdentity,
        process: Option<Arc<ProcessIdentity>>,
        tokens: &[(&str, Duration)],
        master_validity: Duration,
    ) -> Arc<Session> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session {
            id: format!("{}-{n}", epoch()),
            process,
            state: Mutex::new(identity),
            created: Instant::now(),
            number: n,
            plans: self.plans.clone(),
            master_validity,
            live_until_ms: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            tokens: AtomicUsize::new(0),
        });
        for (token, validity) in tokens {
            self.register(token, &session, *validity);
        }
        session
    }

    /// Maps one more token (a renewed session token) to `session`.
    pub fn register(&self, token: &str, session: &Arc<Session>, validity: Duration) {
        if token.is_empty() {
            return;
        }
        let now = Instant::now();
        let expires = now + validity + TOKEN_GRACE;
        session.live_until(expires);
        let mut tokens = lock(&self.by_token);
        if tokens.map.len() >= MAX_TOKENS {
            tokens.retain(|e| e.expires > now);
        }
        tokens.add(session);
        let entry = Entry {
            session: session.clone(),
            expires,
        };
        if let Some(old) = tokens.map.insert(digest(token), entry) {
            Tokens::forget(&mut tokens.sessions, &old.session);
        }
    }

    /// The session a token belongs to.
    pub fn get(&self, token: &str) -> Option<Arc<Session>> {
        let tokens = lock(&self.by_token);
        tokens
            .map
            .get(&digest(token))
            .filter(|e| e.expires > Instant::now())
            .map(|e| e.session.clone())
    }

    /// Whether some unexpired token still maps to `session` (not logged out, not expired).
    /// O(1): asked on every chunk request.
    pub fn is_live(&self, session: &Arc<Session>) -> bool {
        session.is_live_at(Instant::now())
    }

    /// Forgets every token of `session` (logout).
    pub fn remove(&self, session: &Arc<Session>) {
        session.ended.store(true, Ordering::Relaxed);
        lock(&self.by_token).retain(|e| !Arc::ptr_eq(&e.session, session));
    }

    /// Number of sessions in the table: those with a token registered (a logged-out session
    /// is gone at once, an expired one when its tokens are evicted). O(1): a kept count.
    pub fn len(&self) -> usize {
        lock(&self.by_token).sessions
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_tie_to_one_session_and_logout_forgets_them() {
        let t = SessionTable::default();
        let s = t.create(
            SnowflakeIdentity {
                user: Some("AGENT".into()),
                ..Default::default()
            },
            None,
            &[
                ("session-token", Duration::from_secs(60)),
                ("master-token", Duration::from_secs(600)),
            ],
            DEFAULT_MASTER_VALIDITY,
        );
        assert!(t.is_live(&s));
        assert!(Arc::ptr_eq(&t.get("session-token").unwrap(), &s));
        assert!(Arc::ptr_eq(&t.get("master-token").unwrap(), &s));
        t.register("renewed", &s, Duration::from_secs(60));
        assert_eq!(t.get("renewed").unwrap().id, s.id);
        assert_eq!(t.len(), 1);
        assert!(t.get("other").is_none());
        t.remove(&s);
        assert!(t.get("session-token").is_none() && t.get("renewed").is_none());
        assert!(t.is_empty());
        assert!(!t.is_live(&s), "a logged-out session is not live");
    }

    #[test]
    fn result_plans_belong_to_their_session_and_stay_bounded_together() {
        let t = SessionTable::default();
        let new = || {
            t.create(
                SnowflakeIdentity::default(),
                None,
                &[],
                DEFAULT_MASTER_VALIDITY,
            )
        };
        let (a, b) = (new(), new());
        let policy = Arc::new(
            tollgate_policy::Policy::compile("version: 1\nrules: []\n", "test.yaml")
                .expect("the test policy compiles"),
        );
        let plan = |rule: &str| {
            Arc::new(ResultPlan {
                rule_id: rule.into(),
                mask: None,
                max_rows: None,
                max_bytes: None,
                record_rows: 0,
                policy: policy.clone(),
            })
        };
        a.remember_result_plan("q1", plan("first"));
        a.remember_result_plan("q1", plan("again"));
        assert_eq!(a.result_plan("q1").unwrap().rule_id, "again");
        assert!(b.result_plan("q1").is_none(), "another session's query");
        assert!(a.result_plan("q2").is_none());
        // Many sessions remembering many queries hold at most the process-wide bound.
        let shared = plan("shared");
        for n in 0..MAX_RESULT_PLANS * 2 {
            let s = if n % 2 == 0 { &a } else { &b };
            s.remember_result_plan(&format!("query-{n}"), shared.clone());
        }
        // (The cache's shards may round their share of the bound up a little.)
        assert!(
            t.plans.len() <= MAX_RESULT_PLANS + MAX_RESULT_PLANS / 100,
            "{}",
            t.plans.len()
        );
        // The most recent are still there.
        let last = MAX_RESULT_PLANS * 2 - 1;
        assert!(b.result_plan(&format!("query-{last}")).is_some());
    }

    #[test]
    fn the_session_count_follows_the_tokens() {
        let t = SessionTable::default();
        let new = |tokens: &[(&str, Duration)]| {
            t.create(
                SnowflakeIdentity::default(),
                None,
                tokens,
                DEFAULT_MASTER_VALIDITY,
            )
        };
        let a = new(&[
            ("a1", Duration::from_secs(60)),
            ("a2", Duration::from_secs(60)),
        ]);
        let b = new(&[("b1", Duration::from_secs(60))]);
        let _none = new(&[]);
        assert_eq!(t.len(), 2, "a session without a token is not counted");
        t.register("a1", &a, Duration::from_secs(60));
        assert_eq!(t.len(), 2, "the same token again");
        // A token digest taken over by another session: b keeps one token, a loses one.
        t.register("a2", &b, Duration::from_secs(60));
        assert_eq!(t.len(), 2);
        t.register("a1", &b, Duration::from_secs(60));
        assert_eq!(t.len(), 1, "a has no token left");
        t.remove(&b);
        assert!(t.is_empty());
        t.register("a3", &a, Duration::from_secs(60));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn identity_updates_are_seen_by_every_holder() {
        let t = SessionTable::default();
        let s = t.create(
            SnowflakeIdentity::default(),
            None,
            &[("a", Duration::from_secs(5))],
            DEFAULT_MASTER_VALIDITY,
        );
        t.get("a")
            .unwrap()
            .update(|i| i.database = Some("CLINICAL".into()));
        assert_eq!(s.identity().database.as_deref(), Some("CLINICAL"));
    }

    #[test]
    fn liveness_follows_the_latest_token_expiry() {
        let t = SessionTable::default();
        let s = t.create(
            SnowflakeIdentity::default(),
            None,
            &[],
            DEFAULT_MASTER_VALIDITY,
        );
        assert!(!t.is_live(&s), "no token: not live");
        t.register("a", &s, Duration::ZERO);
        let now = Instant::now();
        assert!(s.is_live_at(now));
        assert!(s.is_live_at(now + TOKEN_GRACE - Duration::from_secs(1)));
        assert!(!s.is_live_at(now + TOKEN_GRACE + Duration::from_secs(1)));
        t.register("b", &s, Duration::from_secs(3600));
        assert!(s.is_live_at(now + TOKEN_GRACE + Duration::from_secs(1)));
    }
}
