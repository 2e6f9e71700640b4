//! Hash chains and the host key.
//!
//! An event's hash is the SHA-256 of its **canonical form**: the JSON serialisation of every
//! field except `hash`, `signature` and `key_id`, in declaration order (maps sorted by key),
//! prefixed by a domain tag. The canonical form includes `prev_hash`, `seq`, `host_seq` and
//! `session_id`, so editing, reordering, renumbering or moving an event to another chain changes
//! a hash. The last event of a chain is signed (Ed25519) over its hash by the host key.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::event::{Event, EventKind, MaskedCount};

/// Domain tag of the canonical form (version 1).
const DOMAIN: &[u8] = b"tollgate-audit-v1\n";

/// The hash a chain's first event points back to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The canonical form: every field of [`Event`] except `hash`, `signature`, `key_id`.
#[derive(Serialize)]
struct Canonical<'a> {
    event_id: &'a uuid::Uuid,
    session_id: &'a str,
    seq: u64,
    host_seq: u64,
    ts_us: i64,
    kind: EventKind,
    host: &'a str,
    connection_id: &'a str,
    pid: Option<u32>,
    uid: Option<u32>,
    comm: &'a str,
    exe: &'a str,
    cgroup: &'a str,
    sf_account: &'a str,
    sf_user: &'a str,
    sf_role: &'a str,
    sf_warehouse: &'a str,
    sf_database: &'a str,
    sf_schema: &'a str,
    oidc_subject: &'a str,
    oidc_issuer: &'a str,
    statement_kind: &'a str,
    tables: &'a [String],
    rule_id: &'a str,
    decision: &'a str,
    reason: &'a str,
    query_id: &'a str,
    sql: &'a str,
    sql_full: bool,
    sql_fingerprint: &'a str,
    rows: u64,
    bytes: u64,
    masked: &'a [MaskedCount],
    duration_us: u64,
    error_code: &'a str,
    attrs: &'a std::collections::BTreeMap<String, String>,
    result_rows: &'a str,
    prev_hash: &'a str,
}

/// The hex SHA-256 of `event`'s canonical form.
pub fn event_hash(e: &Event) -> String {
    let c = Canonical {
        event_id: &e.event_id,
        session_id: &e.session_id,
        seq: e.seq,
        host_seq: e.host_seq,
        ts_us: e.ts_us,
        kind: e.kind,
        host: &e.host,
        connection_id: &e.connection_id,
        pid: e.pid,
        uid: e.uid,
        comm: &e.comm,
        exe: &e.exe,
        cgroup: &e.cgroup,
        sf_account: &e.sf_account,
        sf_user: &e.sf_user,
        sf_role: &e.sf_role,
        sf_warehouse: &e.sf_warehouse,
        sf_database: &e.sf_database,
        sf_schema: &e.sf_schema,
        oidc_subject: &e.oidc_subject,
        oidc_issuer: &e.oidc_issuer,
        statement_kind: &e.statement_kind,
        tables: &e.tables,
        rule_id: &e.rule_id,
        decision: &e.decision,
        reason: &e.reason,
        query_id: &e.query_id,
        sql: &e.sql,
        sql_full: e.sql_full,
        sql_fingerprint: &e.sql_fingerprint,
        rows: e.rows,
        bytes: e.bytes,
        masked: &e.masked,
        duration_us: e.duration_us,
        error_code: &e.error_code,
        attrs: &e.attrs,
        result_rows: &e.result_rows,
        prev_hash: &e.prev_hash,
    };
    let mut h = Sha256::new();
    h.update(DOMAIN);
    // Serialising borrowed strings, integers and a BTreeMap cannot fail.
    h.update(serde_json::to_vec(&c).unwrap_or_default());
    hex(&h.finalize())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// Parses lower- or upper-case hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Failures with the host key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("audit key {path}: {source}; check the state directory is readable and writable by tollgate")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold an Ed25519 key.
    #[error("audit key {0} is not an Ed25519 PKCS#8 key written by tollgate; move it away to have a new one created (sessions signed by the old key then verify only with its public key)")]
    Invalid(PathBuf),
    /// A public key file does not hold 64 hex digits.
    #[error("public key {0} is not 64 hex digits (an Ed25519 public key as `tollgate` writes it to audit.pub)")]
    InvalidPublic(PathBuf),
}

/// The host's signing key (Ed25519).
pub struct HostKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey")
            .field("key_id", &self.public().key_id())
            .finish_non_exhaustive()
    }
}

impl HostKey {
    /// A fresh key (not stored).
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system RNG works");
        HostKey {
            pair: Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("a key ring just made"),
        }
    }

    /// Loads the key at `path` (PKCS#8 DER), creating it (mode 0600) and `<path>.pub` (the
    /// public key, hex) when absent.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        match fs::read(path) {
            Ok(der) => {
                let pair = Ed25519KeyPair::from_pkcs8(&der)
                    .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der))
                    .map_err(|_| KeyError::Invalid(path.to_path_buf()))?;
                let key = HostKey { pair };
                let pub_path = public_path(path);
                if !pub_path.exists() {
                    fs::write(&pub_path, format!("{}\n", key.public().to_hex())).map_err(io)?;
                }
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(io)?;
                }
                let rng = SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system RNG works");
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                f.write_all(doc.as_ref()).map_err(io)?;
                f.sync_all().map_err(io)?;
                let key = HostKey {
                    pair: Ed25519KeyPair::from_pkcs8(doc.as_ref())
                        .map_err(|_| KeyError::Invalid(path.to_path_buf()))?,
                };
                fs::write(public_path(path), format!("{}\n", key.public().to_hex())).map_err(io)?;
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        let mut b = [0u8; 32];
        b.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(b)
    }

    /// Signs `hash` (an event hash, hex) and returns the signature in hex.
    pub fn sign_hash(&self, hash: &str) -> String {
        hex(self.pair.sign(hash.as_bytes()).as_ref())
    }
}

/// `<key>.pub` beside a key file.
pub fn public_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// An Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Hex form (as in `audit.key.pub`).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Reads a public key file (64 hex digits).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_hex(text.trim()).ok_or_else(|| KeyError::InvalidPublic(path.to_path_buf()))
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let v = unhex(s)?;
        Some(PublicKey(v.try_into().ok()?))
    }

    /// First 16 hex digits of the SHA-256 of the key: names the key in events.
    pub fn key_id(&self) -> String {
        hex(&Sha256::digest(self.0)[..8])
    }

    /// Whether `signature` (hex) is this key's signature of `hash`.
    pub fn verify_hash(&self, hash: &str, signature: &str) -> bool {
        let Some(sig) = unhex(signature) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(hash.as_bytes(), &sig)
            .is_ok()
    }
}

/// Where a chain stands: the next sequence number and the last hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// Sequence number of the next event.
    pub next_seq: u64,
    /// Hash of the last event.
    pub last_hash: String,
    /// Timestamp of the last event (µs).
    pub last_ts_us: i64,
}

/// The open chains of a spool and the host sequence: assigns chain fields to new events.
#[derive(Debug, Clone, Default)]
pub struct Chainer {
    /// Open chains by session id.
    pub heads: HashMap<String, ChainHead>,
    /// The next host sequence number.
    pub next_host_seq: u64,
}

impl Chainer {
    /// Fills `e`'s chain fields (seq, host_seq, prev_hash, hash; signature and key id for final
    /// events) and advances the state. `host` is stamped when the event has none.
    pub fn seal(&mut self, e: &mut Event, host: &str, key: &HostKey) {
        if e.host.is_empty() {
            host.clone_into(&mut e.host);
        }
        let head = self.heads.get(&e.session_id);
        // Time never goes backwards along a chain: an event created before, but recorded
        // after, another (concurrent tasks) takes the later time.
        if let Some(h) = head {
            e.ts_us = e.ts_us.max(h.last_ts_us);
        }
        e.seq = head.map_or(0, |h| h.next_seq);
        e.prev_hash = head.map_or_else(|| GENESIS.to_owned(), |h| h.last_hash.clone());
        e.host_seq = self.next_host_seq;
        e.signature.clear();
        e.key_id.clear();
        e.hash = event_hash(e);
        if e.kind.is_final() {
            e.signature = key.sign_hash(&e.hash);
            e.key_id = key.public().key_id();
        }
        self.observe(e);
    }

    /// Advances the state past an already sealed event (recovery from the spool).
    pub fn observe(&mut self, e: &Event) {
        self.next_host_seq = self.next_host_seq.max(e.host_seq + 1);
        if e.kind.is_final() {
            self.heads.remove(&e.session_id);
        } else {
            self.heads.insert(
                e.session_id.clone(),
                ChainHead {
                    next_seq: e.seq + 1,
                    last_hash: e.hash.clone(),
                    last_ts_us: e.ts_us,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_link_and_final_events_are_signed() {
        let key = HostKey::generate();
        let mut c = Chainer::default();
        let mut a = Event::new(EventKind::Login, "s1");
        c.seal(&mut a, "h", &key);
        let mut b = Event::new(EventKind::Query, "s1");
        c.seal(&mut b, "h", &key);
        let mut other = Event::new(EventKind::Connection, "conn:1");
        c.seal(&mut other, "h", &key);
        let mut end = Event::new(EventKind::SessionEnd, "s1");
        c.seal(&mut end, "h", &key);
        assert_eq!((a.seq, b.seq, end.seq, other.seq), (0, 1, 2, 0));
        assert_eq!(
            (a.host_seq, b.host_seq, other.host_seq, end.host_seq),
            (0, 1, 2, 3)
        );
        assert_eq!(a.prev_hash, GENESIS);
        assert_eq!(b.prev_hash, a.hash);
        assert_eq!(end.prev_hash, b.hash);
        assert!(a.signature.is_empty());
        assert!(key.public().verify_hash(&end.hash, &end.signature));
        assert_eq!(end.key_id, key.public().key_id());
        assert!(!c.heads.contains_key("s1") && c.heads.contains_key("conn:1"));
        // Any change to a hashed field changes the hash.
        let mut edited = b.clone();
        edited.rows += 1;
        assert_ne!(event_hash(&edited), b.hash);
        assert_eq!(event_hash(&b), b.hash);
        // A signature does not verify another hash or under another key.
        assert!(!key.public().verify_hash(&b.hash, &end.signature));
        assert!(!HostKey::generate()
            .public()
            .verify_hash(&end.hash, &end.signature));
    }

    #[test]
    fn keys_persist_with_their_public_half() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let k1 = HostKey::load_or_create(&path).unwrap();
        let k2 = HostKey::load_or_create(&path).unwrap();
        assert_eq!(k1.public(), k2.public());
        let public = PublicKey::load(&public_path(&path)).unwrap();
        assert_eq!(public, k1.public());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::write(&path, b"junk").unwrap();
        let e = HostKey::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("not an Ed25519"), "{e}");
    }
}
