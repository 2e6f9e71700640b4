//! The policy file format, as deserialised (version 1). [`crate::Policy::compile`] validates it
//! and compiles it; `policies/README.md` is the user-facing description.
//!
//! ```yaml
//! version: 1
//! defaults:                       # every field optional; all default to deny (fail closed)
//!   unparseable_sql: deny         # allow | deny | require_approval
//!   unknown_statement: deny       # statements of kind `other` no rule names explicitly
//!   unresolved_bindings: deny     # IDENTIFIER(?), EXECUTE IMMEDIATE :var, …
//!   no_rule_matched: deny
//!   unknown_lineage: deny         # deny | mask_all | detect: masked query whose columns cannot be traced
//!   masked_predicates: deny       # deny | allow: masked query filtering/sorting/grouping on a masked column
//!   classified_copies: deny       # deny | allow: CTAS, INSERT…SELECT, MERGE, CREATE VIEW, COPY INTO
//!                                 # @stage (and UPDATE … SET from another table) reading classified
//!                                 # data and decided allow or mask
//! classifications:                # PHI columns and their tags
//!   - columns: ["CLINICAL.PUBLIC.PATIENTS.SSN"]   # DB.SCHEMA.TABLE.COLUMN globs
//!     tags: [phi.ssn]
//! rules:                          # first matching rule wins, per statement
//!   - id: analysts-read
//!     description: …
//!     match:                      # every field optional; all given fields must match
//!       snowflake: { account: [], user: [], role: [], warehouse: [], database: [], schema: [] }
//!       process: { uid: [1000], comm: [], exe: [], cgroup: [] }
//!       host: []
//!       claims: { sub: ["ci-*"] }
//!       statements: [select, read, …]           # kinds and groups
//!       tables: ["CLINICAL.PUBLIC.*"]           # DB.SCHEMA.TABLE globs
//!       sources: [RESULT_SCAN, "TABLE(MY_UDTF)", "@MY_STAGE*"]   # sources without a table name
//!       columns: ["*.*.PATIENTS.SSN"]           # DB.SCHEMA.TABLE.COLUMN globs
//!       tags: ["phi.*"]                         # classification tags touched
//!     action: allow               # allow | deny | mask | require_approval
//!     reason: "…"                 # required for deny / require_approval
//!     max_rows: 1000
//!     max_bytes: 64 MiB           # or a number of bytes; units B, KB, MB, GB, KiB, MiB, GiB
//!     audit: { sql: full, results: masked, max_result_rows: 100 }   # default: redacted, none
//!     mask:                       # required for mask
//!       - { tags: [phi.ssn], method: partial, keep_last: 4 }
//!       - { profile: safe_harbor } # standing alone: the 18 HIPAA Safe Harbor identifiers
//! ```
//!
//! A `profile` entry expands, at compile time, into directives over a fixed tag vocabulary
//! ([`crate::profile::SAFE_HARBOR_TAGS`]): `phi.address`, `phi.zip`, `phi.date`, `phi.dob`
//! and `phi.age` are generalised, the other tags (`phi.name`, `phi.ssn`, `phi.ip`, …)
//! redacted. The profile's tags need not be declared in `classifications`. An explicit entry
//! of the same rule naming one of those tags overrides the profile for it, wherever it is
//! listed; entries by `columns` combine with the profile (strictest wins). A `profile` entry
//! takes no `tags`, `columns`, `method` or `keep_last`; an unknown profile name is an error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A whole policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Format version; must be 1.
    pub version: u32,
    /// What happens when no rule can decide.
    #[serde(default)]
    pub defaults: DefaultsSpec,
    /// Classified (PHI) columns.
    #[serde(default)]
    pub classifications: Vec<ClassificationSpec>,
    /// The rules, in order: the first matching rule decides a statement.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// The `defaults` section: outcomes that no rule decides.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultsSpec {
    /// The statement text could not be analysed.
    pub unparseable_sql: DefaultAction,
    /// A statement of kind `other` that no rule names explicitly.
    pub unknown_statement: DefaultAction,
    /// An object name depends on a bind value or dynamic SQL.
    pub unresolved_bindings: DefaultAction,
    /// No rule matched.
    pub no_rule_matched: DefaultAction,
    /// A masked query whose column lineage cannot be traced (or a text of several
    /// statements) that may touch classified data.
    pub unknown_lineage: UnknownLineage,
    /// A masked query that filters, sorts, groups or joins (other than `a = b`) on a column
    /// the plan masks.
    pub masked_predicates: MaskedPredicates,
    /// A statement that copies data into another table or location (CTAS, `INSERT … SELECT`,
    /// `MERGE`, `CREATE VIEW`, `COPY INTO @stage`, `UPDATE … SET` from another table) that
    /// may read classified data and would be allowed or masked.
    pub classified_copies: ClassifiedCopies,
}

impl Default for DefaultsSpec {
    fn default() -> Self {
        Self {
            unparseable_sql: DefaultAction::Deny,
            unknown_statement: DefaultAction::Deny,
            unresolved_bindings: DefaultAction::Deny,
            no_rule_matched: DefaultAction::Deny,
            unknown_lineage: UnknownLineage::Deny,
            masked_predicates: MaskedPredicates::Deny,
            classified_copies: ClassifiedCopies::Deny,
        }
    }
}

/// What a default does. (Masking needs a plan, so it is not offered here.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    /// Let the statement through.
    Allow,
    /// Refuse it.
    Deny,
    /// Hold it for a human.
    RequireApproval,
}

/// What `defaults.unknown_lineage` does with a masked query whose result columns cannot be
/// traced to their source columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownLineage {
    /// Refuse the statement (the default).
    Deny,
    /// Forward it and redact every result column.
    MaskAll,
    /// Forward it and run the PHI detectors over every result value.
    Detect,
}

/// What `defaults.masked_predicates` does with a masked query that filters, sorts or groups
/// on a masked column (`WHERE ssn LIKE '1%'` reveals the masked values one query at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskedPredicates {
    /// Refuse the statement (the default).
    Deny,
    /// Allow it; only the result values are masked.
    Allow,
}

/// What `defaults.classified_copies` does with a statement that copies classified data into
/// another table or location, where masking cannot follow it (`CREATE TABLE t AS SELECT ssn
/// …`, `COPY INTO @stage FROM patients`), when a rule (or default) would allow or mask it.
/// Deny and require_approval decisions are left as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifiedCopies {
    /// Refuse the statement (the default).
    Deny,
    /// Leave the decision as it is.
    Allow,
}

/// One classification entry: columns (globs) and the tags they carry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassificationSpec {
    /// `DB.SCHEMA.TABLE.COLUMN` globs.
    pub columns: Vec<String>,
    /// Tags (`phi.ssn`): lower case letters, digits, `.`, `_`, `-`.
    pub tags: Vec<String>,
}

/// One rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique id, carried by every decision and audit record (`[A-Za-z0-9._-]+`).
    pub id: String,
    /// Free text for humans.
    #[serde(default)]
    pub description: Option<String>,
    /// Conditions; absent means "every statement" (kinds `other`/`unknown` excepted).
    #[serde(rename = "match", default)]
    pub matcher: MatchSpec,
    /// What the rule decides.
    pub action: ActionKind,
    /// Shown to the agent; required for `deny` and `require_approval`, refused otherwise.
    #[serde(default)]
    pub reason: Option<String>,
    /// Row cap for the result (not for `deny`).
    #[serde(default)]
    pub max_rows: Option<u64>,
    /// Byte cap for the result, by its uncompressed size (not for `deny`).
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
    /// What the audit trail keeps of the statements this rule decides.
    #[serde(default)]
    pub audit: Option<AuditSpec>,
    /// Masking directives; required for `mask`, refused otherwise.
    #[serde(default)]
    pub mask: Vec<MaskSpec>,
}

/// A rule's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Let the statement through.
    Allow,
    /// Refuse it with the rule's reason.
    Deny,
    /// Let it through with its results masked per the rule's `mask` directives.
    Mask,
    /// Hold it until a human approves.
    RequireApproval,
}

/// The `match` section of a rule. Every list must be non-empty when present.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Snowflake session identity (globs, case-insensitive).
    #[serde(default)]
    pub snowflake: Option<SnowflakeMatchSpec>,
    /// The agent process (from the eBPF connection record).
    #[serde(default)]
    pub process: Option<ProcessMatchSpec>,
    /// Host names (globs, case-insensitive).
    #[serde(default)]
    pub host: Option<Vec<String>>,
    /// OIDC claims: claim name → globs on its value (case-sensitive).
    #[serde(default)]
    pub claims: Option<BTreeMap<String, Vec<String>>>,
    /// Statement kinds and groups (`select`, `read`, `use_role`, …).
    #[serde(default)]
    pub statements: Option<Vec<String>>,
    /// `DB.SCHEMA.TABLE` globs.
    #[serde(default)]
    pub tables: Option<Vec<String>>,
    /// Globs (case-insensitive) on the data sources without a table name that the rule
    /// covers: `RESULT_SCAN`, `TABLE(<function>)`, `@<stage>[/path]`, or `*` (see
    /// [`crate::OpaqueSource`]). A permissive rule matches a statement with such a source only
    /// if this list names it.
    #[serde(default)]
    pub sources: Option<Vec<String>>,
    /// `DB.SCHEMA.TABLE.COLUMN` globs.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Globs on classification tags the statement touches.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

/// Snowflake identity conditions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnowflakeMatchSpec {
    /// Account locator or name.
    #[serde(default)]
    pub account: Option<Vec<String>>,
    /// Login name.
    #[serde(default)]
    pub user: Option<Vec<String>>,
    /// Current (primary) role.
    #[serde(default)]
    pub role: Option<Vec<String>>,
    /// Current warehouse.
    #[serde(default)]
    pub warehouse: Option<Vec<String>>,
    /// Session's current database.
    #[serde(default)]
    pub database: Option<Vec<String>>,
    /// Session's current schema.
    #[serde(default)]
    pub schema: Option<Vec<String>>,
}

/// Process identity conditions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessMatchSpec {
    /// Numeric user ids (exact).
    #[serde(default)]
    pub uid: Option<Vec<u32>>,
    /// `comm` (globs, case-sensitive).
    #[serde(default)]
    pub comm: Option<Vec<String>>,
    /// Executable path (globs, case-sensitive).
    #[serde(default)]
    pub exe: Option<Vec<String>>,
    /// cgroup v2 path (globs, case-sensitive).
    #[serde(default)]
    pub cgroup: Option<Vec<String>>,
}

/// One entry of a rule's `mask` list: a masking directive (`columns` and/or `tags` with a
/// `method`), or a `profile` standing alone, expanded into directives when the policy is
/// compiled (see [`crate::profile`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskSpec {
    /// A mask profile ([`crate::profile::MASK_PROFILES`]: `safe_harbor`); an entry naming one
    /// takes no other field.
    #[serde(default)]
    pub profile: Option<String>,
    /// `DB.SCHEMA.TABLE.COLUMN` globs to mask.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Classification tags to mask.
    #[serde(default)]
    pub tags: Vec<String>,
    /// How; required unless the entry names a `profile`.
    #[serde(default)]
    pub method: Option<MaskMethod>,
    /// For `partial`: how many trailing characters stay visible.
    #[serde(default)]
    pub keep_last: Option<u32>,
}

/// A masking method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskMethod {
    /// Replace the value with a fixed marker.
    Redact,
    /// Keep the last `keep_last` characters.
    Partial,
    /// Keyed deterministic token (HMAC): joins still work, values do not leak.
    Token,
    /// SQL NULL.
    Null,
    /// HIPAA Safe Harbor generalisation (dates → year, ZIP → 3 digits).
    Generalize,
}

/// A size in bytes, written as a number of bytes (`1048576`) or a number with a unit
/// (`"64 MiB"`, `"10MB"`, `"512 KiB"`, `"1.5 GiB"`). Units: `B`, `KB`/`MB`/`GB`/`TB` (powers of
/// 1000) and `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024), case-insensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim();
        let factor: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            _ => {
                return Err(format!(
                    "{s:?} is not a size: unknown unit {unit:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
                ))
            }
        };
        let bad = || format!("{s:?} is not a size: write a number of bytes or e.g. \"64 MiB\"");
        if num.is_empty() {
            return Err(bad());
        }
        let bytes = if let Ok(n) = num.parse::<u64>() {
            n.checked_mul(factor)
        } else {
            let f: f64 = num.parse().map_err(|_| bad())?;
            let v = f * factor as f64;
            (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
        };
        bytes
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of bytes or a size such as \"64 MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod byte_size_tests {
    use super::ByteSize;

    #[test]
    fn sizes_parse_with_and_without_units() {
        let ok = [
            ("1048576", 1_048_576),
            ("64 MiB", 64 << 20),
            ("10MB", 10_000_000),
            ("512 kib", 512 << 10),
            ("1.5 GiB", 3 << 29),
            ("7 B", 7),
        ];
        for (s, want) in ok {
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(want)), "{s}");
        }
        for bad in ["", "MiB", "12 parsecs", "-3", "1.2.3 MB", "99999999999 TiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad} accepted");
        }
    }
}

/// A rule's `audit:` settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSpec {
    /// How the statement text is kept.
    #[serde(default)]
    pub sql: SqlRecording,
    /// Whether result rows are kept.
    #[serde(default)]
    pub results: ResultRecording,
    /// Rows kept with `results: masked` (default 100, at most 10,000).
    #[serde(default)]
    pub max_result_rows: Option<u64>,
}

/// How the audit trail keeps statement text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlRecording {
    /// Literals replaced by `?` (they can be PHI), plus a fingerprint.
    #[default]
    Redacted,
    /// The text as the agent sent it, literals included.
    Full,
}

/// Whether the audit trail keeps result rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultRecording {
    /// No values (counts only).
    #[default]
    None,
    /// The first rows the agent received, as it received them (masked), for `tollgate replay`.
    Masked,
}
