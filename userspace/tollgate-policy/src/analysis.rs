//! SQL analysis: what a statement text does, in terms policy can judge — statement kinds, the
//! tables each statement reads and writes (resolved to `DB.SCHEMA.TABLE`), the data sources it
//! reads that have no table name ([`OpaqueSource`]: `RESULT_SCAN`, table functions, stages in
//! `FROM`), the columns it names (best effort), stage operations, `USE` targets, and whether
//! anything depends on a bind value.
//!
//! Parsing is `sqlparser`'s Snowflake dialect, behind a pre-scanner (`prescan`) that
//! splits statements and classifies `GET` / `PUT`. Anything the parser rejects is
//! [`AnalysisError::Unparseable`]: the caller fails closed. The analysis is an
//! over-approximation where it has to guess: a name that might be a table is a table.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::ControlFlow;

use serde::Serialize;
use sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, ObjectName, ObjectNamePart, Query, Select,
    SelectItem, SelectItemQualifiedWildcardKind, Statement, TableFactor, Value, Visit, Visitor,
};
use sqlparser::dialect::SnowflakeDialect;
use sqlparser::parser::Parser;

use crate::lineage::{statement_lineage, StatementLineage};
use crate::names::{fold_ident, split_dotted, ColumnRef, NameContext, TableName};
use crate::prescan::{file_transfer_operands, split_statements};

/// `EXECUTE IMMEDIATE '…'` is analysed recursively; deeper nesting than this is refused.
const MAX_NESTING: usize = 4;

/// Why a statement text could not be analysed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnalysisError {
    /// The text is not SQL this analyser understands (a syntax error, an unterminated string,
    /// nesting too deep). Policy treats it per `defaults.unparseable_sql`, deny by default.
    #[error("unparseable SQL: {message}")]
    Unparseable {
        /// The parser's message. It may quote a fragment of the text: do not log it where
        /// literals must not appear.
        message: String,
    },
}

/// The result of [`analyze`]: one entry per statement, in text order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Analysis {
    /// The statements of the text.
    pub statements: Vec<StatementInfo>,
}

/// What one statement does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementInfo {
    /// Its kind.
    pub kind: StatementKind,
    /// Tables and views it reads (CTE names excluded, subqueries included).
    pub reads: BTreeSet<TableName>,
    /// Tables and views it creates, changes or drops.
    pub writes: BTreeSet<TableName>,
    /// Data sources it reads that are not named tables (subqueries and CTEs included): the
    /// result of an earlier query, a table function, a stage. Policy cannot tell what data
    /// they hold, so it fails closed on them (see [`OpaqueSource`]).
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub opaque_sources: BTreeSet<OpaqueSource>,
    /// Columns it names, best effort: qualified when the table is known, `*` for wildcards.
    pub columns: BTreeSet<ColumnRef>,
    /// Stage operations (loads, unloads, file transfers, stage creation).
    pub stage_ops: Vec<StageOp>,
    /// For `USE …`: what it switches to.
    pub use_target: Option<UseTarget>,
    /// For `CALL`: the procedure, resolved like a table name.
    pub routine: Option<TableName>,
    /// Some object name depends on a bind value or dynamic text (`IDENTIFIER(?)`,
    /// `EXECUTE IMMEDIATE :sql`) or could not be resolved statically. Policy treats such a
    /// statement per `defaults.unresolved_bindings`, deny by default.
    pub unresolved_bindings: bool,
    /// For `SELECT`-kind statements: where each result column comes from, and which columns
    /// the query filters, sorts or groups on (see [`crate::lineage`]). `None` for other kinds.
    pub lineage: Option<StatementLineage>,
    /// For `UPDATE`: the columns its `SET` values are computed from, subqueries included
    /// (best effort, like `columns`: qualified when the table is known, `*` for a wildcard).
    /// Empty for other kinds.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub set_sources: BTreeSet<ColumnRef>,
}

impl StatementInfo {
    fn new(kind: StatementKind) -> Self {
        Self {
            kind,
            reads: BTreeSet::new(),
            writes: BTreeSet::new(),
            opaque_sources: BTreeSet::new(),
            columns: BTreeSet::new(),
            stage_ops: Vec::new(),
            use_target: None,
            routine: None,
            unresolved_bindings: false,
            lineage: None,
            set_sources: BTreeSet::new(),
        }
    }

    /// Every table the statement touches (reads and writes).
    pub fn tables(&self) -> impl Iterator<Item = &TableName> {
        self.reads.iter().chain(self.writes.difference(&self.reads))
    }
}

/// A data source in `FROM` whose data the analysis cannot name as tables, so that neither a
/// rule's `tables` nor column lineage can account for it. Policy fails closed on it: a
/// permissive rule matches a statement with an opaque source only if its `match.sources`
/// names that source, a restrictive rule's `tables` / `columns` / `tags` count it as a match,
/// and it may hold classified data (`defaults.unknown_lineage`, `defaults.classified_copies`).
///
/// Not opaque: table functions whose rows are computed from their arguments alone —
/// `GENERATOR`, `FLATTEN`, `SPLIT_TO_TABLE`, `STRTOK_SPLIT_TO_TABLE` (unqualified, unquoted)
/// and `UNNEST` — since whatever their arguments read (a lateral column, a subquery) is
/// analysed like any other expression. `TABLE('<name>')` is the table it names, and
/// `TABLE($var)` / `TABLE(?)` an unresolved binding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OpaqueSource {
    /// `TABLE(RESULT_SCAN(…))`: the result of an earlier query of the user (by id or
    /// `LAST_QUERY_ID()`), which Tollgate may have masked when it was returned.
    ResultScan,
    /// Another table function (`TABLE(f(…))`, `f(…)` or `LATERAL f(…)` in `FROM`): a UDTF,
    /// `INFORMATION_SCHEMA.QUERY_HISTORY`, `INFER_SCHEMA`, … Its rows come from data the
    /// analysis cannot see.
    TableFunction {
        /// The function name as written, folded (`MY_UDTF`, `INFORMATION_SCHEMA.QUERY_HISTORY`).
        name: String,
    },
    /// A stage read directly in `FROM` (`SELECT $1 FROM @my_stage`, `@~/file.csv`, `@%t`).
    Stage {
        /// The stage and path as written (`@my_stage/path/`).
        stage: String,
    },
}

impl OpaqueSource {
    /// The name policy rules match with `match.sources` globs: `RESULT_SCAN`,
    /// `TABLE(<function>)`, or the stage as written (`@my_stage/path/`).
    pub fn label(&self) -> String {
        match self {
            Self::ResultScan => "RESULT_SCAN".into(),
            Self::TableFunction { name } => format!("TABLE({name})"),
            Self::Stage { stage } => stage.clone(),
        }
    }
}

impl fmt::Display for OpaqueSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// Table functions whose rows are computed from their arguments alone (called unqualified and
/// unquoted): they read no data of their own.
const PURE_TABLE_FUNCTIONS: &[&str] = &[
    "GENERATOR",
    "FLATTEN",
    "SPLIT_TO_TABLE",
    "STRTOK_SPLIT_TO_TABLE",
];

/// What a statement is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StatementKind {
    /// `SELECT` (and `WITH … SELECT`, `VALUES`, set operations).
    Select,
    /// `INSERT … VALUES`.
    Insert,
    /// `INSERT … SELECT`: copies data between tables.
    InsertSelect,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `MERGE`.
    Merge,
    /// `CREATE TABLE` with column definitions (or `LIKE`).
    CreateTable,
    /// `CREATE TABLE … AS SELECT` or `CREATE TABLE … CLONE`: copies data.
    CreateTableAsSelect,
    /// `CREATE VIEW` (materialised or not).
    CreateView,
    /// `DROP …`.
    Drop,
    /// `ALTER …`.
    Alter,
    /// `TRUNCATE`.
    Truncate,
    /// `COPY INTO <table>`: load from a stage or location.
    CopyIntoTable,
    /// `COPY INTO @stage | 'url'`: unload to a stage or location.
    CopyIntoLocation,
    /// `GET @stage file://…`: download staged files to the client.
    Get,
    /// `PUT file://… @stage`: upload client files to a stage.
    Put,
    /// `CREATE STAGE`.
    CreateStage,
    /// `USE …`.
    Use(UseKind),
    /// `SHOW …`.
    Show,
    /// `DESCRIBE` / `DESC` an object.
    Describe,
    /// `CALL procedure(…)`.
    Call,
    /// `EXECUTE IMMEDIATE …`.
    ExecuteImmediate,
    /// `SET` / `UNSET` of variables or parameters.
    Set,
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT`.
    Commit,
    /// `ROLLBACK`.
    Rollback,
    /// `GRANT`.
    Grant,
    /// `REVOKE`.
    Revoke,
    /// `EXPLAIN <statement>`.
    Explain,
    /// A statement the parser knows but this list does not name; the payload is its leading
    /// keywords (`CREATE SCHEMA`).
    Other(String),
    /// Reserved for statements nobody recognised; the analyser reports those as
    /// [`AnalysisError::Unparseable`] today, and policy treats both per its defaults.
    Unknown,
}

/// What a `USE` statement switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UseKind {
    /// `USE DATABASE x` / `USE x`.
    Database,
    /// `USE SCHEMA [db.]x` / `USE db.x`.
    Schema,
    /// `USE WAREHOUSE x`.
    Warehouse,
    /// `USE ROLE x`: a change of privileges.
    Role,
    /// `USE SECONDARY ROLES …`: a change of privileges.
    SecondaryRoles,
}

impl StatementKind {
    /// The snake_case name used in policy files (`insert_select`, `use_role`, `other`).
    pub fn policy_name(&self) -> &'static str {
        match self {
            Self::Select => "select",
            Self::Insert => "insert",
            Self::InsertSelect => "insert_select",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Merge => "merge",
            Self::CreateTable => "create_table",
            Self::CreateTableAsSelect => "create_table_as_select",
            Self::CreateView => "create_view",
            Self::Drop => "drop",
            Self::Alter => "alter",
            Self::Truncate => "truncate",
            Self::CopyIntoTable => "copy_into_table",
            Self::CopyIntoLocation => "copy_into_location",
            Self::Get => "get",
            Self::Put => "put",
            Self::CreateStage => "create_stage",
            Self::Use(UseKind::Database) => "use_database",
            Self::Use(UseKind::Schema) => "use_schema",
            Self::Use(UseKind::Warehouse) => "use_warehouse",
            Self::Use(UseKind::Role) => "use_role",
            Self::Use(UseKind::SecondaryRoles) => "use_secondary_roles",
            Self::Show => "show",
            Self::Describe => "describe",
            Self::Call => "call",
            Self::ExecuteImmediate => "execute_immediate",
            Self::Set => "set",
            Self::Begin => "begin",
            Self::Commit => "commit",
            Self::Rollback => "rollback",
            Self::Grant => "grant",
            Self::Revoke => "revoke",
            Self::Explain => "explain",
            Self::Other(_) => "other",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for StatementKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(name) => write!(f, "other({name})"),
            kind => f.write_str(kind.policy_name()),
        }
    }
}

impl Serialize for StatementKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The target of a `USE` statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UseTarget {
    /// What is switched.
    pub kind: UseKind,
    /// The folded name (`CLINICAL`, `CLINICAL.EHR`, `ANALYST`); for secondary roles, `ALL`,
    /// `NONE` or the role list as written.
    pub name: String,
}

/// A stage operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageOp {
    /// Direction.
    pub op: StageOpKind,
    /// The stage or location as written (`@CLINICAL.PUBLIC.EXPORTS/x/`, `'s3://…'`); empty when
    /// the statement did not name one.
    pub stage: String,
    /// The client-side file for `GET` / `PUT`.
    pub local_file: Option<String>,
}

/// The direction of a stage operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageOpKind {
    /// Data flows from a stage into a table (`COPY INTO <table>`, `SELECT … FROM @stage`).
    Load,
    /// Data flows from tables to a stage or location (`COPY INTO @stage`).
    Unload,
    /// `PUT`: client file → stage.
    Upload,
    /// `GET`: stage → client file.
    Download,
    /// `CREATE STAGE`.
    Create,
}

/// Analyses `sql` (one or more statements) with names resolved against `ctx`. A `USE` in the
/// text changes the context for the statements after it, as it would in the session.
pub fn analyze(sql: &str, ctx: &NameContext) -> Result<Analysis, AnalysisError> {
    let mut ctx = ctx.clone();
    let mut statements = Vec::new();
    analyze_into(sql, &mut ctx, 0, &mut statements)?;
    Ok(Analysis { statements })
}

fn unparseable(message: impl Into<String>) -> AnalysisError {
    AnalysisError::Unparseable {
        message: message.into(),
    }
}

fn analyze_into(
    sql: &str,
    ctx: &mut NameContext,
    depth: usize,
    out: &mut Vec<StatementInfo>,
) -> Result<(), AnalysisError> {
    if depth > MAX_NESTING {
        return Err(unparseable("EXECUTE IMMEDIATE nested too deeply"));
    }
    let dialect = SnowflakeDialect {};
    for chunk in split_statements(sql).map_err(unparseable)? {
        match chunk.first_word.as_str() {
            "GET" => {
                let (stage, file) = file_transfer_operands(chunk.text)
                    .ok_or_else(|| unparseable("GET needs a stage and a file URI"))?;
                let mut info = StatementInfo::new(StatementKind::Get);
                info.stage_ops.push(StageOp {
                    op: StageOpKind::Download,
                    stage,
                    local_file: Some(file),
                });
                out.push(info);
            }
            "PUT" => {
                let (file, stage) = file_transfer_operands(chunk.text)
                    .ok_or_else(|| unparseable("PUT needs a file URI and a stage"))?;
                let mut info = StatementInfo::new(StatementKind::Put);
                info.stage_ops.push(StageOp {
                    op: StageOpKind::Upload,
                    stage,
                    local_file: Some(file),
                });
                out.push(info);
            }
            _ => {
                let parsed = Parser::parse_sql(&dialect, chunk.text)
                    .map_err(|e| unparseable(e.to_string()))?;
                for statement in &parsed {
                    analyze_statement(statement, ctx, depth, out)?;
                }
            }
        }
    }
    Ok(())
}

/// Analyses one parsed statement and pushes it to `out`, followed by the statements of an
/// `EXECUTE IMMEDIATE '…'` text, so that those are decided too.
fn analyze_statement(
    statement: &Statement,
    ctx: &mut NameContext,
    depth: usize,
    out: &mut Vec<StatementInfo>,
) -> Result<(), AnalysisError> {
    let mut nested = Vec::new();
    let mut info = StatementInfo::new(StatementKind::Unknown);
    // Write targets that are table factors: the collector must not count them as reads.
    let mut targets: Vec<&TableFactor> = Vec::new();
    let mut explicit_reads: Vec<&ObjectName> = Vec::new();
    let mut write_names: Vec<&ObjectName> = Vec::new();
    // `UPDATE … SET col = <value>`: the values, to tell the columns they are computed from.
    let mut set_values: Vec<&Expr> = Vec::new();
    info.kind = match statement {
        Statement::Query(_) => StatementKind::Select,
        Statement::Insert(insert) => {
            match &insert.table {
                ast::TableObject::TableName(name) => write_names.push(name),
                _ => info.unresolved_bindings = true,
            }
            match insert.source.as_deref() {
                Some(q) if matches!(&*q.body, ast::SetExpr::Values(_)) && q.with.is_none() => {
                    StatementKind::Insert
                }
                Some(_) => StatementKind::InsertSelect,
                None => StatementKind::Insert,
            }
        }
        Statement::Update(update) => {
            targets.push(&update.table.relation);
            set_values.extend(update.assignments.iter().map(|a| &a.value));
            StatementKind::Update
        }
        Statement::Delete(delete) => {
            let from = match &delete.from {
                ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
            };
            targets.extend(from.iter().map(|t| &t.relation));
            write_names.extend(delete.tables.iter());
            StatementKind::Delete
        }
        Statement::Merge(merge) => {
            targets.push(&merge.table);
            StatementKind::Merge
        }
        Statement::CreateTable(create) => {
            write_names.push(&create.name);
            if let Some(clone) = &create.clone {
                explicit_reads.push(clone);
                StatementKind::CreateTableAsSelect
            } else if create.query.is_some() {
                StatementKind::CreateTableAsSelect
            } else {
                StatementKind::CreateTable
            }
        }
        Statement::CreateView(view) => {
            write_names.push(&view.name);
            StatementKind::CreateView
        }
        Statement::Drop {
            object_type, names, ..
        } => {
            if matches!(
                object_type,
                ast::ObjectType::Table | ast::ObjectType::View | ast::ObjectType::MaterializedView
            ) {
                write_names.extend(names.iter());
            }
            StatementKind::Drop
        }
        Statement::AlterTable(alter) => {
            write_names.push(&alter.name);
            StatementKind::Alter
        }
        Statement::AlterView(alter) => {
            write_names.push(&alter.name);
            StatementKind::Alter
        }
        Statement::AlterSchema(_)
        | Statement::AlterIndex { .. }
        | Statement::AlterFunction(_)
        | Statement::AlterType(_)
        | Statement::AlterRole { .. }
        | Statement::AlterPolicy(_)
        | Statement::AlterSession { .. }
        | Statement::AlterUser(_)
        | Statement::AlterConnector { .. } => StatementKind::Alter,
        Statement::Truncate(truncate) => {
            write_names.extend(truncate.table_names.iter().map(|t| &t.name));
            StatementKind::Truncate
        }
        Statement::CopyIntoSnowflake {
            kind,
            into,
            from_obj,
            stage_params,
            ..
        } => match kind {
            ast::CopyIntoSnowflakeKind::Table => {
                write_names.push(into);
                let stage = from_obj
                    .as_ref()
                    .map(ToString::to_string)
                    .or_else(|| stage_params.url.clone())
                    .unwrap_or_default();
                info.stage_ops.push(StageOp {
                    op: StageOpKind::Load,
                    stage,
                    local_file: None,
                });
                StatementKind::CopyIntoTable
            }
            ast::CopyIntoSnowflakeKind::Location => {
                if let Some(from) = from_obj {
                    explicit_reads.push(from);
                }
                let stage = if into.0.is_empty() {
                    stage_params.url.clone().unwrap_or_default()
                } else {
                    into.to_string()
                };
                info.stage_ops.push(StageOp {
                    op: StageOpKind::Unload,
                    stage,
                    local_file: None,
                });
                StatementKind::CopyIntoLocation
            }
        },
        Statement::Put { source, stage, .. } => {
            info.stage_ops.push(StageOp {
                op: StageOpKind::Upload,
                stage: stage.to_string(),
                local_file: Some(source.clone()),
            });
            StatementKind::Put
        }
        Statement::CreateStage {
            name, stage_params, ..
        } => {
            info.stage_ops.push(StageOp {
                op: StageOpKind::Create,
                stage: stage_params
                    .url
                    .clone()
                    .map_or_else(|| name.to_string(), |url| format!("{name} -> {url}")),
                local_file: None,
            });
            StatementKind::CreateStage
        }
        Statement::Use(target) => analyze_use(target, ctx, &mut info),
        Statement::ShowFunctions { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowProcessList { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowCharset(_)
        | Statement::ShowObjects(_)
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. } => StatementKind::Show,
        Statement::ExplainTable { table_name, .. } => {
            explicit_reads.push(table_name);
            StatementKind::Describe
        }
        Statement::Explain { .. } => StatementKind::Explain,
        Statement::Call(function) => {
            match object_parts(&function.name) {
                NameParts::Parts(parts) => info.routine = TableName::resolve(&parts, ctx),
                _ => info.unresolved_bindings = true,
            }
            if info.routine.is_none() {
                info.unresolved_bindings = true;
            }
            StatementKind::Call
        }
        Statement::Execute {
            immediate: true,
            parameters,
            ..
        } => {
            match parameters.as_slice() {
                [Expr::Value(v)] => match string_value(&v.value) {
                    Some(text) => {
                        analyze_into(text, &mut ctx.clone(), depth + 1, &mut nested)?;
                    }
                    None => info.unresolved_bindings = true,
                },
                _ => info.unresolved_bindings = true,
            }
            StatementKind::ExecuteImmediate
        }
        Statement::Set(_) => StatementKind::Set,
        Statement::StartTransaction { .. } => StatementKind::Begin,
        Statement::Commit { .. } => StatementKind::Commit,
        Statement::Rollback { .. } => StatementKind::Rollback,
        Statement::Grant(_) | Statement::GrantRole(_) => StatementKind::Grant,
        Statement::Revoke(_) | Statement::RevokeRole(_) => StatementKind::Revoke,
        other => StatementKind::Other(leading_keywords(other)),
    };

    for name in write_names {
        match resolve_object(name, ctx) {
            Resolved::Table(t) => {
                info.writes.insert(t);
            }
            Resolved::Stage(stage) => info.stage_ops.push(StageOp {
                op: StageOpKind::Unload,
                stage,
                local_file: None,
            }),
            Resolved::Unresolved => info.unresolved_bindings = true,
        }
    }
    for name in explicit_reads {
        match resolve_object(name, ctx) {
            Resolved::Table(t) => {
                info.reads.insert(t);
            }
            Resolved::Stage(_) => {}
            Resolved::Unresolved => info.unresolved_bindings = true,
        }
    }
    for target in &targets {
        if let TableFactor::Table { name, .. } = target {
            match resolve_object(name, ctx) {
                Resolved::Table(t) => {
                    info.writes.insert(t);
                }
                Resolved::Stage(_) | Resolved::Unresolved => info.unresolved_bindings = true,
            }
        }
    }

    let mut collector = Collector {
        ctx,
        targets: &targets,
        set_values: &set_values,
        in_set: 0,
        scopes: Vec::new(),
        cte_bodies: Vec::new(),
        aliases: Vec::new(),
        raw_columns: Vec::new(),
        wildcard_all: (false, false),
        qualified_wildcards: Vec::new(),
        info: &mut info,
    };
    let _ = statement.visit(&mut collector);
    collector.finish();
    if info.kind == StatementKind::Select {
        info.lineage = statement_lineage(statement, ctx);
    }

    out.push(info);
    out.append(&mut nested);
    Ok(())
}

fn analyze_use(
    target: &ast::Use,
    ctx: &mut NameContext,
    info: &mut StatementInfo,
) -> StatementKind {
    let (kind, name) = match target {
        ast::Use::Database(name) | ast::Use::Catalog(name) => (UseKind::Database, name),
        ast::Use::Schema(name) => (UseKind::Schema, name),
        ast::Use::Warehouse(name) => (UseKind::Warehouse, name),
        ast::Use::Role(name) => (UseKind::Role, name),
        ast::Use::Object(name) => {
            // Snowflake: `USE x` is a database, `USE x.y` a schema.
            if name.0.len() >= 2 {
                (UseKind::Schema, name)
            } else {
                (UseKind::Database, name)
            }
        }
        ast::Use::SecondaryRoles(roles) => {
            info.use_target = Some(UseTarget {
                kind: UseKind::SecondaryRoles,
                name: roles.to_string(),
            });
            return StatementKind::Use(UseKind::SecondaryRoles);
        }
        ast::Use::Default => {
            info.unresolved_bindings = true;
            return StatementKind::Other("USE DEFAULT".into());
        }
    };
    let parts = match object_parts(name) {
        NameParts::Parts(parts) => parts,
        _ => {
            info.unresolved_bindings = true;
            return StatementKind::Use(kind);
        }
    };
    match (kind, parts.as_slice()) {
        (UseKind::Database, [db]) => {
            ctx.database = Some(db.clone());
            // Snowflake makes PUBLIC the current schema of a newly used database.
            ctx.schema = Some("PUBLIC".into());
        }
        (UseKind::Schema, [schema]) => ctx.schema = Some(schema.clone()),
        (UseKind::Schema, [db, schema]) => {
            ctx.database = Some(db.clone());
            ctx.schema = Some(schema.clone());
        }
        (UseKind::Warehouse | UseKind::Role, [_]) => {}
        _ => info.unresolved_bindings = true,
    }
    info.use_target = Some(UseTarget {
        kind,
        name: parts.join("."),
    });
    StatementKind::Use(kind)
}

/// The first keywords of a statement (`CREATE SCHEMA`), for [`StatementKind::Other`]. Only
/// alphabetic words are kept, so no literal can leak into the name.
fn leading_keywords(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text
        .split_whitespace()
        .take(2)
        .take_while(|w| w.chars().all(|c| c.is_ascii_alphabetic() || c == '_'))
        .collect();
    if words.is_empty() {
        "?".into()
    } else {
        words.join(" ").to_ascii_uppercase()
    }
}

fn string_value(value: &Value) -> Option<&str> {
    match value {
        Value::SingleQuotedString(s) => Some(s),
        Value::DollarQuotedString(s) => Some(&s.value),
        _ => None,
    }
}

pub(crate) enum NameParts {
    /// Folded parts.
    Parts(Vec<String>),
    /// Depends on a bind value or dynamic expression.
    Dynamic,
}

/// Folds an object name's parts; resolves `IDENTIFIER('literal')`.
pub(crate) fn object_parts(name: &ObjectName) -> NameParts {
    let mut parts = Vec::with_capacity(name.0.len());
    for part in &name.0 {
        match part {
            ObjectNamePart::Identifier(ident) => {
                parts.push(fold_ident(&ident.value, ident.quote_style.is_some()))
            }
            ObjectNamePart::Function(func) => {
                let literal = match func.args.as_slice() {
                    [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))]
                        if func.name.value.eq_ignore_ascii_case("IDENTIFIER") =>
                    {
                        string_value(&v.value)
                    }
                    _ => None,
                };
                match literal.and_then(split_dotted) {
                    Some(p) => parts.extend(p),
                    None => return NameParts::Dynamic,
                }
            }
        }
    }
    NameParts::Parts(parts)
}

pub(crate) enum Resolved {
    Table(TableName),
    Stage(String),
    Unresolved,
}

pub(crate) fn resolve_object(name: &ObjectName, ctx: &NameContext) -> Resolved {
    if let Some(ObjectNamePart::Identifier(first)) = name.0.first() {
        if first.quote_style.is_none()
            && (first.value.starts_with('@') || first.value.starts_with('\''))
        {
            return Resolved::Stage(name.to_string());
        }
    }
    match object_parts(name) {
        NameParts::Parts(parts) => match TableName::resolve(&parts, ctx) {
            Some(t) => Resolved::Table(t),
            None => Resolved::Unresolved,
        },
        NameParts::Dynamic => Resolved::Unresolved,
    }
}

/// Walks a statement (subqueries in every position included) and collects table reads and
/// column references, keeping track of which names are CTEs at each point.
struct Collector<'a, 'b> {
    ctx: &'a NameContext,
    targets: &'a [&'b TableFactor],
    /// `UPDATE` `SET` values: what is visited inside them is also a `SET` source.
    set_values: &'a [&'b Expr],
    /// How many `SET` values the visit is inside (0 or 1).
    in_set: usize,
    /// Visible CTE names, innermost query last.
    scopes: Vec<Vec<String>>,
    /// CTE bodies not yet entered, with the names visible inside each.
    cte_bodies: Vec<(*const Query, Vec<String>)>,
    /// Alias (or bare table name) → table, for column qualification.
    aliases: Vec<(String, TableName)>,
    /// Column references as written: folded qualifier parts, column, and whether it is inside
    /// an `UPDATE` `SET` value.
    raw_columns: Vec<(Vec<String>, String, bool)>,
    /// `*` in some projection; the second flag: in one inside a `SET` value.
    wildcard_all: (bool, bool),
    /// `q.*` in a projection, and whether inside a `SET` value.
    qualified_wildcards: Vec<(Vec<String>, bool)>,
    info: &'a mut StatementInfo,
}

impl Collector<'_, '_> {
    fn visible(&self) -> &[String] {
        self.scopes.last().map_or(&[], Vec::as_slice)
    }

    fn table_read(&mut self, table: TableName, alias: Option<&ast::TableAlias>, is_target: bool) {
        if let Some(a) = alias {
            self.aliases.push((
                fold_ident(&a.name.value, a.name.quote_style.is_some()),
                table.clone(),
            ));
        }
        self.aliases.push((table.table.clone(), table.clone()));
        if !is_target {
            self.info.reads.insert(table);
        }
    }

    /// `SELECT … FROM @stage`: a load from the stage, and an opaque source.
    fn stage_read(&mut self, stage: String) {
        self.info.stage_ops.push(StageOp {
            op: StageOpKind::Load,
            stage: stage.clone(),
            local_file: None,
        });
        self.info
            .opaque_sources
            .insert(OpaqueSource::Stage { stage });
    }

    /// `TABLE(<expr>)`: a table function call, or (Snowflake) a table named by a string
    /// literal, a session variable or a bind value.
    fn table_function_expr(&mut self, expr: &Expr, alias: Option<&ast::TableAlias>) {
        match expr {
            Expr::Function(function) => self.table_function(&function.name),
            Expr::Value(v) => match string_value(&v.value)
                .and_then(split_dotted)
                .and_then(|parts| TableName::resolve(&parts, self.ctx))
            {
                Some(table) => self.table_read(table, alias, false),
                None => self.info.unresolved_bindings = true,
            },
            _ => self.info.unresolved_bindings = true,
        }
    }

    /// A table function in `FROM`: nothing for a pure one (its arguments are visited like
    /// any expression), else an opaque source.
    fn table_function(&mut self, name: &ObjectName) {
        let parts = match object_parts(name) {
            NameParts::Parts(parts) => parts,
            NameParts::Dynamic => {
                self.info.unresolved_bindings = true;
                return;
            }
        };
        let plain = matches!(
            name.0.as_slice(),
            [ObjectNamePart::Identifier(ident)] if ident.quote_style.is_none()
        );
        let source = match parts.as_slice() {
            [one] if plain && PURE_TABLE_FUNCTIONS.contains(&one.as_str()) => return,
            [one] if one == "RESULT_SCAN" => OpaqueSource::ResultScan,
            _ => OpaqueSource::TableFunction {
                name: parts.join("."),
            },
        };
        self.info.opaque_sources.insert(source);
    }

    fn finish(self) {
        let tables: Vec<TableName> = self.info.tables().cloned().collect();
        let lookup = |qualifier: &[String]| -> Option<TableName> {
            match qualifier {
                // With an opaque source in `FROM`, an unqualified column may be one of its.
                [] if tables.len() == 1 && self.info.opaque_sources.is_empty() => {
                    Some(tables[0].clone())
                }
                [] => None,
                [one] => self
                    .aliases
                    .iter()
                    .find(|(alias, _)| alias == one)
                    .map(|(_, t)| t.clone()),
                more => TableName::resolve(more, self.ctx),
            }
        };
        for (qualifier, column, in_set) in &self.raw_columns {
            let column = ColumnRef {
                table: lookup(qualifier),
                column: column.clone(),
            };
            if *in_set {
                self.info.set_sources.insert(column.clone());
            }
            self.info.columns.insert(column);
        }
        let mut wildcard_tables = Vec::new();
        let (all, all_in_set) = self.wildcard_all;
        if all {
            wildcard_tables.extend(self.info.reads.iter().map(|t| (t.clone(), all_in_set)));
        }
        for (qualifier, in_set) in &self.qualified_wildcards {
            match lookup(qualifier) {
                Some(t) => wildcard_tables.push((t, *in_set)),
                // A CTE or derived table: any table read may flow through it.
                None => {
                    wildcard_tables.extend(self.info.reads.iter().map(|t| (t.clone(), *in_set)))
                }
            }
        }
        for (t, in_set) in wildcard_tables {
            let column = ColumnRef {
                table: Some(t),
                column: "*".into(),
            };
            if in_set {
                self.info.set_sources.insert(column.clone());
            }
            self.info.columns.insert(column);
        }
    }
}

impl Visitor for Collector<'_, '_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        let ptr: *const Query = query;
        let base = match self.cte_bodies.iter().position(|(p, _)| *p == ptr) {
            Some(i) => self.cte_bodies.swap_remove(i).1,
            None => self.visible().to_vec(),
        };
        let mut own = base.clone();
        if let Some(with) = &query.with {
            let names: Vec<String> = with
                .cte_tables
                .iter()
                .map(|cte| fold_ident(&cte.alias.name.value, cte.alias.name.quote_style.is_some()))
                .collect();
            for (i, cte) in with.cte_tables.iter().enumerate() {
                // Inside CTE i only the CTEs before it are CTEs; its own name (and later
                // ones) are taken as tables — an over-approximation that can only add reads.
                let mut visible = base.clone();
                visible.extend(names[..i].iter().cloned());
                self.cte_bodies.push((&*cte.query as *const Query, visible));
            }
            own.extend(names);
        }
        self.scopes.push(own);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.scopes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        let in_set = self.in_set > 0;
        for item in &select.projection {
            match item {
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(n),
                    _,
                ) => match object_parts(n) {
                    NameParts::Parts(p) => self.qualified_wildcards.push((p, in_set)),
                    NameParts::Dynamic => self.info.unresolved_bindings = true,
                },
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(_, _) => {
                    self.wildcard_all.0 = true;
                    self.wildcard_all.1 |= in_set;
                }
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let (name, alias, args) = match factor {
            TableFactor::Table {
                name, alias, args, ..
            } => (name, alias, args),
            TableFactor::TableFunction { expr, alias } => {
                self.table_function_expr(expr, alias.as_ref());
                return ControlFlow::Continue(());
            }
            TableFactor::Function { name, .. } => {
                self.table_function(name);
                return ControlFlow::Continue(());
            }
            TableFactor::SemanticView { .. } => {
                self.info
                    .opaque_sources
                    .insert(OpaqueSource::TableFunction {
                        name: "SEMANTIC_VIEW".into(),
                    });
                return ControlFlow::Continue(());
            }
            // Derived tables, joins, PIVOT, … are walked into; UNNEST, JSON_TABLE and the like
            // read only their argument expressions, which are visited.
            _ => return ControlFlow::Continue(()),
        };
        let is_target = self.targets.iter().any(|t| std::ptr::eq(*t, factor));
        if args.is_some() {
            // A stage with options (`@st (file_format => 'f')`) or a table function call
            // (`FROM my_udtf(…)`), not a table.
            match resolve_object(name, self.ctx) {
                Resolved::Stage(stage) if !is_target => self.stage_read(stage),
                _ => self.table_function(name),
            }
            return ControlFlow::Continue(());
        }
        if let [ObjectNamePart::Identifier(ident)] = name.0.as_slice() {
            let folded = fold_ident(&ident.value, ident.quote_style.is_some());
            if !is_target && self.visible().contains(&folded) {
                // A CTE: its own tables were collected inside its body.
                return ControlFlow::Continue(());
            }
        }
        match resolve_object(name, self.ctx) {
            Resolved::Table(table) => self.table_read(table, alias.as_ref(), is_target),
            Resolved::Stage(stage) if !is_target => self.stage_read(stage),
            Resolved::Stage(stage) => self.info.stage_ops.push(StageOp {
                op: StageOpKind::Load,
                stage,
                local_file: None,
            }),
            Resolved::Unresolved => self.info.unresolved_bindings = true,
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if self.set_values.iter().any(|v| std::ptr::eq(*v, expr)) {
            self.in_set += 1;
        }
        let in_set = self.in_set > 0;
        match expr {
            Expr::Identifier(ident) => self.raw_columns.push((
                Vec::new(),
                fold_ident(&ident.value, ident.quote_style.is_some()),
                in_set,
            )),
            Expr::CompoundIdentifier(idents) if idents.len() >= 2 => {
                let folded: Vec<String> = idents
                    .iter()
                    .map(|i| fold_ident(&i.value, i.quote_style.is_some()))
                    .collect();
                let (column, qualifier) = folded.split_last().expect("len >= 2");
                let qualifier = if qualifier.len() > 3 {
                    qualifier[qualifier.len() - 3..].to_vec()
                } else {
                    qualifier.to_vec()
                };
                self.raw_columns.push((qualifier, column.clone(), in_set));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if self.set_values.iter().any(|v| std::ptr::eq(*v, expr)) {
            self.in_set = self.in_set.saturating_sub(1);
        }
        ControlFlow::Continue(())
    }
}
