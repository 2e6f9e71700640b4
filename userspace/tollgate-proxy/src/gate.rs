//! The gate: which redirected connections are intercepted, passed through or blocked — decided
//! by the name the client asks for *and* by where it is going. Pure: no sockets, no tokio.
//!
//! A gate that only reads the SNI is bypassed by anyone who writes another name: a ClientHello
//! without SNI, or with an unlisted name (`cdn.example.net`, domain fronting), sent to a
//! Snowflake address reaches Snowflake as pass-through. So the decision has three inputs:
//!
//! 1. **The SNI** against ordered rules: the Snowflake names (intercepted), Snowflake's storage
//!    hosts (blocked: Tollgate fetches result chunks itself, an agent never needs them), and
//!    the operator's own rules.
//! 2. **The destination address** against the [`SnowflakeAddresses`]: configured ranges
//!    (PrivateLink endpoints) plus the addresses intercepted names were seen at and resolve to.
//!    A connection there that is not intercepted is blocked, whatever its SNI says.
//! 3. **The destination's certificate** ([`DestinationCertificate`], fetched by a probe in the
//!    I/O glue) for everything that would otherwise be passed through: when the destination
//!    presents a Snowflake or storage certificate that does not cover the SNI (or there is no
//!    SNI), the client is fronting, and the connection is blocked. A destination that cannot be
//!    probed is not passed through (fail closed).
//!
//! Pattern semantics (used by config files): a pattern is a host name whose labels may contain
//! `*` (any run of characters within that label: `sfc-*.s3.*.amazonaws.com`), optionally led by
//! `*.`, which stands for **one or more** whole labels — so `*.snowflakecomputing.com` matches
//! `xy12345.us-east-2.aws.snowflakecomputing.com` and not the bare suffix. The last two labels
//! must be literal. Matching is case-insensitive; rules are tried in order, first match wins.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// What the gate decides for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateAction {
    /// Terminate TLS with a minted certificate and relay HTTP.
    Intercept,
    /// Relay the bytes unchanged to the original destination.
    Passthrough,
    /// Close the connection (egress policy).
    Block,
}

/// The Snowflake host patterns intercepted by default (`docs/design.md`, "The gate").
pub const DEFAULT_INTERCEPT_PATTERNS: &[&str] = &[
    "*.snowflakecomputing.com",
    "*.snowflakecomputing.cn",
    "*.privatelink.snowflakecomputing.com",
];

/// Snowflake's storage hosts (the internal stage buckets that hold result chunks), blocked for
/// agents by default. Tollgate rewrites every chunk URL to itself and fetches the chunk on its
/// own upstream socket, so an agent never needs these; a pre-signed URL obtained elsewhere must
/// not be a way around masking. The AWS names follow Snowflake's `sfc-…` stage buckets; add the
/// `STAGE` hosts that `SELECT SYSTEM$ALLOWLIST()` lists for an account on Azure or GCP.
pub const DEFAULT_STORAGE_PATTERNS: &[&str] = &[
    "sfc-*.s3.amazonaws.com",
    "sfc-*.s3.*.amazonaws.com",
    "sfc-*.s3-*.amazonaws.com",
];

/// One label of a pattern: literal text with `*` standing for any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelGlob(String);

impl LabelGlob {
    fn matches(&self, label: &str) -> bool {
        glob_match(self.0.as_bytes(), label.as_bytes())
    }
}

/// `*` matches any run (also empty); everything else literally. Iterative, no backtracking
/// explosion (one star position remembered).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// A host-name pattern; see the module docs for the semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniPattern {
    /// Whether a leading `*.` (one or more labels) precedes `labels`.
    any_prefix: bool,
    labels: Vec<LabelGlob>,
}

/// A pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// The pattern is not a host name, optionally with `*` wildcards.
    #[error("invalid host pattern {pattern:?}: {why}; write a host name such as `acct.snowflakecomputing.com`, `*.` followed by one (`*.snowflakecomputing.com`), or a name with `*` inside a label (`sfc-*.s3.*.amazonaws.com`)")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An address range is not `ADDRESS/PREFIX` or an address.
    #[error("invalid address range {range:?}: write an address (`10.1.2.3`) or a CIDR range (`10.1.0.0/16`, `fd00::/64`)")]
    InvalidRange {
        /// The range as given.
        range: String,
    },
}

impl SniPattern {
    /// Whether `host` (lowercased, as the ClientHello parser returns it) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        let labels: Vec<&str> = host.split('.').collect();
        self.matches_labels(&labels, |glob, label| glob.matches(label))
    }

    /// Whether a certificate name (which may be a wildcard, `*.example.com`) could cover a host
    /// this pattern matches. A certificate wildcard stands for exactly one label (RFC 6125).
    pub fn overlaps_certificate_name(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        let labels: Vec<&str> = name.split('.').collect();
        self.matches_labels(&labels, |glob, label| label == "*" || glob.matches(label))
    }

    fn matches_labels(&self, labels: &[&str], eq: impl Fn(&LabelGlob, &str) -> bool) -> bool {
        let n = self.labels.len();
        let fits = if self.any_prefix {
            labels.len() > n
        } else {
            labels.len() == n
        };
        fits && labels.iter().all(|l| !l.is_empty())
            && self
                .labels
                .iter()
                .zip(&labels[labels.len() - n..])
                .all(|(glob, label)| eq(glob, label))
    }
}

impl FromStr for SniPattern {
    type Err = GateError;

    fn from_str(pattern: &str) -> Result<Self, GateError> {
        let invalid = |why| GateError::InvalidPattern {
            pattern: pattern.to_string(),
            why,
        };
        let lower = pattern.to_ascii_lowercase();
        let (name, any_prefix) = match lower.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (lower.as_str(), false),
        };
        if name.is_empty() || name.len() > 253 {
            return Err(invalid("empty or longer than 253 bytes"));
        }
        let labels: Vec<&str> = name.split('.').collect();
        for label in &labels {
            if label.is_empty() || label.len() > 63 {
                return Err(invalid("empty label or label longer than 63 bytes"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*')
            {
                return Err(invalid(
                    "only letters, digits, '-', '_' and '*' wildcards are allowed",
                ));
            }
        }
        if labels.len() < 2 || labels[labels.len() - 2..].iter().any(|l| l.contains('*')) {
            return Err(invalid(
                "the last two labels must be written out (no wildcard in the domain itself)",
            ));
        }
        Ok(SniPattern {
            any_prefix,
            labels: labels.iter().map(|l| LabelGlob((*l).to_owned())).collect(),
        })
    }
}

impl fmt::Display for SniPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.any_prefix {
            f.write_str("*.")?;
        }
        let labels: Vec<&str> = self.labels.iter().map(|l| l.0.as_str()).collect();
        f.write_str(&labels.join("."))
    }
}

/// Which list a name rule comes from; the reason a decision names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameClass {
    /// A Snowflake name (intercepted).
    Snowflake,
    /// A Snowflake storage host (blocked for agents).
    Storage,
    /// An operator's rule with its own action.
    Listed,
}

/// The certificate a destination presented to Tollgate's probe: its DNS names (SANs, or the
/// subject CN when there are none), lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DestinationCertificate {
    /// The names the certificate is valid for (may include wildcards, `*.example.com`).
    pub names: Vec<String>,
}

impl DestinationCertificate {
    /// Whether the certificate covers `host` (RFC 6125: a leftmost `*` stands for exactly one
    /// label).
    pub fn covers(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.names.iter().any(|name| match name.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => *name == host,
        })
    }
}

/// Why the gate decided as it did (recorded in the connection record's close reason).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GateReason {
    /// The SNI matches a Snowflake name.
    SnowflakeName,
    /// The SNI matches a Snowflake storage host.
    StorageName,
    /// The SNI matches an operator's rule.
    ListedName,
    /// The SNI matches no rule: `other_traffic` applies.
    UnlistedName,
    /// No SNI: `other_traffic` applies.
    NoSni,
    /// The destination is a Snowflake address but the connection is not for an intercepted
    /// Snowflake name.
    SnowflakeAddress,
    /// The destination presented a Snowflake (or storage) certificate that does not cover the
    /// name the client sent: domain fronting.
    FrontedCertificate {
        /// The certificate name that gave it away.
        name: String,
    },
    /// The destination could not be probed, so nothing says it is not Snowflake.
    DestinationUnverified {
        /// Why the probe failed.
        why: String,
    },
    /// A tunnel (HTTP CONNECT, SOCKS) named a Snowflake host and the TLS inside asks for
    /// another name.
    TunnelNameMismatch,
}

impl fmt::Display for GateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GateReason::SnowflakeName => f.write_str("a Snowflake name"),
            GateReason::StorageName => f.write_str(
                "a Snowflake storage host (Tollgate serves result chunks itself; agents never fetch storage)",
            ),
            GateReason::ListedName => f.write_str("a listed name"),
            GateReason::UnlistedName => f.write_str("an unlisted name (intercept.other_traffic)"),
            GateReason::NoSni => f.write_str("no SNI (intercept.other_traffic)"),
            GateReason::SnowflakeAddress => f.write_str(
                "a Snowflake address reached under a name that is not intercepted",
            ),
            GateReason::FrontedCertificate { name } => write!(
                f,
                "the destination presents a certificate for {name}, not for the name the client sent (fronting)"
            ),
            GateReason::DestinationUnverified { why } => write!(
                f,
                "the destination's certificate could not be checked ({why})"
            ),
            GateReason::TunnelNameMismatch => f.write_str(
                "a tunnel to a Snowflake host carrying TLS for another name",
            ),
        }
    }
}

/// A gate decision, or the need for the destination's certificate first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateVerdict {
    /// The action and why.
    Decided(GateAction, GateReason),
    /// Would be passed through: probe the destination's certificate, then decide again.
    NeedCertificate,
}

/// What the gate knows about a connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct GateQuery<'a> {
    /// The ClientHello's SNI (lowercased).
    pub sni: Option<&'a str>,
    /// Whether the destination is a known Snowflake address.
    pub snowflake_address: bool,
    /// The destination's certificate, once probed; `Err` when the probe failed.
    pub certificate: Option<Result<&'a DestinationCertificate, &'a str>>,
}

/// Ordered name rules plus the actions for unlisted names and for hellos without SNI.
#[derive(Debug, Clone)]
pub struct SniGate {
    rules: Vec<(SniPattern, GateAction, NameClass)>,
    unlisted: GateAction,
    no_sni: GateAction,
}

impl SniGate {
    /// No rules; every name gets `unlisted`, hellos without SNI too (but see
    /// [`SniGate::with_no_sni`]).
    pub fn new(unlisted: GateAction) -> Self {
        SniGate {
            rules: Vec::new(),
            unlisted,
            no_sni: unlisted,
        }
    }

    /// [`DEFAULT_INTERCEPT_PATTERNS`] intercepted, [`DEFAULT_STORAGE_PATTERNS`] blocked,
    /// everything else `unlisted`.
    pub fn snowflake_defaults(unlisted: GateAction) -> Self {
        let parse = |p: &&str| p.parse::<SniPattern>().expect("default patterns are valid");
        let mut gate = SniGate::new(unlisted);
        for pattern in DEFAULT_INTERCEPT_PATTERNS.iter().map(parse) {
            gate = gate.with_snowflake(pattern);
        }
        for pattern in DEFAULT_STORAGE_PATTERNS.iter().map(parse) {
            gate = gate.with_storage(pattern);
        }
        gate
    }

    /// Appends an operator rule (rules are tried in order, first match wins). An `Intercept`
    /// rule makes the name a Snowflake name.
    pub fn with_rule(mut self, pattern: SniPattern, action: GateAction) -> Self {
        let class = match action {
            GateAction::Intercept => NameClass::Snowflake,
            _ => NameClass::Listed,
        };
        self.rules.push((pattern, action, class));
        self
    }

    /// Appends a Snowflake name (intercepted).
    pub fn with_snowflake(mut self, pattern: SniPattern) -> Self {
        self.rules
            .push((pattern, GateAction::Intercept, NameClass::Snowflake));
        self
    }

    /// Appends a Snowflake storage host (blocked).
    pub fn with_storage(mut self, pattern: SniPattern) -> Self {
        self.rules
            .push((pattern, GateAction::Block, NameClass::Storage));
        self
    }

    /// Sets the action for hellos without SNI. Interception needs a name to mint a certificate
    /// for, so `Intercept` here means `Block`.
    pub fn with_no_sni(mut self, action: GateAction) -> Self {
        self.no_sni = action;
        self
    }

    /// The action for names no rule matches (`intercept.other_traffic`).
    pub fn unlisted(&self) -> GateAction {
        self.unlisted
    }

    /// The first rule `host` matches.
    pub fn classify(&self, host: &str) -> Option<(GateAction, NameClass)> {
        self.rules
            .iter()
            .find(|(pattern, _, _)| pattern.matches(host))
            .map(|(_, action, class)| (*action, *class))
    }

    /// Whether `host` is a Snowflake or storage name (a name agents must not reach around the
    /// gate).
    pub fn is_guarded(&self, host: &str) -> bool {
        matches!(
            self.classify(host),
            Some((_, NameClass::Snowflake | NameClass::Storage))
        )
    }

    /// Whether a certificate name (possibly a wildcard) could belong to a Snowflake or
    /// storage host.
    pub fn certificate_is_guarded(&self, name: &str) -> bool {
        self.rules
            .iter()
            .any(|(p, _, class)| *class != NameClass::Listed && p.overlaps_certificate_name(name))
    }

    /// The decision for a connection. Anything that would be passed through needs the
    /// destination's certificate first ([`GateVerdict::NeedCertificate`]).
    pub fn decide(&self, q: &GateQuery<'_>) -> GateVerdict {
        use GateVerdict::Decided;
        let (action, reason) = match q.sni.map(|h| (h, self.classify(h))) {
            Some((_, Some((GateAction::Intercept, _)))) => {
                return Decided(GateAction::Intercept, GateReason::SnowflakeName)
            }
            Some((_, Some((_, NameClass::Storage)))) => {
                return Decided(GateAction::Block, GateReason::StorageName)
            }
            Some((_, Some((action, _)))) => (action, GateReason::ListedName),
            Some((_, None)) => (self.unlisted, GateReason::UnlistedName),
            None => (self.no_sni, GateReason::NoSni),
        };
        if q.snowflake_address {
            return Decided(GateAction::Block, GateReason::SnowflakeAddress);
        }
        if action != GateAction::Passthrough {
            // `Intercept` for a name outside the Snowflake lists (or without a name) cannot be
            // honoured: there is nothing to mint a certificate for, or no policy for it.
            return Decided(GateAction::Block, reason);
        }
        match q.certificate {
            None => GateVerdict::NeedCertificate,
            Some(Err(why)) => Decided(
                GateAction::Block,
                GateReason::DestinationUnverified {
                    why: why.to_owned(),
                },
            ),
            Some(Ok(cert)) => {
                let honest = q.sni.is_some_and(|sni| cert.covers(sni));
                let guarded = cert
                    .names
                    .iter()
                    .find(|name| self.certificate_is_guarded(name));
                match guarded {
                    Some(name) if !honest => Decided(
                        GateAction::Block,
                        GateReason::FrontedCertificate { name: name.clone() },
                    ),
                    _ => Decided(GateAction::Passthrough, reason),
                }
            }
        }
    }
}

impl Default for SniGate {
    /// Snowflake intercepted, storage blocked, everything else passed through (after the
    /// destination checks).
    fn default() -> Self {
        SniGate::snowflake_defaults(GateAction::Passthrough)
    }
}

/// How long a learned Snowflake address is remembered after it was last seen or resolved.
pub const LEARNED_ADDRESS_TTL: Duration = Duration::from_secs(6 * 3600);

/// The addresses where Snowflake names live: configured ranges (PrivateLink endpoints, a
/// region's published ranges) plus addresses learned from intercepted connections and from
/// resolving the names seen, each kept for [`LEARNED_ADDRESS_TTL`] after it was last confirmed.
#[derive(Debug, Clone, Default)]
pub struct SnowflakeAddresses {
    ranges: Vec<IpNet>,
    learned: HashMap<IpAddr, (String, Instant)>,
}

/// Learned addresses kept at most (oldest forgotten first beyond this).
const MAX_LEARNED: usize = 65_536;

impl SnowflakeAddresses {
    /// Only the configured ranges.
    pub fn with_ranges(ranges: Vec<IpNet>) -> Self {
        SnowflakeAddresses {
            ranges,
            learned: HashMap::new(),
        }
    }

    /// Parses a configured range: an address or `ADDRESS/PREFIX`.
    pub fn parse_range(s: &str) -> Result<IpNet, GateError> {
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| GateError::InvalidRange {
                range: s.to_owned(),
            })
    }

    /// Remembers that `name` (a Snowflake name) lives at `addr`, as of `now`.
    pub fn learn(&mut self, addr: IpAddr, name: &str, now: Instant) {
        let addr = canonical(addr);
        if self.learned.len() >= MAX_LEARNED && !self.learned.contains_key(&addr) {
            self.expire(now);
            if self.learned.len() >= MAX_LEARNED {
                if let Some(oldest) = self
                    .learned
                    .iter()
                    .min_by_key(|(_, (_, seen))| *seen)
                    .map(|(a, _)| *a)
                {
                    self.learned.remove(&oldest);
                }
            }
        }
        self.learned.insert(addr, (name.to_owned(), now));
    }

    /// Forgets learned addresses not confirmed within [`LEARNED_ADDRESS_TTL`].
    pub fn expire(&mut self, now: Instant) {
        self.learned
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < LEARNED_ADDRESS_TTL);
    }

    /// The Snowflake name `addr` is known for (learned), or `Some("")` for a configured range.
    pub fn lookup(&self, addr: IpAddr, now: Instant) -> Option<&str> {
        let addr = canonical(addr);
        if self.ranges.iter().any(|r| r.contains(&addr)) {
            return Some("");
        }
        self.learned
            .get(&addr)
            .filter(|(_, seen)| now.saturating_duration_since(*seen) < LEARNED_ADDRESS_TTL)
            .map(|(name, _)| name.as_str())
    }

    /// The distinct names learned (to re-resolve them).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.learned.values().map(|(n, _)| n.clone()).collect();
        names.sort();
        names.dedup();
        names
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SniPattern {
        s.parse().unwrap()
    }

    #[test]
    fn wildcard_matches_one_or_more_labels() {
        let pat = p("*.SnowflakeComputing.com");
        assert!(pat.matches("acct.snowflakecomputing.com"));
        assert!(pat.matches("xy12345.us-east-2.aws.snowflakecomputing.com"));
        assert!(pat.matches("acct.snowflakecomputing.com."));
        assert!(!pat.matches("snowflakecomputing.com"));
        assert!(!pat.matches("evilsnowflakecomputing.com"));
        assert!(!pat.matches("acct.snowflakecomputing.com.evil.org"));
        let exact = p("app.example.com");
        assert!(exact.matches("app.example.com"));
        assert!(!exact.matches("x.app.example.com"));
        for bad in [
            "",
            "*",
            "*.com",
            "a..b",
            "a b.com",
            "x.*.com",
            "x.example.c*m",
            "example",
        ] {
            assert!(bad.parse::<SniPattern>().is_err(), "{bad}");
        }
        assert_eq!(p("*.A.example.com").to_string(), "*.a.example.com");
    }

    #[test]
    fn label_globs() {
        let s3 = p("sfc-*.s3.*.amazonaws.com");
        assert!(s3.matches("sfc-results.s3.us-west-2.amazonaws.com"));
        assert!(s3.matches("sfc-.s3.eu-central-1.amazonaws.com"));
        assert!(!s3.matches("mybucket.s3.us-west-2.amazonaws.com"));
        assert!(!s3.matches("sfc-x.s3.amazonaws.com"));
        assert!(!s3.matches("a.sfc-x.s3.us-west-2.amazonaws.com"));
        assert!(glob_match(b"a*b*c", b"aXXbYYc"));
        assert!(!glob_match(b"a*b*c", b"aXXbYY"));
        assert!(glob_match(b"***", b""));
        // Certificate wildcards overlap any glob in their label.
        assert!(s3.overlaps_certificate_name("*.s3.us-west-2.amazonaws.com"));
        assert!(!s3.overlaps_certificate_name("*.s3.amazonaws.com"));
        assert!(p("*.snowflakecomputing.com").overlaps_certificate_name("*.snowflakecomputing.com"));
    }

    #[test]
    fn certificate_coverage() {
        let cert = DestinationCertificate {
            names: vec!["*.example.com".into(), "example.org".into()],
        };
        assert!(cert.covers("a.example.com"));
        assert!(cert.covers("A.Example.com"));
        assert!(!cert.covers("a.b.example.com"));
        assert!(!cert.covers("example.com"));
        assert!(cert.covers("example.org"));
        assert!(!cert.covers("x.example.org"));
    }

    fn decided(gate: &SniGate, q: GateQuery<'_>) -> (GateAction, GateReason) {
        match gate.decide(&q) {
            GateVerdict::Decided(a, r) => (a, r),
            GateVerdict::NeedCertificate => panic!("needs a certificate: {q:?}"),
        }
    }

    #[test]
    fn names_decide_first() {
        let gate = SniGate::snowflake_defaults(GateAction::Block)
            .with_rule(p("pypi.org"), GateAction::Passthrough);
        let q = |sni| GateQuery {
            sni: Some(sni),
            ..GateQuery::default()
        };
        assert_eq!(
            decided(&gate, q("a.snowflakecomputing.cn")).0,
            GateAction::Intercept
        );
        assert_eq!(
            decided(&gate, q("a.eu-west-1.privatelink.snowflakecomputing.com")).0,
            GateAction::Intercept
        );
        assert_eq!(
            decided(&gate, q("sfc-results.s3.us-west-2.amazonaws.com")),
            (GateAction::Block, GateReason::StorageName)
        );
        assert_eq!(gate.decide(&q("pypi.org")), GateVerdict::NeedCertificate);
        assert_eq!(
            decided(&gate, q("example.org")),
            (GateAction::Block, GateReason::UnlistedName)
        );
        assert_eq!(
            decided(&gate, GateQuery::default()),
            (GateAction::Block, GateReason::NoSni)
        );
        let gate = SniGate::new(GateAction::Intercept);
        assert_eq!(decided(&gate, GateQuery::default()).0, GateAction::Block);
    }

    #[test]
    fn snowflake_addresses_block_other_names() {
        let gate = SniGate::default();
        for sni in [None, Some("cdn.example.net"), Some("pypi.org")] {
            let q = GateQuery {
                sni,
                snowflake_address: true,
                certificate: None,
            };
            assert_eq!(
                decided(&gate, q),
                (GateAction::Block, GateReason::SnowflakeAddress),
                "{sni:?}"
            );
        }
        // The Snowflake name itself is intercepted there.
        let q = GateQuery {
            sni: Some("acct.snowflakecomputing.com"),
            snowflake_address: true,
            certificate: None,
        };
        assert_eq!(decided(&gate, q).0, GateAction::Intercept);
    }

    #[test]
    fn fronting_is_told_by_the_certificate() {
        let gate = SniGate::default();
        let snowflake = DestinationCertificate {
            names: vec!["*.snowflakecomputing.com".into()],
        };
        let s3 = DestinationCertificate {
            names: vec![
                "*.s3.us-west-2.amazonaws.com".into(),
                "s3.us-west-2.amazonaws.com".into(),
            ],
        };
        let other = DestinationCertificate {
            names: vec!["cdn.example.net".into()],
        };
        let q = |sni, cert| GateQuery {
            sni,
            snowflake_address: false,
            certificate: Some(Ok(cert)),
        };
        assert!(matches!(
            decided(&gate, q(Some("cdn.example.net"), &snowflake)),
            (GateAction::Block, GateReason::FrontedCertificate { .. })
        ));
        assert!(matches!(
            decided(&gate, q(None, &snowflake)),
            (GateAction::Block, GateReason::FrontedCertificate { .. })
        ));
        // Storage fronting: another name on a Snowflake stage host's certificate.
        assert!(matches!(
            decided(&gate, q(Some("cdn.example.net"), &s3)),
            (GateAction::Block, GateReason::FrontedCertificate { .. })
        ));
        // An honest connection to another bucket on the same endpoint passes.
        assert_eq!(
            decided(&gate, q(Some("mybucket.s3.us-west-2.amazonaws.com"), &s3)),
            (GateAction::Passthrough, GateReason::UnlistedName)
        );
        assert_eq!(
            decided(&gate, q(Some("cdn.example.net"), &other)).0,
            GateAction::Passthrough
        );
        assert_eq!(decided(&gate, q(None, &other)).0, GateAction::Passthrough);
        let failed = GateQuery {
            sni: Some("cdn.example.net"),
            snowflake_address: false,
            certificate: Some(Err("timed out")),
        };
        assert!(matches!(
            decided(&gate, failed),
            (GateAction::Block, GateReason::DestinationUnverified { .. })
        ));
    }

    #[test]
    fn address_book() {
        let now = Instant::now();
        let mut book =
            SnowflakeAddresses::with_ranges(vec![
                SnowflakeAddresses::parse_range("10.9.0.0/16").unwrap()
            ]);
        assert_eq!(book.lookup("10.9.3.4".parse().unwrap(), now), Some(""));
        assert_eq!(
            book.lookup("::ffff:10.9.3.4".parse().unwrap(), now),
            Some("")
        );
        assert_eq!(book.lookup("192.0.2.1".parse().unwrap(), now), None);
        book.learn(
            "192.0.2.1".parse().unwrap(),
            "acct.snowflakecomputing.com",
            now,
        );
        assert_eq!(
            book.lookup("::ffff:192.0.2.1".parse().unwrap(), now),
            Some("acct.snowflakecomputing.com")
        );
        let later = now + LEARNED_ADDRESS_TTL + Duration::from_secs(1);
        assert_eq!(book.lookup("192.0.2.1".parse().unwrap(), later), None);
        book.expire(later);
        assert!(book.names().is_empty());
        assert!(SnowflakeAddresses::parse_range("10.0.0.0/33").is_err());
        assert!(SnowflakeAddresses::parse_range("fd00::1").is_ok());
    }
}
