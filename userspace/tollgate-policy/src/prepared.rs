//! A statement text prepared once for every decision about it: its [`Analysis`] against a
//! name context and its literal-free forms for the audit trail. Agents send the same texts
//! over and over (a driver's session set-up, a polling loop, a prepared statement with bind
//! variables), so [`StatementCache`] keeps recent preparations; policy is evaluated afresh on
//! every statement (it depends on the identity and on the policy in force), analysis is not.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::{Equivalent, Weighter};

use crate::analysis::{analyze, Analysis, AnalysisError};
use crate::names::NameContext;
use crate::redact::{literal_free, LiteralFree};

/// What a statement text gives, independent of who sends it and of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// [`analyze`] of the text in its context.
    pub analysis: Result<Analysis, AnalysisError>,
    /// The text with literals redacted, and its fingerprint.
    pub literal_free: LiteralFree,
}

impl Prepared {
    /// Prepares `sql` in `ctx` (no cache).
    pub fn new(sql: &str, ctx: &NameContext) -> Self {
        Prepared {
            analysis: analyze(sql, ctx),
            literal_free: literal_free(sql),
        }
    }
}

/// Texts longer than this are prepared every time: a cache entry must stay small.
pub const MAX_CACHED_SQL: usize = 16 * 1024;

/// A bounded, thread-safe cache of [`Prepared`] statements keyed by their exact text and
/// context (no normalisation: two texts that differ in a byte are two entries).
#[derive(Clone)]
pub struct StatementCache {
    /// `None`: caching is off.
    cache: Option<Arc<Cache<Key, Arc<Prepared>, EntryWeight>>>,
}

impl std::fmt::Debug for StatementCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatementCache")
            .field("entries", &self.len())
            .field("weight", &self.cache.as_ref().map(|c| c.weight()))
            .finish()
    }
}

impl StatementCache {
    /// A cache holding about `bytes` of statements (text and analysis); `0` disables it.
    pub fn new(bytes: u64) -> Self {
        StatementCache {
            cache: (bytes > 0).then(|| {
                Arc::new(Cache::with_weighter(
                    (bytes / 1024).max(1) as usize,
                    bytes,
                    EntryWeight,
                ))
            }),
        }
    }

    /// The preparation of `sql` in `ctx`, from the cache or made now (and kept).
    pub fn prepare(&self, sql: &str, ctx: &NameContext) -> Arc<Prepared> {
        let Some(cache) = self.cache.as_ref().filter(|_| sql.len() <= MAX_CACHED_SQL) else {
            return Arc::new(Prepared::new(sql, ctx));
        };
        let probe = KeyRef {
            sql,
            database: ctx.database.as_deref(),
            schema: ctx.schema.as_deref(),
        };
        if let Some(hit) = cache.get(&probe) {
            return hit;
        }
        let prepared = Arc::new(Prepared::new(sql, ctx));
        cache.insert(
            Key {
                sql: sql.into(),
                database: ctx.database.as_deref().map(Into::into),
                schema: ctx.schema.as_deref().map(Into::into),
            },
            prepared.clone(),
        );
        prepared
    }

    /// How many statements are cached.
    pub fn len(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.len())
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Key {
    sql: Box<str>,
    database: Option<Box<str>>,
    schema: Option<Box<str>>,
}

/// A borrowed [`Key`]; hashes exactly as the key it equals.
struct KeyRef<'a> {
    sql: &'a str,
    database: Option<&'a str>,
    schema: Option<&'a str>,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        KeyRef {
            sql: &self.sql,
            database: self.database.as_deref(),
            schema: self.schema.as_deref(),
        }
        .hash(state);
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.sql.hash(state);
        self.database.hash(state);
        self.schema.hash(state);
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.sql == &*key.sql
            && self.database == key.database.as_deref()
            && self.schema == key.schema.as_deref()
    }
}

/// An entry weighs its text twice (the key and the redacted form) plus the analysis, roughly.
#[derive(Debug, Clone, Copy)]
struct EntryWeight;

impl Weighter<Key, Arc<Prepared>> for EntryWeight {
    fn weight(&self, key: &Key, _: &Arc<Prepared>) -> u64 {
        3 * key.sql.len() as u64 + 512
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(db: &str, schema: &str) -> NameContext {
        NameContext {
            database: Some(db.into()),
            schema: Some(schema.into()),
        }
    }

    #[test]
    fn hits_are_the_same_preparation_and_contexts_are_apart() {
        let cache = StatementCache::new(1 << 20);
        let sql = "select name from patients where id = 42";
        let a = cache.prepare(sql, &ctx("CLINICAL", "EHR"));
        let b = cache.prepare(sql, &ctx("CLINICAL", "EHR"));
        assert!(Arc::ptr_eq(&a, &b), "the second lookup is a hit");
        assert_eq!(*a, Prepared::new(sql, &ctx("CLINICAL", "EHR")));
        // Another schema resolves `patients` elsewhere: a different entry.
        let c = cache.prepare(sql, &ctx("CLINICAL", "PUBLIC"));
        assert!(!Arc::ptr_eq(&a, &c));
        let tables = |p: &Prepared| p.analysis.as_ref().unwrap().statements[0].reads.clone();
        assert_ne!(tables(&a), tables(&c));
        assert_eq!(
            a.literal_free.redacted,
            "select name from patients where id = ?"
        );
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn long_texts_and_a_disabled_cache_are_not_kept() {
        let cache = StatementCache::new(1 << 20);
        let long = format!("select 1 {}", " ".repeat(MAX_CACHED_SQL));
        let a = cache.prepare(&long, &NameContext::default());
        assert!(a.analysis.is_ok());
        assert!(cache.is_empty());
        let off = StatementCache::new(0);
        off.prepare("select 1", &NameContext::default());
        assert!(off.is_empty());
    }

    #[test]
    fn the_cache_stays_within_its_weight() {
        let cache = StatementCache::new(64 * 1024);
        for i in 0..2000 {
            cache.prepare(&format!("select {i} from t"), &NameContext::default());
        }
        let weight = cache.cache.as_ref().unwrap().weight();
        assert!(weight <= 64 * 1024, "{weight}");
        assert!(!cache.is_empty());
    }
}
