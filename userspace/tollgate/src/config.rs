//! The daemon's configuration, in three steps (the `validate()` / `build()` split of vector's
//! sinks):
//!
//! 1. **Load**: a YAML file becomes a [`Config`] ([`Config::from_file`]; serde, unknown fields
//!    rejected, errors with the field, line and column). Relative paths in the file resolve
//!    against the **directory of the file** (see [`Config::resolve_relative_paths`] for which
//!    settings are paths), so a file and the policy beside it can move together. Command-line
//!    flags then override settings; relative paths given as flags resolve against the working
//!    directory.
//! 2. **Validate**: every value is checked without I/O, and **every** problem is reported at
//!    once ([`ConfigErrors`]), each named by its setting path
//!    (`config field \`redirect.ports[1]\`: 0 is not a TCP port; use 1-65535`); the tests call
//!    this step alone (`Config::validate`).
//! 3. **Build**: [`Config::build`] runs those checks once, then reads what the settings name —
//!    the policy (compiled), the upstream roots, the ClickHouse password files, an existing
//!    masking key — and returns [`Settings`], the runtime form `tollgate run` wires; again
//!    every problem at once. It writes nothing: the state directory, CA, keys, spool, pid file,
//!    cgroup and pins are created by `tollgate run` only after the build succeeded and the host
//!    checks passed.
//!
//! Every default is defined once: here for the daemon's own settings, or in the crate that
//! owns the value and taken from there (the proxy's limits, listeners, shutdown grace and
//! actions for other traffic, the gate's name patterns, the socket mark in the kernel/user ABI
//! (`tollgate-common`, re-exported by the loader and the proxy), the pin directory in the
//! loader, the Snowflake layer's body, response and chunk limits, the ClickHouse sink's
//! settings). A test holds them to what docs/settings.md shows.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tollgate_audit::clickhouse::ClickHouseConfig;
use tollgate_mask::{DetectorConfig, DetectorSet, MaskKey, TokenMac};
use tollgate_proxy::{
    GateAction, ProxyConfig, SniGate, SniPattern, SnowflakeAddresses, UpstreamTls,
};
// The Snowflake layer's defaults (only their values are used here).
use tollgate_snowflake::{
    SnowflakeConfig as SnowflakeDefaults, StorageConfig as StorageDefaults,
    UnknownEndpoints as LayerUnknown,
};
use tollgate_wire::snowflake::BodyLimits;

use crate::output::error_chain;
use crate::policy_cmd::{load_configured, LoadedPolicy};

/// The configuration file format version this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// Where Tollgate keeps its CA and other state by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tollgate";
/// Where the redirect's programs, links and maps are pinned by default.
pub use tollgate_bpf::DEFAULT_PIN_DIR;
/// Default SO_MARK on Tollgate's own upstream sockets (ASCII "toll"); the hooks skip it.
pub use tollgate_bpf::DEFAULT_SOCKET_MARK;
/// The proxy's listener port on loopback by default.
pub use tollgate_proxy::config::DEFAULT_PORT as DEFAULT_LISTEN_PORT;
/// The cgroup Tollgate moves itself into by default (relative to the cgroup2 mount).
pub const DEFAULT_PROXY_CGROUP: &str = "tollgate";

/// The names Tollgate terminates TLS for when no list is configured: Snowflake's public,
/// China and PrivateLink endpoints.
pub use tollgate_proxy::gate::DEFAULT_INTERCEPT_PATTERNS as DEFAULT_INTERCEPT;
/// Snowflake's storage hosts, blocked for agents when no list is configured.
pub use tollgate_proxy::gate::DEFAULT_STORAGE_PATTERNS as DEFAULT_STORAGE;

/// A duration as whole milliseconds (saturating), for settings given in ms.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A configuration problem, naming the file or the setting and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for this schema (serde names the field, line and column).
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (field path, line and column).
        message: String,
    },
    /// A setting has a value Tollgate cannot use, or names a file that cannot be used.
    #[error("config field `{field}`: {message}")]
    Invalid {
        /// Dotted path of the setting (`redirect.ports[1]`).
        field: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

impl ConfigError {
    /// The setting path, for an invalid value.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Every problem found in a configuration (at least one).
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The problems, in the order they were found.
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => f.write_str(&error_chain(one)),
            all => {
                write!(f, "{} problems in the configuration:", all.len())?;
                for e in all {
                    // Continuation lines (a policy's own list) stay under their problem.
                    write!(f, "\n  - {}", error_chain(e).replace('\n', "\n    "))?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects problems while checking, so that all of them are reported together.
#[derive(Debug, Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl fmt::Display) {
        self.0.push(ConfigError::Invalid {
            field: field.into(),
            message: message.to_string(),
        });
    }

    fn finish(self) -> Result<(), ConfigErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.0))
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// File format version; must be 1.
    pub version: u32,
    /// Which connections are redirected to Tollgate, and how.
    pub redirect: RedirectSection,
    /// The proxy's listeners.
    pub listen: ListenSection,
    /// Which TLS names are intercepted and what happens to the rest.
    pub intercept: InterceptSection,
    /// Upstream TLS trust.
    pub tls: TlsSection,
    /// Directory for the CA (`ca.pem`, `ca.key`), the keys, the spool, the pid file and other
    /// state.
    pub state_dir: PathBuf,
    /// Connection record sink: a file path, or `-` for stdout. Default `<state_dir>/connections.jsonl`.
    pub records: Option<String>,
    /// Resource limits and timeouts.
    pub limits: LimitsSection,
    /// Policy file enforced on Snowflake statements; absent: the embedded default, which
    /// refuses every statement until a policy is configured.
    pub policy: Option<PathBuf>,
    /// The Snowflake layer.
    pub snowflake: SnowflakeSection,
    /// Result masking.
    pub masking: MaskingSection,
    /// The audit trail.
    pub audit: AuditSection,
}

/// `audit:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// The local spool (append-only, fsync'd; the embedded store). Default `<state_dir>/spool`.
    pub spool_dir: Option<PathBuf>,
    /// The host's Ed25519 signing key (PKCS#8), created on first start with its public half
    /// beside it (`<key>.pub`). Default `<state_dir>/audit.key`.
    pub key_file: Option<PathBuf>,
    /// The host name recorded in events. Default: the kernel's host name.
    pub host: Option<String>,
    /// Ship events to ClickHouse (absent: the spool is the store).
    pub clickhouse: Option<ClickHouseSection>,
    /// `fdatasync` every group commit before the step it records proceeds (default true).
    /// `false` exists only to measure what fsync costs (`cargo xtask bench --only audit`): an
    /// acknowledged event may then be lost on power failure.
    pub fsync: bool,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            spool_dir: None,
            key_file: None,
            host: None,
            clickhouse: None,
            fsync: true,
        }
    }
}

/// `audit.clickhouse:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseSection {
    /// HTTP(S) endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database (created by the migrations).
    pub database: String,
    /// The writer user (needs INSERT on `<database>.events` only).
    pub user: String,
    /// File holding the writer's password (first line).
    pub password_file: Option<PathBuf>,
    /// User that runs the schema migrations at start (default: the writer).
    pub admin_user: Option<String>,
    /// File holding the admin's password.
    pub admin_password_file: Option<PathBuf>,
    /// Whether migrations create the writer user and grant it INSERT (the admin needs access
    /// management rights).
    pub create_writer: bool,
    /// Retention in days (TTL; HIPAA asks for six years).
    pub retention_days: u32,
    /// Events per insert at most.
    pub batch_max: usize,
    /// Cluster name for the replicated schema variant (`ON CLUSTER`).
    pub cluster: Option<String>,
}

impl Default for ClickHouseSection {
    /// The sink's own defaults ([`ClickHouseConfig::new`]), no URL.
    fn default() -> Self {
        let d = ClickHouseConfig::new(String::new());
        ClickHouseSection {
            url: d.url,
            database: d.database,
            user: d.user,
            password_file: None,
            admin_user: d.admin_user,
            admin_password_file: None,
            create_writer: d.create_writer,
            retention_days: d.retention_days,
            batch_max: d.batch_max,
            cluster: d.cluster,
        }
    }
}

impl ClickHouseSection {
    /// Checks the values (no I/O); `at` is the section's setting path.
    fn check(&self, at: &str, p: &mut Problems) {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            p.add(
                format!("{at}.url"),
                format!(
                    "`{}` is not an HTTP(S) URL; give ClickHouse's HTTP endpoint, e.g. http://127.0.0.1:8123",
                    self.url
                ),
            );
        }
        if self.batch_max == 0 {
            p.add(format!("{at}.batch_max"), "must be at least 1");
        }
        if self.retention_days == 0 {
            p.add(format!("{at}.retention_days"), "must be at least 1");
        }
        // The names the sink writes into SQL, checked by the sink's own rule
        // (`ClickHouseConfig::validate`), each reported under its setting.
        for (field, message) in self.names_only().invalid_names() {
            p.add(format!("{at}.{field}"), message);
        }
    }

    /// The sink configuration without the passwords (no I/O), for the checks.
    fn names_only(&self) -> ClickHouseConfig {
        let mut c = ClickHouseConfig::new(self.url.clone());
        c.database.clone_from(&self.database);
        c.user.clone_from(&self.user);
        c.admin_user.clone_from(&self.admin_user);
        c.create_writer = self.create_writer;
        c.retention_days = self.retention_days;
        c.batch_max = self.batch_max;
        c.cluster.clone_from(&self.cluster);
        c
    }

    /// The sink configuration, passwords read from their files (the first line of each).
    /// Every unreadable file is reported, named by its setting.
    pub fn sink_config(&self) -> Result<ClickHouseConfig, ConfigErrors> {
        let mut p = Problems::default();
        let c = self.read_sink_config("audit.clickhouse", &mut p);
        p.finish().map(|()| c)
    }

    fn read_sink_config(&self, at: &str, p: &mut Problems) -> ClickHouseConfig {
        let mut read = |field: &str, path: &Option<PathBuf>| -> Option<String> {
            let path = path.as_ref()?;
            match std::fs::read_to_string(path) {
                Ok(s) => Some(s.lines().next().unwrap_or("").to_owned()),
                Err(e) => {
                    p.add(
                        format!("{at}.{field}"),
                        format!("cannot read the password file {}: {e}", path.display()),
                    );
                    None
                }
            }
        };
        let password = read("password_file", &self.password_file);
        let admin_password = read("admin_password_file", &self.admin_password_file);
        let mut c = self.names_only();
        c.password = password;
        c.admin_password = admin_password;
        c
    }
}

/// `masking:` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskingSection {
    /// Key for `token` masking (at least 16 bytes; 32 random bytes recommended). Default
    /// `<state_dir>/mask.key`, created on first start (mode 0600). Keep it stable: the same key
    /// gives the same tokens, so joins and counts keep working across restarts and hosts.
    pub key_file: Option<PathBuf>,
    /// The keyed function behind tokens: `hmac-sha256` (default; the tokens of earlier
    /// releases) or `aes-256-cmac` (the same strength, several times faster per value). Tokens
    /// of the two differ: choose once, like the key.
    pub token_mac: TokenMac,
    /// Regular expression for medical record numbers in free text (detector fallback).
    pub mrn_pattern: Option<String>,
}

/// What happens to requests to Snowflake endpoints Tollgate does not understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownEndpoints {
    /// Refused with a Snowflake-shaped error (default: nothing unaudited).
    Deny,
    /// Forwarded (and logged).
    Forward,
}

impl std::str::FromStr for UnknownEndpoints {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "deny" => Ok(UnknownEndpoints::Deny),
            "forward" => Ok(UnknownEndpoints::Forward),
            other => Err(format!("`{other}` is not a mode: use `deny` or `forward`")),
        }
    }
}

/// `snowflake:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnowflakeSection {
    /// `deny` (default) or `forward` for endpoints the wire model does not know.
    pub unknown_endpoints: UnknownEndpoints,
    /// Largest request body accepted as received (bytes).
    pub max_request_body_bytes: usize,
    /// Largest request body after gzip decoding (bytes).
    pub max_decoded_body_bytes: usize,
    /// Largest gzip expansion ratio accepted (beyond the first MiB).
    pub max_gzip_ratio: u32,
    /// Responses larger than this are forwarded without inspection (bytes); results that
    /// must be masked or capped are withheld instead.
    pub max_inspected_response_bytes: usize,
    /// Host name → IP overrides for cloud-storage hosts that serve result chunks (like curl's
    /// `--resolve`); other hosts are resolved by the system resolver.
    pub storage_resolve: std::collections::BTreeMap<String, std::net::IpAddr>,
    /// Bound on connecting to storage and on its response headers (milliseconds).
    pub storage_timeout_ms: u64,
    /// How long a chunk URL handed to a driver stays valid (seconds).
    pub chunk_ticket_lifetime_secs: u64,
    /// Largest decompressed result chunk served (bytes).
    pub max_chunk_decompressed_bytes: u64,
    /// Bytes that the result chunks being masked may hold at once, over all agents (each
    /// reserves twice its size; a bigger chunk is masked alone).
    pub chunk_memory_budget_bytes: u64,
}

impl Default for SnowflakeSection {
    /// The Snowflake layer's own defaults: body limits from the wire crate, response and chunk
    /// limits from the layer's configuration types.
    fn default() -> Self {
        let body = BodyLimits::default();
        let layer = SnowflakeDefaults::default();
        let storage = StorageDefaults::default();
        SnowflakeSection {
            unknown_endpoints: match layer.unknown_endpoints {
                LayerUnknown::Deny => UnknownEndpoints::Deny,
                LayerUnknown::Forward => UnknownEndpoints::Forward,
            },
            max_request_body_bytes: body.max_compressed,
            max_decoded_body_bytes: body.max_decompressed,
            max_gzip_ratio: body.max_ratio,
            max_inspected_response_bytes: layer.max_inspected_response,
            storage_resolve: Default::default(),
            storage_timeout_ms: millis(storage.timeout),
            chunk_ticket_lifetime_secs: storage.ticket_lifetime.as_secs(),
            max_chunk_decompressed_bytes: storage.max_chunk_decompressed,
            chunk_memory_budget_bytes: storage.chunk_memory_budget,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: CONFIG_VERSION,
            redirect: RedirectSection::default(),
            listen: ListenSection::default(),
            intercept: InterceptSection::default(),
            tls: TlsSection::default(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            records: None,
            limits: LimitsSection::default(),
            policy: None,
            snowflake: SnowflakeSection::default(),
            masking: MaskingSection::default(),
            audit: AuditSection::default(),
        }
    }
}

/// How connections reach Tollgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectMode {
    /// Tollgate's eBPF programs redirect connections from the configured cgroups.
    Ebpf,
    /// Something else (an iptables/nft REDIRECT rule) redirects; Tollgate only listens and reads
    /// SO_ORIGINAL_DST. No process identity is available in this mode.
    None,
}

/// `redirect:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedirectSection {
    /// `ebpf` (default) or `none`.
    pub mode: RedirectMode,
    /// cgroup v2 directories whose processes are redirected: absolute paths, or paths relative
    /// to the cgroup2 mount (`system.slice/agent.service`). Required in `ebpf` mode.
    pub cgroups: Vec<PathBuf>,
    /// Destination TCP ports redirected: `all` (the default: a tunnel through an HTTP CONNECT
    /// or SOCKS proxy on any port reaches Tollgate too) or a list such as `[443, 8443]` (at
    /// most 64). UDP is never redirected.
    pub ports: PortSelection,
    /// Destinations that stay direct whatever the port: `loopback` (`127.0.0.0/8`, `::1`,
    /// `::ffff:127.0.0.0/104`) and `host_addresses` (the host's own addresses when Tollgate
    /// starts; addresses added later are redirected until the next start). Default both;
    /// `[]` redirects them too. A proxy *outside* the agents' cgroups listening on one of
    /// these would relay for them unaudited: leave its kind out on such hosts.
    pub direct: Vec<DirectKind>,
    /// Further destination ranges (CIDR, e.g. `10.0.0.0/8`, `fd00::/8`) that stay direct;
    /// IPv4 ranges also match IPv4-mapped destinations. Default none.
    pub direct_cidrs: Vec<String>,
    /// The cgroup Tollgate moves itself into (relative to the cgroup2 mount, or absolute);
    /// its connections are never redirected. Default `tollgate`.
    pub proxy_cgroup: PathBuf,
    /// bpffs directory where programs, links and maps are pinned.
    pub pin_dir: PathBuf,
    /// SO_MARK set on Tollgate's upstream sockets; the hooks skip marked sockets.
    pub socket_mark: u32,
}

impl Default for RedirectSection {
    fn default() -> Self {
        RedirectSection {
            mode: RedirectMode::Ebpf,
            cgroups: vec![],
            ports: PortSelection::All,
            direct: vec![DirectKind::Loopback, DirectKind::HostAddresses],
            direct_cidrs: vec![],
            proxy_cgroup: PathBuf::from(DEFAULT_PROXY_CGROUP),
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            socket_mark: DEFAULT_SOCKET_MARK,
        }
    }
}

impl RedirectSection {
    /// The ports for the loader.
    pub fn target_ports(&self) -> tollgate_bpf::TargetPorts {
        match &self.ports {
            PortSelection::All => tollgate_bpf::TargetPorts::All,
            PortSelection::List(ports) => tollgate_bpf::TargetPorts::Only(ports.clone()),
        }
    }

    /// The direct destinations for the loader; every bad `direct_cidrs` entry is named.
    #[cfg(test)]
    pub fn direct_destinations(&self) -> Result<tollgate_bpf::DirectDestinations, ConfigErrors> {
        let mut p = Problems::default();
        let d = self.build_direct(&mut p);
        p.finish().map(|()| d)
    }

    fn build_direct(&self, p: &mut Problems) -> tollgate_bpf::DirectDestinations {
        let mut cidrs = Vec::with_capacity(self.direct_cidrs.len());
        for (i, c) in self.direct_cidrs.iter().enumerate() {
            match c.parse::<ipnet::IpNet>() {
                Ok(net) => cidrs.push(net),
                Err(e) => p.add(
                    format!("redirect.direct_cidrs[{i}]"),
                    format!("`{c}` is not a CIDR range such as 10.0.0.0/8 or fd00::/8 ({e})"),
                ),
            }
        }
        tollgate_bpf::DirectDestinations {
            loopback: self.direct.contains(&DirectKind::Loopback),
            host_addresses: self.direct.contains(&DirectKind::HostAddresses),
            cidrs,
        }
    }
}

/// `redirect.ports`: `all`, or a list of ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSelection {
    /// Every destination port (`all`).
    All,
    /// Only these ports.
    List(Vec<u16>),
}

impl Serialize for PortSelection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PortSelection::All => s.serialize_str("all"),
            PortSelection::List(ports) => ports.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for PortSelection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PortSelection;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`all` or a list of TCP ports")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortSelection, E> {
                if v == "all" {
                    Ok(PortSelection::All)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<PortSelection, A::Error> {
                let mut ports = Vec::new();
                while let Some(p) = seq.next_element::<u16>()? {
                    ports.push(p);
                }
                Ok(PortSelection::List(ports))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// An entry of `redirect.direct`: a kind of destination that stays direct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectKind {
    /// Loopback destinations.
    Loopback,
    /// The host's own addresses.
    HostAddresses,
}

/// `listen:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenSection {
    /// Port of the proxy listeners (the redirect rewrites destinations to loopback:port).
    pub port: u16,
    /// Loopback addresses to listen on (default `127.0.0.1` and `::1`).
    pub addresses: Vec<IpAddr>,
}

impl Default for ListenSection {
    /// The proxy's default listeners: port [`DEFAULT_LISTEN_PORT`] on `127.0.0.1` and `::1`.
    fn default() -> Self {
        ListenSection {
            port: DEFAULT_LISTEN_PORT,
            addresses: ProxyConfig::default()
                .listen
                .iter()
                .map(|a| a.ip())
                .collect(),
        }
    }
}

/// What happens to TLS connections whose name is not intercepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtherTraffic {
    /// Spliced byte for byte to the original destination (and recorded).
    Passthrough,
    /// Closed (and recorded).
    Block,
}

impl std::str::FromStr for OtherTraffic {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "passthrough" => Ok(OtherTraffic::Passthrough),
            "block" => Ok(OtherTraffic::Block),
            other => Err(format!(
                "`{other}` is not a mode: use `passthrough` or `block`"
            )),
        }
    }
}

/// `intercept:` section: the gate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InterceptSection {
    /// Snowflake names, terminated: exact names, `*.suffix` (one or more labels), `*` inside a
    /// label.
    pub patterns: Vec<String>,
    /// Snowflake storage hosts, blocked for agents (Tollgate serves result chunks itself).
    pub storage_hosts: Vec<String>,
    /// Address ranges (CIDR or single addresses) where Snowflake lives, such as PrivateLink
    /// endpoints: TLS there that is not for a Snowflake name is blocked, whatever its SNI.
    /// Addresses of intercepted names are learned on top.
    pub snowflake_addresses: Vec<String>,
    /// Names passed through even when `other_traffic` is `block` (the agents' egress
    /// allow-list: package indexes, model APIs, …). Still checked against fronting.
    pub passthrough: Vec<String>,
    /// `passthrough` (default) or `block` for TLS to names not listed.
    pub other_traffic: OtherTraffic,
    /// `passthrough` (default) or `block` for connections that are not TLS (plain HTTP, other
    /// protocols, silent server-first clients) and not for Snowflake. Tunnels (HTTP CONNECT,
    /// SOCKS) are always opened and judged by what they carry.
    pub other_protocols: OtherTraffic,
    /// How long a client may stay silent before it is taken for a server-first protocol
    /// (SMTP, MySQL) and judged by its destination.
    pub server_first_ms: u64,
}

impl Default for InterceptSection {
    /// The gate's name lists and the proxy's actions for other traffic
    /// ([`ProxyConfig::default`]).
    fn default() -> Self {
        let proxy = ProxyConfig::default();
        InterceptSection {
            patterns: DEFAULT_INTERCEPT.iter().map(|s| s.to_string()).collect(),
            storage_hosts: DEFAULT_STORAGE.iter().map(|s| s.to_string()).collect(),
            snowflake_addresses: Vec::new(),
            passthrough: Vec::new(),
            other_traffic: OtherTraffic::of(proxy.gate.unlisted()),
            other_protocols: OtherTraffic::of(proxy.other_protocols),
            server_first_ms: millis(proxy.server_first_after),
        }
    }
}

impl OtherTraffic {
    /// The setting that stands for a default action of the proxy (intercepting is no choice
    /// for other traffic: it reads as blocking, the fail-closed side).
    fn of(action: GateAction) -> Self {
        match action {
            GateAction::Passthrough => OtherTraffic::Passthrough,
            GateAction::Block | GateAction::Intercept => OtherTraffic::Block,
        }
    }

    /// The gate action it stands for.
    pub fn action(self) -> GateAction {
        match self {
            OtherTraffic::Passthrough => GateAction::Passthrough,
            OtherTraffic::Block => GateAction::Block,
        }
    }
}

impl InterceptSection {
    /// The gate and the Snowflake address ranges these settings describe; every bad entry is
    /// named. The one place the section is checked and built.
    #[cfg(test)]
    pub fn build(&self) -> Result<(SniGate, Vec<ipnet::IpNet>), ConfigErrors> {
        let mut p = Problems::default();
        let built = self.build_into(&mut p);
        p.finish().map(|()| built)
    }

    fn build_into(&self, p: &mut Problems) -> (SniGate, Vec<ipnet::IpNet>) {
        let mut gate = SniGate::new(self.other_traffic.action());
        let mut patterns = |field: &str, list: &[String]| -> Vec<SniPattern> {
            list.iter()
                .enumerate()
                .filter_map(|(i, text)| match text.parse::<SniPattern>() {
                    Ok(pattern) => Some(pattern),
                    Err(e) => {
                        p.add(format!("intercept.{field}[{i}]"), e);
                        None
                    }
                })
                .collect()
        };
        let snowflake = patterns("patterns", &self.patterns);
        let storage = patterns("storage_hosts", &self.storage_hosts);
        let passthrough = patterns("passthrough", &self.passthrough);
        for pattern in snowflake {
            gate = gate.with_snowflake(pattern);
        }
        for pattern in storage {
            gate = gate.with_storage(pattern);
        }
        for pattern in passthrough {
            gate = gate.with_rule(pattern, GateAction::Passthrough);
        }
        let mut ranges = Vec::with_capacity(self.snowflake_addresses.len());
        for (i, r) in self.snowflake_addresses.iter().enumerate() {
            match SnowflakeAddresses::parse_range(r) {
                Ok(net) => ranges.push(net),
                Err(e) => p.add(format!("intercept.snowflake_addresses[{i}]"), e),
            }
        }
        (gate, ranges)
    }
}

/// `tls:` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM file of roots trusted for upstream servers; absent: the system store.
    pub upstream_roots: Option<PathBuf>,
}

/// `limits:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Connections handled at once; further accepts wait.
    pub max_connections: usize,
    /// How long to wait for a client's ClientHello before closing (fail closed).
    pub peek_timeout_ms: u64,
    /// Largest ClientHello accepted.
    pub max_client_hello_bytes: usize,
    /// Upstream TCP connect timeout.
    pub upstream_connect_timeout_ms: u64,
    /// How long shutdown waits for open connections before closing them.
    pub shutdown_grace_ms: u64,
}

impl Default for LimitsSection {
    /// The proxy's defaults ([`ProxyConfig::default`]).
    fn default() -> Self {
        let proxy = ProxyConfig::default();
        LimitsSection {
            max_connections: proxy.max_connections,
            peek_timeout_ms: millis(proxy.peek_timeout),
            max_client_hello_bytes: proxy.max_client_hello_len,
            upstream_connect_timeout_ms: millis(proxy.upstream_connect_timeout),
            shutdown_grace_ms: millis(proxy.shutdown_grace),
        }
    }
}

impl Config {
    /// Reads and parses a YAML file, then resolves its relative paths against the file's
    /// directory ([`Config::resolve_relative_paths`]). Not yet validated.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        let file = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        config.resolve_relative_paths(file.parent().unwrap_or(Path::new("/")));
        Ok(config)
    }

    /// Parses YAML text (not yet validated; relative paths stay as written).
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }

    /// Makes the relative file paths among the settings absolute against `base` (a config
    /// file's directory): `state_dir`, `records` (unless `-`), `policy`, `tls.upstream_roots`,
    /// `masking.key_file`, `audit.spool_dir`, `audit.key_file`,
    /// `audit.clickhouse.password_file` and `audit.clickhouse.admin_password_file`.
    ///
    /// Not resolved: `redirect.cgroups` and `redirect.proxy_cgroup` (relative ones are relative
    /// to the cgroup2 mount) and `redirect.pin_dir` (must be absolute, on bpffs).
    pub fn resolve_relative_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let fix_opt = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                fix(p);
            }
        };
        fix(&mut self.state_dir);
        if let Some(r) = &mut self.records {
            if r != "-" && Path::new(r.as_str()).is_relative() {
                *r = base.join(&*r).display().to_string();
            }
        }
        fix_opt(&mut self.policy);
        fix_opt(&mut self.tls.upstream_roots);
        fix_opt(&mut self.masking.key_file);
        fix_opt(&mut self.audit.spool_dir);
        fix_opt(&mut self.audit.key_file);
        if let Some(ch) = &mut self.audit.clickhouse {
            fix_opt(&mut ch.password_file);
            fix_opt(&mut ch.admin_password_file);
        }
    }

    /// Where connection records go: `records`, or `<state_dir>/connections.jsonl`.
    pub fn records_target(&self) -> RecordsTarget {
        match self.records.as_deref() {
            Some("-") => RecordsTarget::Stdout,
            Some(path) => RecordsTarget::File(PathBuf::from(path)),
            None => RecordsTarget::File(self.state_dir.join("connections.jsonl")),
        }
    }

    /// The spool directory: `audit.spool_dir`, or `<state_dir>/spool`.
    pub fn spool_dir(&self) -> PathBuf {
        self.audit
            .spool_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("spool"))
    }

    /// The audit key file: `audit.key_file`, or `<state_dir>/audit.key`.
    pub fn audit_key(&self) -> PathBuf {
        self.audit
            .key_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit.key"))
    }

    /// The default masking key, created on first start when `masking.key_file` is not set.
    fn default_mask_key(&self) -> PathBuf {
        self.state_dir.join("mask.key")
    }

    /// Checks every value, without I/O; every problem is reported, named by its setting. The
    /// first half of [`Config::build`], on its own for callers that must not read files.
    #[cfg(test)]
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut p = Problems::default();
        self.check(&mut p);
        p.finish()
    }

    /// Validates, reads what the settings name (the policy, compiled; upstream roots;
    /// ClickHouse password files; an existing masking key) and returns the runtime settings.
    /// Every problem is reported together. Writes nothing.
    pub fn build(&self) -> Result<Settings, ConfigErrors> {
        let mut p = Problems::default();
        let checked = self.check(&mut p);
        let policy = match load_configured(self.policy.as_deref()) {
            Ok(policy) => Some(policy),
            Err(e) => {
                p.add("policy", error_chain(&e));
                None
            }
        };
        let upstream = match &self.tls.upstream_roots {
            Some(path) => UpstreamTls::from_pem_file(path).map_err(|e| {
                p.add("tls.upstream_roots", error_chain(&e));
            }),
            None => UpstreamTls::system_roots().map_err(|e| {
                p.add("tls.upstream_roots", error_chain(&e));
            }),
        }
        .ok();
        let clickhouse = self
            .audit
            .clickhouse
            .as_ref()
            .map(|ch| ch.read_sink_config("audit.clickhouse", &mut p));
        let mask_key = self.mask_key_source(&mut p);

        let l = &self.limits;
        let (gate, snowflake_ranges) = checked.gate;
        let proxy = ProxyConfig {
            listen: self
                .listen
                .addresses
                .iter()
                .map(|a| SocketAddr::new(*a, self.listen.port))
                .collect(),
            gate,
            snowflake_ranges,
            other_protocols: self.intercept.other_protocols.action(),
            server_first_after: Duration::from_millis(self.intercept.server_first_ms),
            max_connections: l.max_connections,
            peek_timeout: Duration::from_millis(l.peek_timeout_ms),
            max_client_hello_len: l.max_client_hello_bytes,
            upstream_connect_timeout: Duration::from_millis(l.upstream_connect_timeout_ms),
            shutdown_grace: Duration::from_millis(l.shutdown_grace_ms),
            upstream_mark: Some(self.redirect.socket_mark),
            ..ProxyConfig::default()
        };
        if p.0.is_empty() {
            // The proxy's own bounds, beyond the checks above (which name the setting).
            if let Err(e) = proxy.validate() {
                p.add("limits", e);
            }
        }
        p.finish()?;
        let (Some(policy), Some(upstream), Some(key), Some(detectors)) =
            (policy, upstream, mask_key, checked.detectors)
        else {
            unreachable!("every missing part was reported as a problem");
        };
        let r = &self.redirect;
        Ok(Settings {
            redirect: (r.mode == RedirectMode::Ebpf).then(|| RedirectPlan {
                cgroups: r.cgroups.clone(),
                proxy_cgroup: r.proxy_cgroup.clone(),
                ports: r.target_ports(),
                direct: checked.direct,
                pin_dir: r.pin_dir.clone(),
                listen_port: self.listen.port,
                mark: r.socket_mark,
            }),
            proxy,
            upstream,
            policy,
            state_dir: self.state_dir.clone(),
            records: self.records_target(),
            snowflake: self.snowflake.clone(),
            masking: MaskingPlan {
                key,
                detectors: Arc::new(detectors),
            },
            audit: AuditPlan {
                spool_dir: self.spool_dir(),
                key_file: self.audit_key(),
                host: self.audit.host.clone(),
                fsync: self.audit.fsync,
                clickhouse,
            },
        })
    }

    /// The masking key: read when it exists; the default path may be missing (created at
    /// start), a configured one may not.
    fn mask_key_source(&self, p: &mut Problems) -> Option<MaskKeySource> {
        let default = self.default_mask_key();
        let path = self.masking.key_file.clone().unwrap_or(default.clone());
        match std::fs::read(&path) {
            Ok(bytes) => match MaskKey::new(&bytes, self.masking.token_mac) {
                Ok(key) => Some(MaskKeySource::Existing { path, key }),
                Err(e) => {
                    p.add(
                        "masking.key_file",
                        format!("the masking key {} is unusable: {e}", path.display()),
                    );
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path == default => {
                Some(MaskKeySource::Create {
                    path,
                    mac: self.masking.token_mac,
                })
            }
            Err(e) => {
                p.add(
                    "masking.key_file",
                    format!(
                        "cannot read the masking key {}: {e} (create it, e.g. `head -c 32 /dev/urandom > {}`, or leave the setting out to use <state_dir>/mask.key)",
                        path.display(),
                        path.display()
                    ),
                );
                None
            }
        }
    }

    /// Every value check; pure. Returns what the checks built along the way (complete when no
    /// problem was added).
    fn check(&self, p: &mut Problems) -> Checked {
        if self.version != CONFIG_VERSION {
            p.add(
                "version",
                format!(
                    "version {} is not supported by this build; set `version: {CONFIG_VERSION}`",
                    self.version
                ),
            );
        }

        let r = &self.redirect;
        if r.mode == RedirectMode::Ebpf && r.cgroups.is_empty() {
            p.add(
                "redirect.cgroups",
                "no cgroup to redirect: list the agents' cgroup v2 directories (or pass --cgroup PATH); use the cgroup2 mount itself to redirect the whole host",
            );
        }
        for (i, cg) in r.cgroups.iter().enumerate() {
            if cg.as_os_str().is_empty() {
                p.add(format!("redirect.cgroups[{i}]"), "empty path");
            }
        }
        if r.proxy_cgroup.as_os_str().is_empty() {
            p.add(
                "redirect.proxy_cgroup",
                format!("empty path; the default is `{DEFAULT_PROXY_CGROUP}`"),
            );
        }
        match &r.ports {
            PortSelection::All => {}
            PortSelection::List(ports) if ports.is_empty() => p.add(
                "redirect.ports",
                "no destination port to redirect: use `all` (the default) or list ports, e.g. [443]",
            ),
            PortSelection::List(ports) => {
                if ports.len() > 64 {
                    p.add(
                        "redirect.ports",
                        format!("{} ports listed, at most 64 fit; use `all`", ports.len()),
                    );
                }
                for (i, port) in ports.iter().enumerate() {
                    if *port == 0 {
                        p.add(format!("redirect.ports[{i}]"), "0 is not a TCP port; use 1-65535");
                    } else if *port == self.listen.port {
                        p.add(
                            format!("redirect.ports[{i}]"),
                            format!("{port} is also listen.port: redirecting the proxy's own port would loop"),
                        );
                    }
                }
            }
        }
        let direct = r.build_direct(p);
        if !r.pin_dir.is_absolute() {
            p.add(
                "redirect.pin_dir",
                format!("must be an absolute path on a bpffs mount, e.g. {DEFAULT_PIN_DIR}"),
            );
        }
        if r.socket_mark == 0 {
            p.add(
                "redirect.socket_mark",
                "0 means unmarked; choose a non-zero mark unused on this host",
            );
        }

        if self.listen.port == 0 {
            p.add(
                "listen.port",
                format!("the redirect needs a fixed port; choose one, e.g. {DEFAULT_LISTEN_PORT}"),
            );
        }
        if self.listen.addresses.is_empty() {
            p.add(
                "listen.addresses",
                "at least one loopback address is needed",
            );
        }
        for (i, a) in self.listen.addresses.iter().enumerate() {
            let loopback = match a {
                IpAddr::V4(v4) => *v4 == std::net::Ipv4Addr::LOCALHOST,
                IpAddr::V6(v6) => *v6 == std::net::Ipv6Addr::LOCALHOST,
            };
            if !loopback {
                p.add(
                    format!("listen.addresses[{i}]"),
                    format!("{a} is not 127.0.0.1 or ::1: the redirect rewrites to loopback, and the proxy must not be reachable from the network"),
                );
            }
        }

        let gate = self.intercept.build_into(p);

        if !self.state_dir.is_absolute() {
            p.add("state_dir", "must be an absolute path");
        }
        if self.records.as_deref() == Some("") {
            p.add("records", "empty: give a file path, or `-` for stdout");
        }

        let sf = &self.snowflake;
        if sf.max_request_body_bytes < 64 * 1024 {
            p.add(
                "snowflake.max_request_body_bytes",
                "must be at least 65536 (login and query bodies reach tens of KiB)",
            );
        }
        if sf.max_decoded_body_bytes < sf.max_request_body_bytes {
            p.add(
                "snowflake.max_decoded_body_bytes",
                "must be at least snowflake.max_request_body_bytes",
            );
        }
        if sf.max_gzip_ratio < 2 {
            p.add("snowflake.max_gzip_ratio", "must be at least 2");
        }
        if sf.storage_timeout_ms == 0 {
            p.add(
                "snowflake.storage_timeout_ms",
                "must be above 0 (milliseconds)",
            );
        }
        if sf.chunk_ticket_lifetime_secs == 0 {
            p.add(
                "snowflake.chunk_ticket_lifetime_secs",
                "must be above 0 (seconds)",
            );
        }

        let detectors = match &self.masking.mrn_pattern {
            None => Some(DetectorSet::standard()),
            Some(pattern) => DetectorSet::compile(&DetectorConfig {
                mrn_pattern: Some(pattern.clone()),
                ..DetectorConfig::default()
            })
            .map_err(|e| p.add("masking.mrn_pattern", e))
            .ok(),
        };

        if let Some(ch) = &self.audit.clickhouse {
            ch.check("audit.clickhouse", p);
        }
        if self.audit.host.as_deref() == Some("") {
            p.add(
                "audit.host",
                "empty: leave it out to use the kernel's host name",
            );
        }

        let l = &self.limits;
        if l.max_connections == 0 {
            p.add("limits.max_connections", "must be at least 1");
        }
        if l.peek_timeout_ms == 0 {
            p.add("limits.peek_timeout_ms", "must be above 0 (milliseconds)");
        }
        if l.max_client_hello_bytes < 512 {
            p.add(
                "limits.max_client_hello_bytes",
                "must be at least 512 (real ClientHellos are 200 B to 2 KiB, post-quantum ones larger)",
            );
        }
        if l.upstream_connect_timeout_ms == 0 {
            p.add(
                "limits.upstream_connect_timeout_ms",
                "must be above 0 (milliseconds)",
            );
        }
        Checked {
            gate,
            direct,
            detectors,
        }
    }
}

/// What the value checks built along the way.
struct Checked {
    gate: (SniGate, Vec<ipnet::IpNet>),
    direct: tollgate_bpf::DirectDestinations,
    detectors: Option<DetectorSet>,
}

/// Resolves a cgroup setting against the cgroup2 mount: absolute paths stay, relative ones are
/// joined to the mount.
pub fn resolve_cgroup(mount: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        mount.join(p)
    }
}

/// The runtime form of a valid configuration, what `tollgate run` wires ([`Config::build`]):
/// values checked, files read, defaults applied.
pub struct Settings {
    /// The redirect, when Tollgate attaches its own eBPF programs (`redirect.mode: ebpf`).
    pub redirect: Option<RedirectPlan>,
    /// The proxy: listeners, gate, limits, upstream mark.
    pub proxy: ProxyConfig,
    /// How upstream servers are verified.
    pub upstream: UpstreamTls,
    /// The policy in force at start; reloads read the same file again.
    pub policy: LoadedPolicy,
    /// The state directory (CA, keys, spool, pid file, reload status).
    pub state_dir: PathBuf,
    /// Where connection records go.
    pub records: RecordsTarget,
    /// The Snowflake layer's settings.
    pub snowflake: SnowflakeSection,
    /// Result masking.
    pub masking: MaskingPlan,
    /// The audit trail.
    pub audit: AuditPlan,
}

/// The redirect `tollgate run` attaches.
#[derive(Debug, Clone)]
pub struct RedirectPlan {
    /// Target cgroups as configured: absolute, or relative to the cgroup2 mount.
    pub cgroups: Vec<PathBuf>,
    /// Tollgate's own cgroup, as configured.
    pub proxy_cgroup: PathBuf,
    /// Redirected destination ports.
    pub ports: tollgate_bpf::TargetPorts,
    /// Destinations that stay direct.
    pub direct: tollgate_bpf::DirectDestinations,
    /// bpffs directory of the pins.
    pub pin_dir: PathBuf,
    /// The listener port the redirect rewrites to.
    pub listen_port: u16,
    /// SO_MARK of Tollgate's upstream sockets (never redirected).
    pub mark: u32,
}

/// Where the tokenisation key comes from.
pub enum MaskKeySource {
    /// A key file that exists and holds a usable key.
    Existing {
        /// The file.
        path: PathBuf,
        /// The key.
        key: MaskKey,
    },
    /// The default key file does not exist yet: `tollgate run` creates it (32 random bytes,
    /// mode 0600) after every check passed.
    Create {
        /// Where to create it.
        path: PathBuf,
        /// The keyed function it will serve.
        mac: TokenMac,
    },
}

/// Result masking settings.
pub struct MaskingPlan {
    /// The tokenisation key.
    pub key: MaskKeySource,
    /// Compiled value detectors (free-text fallback).
    pub detectors: Arc<DetectorSet>,
}

/// Audit trail settings.
pub struct AuditPlan {
    /// The spool directory.
    pub spool_dir: PathBuf,
    /// The host's signing key (created on first start).
    pub key_file: PathBuf,
    /// Host name recorded in events (`None`: the kernel's).
    pub host: Option<String>,
    /// Whether every group commit is fsync'd.
    pub fsync: bool,
    /// The ClickHouse sink, passwords read.
    pub clickhouse: Option<ClickHouseConfig>,
}

/// Where connection records are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordsTarget {
    /// Standard output (`records: "-"`).
    Stdout,
    /// A JSON-lines file.
    File(PathBuf),
}

impl fmt::Display for RecordsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordsTarget::Stdout => f.write_str("-"),
            RecordsTarget::File(p) => write!(f, "{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cgroup() -> Config {
        let mut c = Config::default();
        c.redirect.cgroups = vec!["agents".into()];
        c
    }

    #[test]
    fn defaults_need_only_a_cgroup() {
        assert!(Config::default().validate().is_err());
        with_cgroup().validate().unwrap();
    }

    #[test]
    fn full_file_parses() {
        let c = Config::from_yaml(
            r#"
version: 1
redirect:
  mode: ebpf
  cgroups: [/sys/fs/cgroup/unified/agents, system.slice/ci.service]
  ports: [443, 8443]
  direct: [loopback, host_addresses]
  direct_cidrs: [10.0.0.0/8]
  proxy_cgroup: tollgate
  pin_dir: /sys/fs/bpf/tollgate
  socket_mark: 1953459308
listen:
  port: 15443
  addresses: [127.0.0.1, "::1"]
intercept:
  patterns: ["*.snowflakecomputing.com", exact.example.test]
  other_traffic: block
tls:
  upstream_roots: /etc/ssl/certs/ca-certificates.crt
state_dir: /var/lib/tollgate
records: "-"
limits:
  max_connections: 100
  peek_timeout_ms: 2000
  max_client_hello_bytes: 16384
  upstream_connect_timeout_ms: 5000
  shutdown_grace_ms: 1000
policy: /etc/tollgate/policy.yaml
snowflake:
  unknown_endpoints: forward
  max_request_body_bytes: 1048576
  max_decoded_body_bytes: 8388608
  max_gzip_ratio: 100
  max_inspected_response_bytes: 1048576
"#,
        )
        .unwrap();
        assert_eq!(c.redirect.ports, PortSelection::List(vec![443, 8443]));
        assert_eq!(c.intercept.other_traffic, OtherTraffic::Block);
        assert_eq!(c.records_target(), RecordsTarget::Stdout);
        assert_eq!(c.snowflake.unknown_endpoints, UnknownEndpoints::Forward);
    }

    #[test]
    fn redirect_ports_and_direct_destinations() {
        // Defaults: every port, loopback and host addresses direct.
        let c = with_cgroup();
        assert_eq!(c.redirect.ports, PortSelection::All);
        assert_eq!(c.redirect.target_ports(), tollgate_bpf::TargetPorts::All);
        assert_eq!(
            c.redirect.direct_destinations().unwrap(),
            tollgate_bpf::DirectDestinations::default()
        );

        let c = Config::from_yaml(
            "redirect:\n  cgroups: [agents]\n  ports: all\n  direct: [loopback]\n  direct_cidrs: [10.0.0.0/8, \"fd00::/8\"]\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.redirect.ports, PortSelection::All);
        let d = c.redirect.direct_destinations().unwrap();
        assert!(d.loopback && !d.host_addresses);
        assert_eq!(
            d.cidrs,
            vec![
                "10.0.0.0/8".parse::<ipnet::IpNet>().unwrap(),
                "fd00::/8".parse().unwrap()
            ]
        );

        let c =
            Config::from_yaml("redirect:\n  cgroups: [a]\n  ports: [443]\n  direct: []\n").unwrap();
        assert_eq!(
            c.redirect.target_ports(),
            tollgate_bpf::TargetPorts::Only(vec![443])
        );
        assert_eq!(
            c.redirect.direct_destinations().unwrap(),
            tollgate_bpf::DirectDestinations::none()
        );

        // Round trip through YAML keeps both forms.
        for ports in [PortSelection::All, PortSelection::List(vec![443, 3128])] {
            let mut c = with_cgroup();
            c.redirect.ports = ports.clone();
            let text = serde_yaml_ng::to_string(&c).unwrap();
            assert_eq!(
                Config::from_yaml(&text).unwrap().redirect.ports,
                ports,
                "{text}"
            );
        }

        for (yaml, want) in [
            ("redirect:\n  ports: every\n", "redirect.ports"),
            ("redirect:\n  ports: 443\n", "redirect.ports"),
            ("redirect:\n  ports: [all]\n", "redirect.ports"),
            ("redirect:\n  direct: [loopbacks]\n", "redirect.direct"),
            ("redirect:\n  direct: loopback\n", "redirect.direct"),
        ] {
            let e = Config::from_yaml(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
        let e = Config::from_yaml("redirect:\n  ports: every\n").unwrap_err();
        assert!(e.contains("`all` or a list"), "{e}");
    }

    #[test]
    fn the_hipaa_settings_profile_is_valid_and_closed() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/profiles/hipaa.yaml");
        let mut c = Config::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        // The profile names the installed policy; here, the same file from the repository.
        c.policy = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/hipaa.yaml"));
        c.validate().unwrap();
        assert_eq!(c.intercept.other_traffic, OtherTraffic::Block);
        assert_eq!(c.intercept.other_protocols, OtherTraffic::Block);
        assert_eq!(c.redirect.ports, PortSelection::All);
        let (gate, _) = c.intercept.build().unwrap();
        assert_eq!(
            gate.classify("pypi.org").map(|(a, _)| a),
            Some(GateAction::Passthrough)
        );
        assert!(gate.is_guarded("sfc-results.s3.us-west-2.amazonaws.com"));
    }

    #[test]
    fn unknown_field_is_named() {
        let e = Config::from_yaml("redirect:\n  portz: [443]\n").unwrap_err();
        assert!(e.contains("portz"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn wrong_type_names_field_and_line() {
        let e = Config::from_yaml("version: 1\nredirect:\n  ports: [https]\n").unwrap_err();
        assert!(e.contains("redirect.ports"), "{e}");
    }

    #[test]
    fn invalid_values_name_their_field() {
        type Mutation = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("version", Box::new(|c| c.version = 2)),
            (
                "redirect.ports[1]",
                Box::new(|c| c.redirect.ports = PortSelection::List(vec![443, 0])),
            ),
            (
                "redirect.ports[0]",
                Box::new(|c| c.redirect.ports = PortSelection::List(vec![15443])),
            ),
            (
                "redirect.ports",
                Box::new(|c| c.redirect.ports = PortSelection::List(vec![])),
            ),
            (
                "redirect.ports",
                Box::new(|c| c.redirect.ports = PortSelection::List((1..=65).collect())),
            ),
            (
                "redirect.direct_cidrs[1]",
                Box::new(|c| {
                    c.redirect.direct_cidrs = vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()]
                }),
            ),
            (
                "redirect.pin_dir",
                Box::new(|c| c.redirect.pin_dir = "rel".into()),
            ),
            (
                "listen.addresses[0]",
                Box::new(|c| c.listen.addresses = vec!["0.0.0.0".parse().unwrap()]),
            ),
            (
                "intercept.patterns[0]",
                Box::new(|c| c.intercept.patterns = vec!["a.*.com".into()]),
            ),
            (
                "limits.max_connections",
                Box::new(|c| c.limits.max_connections = 0),
            ),
            (
                "masking.mrn_pattern",
                Box::new(|c| c.masking.mrn_pattern = Some("(unclosed".into())),
            ),
            (
                "audit.clickhouse.url",
                Box::new(|c| {
                    c.audit.clickhouse = Some(ClickHouseSection {
                        url: "ftp://x".into(),
                        ..ClickHouseSection::default()
                    })
                }),
            ),
            (
                "audit.clickhouse.database",
                Box::new(|c| {
                    c.audit.clickhouse = Some(ClickHouseSection {
                        url: "http://127.0.0.1:8123".into(),
                        database: "tollgate; DROP".into(),
                        ..ClickHouseSection::default()
                    })
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut c = with_cgroup();
            mutate(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
        }
    }

    #[test]
    fn patterns() {
        let valid = |p: &str| {
            InterceptSection {
                patterns: vec![p.into()],
                ..InterceptSection::default()
            }
            .build()
            .map(|_| ())
        };
        valid("*.snowflakecomputing.com").unwrap();
        valid("acct.snowflakecomputing.com").unwrap();
        assert!(valid("*").is_err());
        assert!(valid("a..b").is_err());
        assert!(valid("bad name.com").is_err());
        let s = InterceptSection {
            snowflake_addresses: vec!["10.0.0.0/8".into(), "10.1.1.1/40".into()],
            ..InterceptSection::default()
        };
        let e = s.build().unwrap_err().to_string();
        assert!(e.contains("`intercept.snowflake_addresses[1]`"), "{e}");
        let s = InterceptSection {
            storage_hosts: vec!["sfc-*.s3.*.amazonaws.com".into(), "x.*.com".into()],
            ..InterceptSection::default()
        };
        let e = s.build().unwrap_err().to_string();
        assert!(e.contains("`intercept.storage_hosts[1]`"), "{e}");
    }

    /// A config whose files all live in `dir` and exist: the build has everything it reads.
    fn buildable(dir: &Path) -> Config {
        let mut c = with_cgroup();
        c.state_dir = dir.join("state");
        c.policy = Some(repo_policy("demo.yaml"));
        c.tls.upstream_roots = Some(dir.join("roots.pem"));
        std::fs::write(dir.join("roots.pem"), test_root_pem()).unwrap();
        c
    }

    fn repo_policy(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../policies")
            .join(name)
    }

    fn test_root_pem() -> String {
        // Any well-formed certificate will do as a trust root.
        let (ca, _) = tollgate_proxy::CertificateAuthority::load_or_create(
            tempfile::tempdir().unwrap().path(),
        )
        .unwrap();
        ca.cert_pem().to_owned()
    }

    fn fields(e: &ConfigErrors) -> Vec<String> {
        e.iter()
            .filter_map(|e| e.field().map(str::to_owned))
            .collect()
    }

    #[test]
    fn several_errors_are_reported_together() {
        let mut c = with_cgroup();
        c.version = 2;
        c.redirect.ports = PortSelection::List(vec![443, 0]);
        c.redirect.direct_cidrs = vec!["10.0.0.0/33".into()];
        c.listen.addresses = vec!["0.0.0.0".parse().unwrap()];
        c.intercept.patterns = vec!["ok.example".into(), "a..b".into()];
        c.intercept.storage_hosts = vec!["x.*.com".into()];
        c.limits.peek_timeout_ms = 0;
        c.snowflake.max_gzip_ratio = 1;
        let e = c.validate().unwrap_err();
        assert_eq!(
            fields(&e),
            [
                "version",
                "redirect.ports[1]",
                "redirect.direct_cidrs[0]",
                "listen.addresses[0]",
                "intercept.patterns[1]",
                "intercept.storage_hosts[0]",
                "snowflake.max_gzip_ratio",
                "limits.peek_timeout_ms",
            ]
        );
        let text = e.to_string();
        assert!(
            text.starts_with("8 problems in the configuration:"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 9, "one line per problem:\n{text}");
    }

    #[test]
    fn the_build_reports_value_and_file_problems_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = buildable(dir.path());
        c.redirect.ports = PortSelection::List(vec![0]);
        c.policy = Some(dir.path().join("missing-policy.yaml"));
        c.tls.upstream_roots = Some(dir.path().join("missing-roots.pem"));
        c.masking.key_file = Some(dir.path().join("missing.key"));
        c.audit.clickhouse = Some(ClickHouseSection {
            url: "http://127.0.0.1:8123".into(),
            password_file: Some(dir.path().join("missing.password")),
            ..ClickHouseSection::default()
        });
        let e = c.build().err().expect("a broken configuration");
        assert_eq!(
            fields(&e),
            [
                "redirect.ports[0]",
                "policy",
                "tls.upstream_roots",
                "audit.clickhouse.password_file",
                "masking.key_file",
            ]
        );
        let text = e.to_string();
        assert!(text.contains("missing-policy.yaml"), "{text}");
        // Each os error once, with the file it is about.
        assert_eq!(text.matches("os error 2").count(), 4, "{text}");
    }

    /// The names the ClickHouse sink writes into SQL are checked by its own rule
    /// (`ClickHouseConfig::validate`) with the other settings, each under its setting, before
    /// anything is read or sent.
    #[test]
    fn bad_clickhouse_names_are_reported_with_the_other_problems() {
        let mut c = with_cgroup();
        c.limits.max_connections = 0;
        c.audit.clickhouse = Some(ClickHouseSection {
            url: "http://127.0.0.1:8123".into(),
            database: "tollgate`; DROP DATABASE tollgate; --".into(),
            cluster: Some("main cluster".into()),
            user: "writer@corp".into(),
            create_writer: true,
            ..ClickHouseSection::default()
        });
        let e = c.validate().unwrap_err();
        assert_eq!(
            fields(&e),
            [
                "audit.clickhouse.database",
                "audit.clickhouse.cluster",
                "audit.clickhouse.user",
                "limits.max_connections",
            ]
        );
        let text = e.to_string();
        assert!(text.contains("is not a usable database name"), "{text}");
        // The writer's name is written into SQL only when Tollgate creates it.
        let ch = c.audit.clickhouse.as_mut().unwrap();
        ch.create_writer = false;
        ch.database = "tollgate_audit-2.prod".into();
        ch.cluster = None;
        c.limits = LimitsSection::default();
        c.validate().unwrap();
    }

    #[test]
    fn a_policy_that_does_not_compile_is_listed_with_all_its_errors() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("p.yaml");
        std::fs::write(
            &policy,
            "version: 1\nrules:\n  - id: a\n    match: {}\n    action: permit\n",
        )
        .unwrap();
        let mut c = buildable(dir.path());
        c.policy = Some(policy.clone());
        c.limits.max_connections = 0;
        let e = c.build().err().expect("a broken policy");
        assert_eq!(fields(&e), ["limits.max_connections", "policy"]);
        assert!(e.to_string().contains(policy.to_str().unwrap()), "{e}");
    }

    #[test]
    fn the_token_function_is_chosen_by_name_and_keys_the_masking_key() {
        assert_eq!(Config::default().masking.token_mac, TokenMac::HmacSha256);
        let e = Config::from_yaml("masking:\n  token_mac: sha1\n").unwrap_err();
        assert!(e.contains("token_mac") && e.contains("sha1"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let mut c = buildable(dir.path());
        c.masking.key_file = Some(dir.path().join("mask.key"));
        std::fs::write(dir.path().join("mask.key"), [7u8; 32]).unwrap();
        for (yaml, mac) in [
            ("hmac-sha256", TokenMac::HmacSha256),
            ("aes-256-cmac", TokenMac::Aes256Cmac),
        ] {
            c.masking.token_mac = Config::from_yaml(&format!("masking:\n  token_mac: {yaml}\n"))
                .unwrap()
                .masking
                .token_mac;
            let s = c.build().unwrap_or_else(|e| panic!("{e}"));
            match s.masking.key {
                MaskKeySource::Existing { key, .. } => assert_eq!(key.token_mac(), mac),
                MaskKeySource::Create { .. } => panic!("the key file exists"),
            }
        }
    }

    #[test]
    fn a_good_config_builds_without_writing_anything() {
        let dir = tempfile::tempdir().unwrap();
        let c = buildable(dir.path());
        let before = listing(dir.path());
        let s = c.build().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(listing(dir.path()), before, "the build wrote to disk");
        assert!(!dir.path().join("state").exists());
        assert_eq!(
            s.policy.path.as_deref(),
            Some(repo_policy("demo.yaml").as_path())
        );
        assert!(s.policy.digest.starts_with("sha256:"));
        assert!(
            matches!(s.masking.key, MaskKeySource::Create { ref path, .. } if *path == dir.path().join("state/mask.key"))
        );
        assert_eq!(
            s.records,
            RecordsTarget::File(dir.path().join("state/connections.jsonl"))
        );
        assert_eq!(s.audit.spool_dir, dir.path().join("state/spool"));
        let r = s.redirect.expect("ebpf mode");
        assert_eq!(r.listen_port, DEFAULT_LISTEN_PORT);
        assert_eq!(r.mark, DEFAULT_SOCKET_MARK);
        assert_eq!(s.proxy.upstream_mark, Some(DEFAULT_SOCKET_MARK));
        assert_eq!(
            s.proxy.shutdown_grace,
            tollgate_proxy::config::DEFAULT_SHUTDOWN_GRACE
        );
    }

    fn listing(dir: &Path) -> Vec<PathBuf> {
        let mut all = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p.clone());
                }
                all.push(p);
            }
        }
        all.sort();
        all
    }

    #[test]
    fn relative_paths_resolve_against_the_config_files_directory() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc/tollgate");
        std::fs::create_dir_all(&etc).unwrap();
        let file = etc.join("tollgate.yaml");
        std::fs::write(
            &file,
            r#"
redirect:
  cgroups: [agents.slice, /sys/fs/cgroup/abs]
  proxy_cgroup: tollgate
state_dir: ../../var/tollgate
records: records/connections.jsonl
policy: policies/hipaa.yaml
tls: { upstream_roots: roots.pem }
masking: { key_file: keys/mask.key }
audit:
  spool_dir: /abs/spool
  key_file: keys/audit.key
  clickhouse: { url: "http://127.0.0.1:8123", password_file: ch.password, admin_password_file: /abs/admin.password }
"#,
        )
        .unwrap();
        let c = Config::from_file(&file).unwrap();
        assert_eq!(c.state_dir, etc.join("../../var/tollgate"));
        assert_eq!(
            c.records_target(),
            RecordsTarget::File(etc.join("records/connections.jsonl"))
        );
        assert_eq!(c.policy, Some(etc.join("policies/hipaa.yaml")));
        assert_eq!(c.tls.upstream_roots, Some(etc.join("roots.pem")));
        assert_eq!(c.masking.key_file, Some(etc.join("keys/mask.key")));
        assert_eq!(c.audit.spool_dir, Some(PathBuf::from("/abs/spool")));
        assert_eq!(c.audit_key(), etc.join("keys/audit.key"));
        let ch = c.audit.clickhouse.as_ref().unwrap();
        assert_eq!(ch.password_file, Some(etc.join("ch.password")));
        assert_eq!(
            ch.admin_password_file,
            Some(PathBuf::from("/abs/admin.password"))
        );
        // cgroups are relative to the cgroup2 mount, not to the file.
        assert_eq!(
            c.redirect.cgroups,
            [
                PathBuf::from("agents.slice"),
                PathBuf::from("/sys/fs/cgroup/abs")
            ]
        );
        assert_eq!(c.redirect.proxy_cgroup, PathBuf::from("tollgate"));

        // `-` stays stdout; the defaults under a relative state_dir follow it.
        std::fs::write(&file, "records: \"-\"\nstate_dir: state\n").unwrap();
        let c = Config::from_file(&file).unwrap();
        assert_eq!(c.records_target(), RecordsTarget::Stdout);
        assert_eq!(c.spool_dir(), etc.join("state/spool"));
    }

    #[test]
    fn a_missing_file_names_it_and_the_os_error_once() {
        let e = Config::from_file(Path::new("/nonexistent/tollgate.yaml")).unwrap_err();
        let text = ConfigErrors::from(e).to_string();
        assert!(text.contains("/nonexistent/tollgate.yaml"), "{text}");
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
    }

    #[test]
    fn defaults_come_from_the_crates_that_own_them() {
        let c = Config::default();
        let proxy = ProxyConfig::default();
        assert_eq!(c.listen.port, tollgate_proxy::config::DEFAULT_PORT);
        assert_eq!(
            c.listen
                .addresses
                .iter()
                .map(|a| SocketAddr::new(*a, c.listen.port))
                .collect::<Vec<_>>(),
            proxy.listen
        );
        assert_eq!(c.redirect.socket_mark, tollgate_bpf::DEFAULT_SOCKET_MARK);
        assert_eq!(
            c.redirect.pin_dir,
            PathBuf::from(tollgate_bpf::DEFAULT_PIN_DIR)
        );
        assert_eq!(c.limits.max_connections, proxy.max_connections);
        assert_eq!(c.limits.max_client_hello_bytes, proxy.max_client_hello_len);
        assert_eq!(
            Duration::from_millis(c.limits.shutdown_grace_ms),
            proxy.shutdown_grace
        );
        assert_eq!(proxy.upstream_mark, Some(tollgate_bpf::DEFAULT_SOCKET_MARK));
        assert_eq!(c.intercept.other_protocols.action(), proxy.other_protocols);
        assert_eq!(c.intercept.other_traffic.action(), proxy.gate.unlisted());
        assert_eq!(
            Duration::from_millis(c.intercept.server_first_ms),
            proxy.server_first_after
        );
        assert_eq!(c.intercept.patterns, DEFAULT_INTERCEPT);
        let body = BodyLimits::default();
        assert_eq!(c.snowflake.max_request_body_bytes, body.max_compressed);
        assert_eq!(
            Duration::from_millis(c.snowflake.storage_timeout_ms),
            StorageDefaults::default().timeout
        );
        let ch = ClickHouseConfig::new("");
        let section = ClickHouseSection::default();
        assert_eq!(
            (
                section.database,
                section.user,
                section.batch_max,
                section.retention_days
            ),
            (ch.database, ch.user, ch.batch_max, ch.retention_days)
        );
    }

    /// docs/settings.md shows every setting with its default ("The values above are the
    /// defaults, except where the example fills in settings that have none"): parsed, and those
    /// few put back to their defaults, it is `Config::default()`.
    #[test]
    fn the_defaults_are_the_ones_docs_settings_md_promises() {
        let doc = include_str!("../../../docs/settings.md");
        let start = doc.find("```yaml\n").expect("the settings block") + "```yaml\n".len();
        let len = doc[start..].find("```").expect("its end");
        let mut documented = Config::from_yaml(&doc[start..start + len]).unwrap();
        // The settings the example fills in although they have no default.
        assert!(!documented.redirect.cgroups.is_empty() && documented.policy.is_some());
        assert!(documented.audit.clickhouse.is_some());
        documented.redirect.cgroups.clear();
        documented.policy = None;
        documented.audit.clickhouse = None;
        let json = |c: &Config| serde_json::to_value(c).unwrap();
        assert_eq!(json(&documented), json(&Config::default()));
        // The ones the review found defined twice, by value.
        let d = Config::default();
        assert_eq!(d.redirect.socket_mark, 0x746f_6c6c);
        assert_eq!(d.intercept.other_protocols, OtherTraffic::Passthrough);
        assert_eq!(d.limits.shutdown_grace_ms, 10_000);
    }
}
