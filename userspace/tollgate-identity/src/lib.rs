//! Who is asking: the one set of identity types the proxy, the Snowflake layer, the policy and
//! the audit trail share.
//!
//! - [`ProcessIdentity`]: the process behind a redirected connection (the eBPF hooks, then
//!   `/proc`; filled by `tollgate-proxy`).
//! - [`SnowflakeIdentity`]: the Snowflake session (login, then `USE` and `final*Name`; kept by
//!   `tollgate-snowflake`).
//! - [`Claims`]: verified OIDC claims (none yet: nothing verifies tokens today).
//! - [`Identity`]: the three together with the host name — what `tollgate-policy` decides on
//!   and what `tollgate-audit` records as an event's who-fields.
//!
//! Plain data: no runtime, no sockets, no I/O, and no other Tollgate crate.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::BTreeMap;

use serde::Serialize;

/// The process behind a redirected connection, as recorded at `connect()` time.
///
/// The first fields come from the eBPF hooks (the only place the process context exists);
/// `exe` and `cgroup_path` are looked up later from `/proc` and may be missing if the process
/// exited meanwhile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcessIdentity {
    /// Kernel thread id of the connecting thread.
    pub pid: u32,
    /// Thread-group id, i.e. the userspace process id.
    pub tgid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Command name (`task->comm`, at most 15 bytes).
    pub comm: String,
    /// Executable path (`/proc/<tgid>/exe`), when it could be read.
    pub exe: Option<String>,
    /// cgroup v2 id (the inode number of the cgroup directory).
    pub cgroup_id: u64,
    /// cgroup v2 path relative to the cgroup2 mount, e.g. `/agents.slice/job-17.scope`.
    pub cgroup_path: Option<String>,
    /// Network namespace cookie.
    pub netns_cookie: u64,
}

/// The Snowflake identity of a session, kept current through `USE …` and the `final*Name`
/// fields of responses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SnowflakeIdentity {
    /// Account name as the driver sent it at login.
    pub account: Option<String>,
    /// Login name.
    pub user: Option<String>,
    /// Current role.
    pub role: Option<String>,
    /// Current warehouse.
    pub warehouse: Option<String>,
    /// Current database.
    pub database: Option<String>,
    /// Current schema.
    pub schema: Option<String>,
    /// Authenticator used at login (`SNOWFLAKE`, `OAUTH`, `SNOWFLAKE_JWT`, …).
    pub authenticator: Option<String>,
    /// Driver (`PythonConnector 4.8.1`, `JavaScript 3.3.0`, …).
    pub client: Option<String>,
}

/// Verified OIDC claims of the workload's token, string-valued, by claim name. Only claims
/// whose token was verified belong here (unverified JWT payloads are hints, never claims).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Claims(BTreeMap<String, String>);

impl Claims {
    /// The claim's value, when present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Sets a claim, returning its previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0.insert(name.into(), value.into())
    }

    /// The issuer (`iss`).
    pub fn issuer(&self) -> Option<&str> {
        self.get("iss")
    }

    /// The subject (`sub`).
    pub fn subject(&self) -> Option<&str> {
        self.get("sub")
    }

    /// Every claim, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of claims.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no claim (no verified token).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<BTreeMap<String, String>> for Claims {
    fn from(map: BTreeMap<String, String>) -> Self {
        Claims(map)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Claims {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Claims(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// Who is asking: the Snowflake session, the process behind the connection, the host and the
/// verified OIDC claims. The policy's input, and the who-fields of every audit event.
///
/// `None` means "not known" (how an unknown field matches is the policy's business:
/// `tollgate_policy::evaluate`). A process is known whole or not at all: when it is, its uid
/// and comm are known, its exe and cgroup path only if `/proc` still had them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The Snowflake session (empty without one).
    pub snowflake: SnowflakeIdentity,
    /// The process: the one that logged in (kept with the session), else the one behind this
    /// connection; `None` without a redirect record (an nft/iptables `REDIRECT`).
    pub process: Option<ProcessIdentity>,
    /// This host's name.
    pub host: Option<String>,
    /// Verified OIDC claims.
    pub claims: Claims,
}

impl Identity {
    /// The process's uid.
    pub fn uid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.uid)
    }

    /// The process's `comm`.
    pub fn comm(&self) -> Option<&str> {
        self.process.as_ref().map(|p| p.comm.as_str())
    }

    /// The process's executable path.
    pub fn exe(&self) -> Option<&str> {
        self.process.as_ref().and_then(|p| p.exe.as_deref())
    }

    /// The process's cgroup v2 path.
    pub fn cgroup_path(&self) -> Option<&str> {
        self.process.as_ref().and_then(|p| p.cgroup_path.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_name_issuer_and_subject_and_serialise_as_a_map() {
        let claims: Claims = [("iss", "https://idp.example"), ("sub", "agent-7")]
            .into_iter()
            .collect();
        assert_eq!(claims.issuer(), Some("https://idp.example"));
        assert_eq!(claims.subject(), Some("agent-7"));
        assert_eq!(claims.get("aud"), None);
        assert_eq!(
            serde_json::to_value(&claims).unwrap(),
            serde_json::json!({"iss": "https://idp.example", "sub": "agent-7"})
        );
        assert!(Claims::default().issuer().is_none() && Claims::default().is_empty());
    }

    #[test]
    fn process_facts_are_unknown_without_a_process() {
        let mut id = Identity::default();
        assert_eq!(
            (id.uid(), id.comm(), id.exe(), id.cgroup_path()),
            (None, None, None, None)
        );
        id.process = Some(ProcessIdentity {
            uid: 1000,
            comm: "python3".into(),
            cgroup_path: Some("/agents.slice/a.scope".into()),
            ..Default::default()
        });
        assert_eq!(id.uid(), Some(1000));
        assert_eq!(id.comm(), Some("python3"));
        assert_eq!(id.exe(), None);
        assert_eq!(id.cgroup_path(), Some("/agents.slice/a.scope"));
    }
}
