//! Evaluation: identity + analysis → [`Decision`]. Pure, allocation-light, microseconds.
//!
//! Per statement, the first rule (in file order) that matches decides; a statement of kind
//! `other` is decided only by rules naming `other`, else by `defaults.unknown_statement`; a
//! statement with unresolved bindings by `defaults.unresolved_bindings`; unparseable text by
//! `defaults.unparseable_sql`; no match by `defaults.no_rule_matched`. Across the statements of
//! one text the strictest outcome wins (deny > require_approval > mask > allow), and the
//! decision names the rule that produced it (on a tie, a policy rule before a default, then the
//! earliest statement). When in doubt, restrictive rules (deny,
//! require_approval) apply and permissive ones (allow, mask) do not: see [`crate::policy`].
//!
//! A statement that reads an *opaque source* ([`OpaqueSource`]: `TABLE(RESULT_SCAN(…))`, a
//! table function other than a pure generator, a stage in `FROM`) fails closed: a permissive
//! rule matches it only if its `match.sources` names every such source (a `tables` glob never
//! covers one, vacuously or not); a restrictive rule's `tables`, `columns` and `tags` count it
//! as a match; with no rule, `defaults.no_rule_matched` refuses it with a reason naming the
//! source. Its data may be classified or masked: `defaults.unknown_lineage` and
//! `defaults.classified_copies` apply to it.
//!
//! A statement that copies data into another table or location (CTAS, `INSERT … SELECT`,
//! `MERGE`, `CREATE VIEW`, `COPY INTO @stage`, an `UPDATE` whose `SET` reads another table)
//! and may read classified data escapes masking: if it would be allowed or masked,
//! `defaults.classified_copies` (deny by default) turns it into a deny, per statement and
//! before the statements are combined; the rule id stays the deciding rule's.
//!
//! A mask decision then carries the masked statement's column lineage in its [`MaskPlan`]
//! ([`crate::lineage`]), unless `defaults.unknown_lineage` (lineage unknown, or several
//! statements, on data that may be classified) or `defaults.masked_predicates` (a filter, sort,
//! group or join on a masked column) turns it into a deny (the rule id stays the mask rule's) or a
//! [`Fallback`]. [`Policy::resolve_result_columns`] applies the plan to the result.

use std::collections::BTreeSet;

use serde::Serialize;
use tollgate_identity::Identity;

use crate::analysis::{Analysis, AnalysisError, OpaqueSource, StatementInfo, StatementKind};
use crate::glob::{NameGlob, TextGlob};
use crate::lineage::StatementLineage;
use crate::names::{ColumnRef, TableName};
use crate::policy::{kind_index, Matcher, Policy, Rule};
use crate::schema::{
    ActionKind, ClassifiedCopies, DefaultAction, MaskMethod, MaskedPredicates, UnknownLineage,
};

/// What [`Policy::evaluate`] decides on.
#[derive(Debug, Clone, Copy)]
pub struct EvalInput<'a> {
    /// Who is asking.
    pub identity: &'a Identity,
    /// The analysed statement text, or why it could not be analysed.
    pub analysis: Result<&'a Analysis, &'a AnalysisError>,
}

/// What the audit trail keeps of a statement (from its rule's `audit:` settings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Recording {
    /// Keep the SQL text in full (literals included) instead of redacted.
    pub sql_full: bool,
    /// Result rows to keep, as the agent received them (0: none).
    pub result_rows: u64,
}

/// The outcome for a statement text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// What to do.
    #[serde(flatten)]
    pub action: Action,
    /// The deciding rule (`default:…` when a default decided).
    pub rule_id: String,
    /// Row cap: the smallest cap of the rules that decided the statements.
    pub max_rows: Option<u64>,
    /// Byte cap (uncompressed result size): the smallest of the deciding rules' caps.
    pub max_bytes: Option<u64>,
    /// What the audit trail keeps: full SQL only when every statement's rule allows it;
    /// the fewest result rows of the statements' rules.
    pub record: Recording,
    /// Per statement, in text order.
    pub statements: Vec<StatementDecision>,
}

/// What to do with a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Forward it.
    Allow,
    /// Refuse it; `reason` is shown to the agent.
    Deny {
        /// Why.
        reason: String,
    },
    /// Forward it and mask its results per `plan`.
    Mask {
        /// What to mask.
        plan: MaskPlan,
    },
    /// Hold it for a human; `reason` is shown to the approver and the agent.
    RequireApproval {
        /// Why.
        reason: String,
    },
}

impl Action {
    /// deny 3 > require_approval 2 > mask 1 > allow 0.
    pub fn strictness(&self) -> u8 {
        match self {
            Self::Allow => 0,
            Self::Mask { .. } => 1,
            Self::RequireApproval { .. } => 2,
            Self::Deny { .. } => 3,
        }
    }

    /// `allow`, `deny`, `mask` or `require_approval`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Mask { .. } => "mask",
            Self::RequireApproval { .. } => "require_approval",
            Self::Deny { .. } => "deny",
        }
    }
}

/// The masking plan of a decision, consumed by the masking layer (see
/// [`Policy::resolve_result_columns`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MaskPlan {
    /// Directives from the deciding rules, in statement order, without duplicates.
    pub directives: Vec<MaskDirective>,
    /// The column lineage of the masked statement, to map result columns to their sources
    /// when the result arrives. Set on the decision's plan by [`Policy::evaluate`] (`Unknown`
    /// when it could not be traced, or for a text of several statements); `None` in the
    /// per-statement plans.
    pub lineage: Option<StatementLineage>,
    /// Set when the lineage is unknown and the statement may touch classified data, per
    /// `defaults.unknown_lineage`: mask every column, or run the detectors on every value.
    pub fallback: Option<Fallback>,
}

/// How to mask a result whose columns cannot be mapped to their sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Redact every column (`defaults.unknown_lineage: mask_all`).
    MaskAll,
    /// Run the PHI detectors over every value (`defaults.unknown_lineage: detect`).
    Detect,
}

/// One masking directive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaskDirective {
    /// The rule it comes from.
    pub rule_id: String,
    /// `DB.SCHEMA.TABLE.COLUMN` globs, as written in the policy.
    pub columns: Vec<String>,
    /// Classification tags.
    pub tags: Vec<String>,
    /// How to mask.
    pub method: MaskMethod,
    /// For `partial`.
    pub keep_last: Option<u32>,
}

/// The decision for one statement, for `policy explain` and the audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementDecision {
    /// Statement kind.
    pub kind: StatementKind,
    /// Tables read or written.
    pub tables: Vec<TableName>,
    /// Data sources without a table name it reads ([`OpaqueSource::label`]s: `RESULT_SCAN`,
    /// `TABLE(MY_UDTF)`, `@my_stage`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub opaque_sources: Vec<String>,
    /// Columns referenced (best effort).
    pub columns: Vec<ColumnRef>,
    /// Classification tags the statement may touch.
    pub tags: Vec<String>,
    /// The rule that decided it.
    pub rule_id: String,
    /// What it decided.
    #[serde(flatten)]
    pub action: Action,
    /// Its row cap.
    pub max_rows: Option<u64>,
    /// Its byte cap.
    pub max_bytes: Option<u64>,
    /// What its rule records.
    pub record: Recording,
}

const REASON_UNPARSEABLE: &str =
    "the statement could not be analysed, so it is refused (fail closed)";
const REASON_UNKNOWN: &str = "this kind of statement is not covered by policy";
const REASON_UNRESOLVED: &str =
    "an object name depends on a bind value or dynamic SQL and cannot be checked";
const REASON_NO_RULE: &str = "no policy rule allows this statement (default deny)";
/// How many columns or tables a `defaults.classified_copies` reason names.
const COPY_NAMES: usize = 3;

/// Why the data of a statement's opaque sources cannot be judged, naming the first (the
/// result scan, if any) and counting the others; never literals, nor a stage's file path.
fn opaque_why(sources: &BTreeSet<OpaqueSource>) -> String {
    let Some(first) = sources.iter().next() else {
        return String::new();
    };
    let mut why = match first {
        OpaqueSource::ResultScan => "TABLE(RESULT_SCAN(…)) re-reads the result of an earlier \
             query, which Tollgate may have masked, and cannot be traced to tables"
            .to_owned(),
        OpaqueSource::TableFunction { name } => {
            format!("table function {name} returns data that cannot be traced to tables")
        }
        OpaqueSource::Stage { stage } => {
            let name = match stage.find('/') {
                Some(i) if stage.starts_with('@') => &stage[..i],
                _ if stage.starts_with('@') => stage.as_str(),
                _ => "location",
            };
            format!("reading stage {name} directly returns files that cannot be traced to tables")
        }
    };
    if sources.len() > 1 {
        why.push_str(&format!(
            " (and {} more such source{})",
            sources.len() - 1,
            if sources.len() > 2 { "s" } else { "" }
        ));
    }
    why
}

/// The `defaults.no_rule_matched` reason for a statement with opaque sources: what they are,
/// that no rule names them, and what to do instead.
fn opaque_no_rule_reason(sources: &BTreeSet<OpaqueSource>) -> String {
    let advice = match sources.iter().next() {
        Some(OpaqueSource::ResultScan) => {
            "run the original query again instead of reading its result back"
        }
        Some(OpaqueSource::Stage { .. }) => {
            "load the files into a table (COPY INTO) and query the table"
        }
        _ => "query the tables it reads directly",
    };
    format!(
        "{}; no policy rule names it in match.sources (defaults.no_rule_matched); {advice}",
        opaque_why(sources)
    )
}

/// Statement kinds that copy what they read into another table or location. (`UPDATE` only
/// when its `SET` values come from another table: see [`Policy::classified_copy_sources`].)
fn copies_data(kind: &StatementKind) -> bool {
    matches!(
        kind,
        StatementKind::CreateTableAsSelect
            | StatementKind::InsertSelect
            | StatementKind::Merge
            | StatementKind::CreateView
            | StatementKind::CopyIntoLocation
            | StatementKind::Update
    )
}

fn push_unique(names: &mut Vec<String>, name: String) {
    if !names.contains(&name) {
        names.push(name);
    }
}

fn default_action(action: DefaultAction, reason: &str) -> Action {
    match action {
        DefaultAction::Allow => Action::Allow,
        DefaultAction::Deny => Action::Deny {
            reason: reason.to_owned(),
        },
        DefaultAction::RequireApproval => Action::RequireApproval {
            reason: reason.to_owned(),
        },
    }
}

impl Policy {
    /// Decides `input`. Pure and deterministic: the same policy and input give the same
    /// decision.
    pub fn evaluate(&self, input: &EvalInput<'_>) -> Decision {
        let analysis = match input.analysis {
            Ok(a) if !a.statements.is_empty() => a,
            _ => {
                return Decision {
                    action: default_action(self.defaults.unparseable_sql, REASON_UNPARSEABLE),
                    rule_id: "default:unparseable_sql".into(),
                    max_rows: None,
                    max_bytes: None,
                    record: Recording::default(),
                    statements: Vec::new(),
                }
            }
        };
        let statements: Vec<StatementDecision> = analysis
            .statements
            .iter()
            .map(|s| self.decide_statement(input.identity, s))
            .collect();
        // The strictest statement decides; on a tie a policy rule is named rather than a
        // default (it says more), then the earliest statement.
        let key =
            |s: &StatementDecision| (s.action.strictness(), !s.rule_id.starts_with("default:"));
        let decisive = statements.iter().enumerate().fold(0, |best, (i, s)| {
            if key(s) > key(&statements[best]) {
                i
            } else {
                best
            }
        });
        let mut action = statements[decisive].action.clone();
        let mut statements = statements;
        if let Action::Mask { plan } = &mut action {
            for s in &statements {
                if let Action::Mask { plan: other } = &s.action {
                    for d in &other.directives {
                        if !plan.directives.contains(d) {
                            plan.directives.push(d.clone());
                        }
                    }
                }
            }
            if let Some(deny) = self.refine_mask(analysis, plan) {
                for s in &mut statements {
                    if matches!(s.action, Action::Mask { .. }) {
                        s.action = deny.clone();
                    }
                }
                action = deny;
            }
        }
        Decision {
            action,
            rule_id: statements[decisive].rule_id.clone(),
            max_rows: statements.iter().filter_map(|s| s.max_rows).min(),
            max_bytes: statements.iter().filter_map(|s| s.max_bytes).min(),
            record: Recording {
                sql_full: statements.iter().all(|s| s.record.sql_full),
                result_rows: statements
                    .iter()
                    .map(|s| s.record.result_rows)
                    .min()
                    .unwrap_or(0),
            },
            statements,
        }
    }

    fn decide_statement(&self, identity: &Identity, st: &StatementInfo) -> StatementDecision {
        let tables: Vec<&TableName> = st.tables().collect();
        let tags = self.statement_tags(st, &tables);
        let mut record = Recording::default();
        let (rule_id, action, caps) = if st.unresolved_bindings {
            (
                "default:unresolved_bindings".to_owned(),
                default_action(self.defaults.unresolved_bindings, REASON_UNRESOLVED),
                (None, None),
            )
        } else if st.kind == StatementKind::Unknown {
            (
                "default:unknown_statement".to_owned(),
                default_action(self.defaults.unknown_statement, REASON_UNKNOWN),
                (None, None),
            )
        } else {
            let candidates = &self.by_kind[kind_index(&st.kind)];
            match candidates
                .iter()
                .map(|&i| &self.rules[i as usize])
                .find(|rule| rule_matches(rule, identity, st, &tables, &tags))
            {
                Some(rule) => {
                    record = rule.record;
                    (
                        rule.id.clone(),
                        rule_action(rule),
                        (rule.max_rows, rule.max_bytes),
                    )
                }
                None if matches!(st.kind, StatementKind::Other(_)) => (
                    "default:unknown_statement".to_owned(),
                    default_action(self.defaults.unknown_statement, REASON_UNKNOWN),
                    (None, None),
                ),
                None if !st.opaque_sources.is_empty() => (
                    "default:no_rule_matched".to_owned(),
                    default_action(
                        self.defaults.no_rule_matched,
                        &opaque_no_rule_reason(&st.opaque_sources),
                    ),
                    (None, None),
                ),
                None => (
                    "default:no_rule_matched".to_owned(),
                    default_action(self.defaults.no_rule_matched, REASON_NO_RULE),
                    (None, None),
                ),
            }
        };
        let action = self.refine_copy(st, action);
        StatementDecision {
            kind: st.kind.clone(),
            tables: tables.into_iter().cloned().collect(),
            opaque_sources: st.opaque_sources.iter().map(OpaqueSource::label).collect(),
            columns: st.columns.iter().cloned().collect(),
            tags: tags.into_iter().map(str::to_owned).collect(),
            rule_id,
            action,
            max_rows: caps.0,
            max_bytes: caps.1,
            record,
        }
    }

    /// Tags of classified columns the statement may touch: a `*` column touches every
    /// classified column of its table, a column of unknown table is tried against each table
    /// of the statement (and as a column of any table when it may come from an opaque source).
    fn statement_tags<'p>(
        &'p self,
        st: &StatementInfo,
        tables: &[&TableName],
    ) -> BTreeSet<&'p str> {
        let mut tags = BTreeSet::new();
        if self.classifications.is_empty() {
            return tags;
        }
        let opaque = !st.opaque_sources.is_empty();
        for column in &st.columns {
            let col = if column.is_wildcard() {
                None
            } else {
                Some(column.column.as_str())
            };
            for class in &self.classifications {
                let hit = for_each_owner(column, tables, opaque, |t| {
                    let [d, s, tb] = t.map_or([None, None, None], TableName::parts);
                    class
                        .columns
                        .iter()
                        .any(|g| g.matches(&[d, s, tb, col], true))
                });
                if hit {
                    tags.extend(class.tags.iter().map(String::as_str));
                }
            }
        }
        tags
    }
}

impl Policy {
    /// Applies `defaults.classified_copies` to the `allow` or `mask` decision of a statement
    /// that copies classified data — or data of an opaque source, which may be classified —
    /// into another table or location: deny (the reason names a few of the columns or tables,
    /// or the opaque source, never literals), or leave it be.
    fn refine_copy(&self, st: &StatementInfo, action: Action) -> Action {
        if self.defaults.classified_copies == ClassifiedCopies::Allow
            || !matches!(action, Action::Allow | Action::Mask { .. })
            || !copies_data(&st.kind)
        {
            return action;
        }
        let names = self.classified_copy_sources(st);
        if names.is_empty() {
            // An opaque source may hold classified data (an earlier masked result, say).
            if st.opaque_sources.is_empty() {
                return action;
            }
            return Action::Deny {
                reason: format!(
                    "{}; copying it into another table or location would escape masking \
                     (defaults.classified_copies)",
                    opaque_why(&st.opaque_sources)
                ),
            };
        }
        let mut list = names[..names.len().min(COPY_NAMES)].join(", ");
        if names.len() > COPY_NAMES {
            list.push_str(", …");
        }
        Action::Deny {
            reason: format!(
                "copying classified data ({list}) into another table or location would escape \
                 masking (defaults.classified_copies)"
            ),
        }
    }

    /// The classified data a copying statement may read, as names without duplicates:
    /// classified columns (`DB.SCHEMA.TABLE.COLUMN`), then `*` over tables that may hold
    /// classified columns (`DB.SCHEMA.TABLE.*`), then other read tables a classification glob
    /// could cover (`DB.SCHEMA.TABLE`), then classified lineage sources. Columns of a table the
    /// statement only writes (the target) do not count. For `UPDATE` only its `SET` sources
    /// count, and only from tables other than the one updated.
    fn classified_copy_sources(&self, st: &StatementInfo) -> Vec<String> {
        let mut names = Vec::new();
        if self.classifications.is_empty() {
            return names;
        }
        let update = st.kind == StatementKind::Update;
        let target = |t: &TableName| st.writes.contains(t) && (update || !st.reads.contains(t));
        let owners: Vec<&TableName> = st.reads.iter().filter(|t| !target(t)).collect();
        let columns = if update { &st.set_sources } else { &st.columns };
        for wildcards in [false, true] {
            for column in columns.iter().filter(|c| c.is_wildcard() == wildcards) {
                let candidates: Vec<Option<&TableName>> = match &column.table {
                    Some(t) if target(t) => Vec::new(),
                    Some(t) => vec![Some(t)],
                    None if owners.is_empty() => vec![None],
                    None => owners.iter().map(|t| Some(*t)).collect(),
                };
                for owner in candidates {
                    let c = ColumnRef {
                        table: owner.cloned(),
                        column: column.column.clone(),
                    };
                    if self.is_classified(&c) {
                        push_unique(&mut names, c.to_string());
                    }
                }
            }
        }
        if update {
            return names;
        }
        for t in &owners {
            let prefix = format!("{t}.");
            if self.table_may_be_classified(t) && !names.iter().any(|n| n.starts_with(&prefix)) {
                push_unique(&mut names, t.to_string());
            }
        }
        if let Some(StatementLineage::Known(p)) = &st.lineage {
            for item in &p.items {
                match item {
                    crate::lineage::OutputItem::Column { sources, .. } => {
                        for c in sources.iter().filter(|c| self.is_classified(c)) {
                            push_unique(&mut names, c.to_string());
                        }
                    }
                    crate::lineage::OutputItem::Wildcard { tables, .. } => {
                        for t in tables.iter().filter(|t| self.table_may_be_classified(t)) {
                            push_unique(&mut names, format!("{t}.*"));
                        }
                    }
                }
            }
        }
        names
    }

    /// Whether some classification glob could cover a column of `table`.
    fn table_may_be_classified(&self, table: &TableName) -> bool {
        self.is_classified(&ColumnRef {
            table: Some(table.clone()),
            column: "*".into(),
        })
    }

    /// Attaches the masked statement's column lineage to a mask decision's `plan`, or says
    /// why the statement must be denied instead:
    ///
    /// - several statements, or a lineage that cannot be traced (an opaque source's never can),
    ///   on a statement that may touch classified (or plan-masked) data →
    ///   `defaults.unknown_lineage` (deny, or a fallback);
    /// - a filter, sort, group or join condition on a column the plan masks →
    ///   `defaults.masked_predicates` (a join comparing it with constant or computed values,
    ///   derived constants of a subquery, CTE or `VALUES` included, is named as such).
    fn refine_mask(&self, analysis: &Analysis, plan: &mut MaskPlan) -> Option<Action> {
        let statements = &analysis.statements;
        let known = match statements.as_slice() {
            [only] if !only.opaque_sources.is_empty() => Err(opaque_why(&only.opaque_sources)),
            [only] => match &only.lineage {
                Some(StatementLineage::Known(p)) => Ok(p),
                Some(StatementLineage::Unknown { reason }) => Err(reason.clone()),
                None => Err(format!("a {} statement has no result columns", only.kind)),
            },
            _ => Err("several statements in one text".to_owned()),
        };
        let lineage = match known {
            Ok(lineage) => lineage,
            Err(reason) => {
                let touches = statements.iter().any(|s| self.may_touch_masked(s, plan));
                if touches {
                    match self.defaults.unknown_lineage {
                        UnknownLineage::Deny => {
                            return Some(Action::Deny {
                                reason: format!(
                                    "column lineage of this statement cannot be traced ({reason}); \
                                     the policy denies it (defaults.unknown_lineage)"
                                ),
                            })
                        }
                        UnknownLineage::MaskAll => plan.fallback = Some(Fallback::MaskAll),
                        UnknownLineage::Detect => plan.fallback = Some(Fallback::Detect),
                    }
                }
                plan.lineage = Some(StatementLineage::Unknown { reason });
                return None;
            }
        };
        if self.defaults.masked_predicates == MaskedPredicates::Deny {
            let globs = DirectiveGlobs::new(plan);
            let masked = |c: &&ColumnRef| self.is_classified(c) || globs.matches(c);
            if let Some(column) = lineage.constant_join_columns.iter().find(masked) {
                return Some(Action::Deny {
                    reason: format!(
                        "joining masked column {column} with constant or computed values \
                         instead of a table column would reveal its values \
                         (defaults.masked_predicates)"
                    ),
                });
            }
            if let Some(column) = lineage.predicate_columns.iter().find(masked) {
                return Some(Action::Deny {
                    reason: format!(
                        "filtering, sorting or grouping on masked column {column} would reveal \
                         its values (defaults.masked_predicates)"
                    ),
                });
            }
        }
        plan.lineage = Some(StatementLineage::Known(lineage.clone()));
        None
    }

    /// Whether `st` may touch a classified column or a column a directive of `plan` names:
    /// an opaque source, a classified column among its columns, a table some classification
    /// or directive glob could match, or a classified lineage source.
    fn may_touch_masked(&self, st: &StatementInfo, plan: &MaskPlan) -> bool {
        if !st.opaque_sources.is_empty() {
            // Its data is not named: it may be anything, an earlier masked result included.
            return true;
        }
        let tables: Vec<&TableName> = st.tables().collect();
        if !self.statement_tags(st, &tables).is_empty() {
            return true;
        }
        let globs = DirectiveGlobs::new(plan);
        let table_hit = |t: &TableName| {
            let all = ColumnRef {
                table: Some(t.clone()),
                column: "*".into(),
            };
            self.table_may_be_classified(t) || globs.matches(&all)
        };
        if tables.iter().any(|t| table_hit(t)) {
            return true;
        }
        match &st.lineage {
            Some(StatementLineage::Known(p)) => p.items.iter().any(|item| match item {
                crate::lineage::OutputItem::Column { sources, .. } => sources
                    .iter()
                    .any(|c| self.is_classified(c) || globs.matches(c)),
                crate::lineage::OutputItem::Wildcard { tables, .. } => tables.iter().any(table_hit),
            }),
            _ => false,
        }
    }

    /// Whether some classification could cover `column` (a `*` column: some column of its
    /// table; an unknown name part: anything).
    pub(crate) fn is_classified(&self, column: &ColumnRef) -> bool {
        let parts = column_parts(column);
        self.classifications
            .iter()
            .any(|c| c.columns.iter().any(|g| g.matches(&parts, true)))
    }

    /// The classification tags that could cover `column`.
    pub(crate) fn column_tags(&self, column: &ColumnRef) -> BTreeSet<String> {
        let parts = column_parts(column);
        self.classifications
            .iter()
            .filter(|c| c.columns.iter().any(|g| g.matches(&parts, true)))
            .flat_map(|c| c.tags.iter().cloned())
            .collect()
    }
}

/// `[db, schema, table, column]` for glob matching; `None` for unknown parts and for `*`.
pub(crate) fn column_parts(column: &ColumnRef) -> [Option<&str>; 4] {
    let [d, s, t] = column
        .table
        .as_ref()
        .map_or([None, None, None], TableName::parts);
    let c = (!column.is_wildcard()).then_some(column.column.as_str());
    [d, s, t, c]
}

/// The compiled column globs of a plan's directives.
pub(crate) struct DirectiveGlobs<'p> {
    globs: Vec<(&'p MaskDirective, Vec<Option<NameGlob>>)>,
}

impl<'p> DirectiveGlobs<'p> {
    pub(crate) fn new(plan: &'p MaskPlan) -> Self {
        Self {
            globs: plan
                .directives
                .iter()
                .map(|d| {
                    let globs = d
                        .columns
                        .iter()
                        .map(|c| NameGlob::new(c, 4, "DB.SCHEMA.TABLE.COLUMN").ok())
                        .collect();
                    (d, globs)
                })
                .collect(),
        }
    }

    /// Whether a column glob of `directive` could cover `column` (a glob that did not compile
    /// covers everything; the validator refuses those, so this is belt and braces).
    pub(crate) fn directive_matches(&self, index: usize, column: &ColumnRef) -> bool {
        let parts = column_parts(column);
        self.globs.get(index).is_some_and(|(_, globs)| {
            globs
                .iter()
                .any(|g| g.as_ref().is_none_or(|g| g.matches(&parts, true)))
        })
    }

    /// Whether a column glob of any directive could cover `column`.
    pub(crate) fn matches(&self, column: &ColumnRef) -> bool {
        (0..self.globs.len()).any(|i| self.directive_matches(i, column))
    }
}

/// Whether `f` holds for some possible owner table of `column`: `None` (an unknown table)
/// when the statement names no table or has an opaque source the column may come from.
fn for_each_owner(
    column: &ColumnRef,
    tables: &[&TableName],
    opaque: bool,
    mut f: impl FnMut(Option<&TableName>) -> bool,
) -> bool {
    match &column.table {
        Some(t) => f(Some(t)),
        None if tables.is_empty() => f(None),
        None => tables.iter().any(|t| f(Some(t))) || (opaque && f(None)),
    }
}

fn rule_action(rule: &Rule) -> Action {
    let reason = || rule.reason.clone().unwrap_or_default();
    match rule.action {
        ActionKind::Allow => Action::Allow,
        ActionKind::Deny => Action::Deny { reason: reason() },
        ActionKind::RequireApproval => Action::RequireApproval { reason: reason() },
        ActionKind::Mask => Action::Mask {
            plan: MaskPlan {
                lineage: None,
                fallback: None,
                directives: rule
                    .mask
                    .iter()
                    .map(|m| MaskDirective {
                        rule_id: rule.id.clone(),
                        columns: m.columns.clone(),
                        tags: m.tags.clone(),
                        method: m.method,
                        keep_last: m.keep_last,
                    })
                    .collect(),
            },
        },
    }
}

fn text_field(globs: &Option<Vec<TextGlob>>, value: Option<&str>, restrictive: bool) -> bool {
    match (globs, value) {
        (None, _) => true,
        (Some(globs), Some(v)) => globs.iter().any(|g| g.matches(v)),
        (Some(_), None) => restrictive,
    }
}

/// Whether the identity side of a rule matches. A field the rule names but the identity does not
/// know (`None`: no session, no process, no claim) matches a restrictive rule and never a
/// permissive one; the process's facts are unknown together when there is no process.
fn identity_matches(m: &Matcher, id: &Identity, restrictive: bool) -> bool {
    let sf = &id.snowflake;
    text_field(&m.account, sf.account.as_deref(), restrictive)
        && text_field(&m.user, sf.user.as_deref(), restrictive)
        && text_field(&m.role, sf.role.as_deref(), restrictive)
        && text_field(&m.warehouse, sf.warehouse.as_deref(), restrictive)
        && text_field(&m.database, sf.database.as_deref(), restrictive)
        && text_field(&m.schema, sf.schema.as_deref(), restrictive)
        && match (&m.uid, id.uid()) {
            (None, _) => true,
            (Some(uids), Some(uid)) => uids.contains(&uid),
            (Some(_), None) => restrictive,
        }
        && text_field(&m.comm, id.comm(), restrictive)
        && text_field(&m.exe, id.exe(), restrictive)
        && text_field(&m.cgroup, id.cgroup_path(), restrictive)
        && text_field(&m.host, id.host.as_deref(), restrictive)
        && m.claims
            .iter()
            .all(|(name, globs)| match id.claims.get(name) {
                Some(v) => globs.iter().any(|g| g.matches(v)),
                None => restrictive,
            })
}

fn rule_matches(
    rule: &Rule,
    identity: &Identity,
    st: &StatementInfo,
    tables: &[&TableName],
    tags: &BTreeSet<&str>,
) -> bool {
    let m = &rule.matcher;
    let restrictive = rule.restrictive();
    if !identity_matches(m, identity, restrictive) {
        return false;
    }
    // An opaque source (`RESULT_SCAN`, a table function, a stage) may hold any table's data:
    // a restrictive rule's `tables`, `columns` and `tags` count it as a match; a permissive
    // rule covers it only by naming it in `sources`, whatever its other conditions say.
    let opaque = !st.opaque_sources.is_empty();
    let source_covered =
        |globs: &[TextGlob], s: &OpaqueSource| globs.iter().any(|g| g.matches(&s.label()));
    let sources_ok = match &m.sources {
        Some(globs) if restrictive => st.opaque_sources.iter().any(|s| source_covered(globs, s)),
        Some(globs) => st.opaque_sources.iter().all(|s| source_covered(globs, s)),
        None => restrictive || !opaque,
    };
    if !sources_ok {
        return false;
    }
    if let Some(globs) = &m.tables {
        let covered = |t: &&TableName| globs.iter().any(|g| g.matches(&t.parts(), restrictive));
        let ok = if restrictive {
            opaque || tables.iter().any(covered)
        } else {
            tables.iter().all(covered)
        };
        if !ok {
            return false;
        }
    }
    if let Some(globs) = &m.columns {
        let ok = if restrictive {
            opaque
                || st.columns.iter().any(|c| {
                    for_each_owner(c, tables, opaque, |t| column_matches(globs, t, c, true))
                })
        } else {
            // Every possible owner of every column must be covered.
            st.columns.iter().all(|c| match &c.table {
                Some(t) => column_matches(globs, Some(t), c, false),
                None if tables.is_empty() => column_matches(globs, None, c, false),
                None => {
                    tables
                        .iter()
                        .all(|t| column_matches(globs, Some(t), c, false))
                        && (!opaque || column_matches(globs, None, c, false))
                }
            })
        };
        if !ok {
            return false;
        }
    }
    if let Some(globs) = &m.tags {
        let covered = |t: &&str| globs.iter().any(|g| g.matches(t));
        let ok = if restrictive {
            opaque || tags.iter().any(covered)
        } else {
            tags.iter().all(covered)
        };
        if !ok {
            return false;
        }
    }
    true
}

fn column_matches(
    globs: &[NameGlob],
    table: Option<&TableName>,
    c: &ColumnRef,
    restrictive: bool,
) -> bool {
    let [d, s, t] = table.map_or([None, None, None], TableName::parts);
    let col = if c.is_wildcard() {
        None
    } else {
        Some(c.column.as_str())
    };
    globs
        .iter()
        .any(|g| g.matches(&[d, s, t, col], restrictive))
}
