//! The SQL API (`/api/v2/statements`): a separate JSON shape from the drivers' REST calls.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::json::{parse_object, type_name, Obj};
use super::query::{parse_bindings, parse_rowtype, Binding, RowType};
use super::WireError;

/// `POST /api/v2/statements`: `{statement, timeout, database, schema, warehouse, role,
/// bindings, parameters}`.
#[derive(Clone)]
pub struct StatementRequest {
    /// `statement` (kept out of `Debug`).
    pub statement: String,
    /// `timeout` in seconds.
    pub timeout: Option<i64>,
    /// `database`.
    pub database: Option<String>,
    /// `schema`.
    pub schema: Option<String>,
    /// `warehouse`.
    pub warehouse: Option<String>,
    /// `role`.
    pub role: Option<String>,
    /// `bindings`, keyed by position.
    pub bindings: BTreeMap<String, Binding>,
    json: Value,
}

impl StatementRequest {
    /// Parses a SQL API submission body (decoded).
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "SQL API statement request";
        let json = parse_object(WHAT, body)?;
        let root = Obj::new(WHAT, &json);
        let statement = root.string("statement")?.ok_or(WireError::MissingField {
            what: WHAT,
            field: "statement",
        })?;
        Ok(Self {
            timeout: root.int("timeout")?,
            database: root.string("database")?,
            schema: root.string("schema")?,
            warehouse: root.string("warehouse")?,
            role: root.string("role")?,
            bindings: parse_bindings(WHAT, &root, "bindings")?,
            statement,
            json,
        })
    }

    /// Replaces the statement text (model and body).
    pub fn set_statement(&mut self, sql: impl Into<String>) {
        let sql = sql.into();
        if let Some(obj) = self.json.as_object_mut() {
            obj.insert("statement".to_owned(), Value::String(sql.clone()));
        }
        self.statement = sql;
    }

    /// The parsed body, unknown fields included.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// Re-serialises the body.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.json).unwrap_or_default()
    }
}

impl fmt::Debug for StatementRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatementRequest")
            .field(
                "statement",
                &format_args!("<{} bytes>", self.statement.len()),
            )
            .field("timeout", &self.timeout)
            .field("database", &self.database)
            .field("schema", &self.schema)
            .field("warehouse", &self.warehouse)
            .field("role", &self.role)
            .field("bindings", &self.bindings)
            .finish_non_exhaustive()
    }
}

/// A SQL API answer: result (200), still running (202), or error (422, 4xx).
#[derive(Clone)]
pub struct StatementResponse {
    /// `code` (`090001` success, `333334` running, error codes otherwise).
    pub code: Option<String>,
    /// `message` (kept out of `Debug`).
    pub message: Option<String>,
    /// `sqlState`.
    pub sql_state: Option<String>,
    /// `statementHandle`.
    pub statement_handle: Option<String>,
    /// `statementStatusUrl`.
    pub statement_status_url: Option<String>,
    /// `resultSetMetaData.numRows`.
    pub num_rows: Option<i64>,
    /// `resultSetMetaData.rowType[]`.
    pub row_type: Vec<RowType>,
    /// Whether `data` (rows of the first partition) is present.
    pub has_data: bool,
    json: Value,
}

impl StatementResponse {
    /// Parses a SQL API response body (decoded).
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "SQL API statement response";
        let json = parse_object(WHAT, body)?;
        let root = Obj::new(WHAT, &json);
        let meta = root.obj("resultSetMetaData")?;
        if let Some(data) = root.raw("data") {
            if !data.is_array() {
                return Err(WireError::WrongType {
                    what: WHAT,
                    field: "data".to_owned(),
                    expected: "an array of rows",
                    found: type_name(data),
                });
            }
        }
        Ok(Self {
            code: root.code("code")?,
            message: root.string("message")?,
            sql_state: root.string("sqlState")?,
            statement_handle: root.string("statementHandle")?,
            statement_status_url: root.string("statementStatusUrl")?,
            num_rows: meta.int("numRows")?,
            row_type: parse_rowtype(WHAT, meta.array("rowType")?)?,
            has_data: root.has("data"),
            json,
        })
    }

    /// `data`: the rows of the first partition (arrays of strings/null).
    pub fn data(&self) -> Option<&[Value]> {
        self.json
            .get("data")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
    }

    /// The parsed body, unknown fields included.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// Re-serialises the body.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.json).unwrap_or_default()
    }
}

impl fmt::Debug for StatementResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatementResponse")
            .field("code", &self.code)
            .field(
                "message",
                &self
                    .message
                    .as_ref()
                    .map(|m| format!("<{} bytes>", m.len())),
            )
            .field("sql_state", &self.sql_state)
            .field("statement_handle", &self.statement_handle)
            .field("statement_status_url", &self.statement_status_url)
            .field("num_rows", &self.num_rows)
            .field("row_type", &self.row_type)
            .field("has_data", &self.has_data)
            .finish_non_exhaustive()
    }
}
