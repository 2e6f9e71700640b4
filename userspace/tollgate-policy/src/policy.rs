//! Policy files → validated, compiled [`Policy`].
//!
//! Compilation happens once per (re)load: globs are compiled, statement kinds turned into bit
//! sets and rules indexed by kind, so [`Policy::evaluate`](crate::Policy::evaluate) only walks
//! the rules that can apply. Every problem found is reported with the file, line and field path
//! (`hipaa.yaml:42: rules[3].match.tables[0]: …`), all of them at once.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::analysis::StatementKind;
use crate::glob::{NameGlob, TextGlob};
use crate::profile::MASK_PROFILES;
use crate::schema::{
    ActionKind, ByteSize, ClassificationSpec, DefaultsSpec, MaskMethod, MaskSpec, MatchSpec,
    PolicyFile, RuleSpec,
};

/// Statement kind names usable in `match.statements`, in bit order.
pub(crate) const KIND_NAMES: &[&str] = &[
    "select",
    "insert",
    "insert_select",
    "update",
    "delete",
    "merge",
    "create_table",
    "create_table_as_select",
    "create_view",
    "drop",
    "alter",
    "truncate",
    "copy_into_table",
    "copy_into_location",
    "get",
    "put",
    "create_stage",
    "use_database",
    "use_schema",
    "use_warehouse",
    "use_role",
    "use_secondary_roles",
    "show",
    "describe",
    "call",
    "execute_immediate",
    "set",
    "begin",
    "commit",
    "rollback",
    "grant",
    "revoke",
    "explain",
    "other",
    "unknown",
];

/// Groups usable in `match.statements`.
pub(crate) const KIND_GROUPS: &[(&str, &[&str])] = &[
    ("read", &["select", "show", "describe", "explain"]),
    (
        "write",
        &[
            "insert",
            "insert_select",
            "update",
            "delete",
            "merge",
            "truncate",
            "copy_into_table",
        ],
    ),
    (
        "ddl",
        &[
            "create_table",
            "create_table_as_select",
            "create_view",
            "drop",
            "alter",
            "create_stage",
        ],
    ),
    (
        "stage",
        &[
            "copy_into_table",
            "copy_into_location",
            "get",
            "put",
            "create_stage",
        ],
    ),
    (
        "use",
        &[
            "use_database",
            "use_schema",
            "use_warehouse",
            "use_role",
            "use_secondary_roles",
        ],
    ),
    ("transaction", &["begin", "commit", "rollback"]),
    (
        "metadata",
        &[
            "show",
            "describe",
            "use_database",
            "use_schema",
            "use_warehouse",
        ],
    ),
];

pub(crate) fn kind_bit(name: &str) -> Option<u64> {
    KIND_NAMES
        .iter()
        .position(|n| *n == name)
        .map(|i| 1u64 << i)
}

pub(crate) fn kind_index(kind: &StatementKind) -> usize {
    let name = kind.policy_name();
    KIND_NAMES
        .iter()
        .position(|n| *n == name)
        .expect("every kind has a policy name in KIND_NAMES")
}

/// Kinds a rule without `match.statements` applies to: all but `other` and `unknown`, which
/// must be named explicitly.
fn implicit_kinds() -> u64 {
    let all = (1u64 << KIND_NAMES.len()) - 1;
    all & !kind_bit("other").unwrap_or(0) & !kind_bit("unknown").unwrap_or(0)
}

/// A problem found while validating a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// 1-based line in the policy text, when it could be located.
    pub line: Option<usize>,
    /// Field path (`rules[3].match.tables[0]`).
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy file could not be read (the I/O error is the source, not in the message, so
    /// that a printed chain carries it once).
    #[error("cannot read policy file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not YAML, or does not fit the schema (unknown field, wrong type, missing
    /// field); the message carries serde's field path.
    #[error("{origin}:{}: {message}", fmt_line(*line))]
    Syntax {
        /// The file name (or other origin) given to [`Policy::compile`].
        origin: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// The file parsed but is not a valid policy; every problem is listed.
    #[error("{origin}: invalid policy:{}", fmt_issues(origin, issues))]
    Invalid {
        /// The file name (or other origin).
        origin: String,
        /// The problems, in file order as far as known.
        issues: Vec<Issue>,
    },
}

fn fmt_line(line: Option<usize>) -> String {
    line.map_or_else(|| "?".into(), |l| l.to_string())
}

fn fmt_issues(origin: &str, issues: &[Issue]) -> String {
    let mut out = String::new();
    for issue in issues {
        out.push_str(&format!(
            "\n  {origin}:{}: {}: {}",
            fmt_line(issue.line),
            issue.field,
            issue.message
        ));
    }
    out
}

/// Reads and compiles the policy file at `path` — the crate's only I/O.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })?;
    Policy::compile(&text, &path.display().to_string())
}

/// A compiled policy. Immutable; share it behind an `Arc` and swap the `Arc` to reload.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) origin: String,
    pub(crate) defaults: DefaultsSpec,
    pub(crate) classifications: Vec<Classification>,
    pub(crate) rules: Vec<Rule>,
    /// For each kind index, the rules that can apply, in policy order.
    pub(crate) by_kind: Vec<Vec<u32>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Classification {
    pub columns: Vec<NameGlob>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub id: String,
    pub matcher: Matcher,
    pub action: ActionKind,
    pub reason: Option<String>,
    pub max_rows: Option<u64>,
    pub max_bytes: Option<u64>,
    pub record: crate::evaluate::Recording,
    pub mask: Vec<MaskDirectiveSpec>,
}

impl Rule {
    /// Deny and require_approval are restrictive: they apply when *any* table, column or tag
    /// of the statement matches (and when an identity field is unknown, or the statement has
    /// an opaque source). Allow and mask are permissive: they apply only when they cover
    /// *every* table, column and tag (and never on an unknown identity field, nor on an opaque
    /// source their `sources` does not name).
    pub fn restrictive(&self) -> bool {
        matches!(self.action, ActionKind::Deny | ActionKind::RequireApproval)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MaskDirectiveSpec {
    pub columns: Vec<String>,
    pub tags: Vec<String>,
    pub method: MaskMethod,
    pub keep_last: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Matcher {
    pub account: Option<Vec<TextGlob>>,
    pub user: Option<Vec<TextGlob>>,
    pub role: Option<Vec<TextGlob>>,
    pub warehouse: Option<Vec<TextGlob>>,
    pub database: Option<Vec<TextGlob>>,
    pub schema: Option<Vec<TextGlob>>,
    pub uid: Option<Vec<u32>>,
    pub comm: Option<Vec<TextGlob>>,
    pub exe: Option<Vec<TextGlob>>,
    pub cgroup: Option<Vec<TextGlob>>,
    pub host: Option<Vec<TextGlob>>,
    pub claims: Vec<(String, Vec<TextGlob>)>,
    pub tables: Option<Vec<NameGlob>>,
    /// `match.sources`: globs on [`crate::OpaqueSource::label`]s.
    pub sources: Option<Vec<TextGlob>>,
    pub columns: Option<Vec<NameGlob>>,
    pub tags: Option<Vec<TextGlob>>,
}

impl Policy {
    /// Parses, validates and compiles policy `text`; `origin` (usually the file name) prefixes
    /// every error.
    pub fn compile(text: &str, origin: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = serde_yaml_ng::from_str(text).map_err(|e| PolicyError::Syntax {
            origin: origin.to_owned(),
            line: e.location().map(|l| l.line()),
            message: e.to_string(),
        })?;
        let mut v = Validator {
            locator: Locator::new(text, &file.rules),
            issues: Vec::new(),
        };
        let policy = v.compile(&file, origin);
        if v.issues.is_empty() {
            Ok(policy)
        } else {
            v.issues.sort_by_key(|i| i.line.unwrap_or(usize::MAX));
            Err(PolicyError::Invalid {
                origin: origin.to_owned(),
                issues: v.issues,
            })
        }
    }

    /// Where this policy came from (the `origin` given to [`Policy::compile`]).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The rule ids, in policy order.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.id.as_str())
    }

    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The classification tags of a column (`DB.SCHEMA.TABLE.COLUMN` parts, folded), for the
    /// masking layer. Sorted, without duplicates.
    pub fn tags_for_column(
        &self,
        database: &str,
        schema: &str,
        table: &str,
        column: &str,
    ) -> Vec<String> {
        let parts = [Some(database), Some(schema), Some(table), Some(column)];
        let mut tags: Vec<String> = self
            .classifications
            .iter()
            .filter(|c| c.columns.iter().any(|g| g.matches(&parts, false)))
            .flat_map(|c| c.tags.iter().cloned())
            .collect();
        tags.sort();
        tags.dedup();
        tags
    }
}

/// Finds the line of a field for errors serde cannot locate: rules are found by their `id`
/// line, fields by their key and value after it.
struct Locator<'a> {
    lines: Vec<&'a str>,
    /// Line index of each rule's `id:` line, in rule order.
    rule_lines: Vec<Option<usize>>,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str, rules: &[RuleSpec]) -> Self {
        let lines: Vec<&str> = text.lines().collect();
        let mut rule_lines = Vec::with_capacity(rules.len());
        let mut from = 0;
        for rule in rules {
            let found = (from..lines.len()).find(|&i| {
                let l = lines[i].trim_start().trim_start_matches('-').trim_start();
                l.strip_prefix("id:").is_some_and(|rest| {
                    let rest = rest.split(" #").next().unwrap_or("").trim();
                    rest.trim_matches(['"', '\'']) == rule.id
                })
            });
            if let Some(i) = found {
                from = i + 1;
            }
            rule_lines.push(found);
        }
        Self { lines, rule_lines }
    }

    fn find(&self, from: usize, to: usize, needle: &str) -> Option<usize> {
        (from..to.min(self.lines.len())).find(|&i| self.lines[i].contains(needle))
    }

    /// 1-based line of `key` (then `value`) inside rule `index`, else the rule's id line.
    fn rule_field(&self, index: usize, key: &str, value: Option<&str>) -> Option<usize> {
        let start = self.rule_lines.get(index).copied().flatten()?;
        // A rule's keys may come before its `id`: search back to the previous rule.
        let lower = index
            .checked_sub(1)
            .and_then(|i| self.rule_lines.get(i).copied().flatten())
            .map_or(0, |l| l + 1);
        let upper = self
            .rule_lines
            .iter()
            .skip(index + 1)
            .flatten()
            .next()
            .copied()
            .unwrap_or(self.lines.len());
        let key_line = self
            .find(start, upper, &format!("{key}:"))
            .or_else(|| self.find(lower, upper, &format!("{key}:")));
        let line = match (key_line, value) {
            (Some(k), Some(v)) => self.find(k, upper, v).or(Some(k)),
            (Some(k), None) => Some(k),
            (None, Some(v)) => self.find(lower, upper, v),
            (None, None) => None,
        };
        Some(line.unwrap_or(start) + 1)
    }

    /// 1-based line of `value` after the top-level `section:` line.
    fn section_value(&self, section: &str, value: &str) -> Option<usize> {
        let start = self
            .lines
            .iter()
            .position(|l| l.starts_with(&format!("{section}:")))?;
        Some(self.find(start, self.lines.len(), value).unwrap_or(start) + 1)
    }
}

struct Validator<'a> {
    locator: Locator<'a>,
    issues: Vec<Issue>,
}

impl Validator<'_> {
    fn issue(&mut self, line: Option<usize>, field: String, message: impl Into<String>) {
        self.issues.push(Issue {
            line,
            field,
            message: message.into(),
        });
    }

    fn compile(&mut self, file: &PolicyFile, origin: &str) -> Policy {
        if file.version != 1 {
            let line = self.locator.section_value("version", "version");
            self.issue(
                line,
                "version".into(),
                format!(
                    "unsupported version {}; this Tollgate reads version 1",
                    file.version
                ),
            );
        }
        let classifications: Vec<Classification> = file
            .classifications
            .iter()
            .enumerate()
            .map(|(i, c)| self.classification(i, c))
            .collect();
        let declared: Vec<String> = classifications
            .iter()
            .flat_map(|c| c.tags.iter().cloned())
            .collect();
        let mut rules = Vec::with_capacity(file.rules.len());
        let mut kinds = Vec::with_capacity(file.rules.len());
        for (i, spec) in file.rules.iter().enumerate() {
            if let Some(j) = file.rules[..i].iter().position(|r| r.id == spec.id) {
                let line = self.locator.rule_field(i, "id", None);
                self.issue(
                    line,
                    format!("rules[{i}].id"),
                    format!(
                        "duplicate rule id `{}` (also rules[{j}]); ids must be unique",
                        spec.id
                    ),
                );
            }
            let (rule, kind_bits) = self.rule(i, spec, &declared);
            rules.push(rule);
            kinds.push(kind_bits);
        }
        let mut by_kind = vec![Vec::new(); KIND_NAMES.len()];
        for (kind, list) in by_kind.iter_mut().enumerate() {
            for (i, bits) in kinds.iter().enumerate() {
                if bits & (1 << kind) != 0 {
                    list.push(u32::try_from(i).unwrap_or(u32::MAX));
                }
            }
        }
        Policy {
            origin: origin.to_owned(),
            defaults: file.defaults,
            classifications,
            rules,
            by_kind,
        }
    }

    fn classification(&mut self, i: usize, spec: &ClassificationSpec) -> Classification {
        let mut columns = Vec::new();
        if spec.columns.is_empty() {
            let line = self.locator.section_value("classifications", "columns:");
            self.issue(
                line,
                format!("classifications[{i}].columns"),
                "must list at least one column glob",
            );
        }
        for (j, pattern) in spec.columns.iter().enumerate() {
            match NameGlob::new(pattern, 4, "DB.SCHEMA.TABLE.COLUMN") {
                Ok(g) => columns.push(g),
                Err(e) => {
                    let line = self.locator.section_value("classifications", pattern);
                    self.issue(
                        line,
                        format!("classifications[{i}].columns[{j}]"),
                        format!("invalid column glob `{pattern}`: {e}"),
                    );
                }
            }
        }
        if spec.tags.is_empty() {
            let line = self.locator.section_value("classifications", "tags:");
            self.issue(
                line,
                format!("classifications[{i}].tags"),
                "must list at least one tag",
            );
        }
        for (j, tag) in spec.tags.iter().enumerate() {
            if !valid_tag(tag) {
                let line = self.locator.section_value("classifications", tag);
                self.issue(
                    line,
                    format!("classifications[{i}].tags[{j}]"),
                    format!("invalid tag `{tag}`: use lower-case letters, digits, `.`, `_`, `-` (like `phi.ssn`)"),
                );
            }
        }
        Classification {
            columns,
            tags: spec.tags.clone(),
        }
    }

    fn rule(&mut self, i: usize, spec: &RuleSpec, declared_tags: &[String]) -> (Rule, u64) {
        let at = |v: &Self, key: &str, value: Option<&str>| v.locator.rule_field(i, key, value);
        if spec.id.is_empty()
            || spec.id.starts_with("default:")
            || !spec
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            let line = at(self, "id", None);
            self.issue(
                line,
                format!("rules[{i}].id"),
                format!(
                    "invalid rule id `{}`: use letters, digits, `.`, `_`, `-`",
                    spec.id
                ),
            );
        }
        let restrictive = matches!(spec.action, ActionKind::Deny | ActionKind::RequireApproval);
        match (restrictive, &spec.reason) {
            (true, None) => {
                let line = at(self, "action", None);
                self.issue(
                    line,
                    format!("rules[{i}].reason"),
                    "deny and require_approval rules need a `reason` (it is shown to the agent)",
                );
            }
            (true, Some(r)) if r.trim().is_empty() => {
                let line = at(self, "reason", None);
                self.issue(
                    line,
                    format!("rules[{i}].reason"),
                    "reason must not be empty",
                );
            }
            (false, Some(_)) => {
                let line = at(self, "reason", None);
                self.issue(
                    line,
                    format!("rules[{i}].reason"),
                    "reason is only used by deny and require_approval rules; remove it",
                );
            }
            _ => {}
        }
        match spec.max_rows {
            Some(0) => {
                let line = at(self, "max_rows", None);
                self.issue(
                    line,
                    format!("rules[{i}].max_rows"),
                    "must be at least 1 (use action: deny to refuse)",
                );
            }
            Some(_) if spec.action == ActionKind::Deny => {
                let line = at(self, "max_rows", None);
                self.issue(
                    line,
                    format!("rules[{i}].max_rows"),
                    "a deny rule returns no rows; remove max_rows",
                );
            }
            _ => {}
        }
        if let Some(a) = &spec.audit {
            let line = at(self, "audit", None);
            if a.results == crate::schema::ResultRecording::Masked
                && spec.action == ActionKind::Deny
            {
                self.issue(
                    line,
                    format!("rules[{i}].audit.results"),
                    "a deny rule returns no rows to record; remove `results`",
                );
            } else if a.max_result_rows.is_some()
                && a.results != crate::schema::ResultRecording::Masked
            {
                self.issue(
                    line,
                    format!("rules[{i}].audit.max_result_rows"),
                    "only used with `results: masked`",
                );
            } else if a.max_result_rows.is_some_and(|n| n == 0 || n > 10_000) {
                self.issue(
                    line,
                    format!("rules[{i}].audit.max_result_rows"),
                    "must be between 1 and 10000",
                );
            }
        }
        match spec.max_bytes {
            Some(ByteSize(0)) => {
                let line = at(self, "max_bytes", None);
                self.issue(
                    line,
                    format!("rules[{i}].max_bytes"),
                    "must be at least 1 byte (use action: deny to refuse)",
                );
            }
            Some(_) if spec.action == ActionKind::Deny => {
                let line = at(self, "max_bytes", None);
                self.issue(
                    line,
                    format!("rules[{i}].max_bytes"),
                    "a deny rule returns no rows; remove max_bytes",
                );
            }
            _ => {}
        }
        let mut mask = Vec::new();
        if spec.action == ActionKind::Mask && spec.mask.is_empty() {
            let line = at(self, "action", None);
            self.issue(
                line,
                format!("rules[{i}].mask"),
                "a mask rule needs at least one `mask` directive",
            );
        }
        if spec.action != ActionKind::Mask && !spec.mask.is_empty() {
            let line = at(self, "mask", None);
            self.issue(
                line,
                format!("rules[{i}].mask"),
                "only mask rules take `mask` directives",
            );
        }
        // Tags named by explicit entries override a profile's directive for them.
        let explicit_tags: Vec<&str> = spec
            .mask
            .iter()
            .filter(|m| m.profile.is_none())
            .flat_map(|m| m.tags.iter().map(String::as_str))
            .collect();
        for (k, m) in spec.mask.iter().enumerate() {
            let field = format!("rules[{i}].mask[{k}]");
            if let Some(name) = &m.profile {
                self.mask_profile(i, &field, m, name, &explicit_tags, &mut mask);
                continue;
            }
            let hint = m.tags.first().or(m.columns.first()).map(String::as_str);
            if m.columns.is_empty() && m.tags.is_empty() {
                let line = at(self, "mask", None);
                self.issue(line, field.clone(), "name `columns` or `tags` to mask");
            }
            for (j, c) in m.columns.iter().enumerate() {
                if let Err(e) = NameGlob::new(c, 4, "DB.SCHEMA.TABLE.COLUMN") {
                    let line = at(self, "mask", Some(c));
                    self.issue(
                        line,
                        format!("{field}.columns[{j}]"),
                        format!("invalid column glob `{c}`: {e}"),
                    );
                }
            }
            for (j, t) in m.tags.iter().enumerate() {
                if !declared_tags.contains(t) {
                    let line = at(self, "mask", Some(t));
                    self.issue(
                        line,
                        format!("{field}.tags[{j}]"),
                        format!("tag `{t}` is not declared in `classifications`"),
                    );
                }
            }
            let Some(method) = m.method else {
                let line = at(self, "mask", hint);
                self.issue(
                    line,
                    format!("{field}.method"),
                    format!(
                        "name a `method` (redact | partial | token | null | generalize), or use \
                         `profile` ({}) as an entry of its own",
                        MASK_PROFILES.join(", ")
                    ),
                );
                continue;
            };
            match (method, m.keep_last) {
                (MaskMethod::Partial, None) => {
                    let line = at(self, "method", Some("partial"));
                    self.issue(
                        line,
                        format!("{field}.keep_last"),
                        "method partial needs keep_last",
                    );
                }
                (MaskMethod::Partial, Some(_)) | (_, None) => {}
                (_, Some(_)) => {
                    let line = at(self, "keep_last", None);
                    self.issue(
                        line,
                        format!("{field}.keep_last"),
                        "keep_last only applies to method partial",
                    );
                }
            }
            mask.push(MaskDirectiveSpec {
                columns: m.columns.clone(),
                tags: m.tags.clone(),
                method,
                keep_last: m.keep_last,
            });
        }
        let (matcher, kinds) = self.matcher(i, &spec.matcher, declared_tags);
        (
            Rule {
                id: spec.id.clone(),
                matcher,
                action: spec.action,
                reason: spec.reason.clone(),
                max_rows: spec.max_rows,
                max_bytes: spec.max_bytes.map(|b| b.0),
                record: crate::evaluate::Recording {
                    sql_full: spec
                        .audit
                        .as_ref()
                        .is_some_and(|a| a.sql == crate::schema::SqlRecording::Full),
                    result_rows: spec
                        .audit
                        .as_ref()
                        .filter(|a| a.results == crate::schema::ResultRecording::Masked)
                        .map_or(0, |a| a.max_result_rows.unwrap_or(100)),
                },
                mask,
            },
            kinds,
        )
    }

    /// Validates a `{ profile: name }` entry of rule `i` and appends its directives (less the
    /// tags the rule's explicit entries name) to `mask`. A profile named twice in one rule is
    /// expanded once.
    fn mask_profile(
        &mut self,
        i: usize,
        field: &str,
        m: &MaskSpec,
        name: &str,
        explicit_tags: &[&str],
        mask: &mut Vec<MaskDirectiveSpec>,
    ) {
        let mut mixed: Vec<&str> = Vec::new();
        if !m.tags.is_empty() {
            mixed.push("`tags`");
        }
        if !m.columns.is_empty() {
            mixed.push("`columns`");
        }
        if m.method.is_some() {
            mixed.push("`method`");
        }
        if m.keep_last.is_some() {
            mixed.push("`keep_last`");
        }
        if !mixed.is_empty() {
            let line = self.locator.rule_field(i, "profile", Some(name));
            self.issue(
                line,
                field.to_owned(),
                format!(
                    "`profile` stands alone in its entry; it cannot be combined with {} (list \
                     explicit directives as separate entries: they override the profile for \
                     the tags they name)",
                    mixed.join(", ")
                ),
            );
        }
        match crate::profile::expand(name, explicit_tags) {
            None => {
                let line = self.locator.rule_field(i, "profile", Some(name));
                self.issue(
                    line,
                    format!("{field}.profile"),
                    format!(
                        "unknown mask profile `{name}`; known profiles: {}",
                        MASK_PROFILES.join(", ")
                    ),
                );
            }
            Some(groups) => {
                for (tags, method) in groups {
                    let directive = MaskDirectiveSpec {
                        columns: Vec::new(),
                        tags,
                        method,
                        keep_last: None,
                    };
                    if !mask.contains(&directive) {
                        mask.push(directive);
                    }
                }
            }
        }
    }

    fn text_globs(
        &mut self,
        i: usize,
        path: &str,
        key: &str,
        list: &Option<Vec<String>>,
        case_insensitive: bool,
    ) -> Option<Vec<TextGlob>> {
        let list = list.as_ref()?;
        let field = format!("rules[{i}].match.{path}");
        if list.is_empty() {
            let line = self.locator.rule_field(i, key, None);
            self.issue(
                line,
                field.clone(),
                "an empty list matches nothing; remove the field to match anything",
            );
        }
        for (j, p) in list.iter().enumerate() {
            if p.is_empty() {
                let line = self.locator.rule_field(i, key, None);
                self.issue(
                    line,
                    format!("{field}[{j}]"),
                    "empty pattern (use \"*\" to match anything)",
                );
            }
        }
        Some(
            list.iter()
                .map(|p| TextGlob::new(p, case_insensitive))
                .collect(),
        )
    }

    fn name_globs(
        &mut self,
        i: usize,
        key: &str,
        list: &Option<Vec<String>>,
        segments: usize,
        shape: &'static str,
    ) -> Option<Vec<NameGlob>> {
        let list = list.as_ref()?;
        let field = format!("rules[{i}].match.{key}");
        if list.is_empty() {
            let line = self.locator.rule_field(i, key, None);
            self.issue(
                line,
                field.clone(),
                "an empty list matches nothing; remove the field to match anything",
            );
        }
        let mut out = Vec::with_capacity(list.len());
        for (j, p) in list.iter().enumerate() {
            match NameGlob::new(p, segments, shape) {
                Ok(g) => out.push(g),
                Err(e) => {
                    let line = self.locator.rule_field(i, key, Some(p));
                    self.issue(
                        line,
                        format!("{field}[{j}]"),
                        format!("invalid glob `{p}`: {e}"),
                    );
                }
            }
        }
        Some(out)
    }

    fn matcher(&mut self, i: usize, spec: &MatchSpec, declared_tags: &[String]) -> (Matcher, u64) {
        let mut m = Matcher::default();
        if let Some(sf) = &spec.snowflake {
            m.account = self.text_globs(i, "snowflake.account", "account", &sf.account, true);
            m.user = self.text_globs(i, "snowflake.user", "user", &sf.user, true);
            m.role = self.text_globs(i, "snowflake.role", "role", &sf.role, true);
            m.warehouse =
                self.text_globs(i, "snowflake.warehouse", "warehouse", &sf.warehouse, true);
            m.database = self.text_globs(i, "snowflake.database", "database", &sf.database, true);
            m.schema = self.text_globs(i, "snowflake.schema", "schema", &sf.schema, true);
        }
        if let Some(p) = &spec.process {
            if let Some(uids) = &p.uid {
                if uids.is_empty() {
                    let line = self.locator.rule_field(i, "uid", None);
                    self.issue(
                        line,
                        format!("rules[{i}].match.process.uid"),
                        "an empty list matches nothing; remove the field to match anything",
                    );
                }
                m.uid = Some(uids.clone());
            }
            m.comm = self.text_globs(i, "process.comm", "comm", &p.comm, false);
            m.exe = self.text_globs(i, "process.exe", "exe", &p.exe, false);
            m.cgroup = self.text_globs(i, "process.cgroup", "cgroup", &p.cgroup, false);
        }
        m.host = self.text_globs(i, "host", "host", &spec.host, true);
        if let Some(claims) = &spec.claims {
            if claims.is_empty() {
                let line = self.locator.rule_field(i, "claims", None);
                self.issue(
                    line,
                    format!("rules[{i}].match.claims"),
                    "an empty map matches anything; remove it or name claims",
                );
            }
            for (name, values) in claims {
                let globs = self
                    .text_globs(
                        i,
                        &format!("claims.{name}"),
                        name,
                        &Some(values.clone()),
                        false,
                    )
                    .unwrap_or_default();
                m.claims.push((name.clone(), globs));
            }
        }
        let mut kinds = 0u64;
        match &spec.statements {
            None => kinds = implicit_kinds(),
            Some(list) => {
                if list.is_empty() {
                    let line = self.locator.rule_field(i, "statements", None);
                    self.issue(
                        line,
                        format!("rules[{i}].match.statements"),
                        "an empty list matches nothing; remove the field to match every kind",
                    );
                }
                for (j, name) in list.iter().enumerate() {
                    let lower = name.to_ascii_lowercase();
                    if let Some(bit) = kind_bit(&lower) {
                        kinds |= bit;
                    } else if let Some((_, members)) = KIND_GROUPS.iter().find(|(g, _)| *g == lower)
                    {
                        for member in *members {
                            kinds |= kind_bit(member).unwrap_or(0);
                        }
                    } else {
                        let line = self.locator.rule_field(i, "statements", Some(name));
                        let groups: Vec<&str> = KIND_GROUPS.iter().map(|(g, _)| *g).collect();
                        self.issue(
                            line,
                            format!("rules[{i}].match.statements[{j}]"),
                            format!(
                                "unknown statement kind `{name}`; expected one of {} or a group: {}",
                                KIND_NAMES.join(", "),
                                groups.join(", ")
                            ),
                        );
                    }
                }
            }
        }
        m.tables = self.name_globs(i, "tables", &spec.tables, 3, "DB.SCHEMA.TABLE");
        m.sources = self.text_globs(i, "sources", "sources", &spec.sources, true);
        for (j, p) in spec.sources.iter().flatten().enumerate() {
            if !p.is_empty() && !valid_source_pattern(p) {
                let line = self.locator.rule_field(i, "sources", Some(p));
                self.issue(
                    line,
                    format!("rules[{i}].match.sources[{j}]"),
                    format!(
                        "`{p}` names no kind of source; expected RESULT_SCAN, \
                         TABLE(<function>), @<stage>[/path] (globs allowed) or *"
                    ),
                );
            }
        }
        m.columns = self.name_globs(i, "columns", &spec.columns, 4, "DB.SCHEMA.TABLE.COLUMN");
        m.tags = self.text_globs(i, "tags", "tags", &spec.tags, false);
        if let (Some(tag_globs), Some(raw)) = (&m.tags, &spec.tags) {
            for (j, (g, p)) in tag_globs.iter().zip(raw).enumerate() {
                if !declared_tags.iter().any(|t| g.matches(t)) {
                    let line = self.locator.rule_field(i, "tags", Some(p));
                    self.issue(
                        line,
                        format!("rules[{i}].match.tags[{j}]"),
                        format!("`{p}` matches no tag declared in `classifications`"),
                    );
                }
            }
        }
        (m, kinds)
    }
}

/// A `match.sources` pattern names one kind of source: `RESULT_SCAN`, `TABLE(<function>)`,
/// `@<stage>…`, or is `*` (every source).
fn valid_source_pattern(pattern: &str) -> bool {
    let upper = pattern.to_ascii_uppercase();
    pattern.bytes().all(|b| b == b'*')
        || upper == "RESULT_SCAN"
        || (upper.starts_with("TABLE(") && upper.ends_with(')') && upper.len() > "TABLE()".len())
        || (pattern.starts_with('@') && pattern.len() > 1)
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            fmt_line(self.line),
            self.field,
            self.message
        )
    }
}
