//! Snowflake object names: case folding and resolution against the session's current
//! database and schema.
//!
//! Snowflake folds unquoted identifiers to upper case and keeps quoted ones as written, so
//! `patients`, `PATIENTS` and `"PATIENTS"` are one table while `"Patients"` is another.

use std::fmt;

use serde::Serialize;

/// The session context names are resolved against (the session's current database and
/// schema, already folded: `CLINICAL`, not `clinical`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NameContext {
    /// Current database, if the session has one.
    pub database: Option<String>,
    /// Current schema, if the session has one.
    pub schema: Option<String>,
}

impl NameContext {
    /// A context with both parts set; folds them as unquoted identifiers.
    pub fn new(database: &str, schema: &str) -> Self {
        Self {
            database: Some(database.to_uppercase()),
            schema: Some(schema.to_uppercase()),
        }
    }
}

/// A table (or view) name after resolution: `DB.SCHEMA.TABLE`. A part is `None` when the
/// statement left it out and the context did not supply it; policy treats such a part as
/// "could be anything" (restrictive rules match it, permissive rules need a `*`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    /// Database part.
    pub database: Option<String>,
    /// Schema part.
    pub schema: Option<String>,
    /// Table part (always known).
    pub table: String,
}

impl TableName {
    /// A fully known name (parts taken as already folded).
    pub fn new(database: &str, schema: &str, table: &str) -> Self {
        Self {
            database: Some(database.to_owned()),
            schema: Some(schema.to_owned()),
            table: table.to_owned(),
        }
    }

    /// Resolves folded name parts (`[table]`, `[schema, table]` or `[db, schema, table]`)
    /// against `ctx`. Returns `None` for any other number of parts.
    pub fn resolve(parts: &[String], ctx: &NameContext) -> Option<Self> {
        match parts {
            [table] => Some(Self {
                database: ctx.database.clone(),
                schema: ctx.schema.clone(),
                table: table.clone(),
            }),
            [schema, table] => Some(Self {
                database: ctx.database.clone(),
                schema: Some(schema.clone()),
                table: table.clone(),
            }),
            [database, schema, table] => Some(Self {
                database: Some(database.clone()),
                schema: Some(schema.clone()),
                table: table.clone(),
            }),
            _ => None,
        }
    }

    /// The three parts, for glob matching.
    pub fn parts(&self) -> [Option<&str>; 3] {
        [
            self.database.as_deref(),
            self.schema.as_deref(),
            Some(self.table.as_str()),
        ]
    }
}

impl fmt::Display for TableName {
    /// `DB.SCHEMA.TABLE`, with `?` for a part that could not be resolved.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.database.as_deref().unwrap_or("?"),
            self.schema.as_deref().unwrap_or("?"),
            self.table
        )
    }
}

impl Serialize for TableName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A column a statement refers to, best effort. `table` is `None` when the column could not be
/// tied to one table (an unqualified column in a join, a CTE column); `column` is `*` for
/// `SELECT *` / `t.*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ColumnRef {
    /// The table the column belongs to, when known.
    pub table: Option<TableName>,
    /// The folded column name, or `*`.
    pub column: String,
}

impl ColumnRef {
    /// Whether this is a `*` reference (every column of its table).
    pub fn is_wildcard(&self) -> bool {
        self.column == "*"
    }
}

impl fmt::Display for ColumnRef {
    /// `DB.SCHEMA.TABLE.COLUMN`, or `?.COLUMN` when the table is unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.table {
            Some(t) => write!(f, "{t}.{}", self.column),
            None => write!(f, "?.{}", self.column),
        }
    }
}

impl Serialize for ColumnRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Folds one identifier the Snowflake way: unquoted → upper case, quoted → as written.
pub fn fold_ident(value: &str, quoted: bool) -> String {
    if quoted {
        value.to_owned()
    } else {
        value.to_uppercase()
    }
}

/// Splits and folds a dotted name written as text (`clinical."Ehr".t` → `CLINICAL`, `Ehr`,
/// `T`), as found in `IDENTIFIER('…')` or `USE` targets. Returns `None` on an unterminated
/// quote or an empty part.
pub fn split_dotted(text: &str) -> Option<Vec<String>> {
    let parts = split_quoted(text.trim())?;
    if parts.iter().any(|(part, _)| part.is_empty()) {
        return None;
    }
    Some(
        parts
            .into_iter()
            .map(|(part, quoted)| fold_ident(&part, quoted))
            .collect(),
    )
}

/// Splits `a."B.c".d` at the dots outside double quotes into `[("a", false), ("B.c", true),
/// ("d", false)]` (`""` inside quotes is a literal quote). Parts may be empty; `None` on an
/// unterminated quote. Shared by name resolution and name globs.
pub(crate) fn split_quoted(text: &str) -> Option<Vec<(String, bool)>> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if current.is_empty() && !quoted => {
                quoted = true;
                let mut closed = false;
                while let Some(q) = chars.next() {
                    if q == '"' {
                        if chars.peek() == Some(&'"') {
                            chars.next();
                            current.push('"');
                        } else {
                            closed = true;
                            break;
                        }
                    } else {
                        current.push(q);
                    }
                }
                if !closed {
                    return None;
                }
            }
            '.' => {
                out.push((std::mem::take(&mut current), quoted));
                quoted = false;
            }
            _ => current.push(c),
        }
    }
    out.push((current, quoted));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution() {
        let ctx = NameContext::new("clinical", "public");
        let t = TableName::resolve(&["PATIENTS".into()], &ctx).unwrap();
        assert_eq!(t.to_string(), "CLINICAL.PUBLIC.PATIENTS");
        let t = TableName::resolve(&["EHR".into(), "ENCOUNTERS".into()], &ctx).unwrap();
        assert_eq!(t.to_string(), "CLINICAL.EHR.ENCOUNTERS");
        let t = TableName::resolve(&["T".into()], &NameContext::default()).unwrap();
        assert_eq!(t.to_string(), "?.?.T");
        assert!(TableName::resolve(&[], &ctx).is_none());
    }

    #[test]
    fn dotted() {
        assert_eq!(
            split_dotted(r#"clinical."Ehr".t"#).unwrap(),
            vec!["CLINICAL", "Ehr", "T"]
        );
        assert!(split_dotted("a..b").is_none());
        assert!(split_dotted("\"a").is_none());
    }
}
