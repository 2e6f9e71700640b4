//! The daemon's configuration: YAML file → [`Config`] (serde, unknown fields rejected) →
//! command-line overrides → [`Config::validate`], whose errors name the offending field.
//!
//! Every field has a default, so `tollgate run` works without a file; the README documents each.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tollgate_proxy::{GateAction, SniGate, SniPattern, SnowflakeAddresses};

/// The configuration file format version this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// Where Tollgate keeps its CA and other state by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tollgate";
/// Where the redirect's programs, links and maps are pinned by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/tollgate";
/// The proxy's listener port on loopback by default.
pub const DEFAULT_LISTEN_PORT: u16 = 15443;
/// Default SO_MARK on Tollgate's own upstream sockets (ASCII "toll").
pub const DEFAULT_SOCKET_MARK: u32 = tollgate_bpf::DEFAULT_SOCKET_MARK;

/// The names Tollgate terminates TLS for when no list is configured: Snowflake's public,
/// China and PrivateLink endpoints.
pub use tollgate_proxy::gate::DEFAULT_INTERCEPT_PATTERNS as DEFAULT_INTERCEPT;
/// Snowflake's storage hosts, blocked for agents when no list is configured.
pub use tollgate_proxy::gate::DEFAULT_STORAGE_PATTERNS as DEFAULT_STORAGE;

/// A configuration problem, naming the field (`redirect.ports[1]`) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for this schema (serde names the field, line and column).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (field path, line and column).
        message: String,
    },
    /// A field has a value Tollgate cannot use.
    #[error("config field `{field}`: {message}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.to_string(),
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
    /// Directory for the CA (`ca.pem`, `ca.key`) and other state.
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
    fn default() -> Self {
        ClickHouseSection {
            url: String::new(),
            database: "tollgate".into(),
            user: "default".into(),
            password_file: None,
            admin_user: None,
            admin_password_file: None,
            create_writer: false,
            retention_days: 6 * 365 + 2,
            batch_max: 5000,
            cluster: None,
        }
    }
}

impl ClickHouseSection {
    /// The sink configuration, passwords read from their files.
    pub fn sink_config(&self) -> Result<tollgate_audit::clickhouse::ClickHouseConfig, ConfigError> {
        let read = |field: &str, p: &Option<PathBuf>| -> Result<Option<String>, ConfigError> {
            match p {
                None => Ok(None),
                Some(p) => std::fs::read_to_string(p)
                    .map(|s| Some(s.lines().next().unwrap_or("").to_owned()))
                    .map_err(|e| {
                        invalid(
                            field,
                            format!("cannot read the password file {}: {e}", p.display()),
                        )
                    }),
            }
        };
        let mut c = tollgate_audit::clickhouse::ClickHouseConfig::new(self.url.clone());
        c.database.clone_from(&self.database);
        c.user.clone_from(&self.user);
        c.password = read("audit.clickhouse.password_file", &self.password_file)?;
        c.admin_user.clone_from(&self.admin_user);
        c.admin_password = read(
            "audit.clickhouse.admin_password_file",
            &self.admin_password_file,
        )?;
        c.create_writer = self.create_writer;
        c.retention_days = self.retention_days;
        c.batch_max = self.batch_max;
        c.cluster.clone_from(&self.cluster);
        Ok(c)
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
}

impl Default for SnowflakeSection {
    fn default() -> Self {
        SnowflakeSection {
            unknown_endpoints: UnknownEndpoints::Deny,
            max_request_body_bytes: 16 << 20,
            max_decoded_body_bytes: 64 << 20,
            max_gzip_ratio: 200,
            max_inspected_response_bytes: 64 << 20,
            storage_resolve: Default::default(),
            storage_timeout_ms: 30_000,
            chunk_ticket_lifetime_secs: 6 * 3600,
            max_chunk_decompressed_bytes: 16 << 30,
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
            proxy_cgroup: PathBuf::from("tollgate"),
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

    /// The direct destinations for the loader; the error names the bad `direct_cidrs` entry.
    pub fn direct_destinations(&self) -> Result<tollgate_bpf::DirectDestinations, ConfigError> {
        let cidrs = self
            .direct_cidrs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                c.parse::<ipnet::IpNet>().map_err(|e| {
                    invalid(
                        format!("redirect.direct_cidrs[{i}]"),
                        format!("`{c}` is not a CIDR range such as 10.0.0.0/8 or fd00::/8 ({e})"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(tollgate_bpf::DirectDestinations {
            loopback: self.direct.contains(&DirectKind::Loopback),
            host_addresses: self.direct.contains(&DirectKind::HostAddresses),
            cidrs,
        })
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
    fn default() -> Self {
        ListenSection {
            port: DEFAULT_LISTEN_PORT,
            addresses: vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            ],
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
    fn default() -> Self {
        InterceptSection {
            patterns: DEFAULT_INTERCEPT.iter().map(|s| s.to_string()).collect(),
            storage_hosts: DEFAULT_STORAGE.iter().map(|s| s.to_string()).collect(),
            snowflake_addresses: Vec::new(),
            passthrough: Vec::new(),
            other_traffic: OtherTraffic::Passthrough,
            other_protocols: OtherTraffic::Passthrough,
            server_first_ms: 1_000,
        }
    }
}

impl OtherTraffic {
    /// The gate action it stands for.
    pub fn action(self) -> GateAction {
        match self {
            OtherTraffic::Passthrough => GateAction::Passthrough,
            OtherTraffic::Block => GateAction::Block,
        }
    }
}

impl InterceptSection {
    /// The gate and the Snowflake address ranges these settings describe; the error names
    /// the field. The one place the section is checked and built.
    pub fn build(&self) -> Result<(SniGate, Vec<ipnet::IpNet>), ConfigError> {
        let unlisted = self.other_traffic.action();
        let pattern = |field: &str, i: usize, p: &str| {
            p.parse::<SniPattern>()
                .map_err(|e| invalid(format!("intercept.{field}[{i}]"), e.to_string()))
        };
        let mut gate = SniGate::new(unlisted);
        for (i, p) in self.patterns.iter().enumerate() {
            gate = gate.with_snowflake(pattern("patterns", i, p)?);
        }
        for (i, p) in self.storage_hosts.iter().enumerate() {
            gate = gate.with_storage(pattern("storage_hosts", i, p)?);
        }
        for (i, p) in self.passthrough.iter().enumerate() {
            gate = gate.with_rule(pattern("passthrough", i, p)?, GateAction::Passthrough);
        }
        let ranges = self
            .snowflake_addresses
            .iter()
            .enumerate()
            .map(|(i, r)| {
                SnowflakeAddresses::parse_range(r).map_err(|e| {
                    invalid(format!("intercept.snowflake_addresses[{i}]"), e.to_string())
                })
            })
            .collect::<Result<_, _>>()?;
        Ok((gate, ranges))
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
    fn default() -> Self {
        LimitsSection {
            max_connections: 4096,
            peek_timeout_ms: 5_000,
            max_client_hello_bytes: 16 * 1024,
            upstream_connect_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl LimitsSection {
    /// `peek_timeout_ms` as a duration.
    pub fn peek_timeout(&self) -> Duration {
        Duration::from_millis(self.peek_timeout_ms)
    }
    /// `upstream_connect_timeout_ms` as a duration.
    pub fn upstream_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_connect_timeout_ms)
    }
    /// `shutdown_grace_ms` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

impl Config {
    /// Reads and parses a YAML file (not yet validated).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses YAML text (not yet validated).
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }

    /// The record sink setting resolved against the state dir.
    pub fn records_target(&self) -> String {
        self.records.clone().unwrap_or_else(|| {
            self.state_dir
                .join("connections.jsonl")
                .display()
                .to_string()
        })
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.audit
            .spool_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("spool"))
    }

    /// The audit key file.
    pub fn audit_key(&self) -> PathBuf {
        self.audit
            .key_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit.key"))
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(ch) = &self.audit.clickhouse {
            if !(ch.url.starts_with("http://") || ch.url.starts_with("https://")) {
                return Err(invalid(
                    "audit.clickhouse.url",
                    format!(
                        "`{}` is not an HTTP(S) URL; give ClickHouse's HTTP endpoint, e.g. http://127.0.0.1:8123",
                        ch.url
                    ),
                ));
            }
            if ch.batch_max == 0 || ch.retention_days == 0 {
                return Err(invalid(
                    "audit.clickhouse",
                    "batch_max and retention_days must be at least 1".to_owned(),
                ));
            }
        }
        if self.version != CONFIG_VERSION {
            return Err(invalid(
                "version",
                format!(
                    "version {} is not supported by this build; set `version: {CONFIG_VERSION}`",
                    self.version
                ),
            ));
        }
        let r = &self.redirect;
        if r.mode == RedirectMode::Ebpf && r.cgroups.is_empty() {
            return Err(invalid(
                "redirect.cgroups",
                "no cgroup to redirect: list the agents' cgroup v2 directories (or pass --cgroup PATH); use the cgroup2 mount itself to redirect the whole host",
            ));
        }
        for (i, cg) in r.cgroups.iter().enumerate() {
            if cg.as_os_str().is_empty() {
                return Err(invalid(format!("redirect.cgroups[{i}]"), "empty path"));
            }
        }
        let listed: &[u16] = match &r.ports {
            PortSelection::All => &[],
            PortSelection::List(ports) => ports,
        };
        if r.ports == PortSelection::List(Vec::new()) {
            return Err(invalid(
                "redirect.ports",
                "no destination port to redirect: use `all` (the default) or list ports, e.g. [443]",
            ));
        }
        if listed.len() > 64 {
            return Err(invalid(
                "redirect.ports",
                format!("{} ports listed, at most 64 fit; use `all`", listed.len()),
            ));
        }
        r.direct_destinations()?;
        for (i, p) in listed.iter().enumerate() {
            if *p == 0 {
                return Err(invalid(
                    format!("redirect.ports[{i}]"),
                    "0 is not a TCP port; use 1-65535",
                ));
            }
            if *p == self.listen.port {
                return Err(invalid(
                    format!("redirect.ports[{i}]"),
                    format!("{p} is also listen.port: redirecting the proxy's own port would loop"),
                ));
            }
        }
        if !r.pin_dir.is_absolute() {
            return Err(invalid(
                "redirect.pin_dir",
                "must be an absolute path on a bpffs mount, e.g. /sys/fs/bpf/tollgate",
            ));
        }
        if r.socket_mark == 0 {
            return Err(invalid(
                "redirect.socket_mark",
                "0 means unmarked; choose a non-zero mark unused on this host",
            ));
        }
        if self.listen.port == 0 {
            return Err(invalid(
                "listen.port",
                "the redirect needs a fixed port; choose one, e.g. 15443",
            ));
        }
        if self.listen.addresses.is_empty() {
            return Err(invalid(
                "listen.addresses",
                "at least one loopback address is needed",
            ));
        }
        for (i, a) in self.listen.addresses.iter().enumerate() {
            let ok = match a {
                IpAddr::V4(v4) => *v4 == std::net::Ipv4Addr::LOCALHOST,
                IpAddr::V6(v6) => *v6 == std::net::Ipv6Addr::LOCALHOST,
            };
            if !ok {
                return Err(invalid(
                    format!("listen.addresses[{i}]"),
                    format!("{a} is not 127.0.0.1 or ::1: the redirect rewrites to loopback, and the proxy must not be reachable from the network"),
                ));
            }
        }
        self.intercept.build()?;
        if let Some(roots) = &self.tls.upstream_roots {
            if !roots.is_file() {
                return Err(invalid(
                    "tls.upstream_roots",
                    format!(
                        "{} is not a readable file of PEM certificates",
                        roots.display()
                    ),
                ));
            }
        }
        if let Some(p) = &self.policy {
            if !p.is_file() {
                return Err(invalid(
                    "policy",
                    format!("{} is not a readable policy file", p.display()),
                ));
            }
        }
        let sf = &self.snowflake;
        if sf.max_request_body_bytes < 64 * 1024 {
            return Err(invalid(
                "snowflake.max_request_body_bytes",
                "must be at least 65536 (login and query bodies reach tens of KiB)",
            ));
        }
        if sf.max_decoded_body_bytes < sf.max_request_body_bytes {
            return Err(invalid(
                "snowflake.max_decoded_body_bytes",
                "must be at least snowflake.max_request_body_bytes",
            ));
        }
        if sf.max_gzip_ratio < 2 {
            return Err(invalid("snowflake.max_gzip_ratio", "must be at least 2"));
        }
        if !self.state_dir.is_absolute() {
            return Err(invalid("state_dir", "must be an absolute path"));
        }
        let l = &self.limits;
        if l.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if l.peek_timeout_ms == 0 {
            return Err(invalid(
                "limits.peek_timeout_ms",
                "must be above 0 (milliseconds)",
            ));
        }
        if l.max_client_hello_bytes < 512 {
            return Err(invalid(
                "limits.max_client_hello_bytes",
                "must be at least 512 (real ClientHellos are 200 B to 2 KiB, post-quantum ones larger)",
            ));
        }
        if l.upstream_connect_timeout_ms == 0 {
            return Err(invalid(
                "limits.upstream_connect_timeout_ms",
                "must be above 0 (milliseconds)",
            ));
        }
        Ok(())
    }
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
        assert_eq!(c.records_target(), "-");
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
                "tls.upstream_roots",
                Box::new(|c| c.tls.upstream_roots = Some("/nonexistent.pem".into())),
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
}
