//! Column lineage of a query: for every result column, the base-table columns its value is
//! derived from, and the columns the query filters, sorts, groups or joins on.
//!
//! The masking layer only sees result columns by position and by the name Snowflake reports;
//! lineage is what ties them back to classified (PHI) columns, through aliases, functions,
//! `CASE`, casts, CTEs, subqueries, joins and set operations. The analysis is an
//! over-approximation: a column that *might* feed a value is one of its sources (an
//! unqualified column in a join maps to that name in every candidate table), and anything it
//! cannot follow soundly (table functions such as `LATERAL FLATTEN`, `PIVOT`, `UNPIVOT`,
//! `MATCH_RECOGNIZE`, `IDENTIFIER()`, recursive CTEs, …) makes the whole statement
//! [`StatementLineage::Unknown`]. It never under-approximates on purpose: when unsure, unknown.
//!
//! Predicates ([`ProjectionLineage::predicate_columns`]) are every base column a filter, sort,
//! grouping or join condition may read. The one exception is a join of two *table columns*:
//! `a.x = b.y` in `JOIN … ON`, and the columns of `USING (…)` and `NATURAL` joins, record
//! nothing when both sides trace, untransformed, to base-table columns (through any number of
//! alias, CTE and subquery hops). Whether a side is such a column is decided by the same
//! lineage as result columns, so a column of a derived table, CTE or `VALUES` that traces to no
//! base column at all (literals, functions of literals: a *derived constant*), or to a computed
//! value, is not one: `JOIN (SELECT '…' AS s) b ON a.ssn = b.s` compares `a.ssn` with a
//! constant exactly like `WHERE a.ssn = '…'` does, and is a predicate on `a.ssn`. Such
//! comparisons (any comparison in a join condition one of whose other operands is not a table
//! column, literals and `IN` lists included) are also listed in
//! [`ProjectionLineage::constant_join_columns`], so that a refusal can say what happened.
//!
//! `SELECT *` over a base table cannot be expanded from the SQL alone (the column list is in
//! the catalogue, not in the text): it stays an [`OutputItem::Wildcard`], which the masking
//! layer expands by the result column names Snowflake reports (see
//! [`Policy::resolve_result_columns`](crate::Policy::resolve_result_columns)). A `*` over a CTE
//! or subquery whose projection is known expands to that projection.

use std::collections::BTreeSet;
use std::ops::{ControlFlow, Range};

use serde::Serialize;
use sqlparser::ast::{
    BinaryOperator, Distinct, ExcludeSelectItem, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArguments, GroupByExpr, GroupByWithModifier, Ident, InTarget, JoinConstraint,
    JoinOperator, ObjectName, ObjectNamePart, OrderBy, OrderByKind, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, SetQuantifier, Statement, TableAliasColumnDef,
    TableFactor, TableWithJoins, Value, Values, Visit, Visitor, WildcardAdditionalOptions,
};

use crate::analysis::{object_parts, resolve_object, NameParts, Resolved};
use crate::names::{fold_ident, ColumnRef, NameContext, TableName};
use crate::redact::redact_literals;

/// Deeper query nesting (subqueries, CTEs, derived tables) than this is not traced.
const MAX_DEPTH: usize = 64;
/// Wider projections than this (after expanding `*` over CTEs) are not traced.
const MAX_ITEMS: usize = 4096;

/// The column lineage of one `SELECT`-kind statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "lineage", rename_all = "snake_case")]
pub enum StatementLineage {
    /// Every result column could be traced.
    Known(ProjectionLineage),
    /// Some construct could not be traced soundly.
    Unknown {
        /// A short description of the construct (`PIVOT`, `table function in FROM`); never
        /// contains SQL literals.
        reason: String,
    },
}

/// The traced projection of a query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProjectionLineage {
    /// The result columns, in order.
    pub items: Vec<OutputItem>,
    /// Base columns the query filters, sorts, groups or joins on (`WHERE`, `HAVING`,
    /// `QUALIFY`, `ORDER BY`, `GROUP BY`, `DISTINCT ON`, `JOIN … ON`, `USING`, `NATURAL`),
    /// anywhere in the query, CTEs and subqueries included, except the columns of bare
    /// equi-joins of two table columns (`a.x = b.y`, `USING (x)` where both sides trace,
    /// untransformed, to base-table columns). A column `*` (`DB.SCHEMA.TABLE.*`) stands for
    /// "some column of that table" (a positional `ORDER BY 1` over `SELECT *`, a `HASH(*)`).
    pub predicate_columns: BTreeSet<ColumnRef>,
    /// The subset of [`Self::predicate_columns`] a join condition (`ON`, `USING`, `NATURAL`,
    /// `MATCH_CONDITION`) compares with something that is not a table column: a literal, an
    /// `IN` list, a subquery, a computed value, or a column of a derived table, CTE or
    /// `VALUES` whose lineage is a constant (no base column) or a computation.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub constant_join_columns: BTreeSet<ColumnRef>,
}

/// One item of a traced projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "item", rename_all = "snake_case")]
pub enum OutputItem {
    /// One result column.
    Column {
        /// The name Snowflake reports for it: the alias or column name (unquoted identifiers
        /// upper-cased, quoted kept); for an unaliased expression, its text upper-cased with
        /// literals replaced by `?` (diagnostics only).
        name: String,
        /// The base columns (`DB.SCHEMA.TABLE.COLUMN`) its value is derived from. A column
        /// `*` stands for every column of its table.
        sources: BTreeSet<ColumnRef>,
        /// `false` only when the value is a bare column reference or a pure cast of one
        /// (through any number of alias, CTE and subquery hops).
        transformed: bool,
    },
    /// `*`, `t.*`, `* EXCLUDE (…)` over base tables: zero or more result columns, each
    /// named like the table column it comes from.
    Wildcard {
        /// The tables the columns may come from.
        tables: Vec<TableName>,
        /// Column names excluded (`EXCLUDE`), folded.
        except: BTreeSet<String>,
    },
}

impl OutputItem {
    /// Whether this is a [`OutputItem::Wildcard`].
    pub fn is_wildcard(&self) -> bool {
        matches!(self, Self::Wildcard { .. })
    }

    /// Adds every base column this item may carry to `out` (`TABLE.*` for a wildcard).
    fn add_sources(&self, out: &mut BTreeSet<ColumnRef>) {
        match self {
            Self::Column { sources, .. } => out.extend(sources.iter().cloned()),
            Self::Wildcard { tables, .. } => out.extend(tables.iter().map(all_of)),
        }
    }
}

/// `TABLE.*`: some (any) column of `table`.
fn all_of(table: &TableName) -> ColumnRef {
    ColumnRef {
        table: Some(table.clone()),
        column: "*".into(),
    }
}

/// The lineage of `statement` when it is a query (`SELECT`, `WITH`, set operations,
/// `VALUES`); `None` for any other statement.
pub(crate) fn statement_lineage(
    statement: &Statement,
    ctx: &NameContext,
) -> Option<StatementLineage> {
    let Statement::Query(query) = statement else {
        return None;
    };
    let mut tracer = Tracer {
        ctx,
        ctes: Vec::new(),
        frames: Vec::new(),
        predicates: BTreeSet::new(),
        constant_joins: BTreeSet::new(),
        depth: 0,
    };
    Some(match tracer.query(query) {
        Ok(items) => StatementLineage::Known(ProjectionLineage {
            items,
            predicate_columns: tracer.predicates,
            constant_join_columns: tracer.constant_joins,
        }),
        Err(reason) => StatementLineage::Unknown { reason },
    })
}

type Res<T> = Result<T, String>;

fn unknown<T>(reason: &str) -> Res<T> {
    Err(reason.to_owned())
}

/// The traced value of an expression.
#[derive(Debug, Clone, Default)]
struct Traced {
    sources: BTreeSet<ColumnRef>,
    transformed: bool,
}

impl Traced {
    /// Whether the value is a table column: untransformed (a bare reference or a pure cast,
    /// through any number of alias, CTE and subquery hops) and traced to some base column.
    /// A derived constant (no base column) or a computed value is not.
    fn is_table_column(&self) -> bool {
        !self.transformed && !self.sources.is_empty()
    }
}

fn merge(acc: &mut Option<Traced>, t: Traced) {
    match acc {
        Some(a) => {
            a.sources.extend(t.sources);
            a.transformed |= t.transformed;
        }
        None => *acc = Some(t),
    }
}

/// What a relation in `FROM` provides.
#[derive(Debug, Clone)]
enum Columns {
    /// A base table or view: columns unknown, any name may be one.
    Base(TableName),
    /// A CTE or derived table with a traced projection.
    Derived(Vec<OutputItem>),
}

/// A relation in `FROM`, with the name it is qualified by (alias, table or CTE name).
#[derive(Debug, Clone)]
struct Rel {
    qualifier: Option<String>,
    columns: Columns,
}

impl Rel {
    /// Traces column `name` of this relation: `None` when it has no such column; the flag
    /// says whether the column certainly exists (a traced projection names it) rather than
    /// possibly (a base table or a wildcard).
    fn lookup(&self, name: &str) -> Option<(Traced, bool)> {
        match &self.columns {
            Columns::Base(t) => Some((
                Traced {
                    sources: BTreeSet::from([ColumnRef {
                        table: Some(t.clone()),
                        column: name.to_owned(),
                    }]),
                    transformed: false,
                },
                false,
            )),
            Columns::Derived(items) => {
                let mut acc = None;
                let mut definite = false;
                for item in items {
                    match item {
                        OutputItem::Column {
                            name: n,
                            sources,
                            transformed,
                        } if n == name => {
                            merge(
                                &mut acc,
                                Traced {
                                    sources: sources.clone(),
                                    transformed: *transformed,
                                },
                            );
                            definite = true;
                        }
                        OutputItem::Wildcard { tables, except } if !except.contains(name) => {
                            merge(
                                &mut acc,
                                Traced {
                                    sources: tables
                                        .iter()
                                        .map(|t| ColumnRef {
                                            table: Some(t.clone()),
                                            column: name.to_owned(),
                                        })
                                        .collect(),
                                    transformed: false,
                                },
                            );
                        }
                        _ => {}
                    }
                }
                acc.map(|t| (t, definite))
            }
        }
    }

    /// Every base column the relation may provide.
    fn all_columns(&self, out: &mut BTreeSet<ColumnRef>) {
        match &self.columns {
            Columns::Base(t) => {
                out.insert(all_of(t));
            }
            Columns::Derived(items) => items.iter().for_each(|i| i.add_sources(out)),
        }
    }

    /// The items `*` (or `q.*`) expands to over this relation.
    fn expand(&self, except: &BTreeSet<String>, ilike: bool) -> Res<Vec<OutputItem>> {
        match &self.columns {
            Columns::Base(t) => Ok(vec![OutputItem::Wildcard {
                tables: vec![t.clone()],
                except: except.clone(),
            }]),
            Columns::Derived(_) if ilike => unknown("ILIKE on a wildcard over a subquery or CTE"),
            Columns::Derived(items) => Ok(items
                .iter()
                .filter_map(|item| match item {
                    OutputItem::Column { name, .. } if except.contains(name) => None,
                    OutputItem::Column { .. } => Some(item.clone()),
                    OutputItem::Wildcard { tables, except: e } => Some(OutputItem::Wildcard {
                        tables: tables.clone(),
                        except: e.union(except).cloned().collect(),
                    }),
                })
                .collect()),
        }
    }

    fn base_table(&self) -> Option<&TableName> {
        match &self.columns {
            Columns::Base(t) => Some(t),
            Columns::Derived(_) => None,
        }
    }
}

/// The name scope of one `SELECT`: its `FROM` relations and the aliases of its projection
/// (Snowflake lets later items and clauses refer to them).
#[derive(Debug, Default)]
struct Frame {
    rels: Vec<Rel>,
    aliases: Vec<(String, Traced)>,
}

struct Tracer<'c> {
    ctx: &'c NameContext,
    /// Visible CTEs, innermost last; a CTE that could not be traced carries the reason.
    ctes: Vec<(String, Res<Vec<OutputItem>>)>,
    /// Name scopes, innermost (current `SELECT`) last; outer ones serve correlated subqueries.
    frames: Vec<Frame>,
    predicates: BTreeSet<ColumnRef>,
    /// See [`ProjectionLineage::constant_join_columns`].
    constant_joins: BTreeSet<ColumnRef>,
    depth: usize,
}

/// A join condition, recorded while a `FROM` clause is read and traced once its scope is
/// complete. Relations are indices into the scope's [`Frame::rels`].
#[derive(Debug)]
enum JoinCondition<'a> {
    /// `ON <expr>`, or an `ASOF` `MATCH_CONDITION`.
    On(&'a Expr),
    /// `USING (names)`: each column of the left relations equals the same-named column of the
    /// right ones.
    Using {
        left: Range<usize>,
        right: Range<usize>,
        names: Vec<String>,
    },
    /// `NATURAL`: like `USING` over every column name both sides have.
    Natural {
        left: Range<usize>,
        right: Range<usize>,
    },
}

fn fold(ident: &Ident) -> String {
    fold_ident(&ident.value, ident.quote_style.is_some())
}

/// `$1`, `$2`, …: a positional column reference.
fn is_positional(name: &str) -> bool {
    name.strip_prefix('$')
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// `ORDER BY 2` / `GROUP BY 2`: the 1-based projection position.
fn position(expr: &Expr) -> Option<usize> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// The base columns projection position `p` (1-based) may refer to: exact before the first
/// wildcard, everything from the first wildcard on after it.
fn positional_sources(items: &[OutputItem], p: usize, out: &mut BTreeSet<ColumnRef>) {
    let index = p.saturating_sub(1);
    match items.iter().position(OutputItem::is_wildcard) {
        Some(w) if index >= w => items[w..].iter().for_each(|i| i.add_sources(out)),
        _ => {
            if let Some(item) = items.get(index) {
                item.add_sources(out);
            }
        }
    }
}

/// The value of `expr` is a bare column reference or a pure cast of one: that reference.
fn pure_ref(expr: &Expr) -> Option<&Expr> {
    match expr {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => Some(expr),
        Expr::Nested(inner) => pure_ref(inner),
        Expr::Cast {
            expr, format: None, ..
        } => pure_ref(expr),
        _ => None,
    }
}

/// The name Snowflake gives an unaliased projection item (literals redacted).
fn expr_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(ident) => fold(ident),
        Expr::CompoundIdentifier(idents) => idents.last().map(fold).unwrap_or_default(),
        other => redact_literals(&other.to_string()).to_uppercase(),
    }
}

/// Splits a join condition at `AND` into the bare `a = b` comparisons of two column
/// references (`equi`: candidates for the equi-join exception, decided by their lineage) and
/// the other conjuncts (`other`).
fn split_join_condition<'a>(
    expr: &'a Expr,
    equi: &mut Vec<(&'a Expr, &'a Expr)>,
    other: &mut Vec<&'a Expr>,
) {
    fn is_column(e: &Expr) -> bool {
        match e {
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => true,
            Expr::Nested(inner) => is_column(inner),
            _ => false,
        }
    }
    match expr {
        Expr::Nested(inner) => split_join_condition(inner, equi, other),
        Expr::BinaryOp { left, op, right } if *op == BinaryOperator::And => {
            split_join_condition(left, equi, other);
            split_join_condition(right, equi, other);
        }
        Expr::BinaryOp { left, op, right }
            if *op == BinaryOperator::Eq && is_column(left) && is_column(right) =>
        {
            equi.push((left, right))
        }
        e => other.push(e),
    }
}

/// The operands of a comparison (`=`, `<>`, `<`, `BETWEEN`, `IN (…)`, `LIKE`, `IS [NOT]
/// DISTINCT FROM`, `= ANY (…)`, …): the compared expression first. A subquery operand is
/// `Err` of its query. `None` for anything else.
fn comparison_operands<'a>(expr: &'a Expr) -> Option<Vec<Result<&'a Expr, &'a Query>>> {
    let pair = |a: &'a Expr, b: &'a Expr| Some(vec![Ok(a), Ok(b)]);
    match expr {
        Expr::Nested(inner) => comparison_operands(inner),
        Expr::BinaryOp {
            left,
            op:
                BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq
                | BinaryOperator::Spaceship,
            right,
        } => pair(left, right),
        Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => pair(a, b),
        Expr::AnyOp { left, right, .. } | Expr::AllOp { left, right, .. } => pair(left, right),
        Expr::Like { expr, pattern, .. }
        | Expr::ILike { expr, pattern, .. }
        | Expr::SimilarTo { expr, pattern, .. }
        | Expr::RLike { expr, pattern, .. } => pair(expr, pattern),
        Expr::Between {
            expr, low, high, ..
        } => Some(vec![Ok(&**expr), Ok(&**low), Ok(&**high)]),
        Expr::In { expr, target, .. } => match target {
            InTarget::List(list) => Some(
                std::iter::once(Ok(&**expr))
                    .chain(list.iter().map(Ok))
                    .collect(),
            ),
            InTarget::Subquery(q) => Some(vec![Ok(&**expr), Err(&**q)]),
            _ => None,
        },
        _ => None,
    }
}

/// Applies a column alias list (`AS t(a, b)`, `WITH c(a, b) AS …`) to a projection.
fn rename(items: Vec<OutputItem>, columns: &[TableAliasColumnDef]) -> Res<Vec<OutputItem>> {
    if columns.is_empty() {
        return Ok(items);
    }
    if items.iter().any(OutputItem::is_wildcard) {
        return unknown("column alias list over a wildcard");
    }
    if items.len() != columns.len() {
        return unknown("column alias list of a different width");
    }
    Ok(items
        .into_iter()
        .zip(columns)
        .map(|(item, col)| match item {
            OutputItem::Column {
                sources,
                transformed,
                ..
            } => OutputItem::Column {
                name: fold(&col.name),
                sources,
                transformed,
            },
            wildcard => wildcard,
        })
        .collect())
}

/// Merges adjacent wildcards with the same exclusions (`SELECT *` over a join of base tables
/// is one wildcard over all of them).
fn merge_adjacent_wildcards(items: Vec<OutputItem>) -> Vec<OutputItem> {
    let mut out: Vec<OutputItem> = Vec::with_capacity(items.len());
    for item in items {
        if let (
            Some(OutputItem::Wildcard {
                tables: prev_tables,
                except: prev_except,
            }),
            OutputItem::Wildcard { tables, except },
        ) = (out.last_mut(), &item)
        {
            if prev_except == except {
                for t in tables {
                    if !prev_tables.contains(t) {
                        prev_tables.push(t.clone());
                    }
                }
                continue;
            }
        }
        out.push(item);
    }
    out
}

/// `EXCLUDE` names and whether `ILIKE` filters the wildcard; `REPLACE`, `RENAME` and aliases
/// change names or values and are not traced.
fn wildcard_options(opts: &WildcardAdditionalOptions) -> Res<(BTreeSet<String>, bool)> {
    if opts.opt_replace.is_some() {
        return unknown("REPLACE on a wildcard");
    }
    if opts.opt_rename.is_some() {
        return unknown("RENAME on a wildcard");
    }
    if opts.opt_alias.is_some() {
        return unknown("alias on a wildcard");
    }
    let mut except = BTreeSet::new();
    if let Some(exclude) = &opts.opt_exclude {
        let names: Vec<&ObjectName> = match exclude {
            ExcludeSelectItem::Single(name) => vec![name],
            ExcludeSelectItem::Multiple(names) => names.iter().collect(),
        };
        for name in names {
            match name.0.as_slice() {
                [ObjectNamePart::Identifier(ident)] => {
                    except.insert(fold(ident));
                }
                _ => return unknown("qualified EXCLUDE name"),
            }
        }
    }
    if let Some(ex) = &opts.opt_except {
        except.insert(fold(&ex.first_element));
        except.extend(ex.additional_elements.iter().map(fold));
    }
    Ok((except, opts.opt_ilike.is_some()))
}

/// Functions whose first argument may be a bare date-part keyword (`DATEADD(day, …)`).
const DATE_PART_FUNCTIONS: &[&str] = &[
    "DATEADD",
    "DATEDIFF",
    "DATE_PART",
    "DATE_TRUNC",
    "TIMEADD",
    "TIMEDIFF",
    "TIMESTAMPADD",
    "TIMESTAMPDIFF",
    "TIMESTAMP_DIFF",
    "TRUNC",
];

/// Snowflake date and time parts (and their abbreviations).
const DATE_PARTS: &[&str] = &[
    "YEAR",
    "Y",
    "YY",
    "YYY",
    "YYYY",
    "YR",
    "YEARS",
    "YRS",
    "MONTH",
    "MM",
    "MON",
    "MONS",
    "MONTHS",
    "DAY",
    "D",
    "DD",
    "DAYS",
    "DAYOFMONTH",
    "DAYOFWEEK",
    "WEEKDAY",
    "DOW",
    "DW",
    "DAYOFWEEKISO",
    "WEEKDAY_ISO",
    "DOW_ISO",
    "DW_ISO",
    "DAYOFYEAR",
    "YEARDAY",
    "DOY",
    "DY",
    "WEEK",
    "W",
    "WK",
    "WEEKOFYEAR",
    "WOY",
    "WY",
    "WEEKISO",
    "WEEK_ISO",
    "WEEKOFYEARISO",
    "WEEKOFYEAR_ISO",
    "QUARTER",
    "Q",
    "QTR",
    "QTRS",
    "QUARTERS",
    "YEAROFWEEK",
    "YEAROFWEEKISO",
    "HOUR",
    "H",
    "HH",
    "HR",
    "HOURS",
    "HRS",
    "MINUTE",
    "M",
    "MI",
    "MIN",
    "MINUTES",
    "MINS",
    "SECOND",
    "S",
    "SEC",
    "SECONDS",
    "SECS",
    "MS",
    "MSEC",
    "MILLISECOND",
    "MILLISECONDS",
    "US",
    "USEC",
    "MICROSECOND",
    "MICROSECONDS",
    "NS",
    "NSEC",
    "NANOSEC",
    "NANOSECOND",
    "NANOSECONDS",
    "NANOSECS",
    "NSECOND",
    "NSECONDS",
    "NSECS",
    "EPOCH_SECOND",
    "EPOCH",
    "EPOCH_SECONDS",
    "EPOCH_MILLISECOND",
    "EPOCH_MILLISECONDS",
    "EPOCH_MICROSECOND",
    "EPOCH_MICROSECONDS",
    "EPOCH_NANOSECOND",
    "EPOCH_NANOSECONDS",
    "TIMEZONE_HOUR",
    "TZH",
    "TIMEZONE_MINUTE",
    "TZM",
];

impl Tracer<'_> {
    fn query(&mut self, query: &Query) -> Res<Vec<OutputItem>> {
        if self.depth >= MAX_DEPTH {
            return unknown("query nested too deeply");
        }
        self.depth += 1;
        let saved = self.ctes.len();
        let result = self.query_inner(query);
        self.ctes.truncate(saved);
        self.depth -= 1;
        let items = result?;
        if items.len() > MAX_ITEMS {
            return unknown("projection too wide");
        }
        Ok(items)
    }

    fn query_inner(&mut self, query: &Query) -> Res<Vec<OutputItem>> {
        if !query.pipe_operators.is_empty() {
            return unknown("pipe operators");
        }
        if let Some(with) = &query.with {
            if with.recursive {
                return unknown("recursive CTE");
            }
            for cte in &with.cte_tables {
                let name = fold(&cte.alias.name);
                // While its body is traced, the CTE's own name means recursion.
                self.ctes
                    .push((name.clone(), unknown("recursive CTE reference")));
                let items = self
                    .query(&cte.query)
                    .and_then(|items| rename(items, &cte.alias.columns));
                self.ctes.pop();
                self.ctes.push((name, items));
            }
        }
        self.set_expr(&query.body, query.order_by.as_ref())
    }

    fn set_expr(&mut self, body: &SetExpr, order_by: Option<&OrderBy>) -> Res<Vec<OutputItem>> {
        let items = match body {
            SetExpr::Select(select) => return self.select(select, order_by),
            SetExpr::Query(query) => self.query(query)?,
            SetExpr::SetOperation {
                left,
                set_quantifier,
                right,
                ..
            } => {
                if matches!(
                    set_quantifier,
                    SetQuantifier::ByName
                        | SetQuantifier::AllByName
                        | SetQuantifier::DistinctByName
                ) {
                    return unknown("set operation BY NAME");
                }
                let left = self.set_expr(left, None)?;
                let right = self.set_expr(right, None)?;
                combine(left, right)?
            }
            SetExpr::Values(values) => self.values(values)?,
            _ => return unknown("unsupported query body"),
        };
        self.order_by_output(order_by, &items)?;
        Ok(items)
    }

    fn values(&mut self, values: &Values) -> Res<Vec<OutputItem>> {
        let mut columns: Vec<Traced> = Vec::new();
        self.frames.push(Frame::default());
        let result = (|| {
            for (r, row) in values.rows.iter().enumerate() {
                if r > 0 && row.content.len() != columns.len() {
                    return unknown("VALUES rows of different widths");
                }
                for (i, expr) in row.content.iter().enumerate() {
                    let t = self.trace(expr)?;
                    match columns.get_mut(i) {
                        Some(c) => c.sources.extend(t.sources),
                        None => columns.push(Traced {
                            sources: t.sources,
                            transformed: true,
                        }),
                    }
                }
            }
            Ok(())
        })();
        self.frames.pop();
        result?;
        Ok(columns
            .into_iter()
            .enumerate()
            .map(|(i, t)| OutputItem::Column {
                name: format!("COLUMN{}", i + 1),
                sources: t.sources,
                transformed: true,
            })
            .collect())
    }

    /// `ORDER BY` over a set operation or a parenthesised query: names refer to the output.
    fn order_by_output(&mut self, order_by: Option<&OrderBy>, items: &[OutputItem]) -> Res<()> {
        let Some(order_by) = order_by else {
            return Ok(());
        };
        self.frames.push(Frame {
            rels: vec![Rel {
                qualifier: None,
                columns: Columns::Derived(items.to_vec()),
            }],
            aliases: Vec::new(),
        });
        let result = self.order_by(order_by, items);
        self.frames.pop();
        result
    }

    fn order_by(&mut self, order_by: &OrderBy, items: &[OutputItem]) -> Res<()> {
        match &order_by.kind {
            OrderByKind::All(_) => {
                items
                    .iter()
                    .for_each(|i| i.add_sources(&mut self.predicates));
                Ok(())
            }
            OrderByKind::Expressions(list) => {
                for o in list {
                    self.grouping(&o.expr, items)?;
                }
                Ok(())
            }
        }
    }

    /// A `GROUP BY` / `ORDER BY` / `DISTINCT ON` expression: a position or an expression.
    fn grouping(&mut self, expr: &Expr, items: &[OutputItem]) -> Res<()> {
        match position(expr) {
            Some(p) => {
                positional_sources(items, p, &mut self.predicates);
                Ok(())
            }
            None => self.predicate(expr),
        }
    }

    fn predicate(&mut self, expr: &Expr) -> Res<()> {
        let t = self.trace(expr)?;
        self.predicates.extend(t.sources);
        Ok(())
    }

    /// Traces a join condition (in the scope of its `SELECT`): see the module docs.
    fn join_condition(&mut self, condition: &JoinCondition<'_>) -> Res<()> {
        match condition {
            JoinCondition::On(expr) => {
                let (mut equi, mut other) = (Vec::new(), Vec::new());
                split_join_condition(expr, &mut equi, &mut other);
                for (left, right) in equi {
                    let operands = vec![self.trace(left)?, self.trace(right)?];
                    self.join_comparison(operands, true);
                }
                for conjunct in other {
                    match comparison_operands(conjunct) {
                        Some(operands) => {
                            let operands = operands
                                .into_iter()
                                .map(|o| match o {
                                    Ok(expr) => self.operand(expr),
                                    Err(query) => self.subquery_value(query),
                                })
                                .collect::<Res<Vec<_>>>()?;
                            self.join_comparison(operands, false);
                        }
                        None => self.predicate(conjunct)?,
                    }
                }
            }
            JoinCondition::Using { left, right, names } => {
                for name in names {
                    self.join_columns(left, right, name);
                }
            }
            JoinCondition::Natural { left, right } => {
                // Base tables (and wildcards) only have table columns; the names a traced
                // projection certainly has are the ones a constant could hide behind.
                let rels = self.frames.last().map_or(&[][..], |f| f.rels.as_slice());
                let names: BTreeSet<String> = rels
                    .get(left.start..right.end)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|rel| match &rel.columns {
                        Columns::Derived(items) => Some(items),
                        Columns::Base(_) => None,
                    })
                    .flatten()
                    .filter_map(|item| match item {
                        OutputItem::Column { name, .. } => Some(name.clone()),
                        OutputItem::Wildcard { .. } => None,
                    })
                    .collect();
                for name in &names {
                    self.join_columns(left, right, name);
                }
            }
        }
        Ok(())
    }

    /// `USING (name)`: the column of the `left` relations equals that of the `right` ones.
    /// A name one side does not have is not a join column.
    fn join_columns(&mut self, left: &Range<usize>, right: &Range<usize>, name: &str) {
        let rels = self.frames.last().map_or(&[][..], |f| f.rels.as_slice());
        let side = |range: &Range<usize>| {
            let mut acc = None;
            for rel in rels.get(range.clone()).unwrap_or_default() {
                if let Some((t, _)) = rel.lookup(name) {
                    merge(&mut acc, t);
                }
            }
            acc
        };
        if let (Some(l), Some(r)) = (side(left), side(right)) {
            self.join_comparison(vec![l, r], true);
        }
    }

    /// A comparison in a join condition, compared value first. A bare equality of two table
    /// columns (`equality`) is the equi-join exception and records nothing; otherwise every
    /// operand is a predicate, and one compared with an operand that is not a table column (a
    /// constant, derived constant or computed value) is a constant join column too.
    fn join_comparison(&mut self, operands: Vec<Traced>, equality: bool) {
        if equality && operands.iter().all(Traced::is_table_column) {
            return;
        }
        for (i, operand) in operands.iter().enumerate() {
            let against_constant = operands
                .iter()
                .enumerate()
                .any(|(j, other)| j != i && !other.is_table_column());
            if against_constant {
                self.constant_joins.extend(operand.sources.iter().cloned());
            }
        }
        for operand in operands {
            self.predicates.extend(operand.sources);
        }
    }

    /// An operand of a comparison: a scalar subquery is the value of its one column.
    fn operand(&mut self, expr: &Expr) -> Res<Traced> {
        match expr {
            Expr::Nested(inner) => self.operand(inner),
            Expr::Subquery(query) => self.subquery_value(query),
            _ => self.trace(expr),
        }
    }

    /// The value of a subquery used as an operand (`x = (SELECT …)`, `x IN (SELECT …)`): a
    /// table column only when its projection is one.
    fn subquery_value(&mut self, query: &Query) -> Res<Traced> {
        let items = self.query(query)?;
        let mut sources = BTreeSet::new();
        items.iter().for_each(|i| i.add_sources(&mut sources));
        let transformed = !matches!(
            items.as_slice(),
            [OutputItem::Column {
                transformed: false,
                ..
            }] | [OutputItem::Wildcard { .. }]
        );
        Ok(Traced {
            sources,
            transformed,
        })
    }

    fn select(&mut self, select: &Select, order_by: Option<&OrderBy>) -> Res<Vec<OutputItem>> {
        if !select.lateral_views.is_empty() {
            return unknown("LATERAL VIEW");
        }
        if !select.connect_by.is_empty() {
            return unknown("CONNECT BY");
        }
        if select.into.is_some() {
            return unknown("SELECT INTO");
        }
        if !select.cluster_by.is_empty()
            || !select.distribute_by.is_empty()
            || !select.sort_by.is_empty()
        {
            return unknown("CLUSTER, DISTRIBUTE or SORT BY");
        }
        if select.value_table_mode.is_some() {
            return unknown("SELECT AS VALUE or STRUCT");
        }
        if select.exclude.is_some() {
            return unknown("EXCLUDE after the select list");
        }
        if !select.named_window.is_empty() {
            return unknown("named WINDOW clause");
        }
        let mut frame = Frame::default();
        let mut conditions = Vec::new();
        for from in &select.from {
            self.add_joined(from, &mut frame.rels, &mut conditions)?;
        }
        self.frames.push(frame);
        let result = self.select_in_frame(select, order_by, &conditions);
        self.frames.pop();
        result
    }

    fn select_in_frame(
        &mut self,
        select: &Select,
        order_by: Option<&OrderBy>,
        conditions: &[JoinCondition<'_>],
    ) -> Res<Vec<OutputItem>> {
        let mut items = Vec::new();
        for item in &select.projection {
            match item {
                SelectItem::UnnamedExpr(expr) => {
                    let t = self.trace(expr)?;
                    items.push(self.column(expr_name(expr), t));
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let t = self.trace(expr)?;
                    items.push(self.column(fold(alias), t));
                }
                SelectItem::ExprWithAliases { .. } => {
                    return unknown("multiple aliases for one expression")
                }
                SelectItem::Wildcard(opts) => {
                    let (except, ilike) = wildcard_options(opts)?;
                    let rels = self.frames.last().map_or(&[][..], |f| f.rels.as_slice());
                    if rels.is_empty() {
                        return unknown("SELECT * without FROM");
                    }
                    for rel in rels {
                        items.extend(rel.expand(&except, ilike)?);
                    }
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(n),
                    opts,
                ) => {
                    let (except, ilike) = wildcard_options(opts)?;
                    let rels = self.qualified_rels(n)?;
                    for rel in rels {
                        items.extend(rel.expand(&except, ilike)?);
                    }
                }
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::Expr(_), _) => {
                    return unknown("wildcard over an expression")
                }
            }
            if items.len() > MAX_ITEMS {
                return unknown("projection too wide");
            }
        }
        let items = merge_adjacent_wildcards(items);

        for expr in [
            &select.selection,
            &select.prewhere,
            &select.having,
            &select.qualify,
        ]
        .into_iter()
        .flatten()
        {
            self.predicate(expr)?;
        }
        for condition in conditions {
            self.join_condition(condition)?;
        }
        if let Some(Distinct::On(exprs)) = &select.distinct {
            for expr in exprs {
                self.grouping(expr, &items)?;
            }
        }
        match &select.group_by {
            GroupByExpr::All(_) => items
                .iter()
                .for_each(|i| i.add_sources(&mut self.predicates)),
            GroupByExpr::Expressions(exprs, modifiers) => {
                for expr in exprs {
                    self.grouping(expr, &items)?;
                }
                for modifier in modifiers {
                    if let GroupByWithModifier::GroupingSets(expr) = modifier {
                        self.predicate(expr)?;
                    }
                }
            }
        }
        if let Some(order_by) = order_by {
            self.order_by(order_by, &items)?;
        }
        Ok(items)
    }

    /// A projection column; its name becomes a lateral alias for later items and clauses.
    fn column(&mut self, name: String, t: Traced) -> OutputItem {
        if let Some(frame) = self.frames.last_mut() {
            frame.aliases.push((name.clone(), t.clone()));
        }
        OutputItem::Column {
            name,
            sources: t.sources,
            transformed: t.transformed,
        }
    }

    /// The relations of the current `FROM` a `q.*` (or `schema.table.*`) names.
    fn qualified_rels(&self, name: &ObjectName) -> Res<Vec<Rel>> {
        let parts = match object_parts(name) {
            NameParts::Parts(parts) => parts,
            NameParts::Dynamic => return unknown("IDENTIFIER() name"),
        };
        let rels = self.frames.last().map_or(&[][..], |f| f.rels.as_slice());
        let found: Vec<Rel> = match parts.as_slice() {
            [one] => rels
                .iter()
                .filter(|r| r.qualifier.as_deref() == Some(one.as_str()))
                .cloned()
                .collect(),
            [_, _] | [_, _, _] => {
                let table = TableName::resolve(&parts, self.ctx);
                rels.iter()
                    .filter(|r| r.base_table() == table.as_ref())
                    .cloned()
                    .collect()
            }
            _ => Vec::new(),
        };
        if found.is_empty() {
            return unknown("wildcard over an unknown relation");
        }
        Ok(found)
    }

    /// Adds a relation and its joins to `rels`, and their join conditions to `conditions`.
    fn add_joined<'a>(
        &mut self,
        from: &'a TableWithJoins,
        rels: &mut Vec<Rel>,
        conditions: &mut Vec<JoinCondition<'a>>,
    ) -> Res<()> {
        let start = rels.len();
        self.add_relation(&from.relation, rels, conditions)?;
        for join in &from.joins {
            let right = rels.len();
            self.add_relation(&join.relation, rels, conditions)?;
            join_conditions(
                &join.join_operator,
                start..right,
                right..rels.len(),
                conditions,
            )?;
        }
        Ok(())
    }

    fn add_relation<'a>(
        &mut self,
        factor: &'a TableFactor,
        rels: &mut Vec<Rel>,
        conditions: &mut Vec<JoinCondition<'a>>,
    ) -> Res<()> {
        match factor {
            TableFactor::Table {
                name,
                alias,
                args,
                json_path,
                ..
            } => {
                if args.is_some() {
                    return unknown("table function in FROM");
                }
                if json_path.is_some() {
                    return unknown("JSON path in FROM");
                }
                if name
                    .0
                    .iter()
                    .any(|p| matches!(p, ObjectNamePart::Function(_)))
                {
                    return unknown("IDENTIFIER() table name");
                }
                let alias_name = alias.as_ref().map(|a| fold(&a.name));
                let alias_columns = alias.as_ref().map_or(&[][..], |a| a.columns.as_slice());
                if let [ObjectNamePart::Identifier(ident)] = name.0.as_slice() {
                    let folded = fold(ident);
                    if let Some((_, def)) = self.ctes.iter().rev().find(|(n, _)| *n == folded) {
                        let items = rename(def.clone()?, alias_columns)?;
                        rels.push(Rel {
                            qualifier: Some(alias_name.unwrap_or(folded)),
                            columns: Columns::Derived(items),
                        });
                        return Ok(());
                    }
                }
                match resolve_object(name, self.ctx) {
                    Resolved::Table(table) => {
                        if !alias_columns.is_empty() {
                            return unknown("column alias list on a table");
                        }
                        rels.push(Rel {
                            qualifier: Some(alias_name.unwrap_or_else(|| table.table.clone())),
                            columns: Columns::Base(table),
                        });
                        Ok(())
                    }
                    Resolved::Stage(_) => unknown("stage in FROM"),
                    Resolved::Unresolved => unknown("unresolved table name"),
                }
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                ..
            } => {
                if *lateral {
                    return unknown("LATERAL subquery");
                }
                let items = self.query(subquery)?;
                let items = rename(
                    items,
                    alias.as_ref().map_or(&[][..], |a| a.columns.as_slice()),
                )?;
                rels.push(Rel {
                    qualifier: alias.as_ref().map(|a| fold(&a.name)),
                    columns: Columns::Derived(items),
                });
                Ok(())
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                if alias.is_some() {
                    return unknown("alias on a parenthesised join");
                }
                self.add_joined(table_with_joins, rels, conditions)
            }
            TableFactor::Pivot { .. } => unknown("PIVOT"),
            TableFactor::Unpivot { .. } | TableFactor::UnpivotExpr { .. } => unknown("UNPIVOT"),
            TableFactor::MatchRecognize { .. } => unknown("MATCH_RECOGNIZE"),
            TableFactor::Function { .. }
            | TableFactor::TableFunction { .. }
            | TableFactor::UNNEST { .. } => {
                unknown("table function in FROM (LATERAL FLATTEN, TABLE(…))")
            }
            _ => unknown("unsupported FROM item"),
        }
    }

    /// Traces an expression: every base column it may be derived from, subqueries included
    /// (their own predicates are recorded on the way).
    fn trace(&mut self, expr: &Expr) -> Res<Traced> {
        let mut visitor = ExprTracer {
            tracer: self,
            nested: 0,
            sources: BTreeSet::new(),
            skip: Vec::new(),
            exists: Vec::new(),
            error: None,
        };
        let _ = expr.visit(&mut visitor);
        if let Some(reason) = visitor.error {
            return Err(reason);
        }
        let sources = visitor.sources;
        let transformed = match pure_ref(expr) {
            Some(Expr::Identifier(ident)) => self
                .resolve_unqualified(ident)?
                .is_some_and(|t| t.transformed),
            Some(Expr::CompoundIdentifier(idents)) => self.resolve_qualified(idents)?.transformed,
            _ => true,
        };
        Ok(Traced {
            sources,
            transformed,
        })
    }

    /// Every base column the current `FROM` may provide (`*` in a function, `$1`).
    fn frame_columns(&self, out: &mut BTreeSet<ColumnRef>) {
        if let Some(frame) = self.frames.last() {
            frame.rels.iter().for_each(|r| r.all_columns(out));
        }
    }

    /// An unqualified column: looked up in every relation of the innermost scope and in its
    /// projection aliases; outer scopes are searched too unless a traced projection or alias
    /// certainly has the name (a base table only might). `None`: no relation has it (a lambda
    /// parameter, say).
    fn resolve_unqualified(&self, ident: &Ident) -> Res<Option<Traced>> {
        let name = fold(ident);
        if is_positional(&name) {
            let mut sources = BTreeSet::new();
            self.frame_columns(&mut sources);
            return Ok(Some(Traced {
                sources,
                transformed: true,
            }));
        }
        let mut acc = None;
        for frame in self.frames.iter().rev() {
            let mut definite = false;
            for rel in &frame.rels {
                if let Some((t, d)) = rel.lookup(&name) {
                    merge(&mut acc, t);
                    definite |= d;
                }
            }
            for (alias, t) in &frame.aliases {
                if *alias == name {
                    merge(&mut acc, t.clone());
                    definite = true;
                }
            }
            if definite {
                break;
            }
        }
        if acc.is_none() && ident.quote_style.is_some() {
            return unknown("unresolved quoted column name");
        }
        Ok(acc)
    }

    /// `q.col`, `schema.table.col`, `db.schema.table.col`.
    fn resolve_qualified(&self, idents: &[Ident]) -> Res<Traced> {
        let folded: Vec<String> = idents.iter().map(fold).collect();
        let Some((column, qualifier)) = folded.split_last() else {
            return unknown("empty column name");
        };
        let table = match qualifier.len() {
            0 => {
                return Ok(match idents.first() {
                    Some(ident) => self.resolve_unqualified(ident)?.unwrap_or_default(),
                    None => Traced::default(),
                })
            }
            1 => None,
            2 | 3 => TableName::resolve(qualifier, self.ctx),
            _ => return unknown("column name with too many parts"),
        };
        for frame in self.frames.iter().rev() {
            let rels: Vec<&Rel> = frame
                .rels
                .iter()
                .filter(|r| match qualifier {
                    [one] => r.qualifier.as_deref() == Some(one.as_str()),
                    _ => table.is_some() && r.base_table() == table.as_ref(),
                })
                .collect();
            if rels.is_empty() {
                continue;
            }
            let mut acc = None;
            for rel in rels {
                if is_positional(column) {
                    let mut sources = BTreeSet::new();
                    rel.all_columns(&mut sources);
                    merge(
                        &mut acc,
                        Traced {
                            sources,
                            transformed: true,
                        },
                    );
                    continue;
                }
                match rel.lookup(column) {
                    Some((t, _)) => merge(&mut acc, t),
                    None => return unknown("column not found in a subquery or CTE"),
                }
            }
            return Ok(acc.unwrap_or_default());
        }
        unknown("unresolved column qualifier")
    }
}

/// Combines the branches of a set operation: output column i is derived from column i of
/// every branch.
fn combine(left: Vec<OutputItem>, right: Vec<OutputItem>) -> Res<Vec<OutputItem>> {
    if left.len() != right.len() {
        return unknown("set operation branches of different widths");
    }
    left.into_iter()
        .zip(right)
        .map(|pair| match pair {
            (
                OutputItem::Column {
                    name,
                    mut sources,
                    transformed,
                },
                OutputItem::Column {
                    sources: more,
                    transformed: t2,
                    ..
                },
            ) => {
                sources.extend(more);
                Ok(OutputItem::Column {
                    name,
                    sources,
                    transformed: transformed || t2,
                })
            }
            _ => unknown("set operation over a wildcard"),
        })
        .collect()
}

/// Records the join condition of `op`, a join of relations `right` to relations `left`.
fn join_conditions<'a>(
    op: &'a JoinOperator,
    left: Range<usize>,
    right: Range<usize>,
    out: &mut Vec<JoinCondition<'a>>,
) -> Res<()> {
    let constraint = match op {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c)
        | JoinOperator::CrossJoin(c)
        | JoinOperator::Semi(c)
        | JoinOperator::LeftSemi(c)
        | JoinOperator::RightSemi(c)
        | JoinOperator::Anti(c)
        | JoinOperator::LeftAnti(c)
        | JoinOperator::RightAnti(c)
        | JoinOperator::StraightJoin(c) => c,
        JoinOperator::AsOf {
            match_condition,
            constraint,
        } => {
            out.push(JoinCondition::On(match_condition));
            constraint
        }
        JoinOperator::CrossApply | JoinOperator::OuterApply => return unknown("APPLY join"),
        _ => return unknown("unsupported join"),
    };
    match constraint {
        JoinConstraint::On(expr) => out.push(JoinCondition::On(expr)),
        JoinConstraint::Using(names) | JoinConstraint::UsingAlias(names, _) => {
            let names = names
                .iter()
                .map(|name| match name.0.as_slice() {
                    [ObjectNamePart::Identifier(ident)] => Ok(fold(ident)),
                    _ => unknown("qualified or dynamic USING column"),
                })
                .collect::<Res<_>>()?;
            out.push(JoinCondition::Using { left, right, names });
        }
        JoinConstraint::Natural => out.push(JoinCondition::Natural { left, right }),
        JoinConstraint::None => {}
    }
    Ok(())
}

/// Walks one expression (not descending into its subqueries, which are traced as queries)
/// and collects the base columns it may be derived from.
struct ExprTracer<'t, 'c> {
    tracer: &'t mut Tracer<'c>,
    /// Depth inside subqueries of the expression: only depth 0 is this scope.
    nested: usize,
    sources: BTreeSet<ColumnRef>,
    /// Identifiers that are keywords, not columns (`DATEADD(day, …)`); compared by address.
    skip: Vec<*const Expr>,
    /// `EXISTS (…)` subqueries: their projection is not a value.
    exists: Vec<*const Query>,
    error: Option<String>,
}

impl ExprTracer<'_, '_> {
    fn expr(&mut self, expr: &Expr) -> Res<()> {
        match expr {
            Expr::Identifier(ident) => {
                if self.skip.iter().any(|p| std::ptr::eq(*p, expr)) {
                    return Ok(());
                }
                if let Some(t) = self.tracer.resolve_unqualified(ident)? {
                    self.sources.extend(t.sources);
                }
            }
            Expr::CompoundIdentifier(idents) => {
                let t = self.tracer.resolve_qualified(idents)?;
                self.sources.extend(t.sources);
            }
            Expr::Function(function) => self.function(function)?,
            Expr::Exists { subquery, .. } => self.exists.push(&**subquery as *const Query),
            Expr::Wildcard(_) => self.tracer.frame_columns(&mut self.sources),
            Expr::QualifiedWildcard(name, _) => {
                for rel in self.tracer.qualified_rels(name)? {
                    rel.all_columns(&mut self.sources);
                }
            }
            Expr::Value(v) => {
                if let Value::Placeholder(p) = &v.value {
                    if is_positional(p) {
                        self.tracer.frame_columns(&mut self.sources);
                    }
                }
            }
            Expr::MatchAgainst { .. } => return unknown("MATCH AGAINST"),
            _ => {}
        }
        Ok(())
    }

    fn function(&mut self, function: &Function) -> Res<()> {
        let name = match function.name.0.last() {
            Some(ObjectNamePart::Identifier(ident)) => ident.value.to_ascii_uppercase(),
            Some(ObjectNamePart::Function(_)) => return unknown("IDENTIFIER() function name"),
            None => String::new(),
        };
        if name == "IDENTIFIER" && function.name.0.len() == 1 {
            return unknown("IDENTIFIER() column reference");
        }
        let FunctionArguments::List(list) = &function.args else {
            return Ok(());
        };
        let date_part_at = match name.as_str() {
            n if DATE_PART_FUNCTIONS.contains(&n) => Some(0),
            "LAST_DAY" => Some(1),
            _ => None,
        };
        if let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(arg @ Expr::Identifier(ident)))) =
            date_part_at.and_then(|i| list.args.get(i))
        {
            if ident.quote_style.is_none()
                && DATE_PARTS.contains(&ident.value.to_ascii_uppercase().as_str())
            {
                self.skip.push(arg as *const Expr);
            }
        }
        if name == "COUNT" {
            // COUNT(*) counts rows; it carries no column's value.
            return Ok(());
        }
        for arg in &list.args {
            let arg = match arg {
                FunctionArg::Named { arg, .. }
                | FunctionArg::ExprNamed { arg, .. }
                | FunctionArg::Unnamed(arg) => arg,
            };
            match arg {
                FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {
                    self.tracer.frame_columns(&mut self.sources)
                }
                FunctionArgExpr::QualifiedWildcard(name) => {
                    for rel in self.tracer.qualified_rels(name)? {
                        rel.all_columns(&mut self.sources);
                    }
                }
                FunctionArgExpr::Expr(_) => {}
            }
        }
        Ok(())
    }
}

impl Visitor for ExprTracer<'_, '_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if self.nested == 0 {
            match self.tracer.query(query) {
                Ok(items) => {
                    let exists = self.exists.iter().any(|p| std::ptr::eq(*p, query));
                    if !exists {
                        items.iter().for_each(|i| i.add_sources(&mut self.sources));
                    }
                }
                Err(reason) => {
                    self.error = Some(reason);
                    return ControlFlow::Break(());
                }
            }
        }
        self.nested += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.nested = self.nested.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if self.nested > 0 {
            return ControlFlow::Continue(());
        }
        match self.expr(expr) {
            Ok(()) => ControlFlow::Continue(()),
            Err(reason) => {
                self.error = Some(reason);
                ControlFlow::Break(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sqlparser::dialect::SnowflakeDialect;
    use sqlparser::parser::Parser;

    use super::*;

    fn expr(text: &str) -> Expr {
        Parser::new(&SnowflakeDialect {})
            .try_with_sql(text)
            .and_then(|mut p| p.parse_expr())
            .unwrap()
    }

    #[test]
    fn equi_join_conjuncts_are_dropped() {
        // Dropped from the plain predicates: bare `a = b` comparisons of two column references
        // are set apart, and only dropped when lineage shows both sides are table columns.
        let e = expr("(a.x = b.x) AND a.y = b.y AND (a.z > 1 OR a.w = b.w) AND UPPER(a.v) = b.v");
        let (mut equi, mut out) = (Vec::new(), Vec::new());
        split_join_condition(&e, &mut equi, &mut out);
        let shown: Vec<String> = out.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["a.z > 1 OR a.w = b.w", "UPPER(a.v) = b.v"]);
        let pairs: Vec<String> = equi.iter().map(|(l, r)| format!("{l} = {r}")).collect();
        assert_eq!(pairs, ["a.x = b.x", "a.y = b.y"]);
    }

    #[test]
    fn comparison_operands_cover_every_comparison() {
        let n = |text: &str| comparison_operands(&expr(text)).map(|o| o.len());
        assert_eq!(n("a.x = 'k'"), Some(2));
        assert_eq!(n("(a.x >= b.y)"), Some(2));
        assert_eq!(n("a.x IS NOT DISTINCT FROM b.y"), Some(2));
        assert_eq!(n("a.x LIKE 'k%'"), Some(2));
        assert_eq!(n("a.x BETWEEN 'a' AND 'b'"), Some(3));
        assert_eq!(n("a.x IN ('a', 'b', 'c')"), Some(4));
        assert_eq!(n("a.x IN (SELECT 'a')"), Some(2));
        assert_eq!(n("a.x = ANY (SELECT 'a')"), Some(2));
        assert_eq!(n("a.x = 'k' OR a.y = 'j'"), None);
        assert_eq!(n("UPPER(a.x)"), None);
    }

    #[test]
    fn positions_after_a_wildcard_may_be_anything_from_it_on() {
        let t = TableName::new("D", "S", "T");
        let c = |name: &str| OutputItem::Column {
            name: name.into(),
            sources: BTreeSet::from([ColumnRef {
                table: Some(t.clone()),
                column: name.into(),
            }]),
            transformed: false,
        };
        let items = [
            c("A"),
            OutputItem::Wildcard {
                tables: vec![t.clone()],
                except: BTreeSet::new(),
            },
            c("B"),
        ];
        let at = |p| {
            let mut out = BTreeSet::new();
            positional_sources(&items, p, &mut out);
            out.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        assert_eq!(at(1), ["D.S.T.A"]);
        assert_eq!(at(2), ["D.S.T.*", "D.S.T.B"]);
        assert_eq!(at(9), ["D.S.T.*", "D.S.T.B"]);
        assert!(at(0).contains(&"D.S.T.A".to_string()));
    }

    #[test]
    fn positional_names() {
        assert!(is_positional("$1") && is_positional("$42"));
        assert!(!is_positional("$") && !is_positional("$a") && !is_positional("1"));
    }
}
