//! Response-time resolution: which masking applies to each column of a result, from the
//! decision's [`MaskPlan`] (directives plus the statement's column lineage) and the column
//! metadata Snowflake sends with the result (`rowtype`). Pure; no I/O.
//!
//! Each result column gets the sources of the lineage item it comes from (a `*` expands by
//! the column names Snowflake reports), plus `DB.SCHEMA.TABLE.NAME` when the rowtype names
//! its table. Its tags are the classification tags of its sources. Among the plan's
//! directives that match it (a column glob covers a source, or a tag is one of its tags) the
//! strictest wins: `null` > `redact` > `token` > `generalize` > `partial` (a mask profile's
//! directives are no exception; a rule's explicit entry for a tag overrides its profile at
//! compile time, see [`crate::profile`]). A transformed value (`HEX_ENCODE(ssn)`,
//! `SUBSTR(ssn, 1, 3)`) escalates `partial` and `generalize` to `redact`: keeping the last
//! characters of an encoding would leak. A classified column no directive covers is redacted
//! (fail closed). When the result does not fit the lineage, every column is redacted; with a
//! [`Fallback`], every column is redacted or handed to the detectors.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::evaluate::{DirectiveGlobs, Fallback, MaskDirective, MaskPlan};
use crate::lineage::{OutputItem, StatementLineage};
use crate::names::{ColumnRef, TableName};
use crate::policy::Policy;
use crate::schema::MaskMethod;

/// One result column as Snowflake describes it in the result's `rowtype`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResultColumnMeta<'a> {
    /// The column name as reported (`SSN`, `x` for a quoted alias).
    pub name: &'a str,
    /// Database of the column's table; empty when Snowflake does not say.
    pub database: &'a str,
    /// Schema of the column's table; empty when Snowflake does not say.
    pub schema: &'a str,
    /// The column's table; empty when Snowflake does not say (an expression, say).
    pub table: &'a str,
}

/// What to do with one result column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ColumnAction {
    /// Pass the values through.
    Keep,
    /// Mask every value of the column.
    Mask {
        /// The rule the directive comes from (the decision's rule when no directive applies).
        rule_id: String,
        /// How to mask.
        method: MaskMethod,
        /// For `partial`: how many trailing characters stay visible.
        keep_last: Option<u32>,
        /// Classification tags of the column's sources, sorted.
        tags: Vec<String>,
        /// The column's sources (`DB.SCHEMA.TABLE.COLUMN`, `?` for an unknown part, column
        /// `*` for "some column of the table"), sorted.
        sources: Vec<String>,
    },
    /// Run the PHI detectors over every value and mask what they find (see
    /// [`Policy::directive_for_tag`]).
    Detect {
        /// The decision's rule.
        rule_id: String,
    },
}

/// `null` 4 > `redact` 3 > `token` 2 > `generalize` 1 > `partial` 0.
fn strictness(method: MaskMethod) -> u8 {
    match method {
        MaskMethod::Null => 4,
        MaskMethod::Redact => 3,
        MaskMethod::Token => 2,
        MaskMethod::Generalize => 1,
        MaskMethod::Partial => 0,
    }
}

/// A result column's traced origin before directives are applied.
struct Origin {
    sources: BTreeSet<ColumnRef>,
    transformed: bool,
}

impl Policy {
    /// One [`ColumnAction`] per result column, for a decision whose action is
    /// [`Action::Mask`](crate::Action::Mask) with `plan`; `rule_id` is the decision's rule.
    /// See the [module docs](crate::resolve) for the rules.
    pub fn resolve_result_columns(
        &self,
        rule_id: &str,
        plan: &MaskPlan,
        columns: &[ResultColumnMeta<'_>],
    ) -> Vec<ColumnAction> {
        let redact_all = || {
            columns
                .iter()
                .map(|_| ColumnAction::Mask {
                    rule_id: rule_id.to_owned(),
                    method: MaskMethod::Redact,
                    keep_last: None,
                    tags: Vec::new(),
                    sources: Vec::new(),
                })
                .collect()
        };
        match plan.fallback {
            Some(Fallback::Detect) => {
                return columns
                    .iter()
                    .map(|_| ColumnAction::Detect {
                        rule_id: rule_id.to_owned(),
                    })
                    .collect()
            }
            Some(Fallback::MaskAll) => return redact_all(),
            None => {}
        }
        let origins = match &plan.lineage {
            None => return redact_all(),
            // Untraceable, but the decision found nothing masked it could touch: the rowtype
            // is all there is to go on.
            Some(StatementLineage::Unknown { .. }) => columns
                .iter()
                .map(|_| Origin {
                    sources: BTreeSet::new(),
                    transformed: true,
                })
                .collect(),
            Some(StatementLineage::Known(lineage)) => match expand(&lineage.items, columns) {
                Some(origins) => origins,
                None => return redact_all(),
            },
        };
        let globs = DirectiveGlobs::new(plan);
        columns
            .iter()
            .zip(origins)
            .map(|(meta, mut origin)| {
                if !meta.table.is_empty() {
                    let part = |s: &str| (!s.is_empty()).then(|| s.to_owned());
                    origin.sources.insert(ColumnRef {
                        table: Some(TableName {
                            database: part(meta.database),
                            schema: part(meta.schema),
                            table: meta.table.to_owned(),
                        }),
                        column: meta.name.to_owned(),
                    });
                }
                self.column_action(rule_id, plan, &globs, origin)
            })
            .collect()
    }

    /// The directive of `plan` that masks values the detectors classify as `tag` (`phi.ssn`):
    /// the strictest directive naming the tag, `None` when no directive names it (the caller
    /// should then redact: the value is PHI by the detector's account).
    pub fn directive_for_tag<'p>(
        &self,
        plan: &'p MaskPlan,
        tag: &str,
    ) -> Option<&'p MaskDirective> {
        strictest(
            plan.directives
                .iter()
                .filter(|d| d.tags.iter().any(|t| t == tag)),
        )
    }

    fn column_action(
        &self,
        rule_id: &str,
        plan: &MaskPlan,
        globs: &DirectiveGlobs<'_>,
        origin: Origin,
    ) -> ColumnAction {
        let tags: BTreeSet<String> = origin
            .sources
            .iter()
            .flat_map(|c| self.column_tags(c))
            .collect();
        let matching = plan.directives.iter().enumerate().filter(|(i, d)| {
            d.tags.iter().any(|t| tags.contains(t))
                || origin
                    .sources
                    .iter()
                    .any(|c| globs.directive_matches(*i, c))
        });
        let chosen = strictest(matching.map(|(_, d)| d));
        let (rule, method, keep_last) = match chosen {
            Some(d) => (d.rule_id.as_str(), d.method, d.keep_last),
            None if !tags.is_empty() => (rule_id, MaskMethod::Redact, None),
            None => return ColumnAction::Keep,
        };
        let (method, keep_last) = match method {
            MaskMethod::Partial | MaskMethod::Generalize if origin.transformed => {
                (MaskMethod::Redact, None)
            }
            MaskMethod::Partial => (method, keep_last),
            other => (other, None),
        };
        ColumnAction::Mask {
            rule_id: rule.to_owned(),
            method,
            keep_last,
            tags: tags.into_iter().collect(),
            sources: origin.sources.iter().map(ToString::to_string).collect(),
        }
    }
}

/// The strictest directive (the first of equals).
fn strictest<'p>(directives: impl Iterator<Item = &'p MaskDirective>) -> Option<&'p MaskDirective> {
    directives.fold(None, |best: Option<&MaskDirective>, d| match best {
        Some(b) if strictness(b.method) >= strictness(d.method) => Some(b),
        _ => Some(d),
    })
}

/// Maps lineage items onto result columns; `None` when the counts cannot fit.
fn expand(items: &[OutputItem], columns: &[ResultColumnMeta<'_>]) -> Option<Vec<Origin>> {
    let column_items = items.iter().filter(|i| !i.is_wildcard()).count();
    let first = items.iter().position(OutputItem::is_wildcard);
    let last = items.iter().rposition(OutputItem::is_wildcard);
    let of_item = |item: &OutputItem| match item {
        OutputItem::Column {
            sources,
            transformed,
            ..
        } => Origin {
            sources: sources.clone(),
            transformed: *transformed,
        },
        OutputItem::Wildcard { .. } => Origin {
            sources: BTreeSet::new(),
            transformed: false,
        },
    };
    let (Some(first), Some(last)) = (first, last) else {
        return (columns.len() == items.len()).then(|| items.iter().map(of_item).collect());
    };
    if columns.len() < column_items {
        return None;
    }
    let tail = items.len() - 1 - last;
    let middle_end = columns.len() - tail;
    // Between the first and last wildcard nothing is positionally certain.
    let mut between = Origin {
        sources: BTreeSet::new(),
        transformed: false,
    };
    let mut wildcards = Vec::new();
    for item in &items[first..=last] {
        match item {
            OutputItem::Column {
                sources,
                transformed,
                ..
            } => {
                between.sources.extend(sources.iter().cloned());
                between.transformed |= transformed;
            }
            OutputItem::Wildcard { tables, except } => wildcards.push((tables, except)),
        }
    }
    let mut out: Vec<Origin> = items[..first].iter().map(of_item).collect();
    for meta in &columns[first..middle_end] {
        let mut sources = between.sources.clone();
        for (tables, except) in &wildcards {
            if !except.contains(meta.name) {
                sources.extend(tables.iter().map(|t| ColumnRef {
                    table: Some(t.clone()),
                    column: meta.name.to_owned(),
                }));
            }
        }
        out.push(Origin {
            sources,
            transformed: between.transformed,
        });
    }
    out.extend(items[last + 1..].iter().map(of_item));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, sources: &[&str], transformed: bool) -> OutputItem {
        OutputItem::Column {
            name: name.into(),
            sources: sources
                .iter()
                .map(|s| ColumnRef {
                    table: Some(TableName::new("D", "S", "T")),
                    column: (*s).into(),
                })
                .collect(),
            transformed,
        }
    }

    fn wild(table: &str, except: &[&str]) -> OutputItem {
        OutputItem::Wildcard {
            tables: vec![TableName::new("D", "S", table)],
            except: except.iter().map(|s| (*s).to_string()).collect(),
        }
    }

    fn metas<'a>(names: &[&'a str]) -> Vec<ResultColumnMeta<'a>> {
        names
            .iter()
            .map(|n| ResultColumnMeta {
                name: n,
                ..ResultColumnMeta::default()
            })
            .collect()
    }

    fn shown(origins: &[Origin]) -> Vec<(Vec<String>, bool)> {
        origins
            .iter()
            .map(|o| {
                (
                    o.sources.iter().map(ToString::to_string).collect(),
                    o.transformed,
                )
            })
            .collect()
    }

    #[test]
    fn columns_only_must_fit_exactly() {
        let items = [col("A", &["X"], false), col("B", &["Y"], true)];
        let o = expand(&items, &metas(&["A", "B"])).unwrap();
        assert_eq!(
            shown(&o),
            [
                (vec!["D.S.T.X".to_string()], false),
                (vec!["D.S.T.Y".to_string()], true)
            ]
        );
        assert!(expand(&items, &metas(&["A"])).is_none());
        assert!(expand(&items, &metas(&["A", "B", "C"])).is_none());
    }

    #[test]
    fn one_wildcard_takes_the_rest_by_name() {
        let items = [
            col("A", &["X"], false),
            wild("P", &["SSN"]),
            col("Z", &["Y"], false),
        ];
        let o = expand(&items, &metas(&["A", "ID", "SSN", "Z"])).unwrap();
        assert_eq!(
            shown(&o),
            [
                (vec!["D.S.T.X".to_string()], false),
                (vec!["D.S.P.ID".to_string()], false),
                (vec![], false),
                (vec!["D.S.T.Y".to_string()], false),
            ]
        );
        assert_eq!(expand(&items, &metas(&["A", "Z"])).unwrap().len(), 2);
        assert!(expand(&items, &metas(&["A"])).is_none());
    }

    #[test]
    fn between_two_wildcards_everything_is_a_candidate() {
        let items = [wild("P", &[]), col("N", &["NOTE"], true), wild("V", &[])];
        let o = expand(&items, &metas(&["ID", "N", "X"])).unwrap();
        for (i, name) in ["ID", "N", "X"].iter().enumerate() {
            let (sources, transformed) = &shown(&o)[i];
            assert_eq!(
                sources,
                &vec![
                    format!("D.S.P.{name}"),
                    "D.S.T.NOTE".to_string(),
                    format!("D.S.V.{name}")
                ]
            );
            assert!(transformed);
        }
    }

    #[test]
    fn strictness_order() {
        let d = |method| MaskDirective {
            rule_id: "r".into(),
            columns: Vec::new(),
            tags: Vec::new(),
            method,
            keep_last: None,
        };
        let all = [
            d(MaskMethod::Partial),
            d(MaskMethod::Generalize),
            d(MaskMethod::Token),
            d(MaskMethod::Redact),
            d(MaskMethod::Null),
        ];
        for i in 0..all.len() {
            let chosen = strictest(all[..=i].iter().rev()).unwrap();
            assert_eq!(chosen.method, all[i].method);
            let chosen = strictest(all[..=i].iter()).unwrap();
            assert_eq!(chosen.method, all[i].method);
        }
        assert!(strictest(std::iter::empty()).is_none());
    }
}
