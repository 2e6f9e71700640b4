//! The SNI gate: which TLS connections are intercepted, passed through or blocked.
//!
//! Pattern semantics (decided here, used by config files): a pattern is either an exact host
//! name (`acct.snowflakecomputing.com`) or `*.` followed by a suffix
//! (`*.snowflakecomputing.com`), where `*` stands for **one or more** whole labels — so
//! `xy12345.us-east-2.aws.snowflakecomputing.com` matches, the bare suffix
//! `snowflakecomputing.com` does not. Snowflake account URLs carry region and cloud labels,
//! which is why one label would not do. (Certificate SANs are a different matter: minted leaf
//! certificates always carry the exact SNI, never a wildcard.) Matching is case-insensitive;
//! rules are tried in order and the first match wins.

use std::fmt;
use std::str::FromStr;

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

/// The Snowflake host patterns intercepted by default (DESIGN §3.2). Storage hosts serving
/// result chunks are added by configuration once known.
pub const DEFAULT_INTERCEPT_PATTERNS: &[&str] = &[
    "*.snowflakecomputing.com",
    "*.snowflakecomputing.cn",
    "*.privatelink.snowflakecomputing.com",
];

/// A host-name pattern; see the module docs for the semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniPattern {
    /// Matches this host name only.
    Exact(String),
    /// Matches one or more labels followed by `.` and this suffix.
    Suffix(String),
}

/// A pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// The pattern is not a host name or `*.` plus a host name.
    #[error("invalid SNI pattern {pattern:?}: {why}; write a host name such as `acct.snowflakecomputing.com` or `*.` followed by one, such as `*.snowflakecomputing.com`")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl SniPattern {
    /// Whether `host` (already lowercased, as the ClientHello parser returns it) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            SniPattern::Exact(name) => host == name,
            SniPattern::Suffix(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|labels| !labels.is_empty()),
        }
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
        let (name, wildcard) = match lower.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (lower.as_str(), false),
        };
        if name.is_empty() || name.len() > 253 {
            return Err(invalid("empty or longer than 253 bytes"));
        }
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(invalid("empty label or label longer than 63 bytes"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(invalid(
                    "only letters, digits, '-', '_' and a leading '*.' are allowed",
                ));
            }
        }
        if wildcard && !name.contains('.') {
            return Err(invalid("a wildcard needs a suffix of at least two labels"));
        }
        Ok(if wildcard {
            SniPattern::Suffix(name.to_string())
        } else {
            SniPattern::Exact(name.to_string())
        })
    }
}

impl fmt::Display for SniPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SniPattern::Exact(name) => f.write_str(name),
            SniPattern::Suffix(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// Ordered SNI rules plus the actions for unlisted names and for hellos without SNI.
#[derive(Debug, Clone)]
pub struct SniGate {
    rules: Vec<(SniPattern, GateAction)>,
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

    /// [`DEFAULT_INTERCEPT_PATTERNS`] intercepted, everything else `unlisted`.
    pub fn snowflake_defaults(unlisted: GateAction) -> Self {
        let mut gate = SniGate::new(unlisted);
        for pattern in DEFAULT_INTERCEPT_PATTERNS {
            let pattern = pattern.parse().expect("default patterns are valid");
            gate.rules.push((pattern, GateAction::Intercept));
        }
        gate
    }

    /// Appends a rule (rules are tried in order, first match wins).
    pub fn with_rule(mut self, pattern: SniPattern, action: GateAction) -> Self {
        self.rules.push((pattern, action));
        self
    }

    /// Sets the action for hellos without SNI. Interception needs a name to mint a certificate
    /// for, so `Intercept` here means `Block`.
    pub fn with_no_sni(mut self, action: GateAction) -> Self {
        self.no_sni = action;
        self
    }

    /// The decision for a ClientHello's SNI.
    pub fn decide(&self, sni: Option<&str>) -> GateAction {
        let Some(host) = sni else {
            return match self.no_sni {
                GateAction::Intercept => GateAction::Block,
                other => other,
            };
        };
        self.rules
            .iter()
            .find(|(pattern, _)| pattern.matches(host))
            .map(|(_, action)| *action)
            .unwrap_or(self.unlisted)
    }
}

impl Default for SniGate {
    /// Snowflake intercepted, everything else passed through.
    fn default() -> Self {
        SniGate::snowflake_defaults(GateAction::Passthrough)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matches_one_or_more_labels() {
        let p: SniPattern = "*.SnowflakeComputing.com".parse().unwrap();
        assert!(p.matches("acct.snowflakecomputing.com"));
        assert!(p.matches("xy12345.us-east-2.aws.snowflakecomputing.com"));
        assert!(!p.matches("snowflakecomputing.com"));
        assert!(!p.matches("evilsnowflakecomputing.com"));
        assert!(!p.matches("acct.snowflakecomputing.com.evil.org"));
        let exact: SniPattern = "app.example.com".parse().unwrap();
        assert!(exact.matches("app.example.com"));
        assert!(!exact.matches("x.app.example.com"));
        for bad in [
            "",
            "*",
            "*.com",
            "a..b",
            "*.*.example.com",
            "a b.com",
            "foo*.example.com",
        ] {
            assert!(bad.parse::<SniPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn gate_decisions() {
        let gate = SniGate::snowflake_defaults(GateAction::Block)
            .with_rule("pypi.org".parse().unwrap(), GateAction::Passthrough);
        assert_eq!(
            gate.decide(Some("a.snowflakecomputing.cn")),
            GateAction::Intercept
        );
        assert_eq!(
            gate.decide(Some("a.eu-west-1.privatelink.snowflakecomputing.com")),
            GateAction::Intercept
        );
        assert_eq!(gate.decide(Some("pypi.org")), GateAction::Passthrough);
        assert_eq!(gate.decide(Some("example.org")), GateAction::Block);
        assert_eq!(gate.decide(None), GateAction::Block);
        let gate = SniGate::new(GateAction::Intercept);
        assert_eq!(gate.decide(None), GateAction::Block);
    }
}
