//! Statements (`/queries/v1/query-request`), their results, aborts and monitoring.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::codes;
use super::endpoint::QueryParams;
use super::json::{parse_object, type_name, Obj};
use super::{Secret, WireError};

/// A bind value (`bindings.<n>.value`).
#[derive(Clone, PartialEq, Eq)]
pub enum BindingValue {
    /// `null`.
    Null,
    /// A single value, always sent as a string.
    Scalar(String),
    /// An array binding (one element per row of a bulk insert).
    Array(Vec<Option<String>>),
}

impl fmt::Debug for BindingValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Bind values are data (possibly PHI): show only their shape.
        match self {
            BindingValue::Null => f.write_str("Null"),
            BindingValue::Scalar(s) => write!(f, "Scalar(<{} bytes>)", s.len()),
            BindingValue::Array(a) => write!(f, "Array(<{} values>)", a.len()),
        }
    }
}

/// One bind parameter: `{"type": "FIXED", "value": "1"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Snowflake type name (`FIXED`, `TEXT`, `REAL`, `DATE`, `TIMESTAMP_NTZ`, …).
    pub type_: String,
    /// The value.
    pub value: BindingValue,
}

pub(crate) fn parse_bindings(
    what: &'static str,
    root: &Obj<'_>,
    key: &'static str,
) -> Result<BTreeMap<String, Binding>, WireError> {
    let bindings = root.obj(key)?;
    let Some(map) = bindings.map else {
        return Ok(BTreeMap::new());
    };
    let wrong = |field: String, expected, found: &Value| WireError::WrongType {
        what,
        field,
        expected,
        found: type_name(found),
    };
    let mut out = BTreeMap::new();
    for (name, b) in map {
        let Some(obj) = b.as_object() else {
            return Err(wrong(format!("{key}.{name}"), "an object", b));
        };
        let type_ = match obj.get("type") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(wrong(format!("{key}.{name}.type"), "a string", v)),
        };
        let value = match obj.get("value") {
            None | Some(Value::Null) => BindingValue::Null,
            Some(Value::String(s)) => BindingValue::Scalar(s.clone()),
            Some(Value::Array(items)) => BindingValue::Array(
                items
                    .iter()
                    .map(|v| match v {
                        Value::Null => Ok(None),
                        Value::String(s) => Ok(Some(s.clone())),
                        v => Err(wrong(
                            format!("{key}.{name}.value[]"),
                            "a string or null",
                            v,
                        )),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(v) => {
                return Err(wrong(
                    format!("{key}.{name}.value"),
                    "a string, null or an array of strings",
                    v,
                ))
            }
        };
        out.insert(name.clone(), Binding { type_, value });
    }
    Ok(out)
}

/// `POST /queries/v1/query-request`.
///
/// Python sends `{sqlText, asyncExec, sequenceId, querySubmissionTime, parameters, bindings?,
/// describeOnly?, queryContextDTO}`; Node sends `{disableOfflineChunks, sqlText, bindings?,
/// queryContextDTO}`. Only `sqlText` is required.
#[derive(Clone)]
pub struct QueryRequest {
    /// `requestId` from the query string: stable across a driver's re-send after renewal.
    pub request_id: Option<String>,
    /// `sqlText`.
    pub sql_text: String,
    /// `asyncExec` (absent = false).
    pub async_exec: bool,
    /// `sequenceId`.
    pub sequence_id: Option<i64>,
    /// `querySubmissionTime` (ms since the epoch).
    pub query_submission_time: Option<i64>,
    /// `describeOnly` (absent = false): the driver wants metadata, not rows.
    pub describe_only: bool,
    /// `bindings`, keyed by position (`"1"`, `"2"`, …) or name.
    pub bindings: BTreeMap<String, Binding>,
    json: Value,
}

impl QueryRequest {
    /// Parses a query request; `body` is the decoded body.
    pub fn parse(query: &QueryParams, body: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "query request";
        let json = parse_object(WHAT, body)?;
        let root = Obj::new(WHAT, &json);
        let sql_text = root.string("sqlText")?.ok_or(WireError::MissingField {
            what: WHAT,
            field: "sqlText",
        })?;
        // Validate the shape of the opaque parts too, so that a re-serialised body is one
        // Snowflake would accept.
        root.obj("parameters")?;
        Ok(Self {
            request_id: query.request_id().map(str::to_owned),
            async_exec: root.bool("asyncExec")?.unwrap_or(false),
            sequence_id: root.int("sequenceId")?,
            query_submission_time: root.int("querySubmissionTime")?,
            describe_only: root.bool("describeOnly")?.unwrap_or(false),
            bindings: parse_bindings(WHAT, &root, "bindings")?,
            sql_text,
            json,
        })
    }

    /// `parameters` (statement-level session parameters), if present.
    pub fn parameters(&self) -> Option<&serde_json::Map<String, Value>> {
        self.json.get("parameters").and_then(Value::as_object)
    }

    /// `queryContextDTO`, opaque.
    pub fn query_context(&self) -> Option<&Value> {
        self.json.get("queryContextDTO")
    }

    /// Replaces the statement text (in the model and in the body to re-serialise).
    pub fn set_sql_text(&mut self, sql: impl Into<String>) {
        let sql = sql.into();
        if let Some(obj) = self.json.as_object_mut() {
            obj.insert("sqlText".to_owned(), Value::String(sql.clone()));
        }
        self.sql_text = sql;
    }

    /// The parsed body, unknown fields included.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// Re-serialises the body (every field kept).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.json).unwrap_or_default()
    }
}

impl fmt::Debug for QueryRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SQL text carries literals: never in Debug output.
        f.debug_struct("QueryRequest")
            .field("request_id", &self.request_id)
            .field("sql_text", &format_args!("<{} bytes>", self.sql_text.len()))
            .field("async_exec", &self.async_exec)
            .field("sequence_id", &self.sequence_id)
            .field("query_submission_time", &self.query_submission_time)
            .field("describe_only", &self.describe_only)
            .field("bindings", &self.bindings)
            .finish_non_exhaustive()
    }
}

/// `queryResultFormat`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResultFormat {
    /// `json`: `rowset` is an array of arrays of strings/null.
    Json,
    /// `arrow`: `rowsetBase64` is a base64 Arrow IPC stream.
    Arrow,
    /// Anything else, as sent.
    Other(String),
}

impl ResultFormat {
    fn from_wire(s: &str) -> Self {
        if s.eq_ignore_ascii_case("json") {
            ResultFormat::Json
        } else if s.eq_ignore_ascii_case("arrow") {
            ResultFormat::Arrow
        } else {
            ResultFormat::Other(s.to_owned())
        }
    }
}

/// One column of `data.rowtype[]` (also the SQL API's `resultSetMetaData.rowType[]`).
///
/// `database`/`schema`/`table` may be empty strings (fakesnow leaves them empty; Snowflake
/// leaves them empty for expressions): never rely on them alone for lineage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowType {
    /// `name`: the result column's name.
    pub name: String,
    /// `type`: `fixed`, `text`, `real`, `date`, `timestamp_ntz`, `variant`, …
    pub type_: String,
    /// `scale`.
    pub scale: Option<i64>,
    /// `precision`.
    pub precision: Option<i64>,
    /// `length` (characters).
    pub length: Option<i64>,
    /// `byteLength`.
    pub byte_length: Option<i64>,
    /// `nullable` (absent = true).
    pub nullable: bool,
    /// `database` (source table's), possibly empty.
    pub database: String,
    /// `schema`, possibly empty.
    pub schema: String,
    /// `table`, possibly empty.
    pub table: String,
}

pub(crate) fn parse_rowtype(what: &'static str, cols: &[Value]) -> Result<Vec<RowType>, WireError> {
    cols.iter()
        .map(|c| {
            if !c.is_object() {
                return Err(WireError::WrongType {
                    what,
                    field: "rowtype[]".to_owned(),
                    expected: "an object",
                    found: type_name(c),
                });
            }
            let o = Obj::new(what, c);
            Ok(RowType {
                name: o.string("name")?.unwrap_or_default(),
                type_: o.string("type")?.unwrap_or_default(),
                scale: o.int("scale")?,
                precision: o.int("precision")?,
                length: o.int("length")?,
                byte_length: o.int("byteLength")?,
                nullable: o.bool("nullable")?.unwrap_or(true),
                database: o.string("database")?.unwrap_or_default(),
                schema: o.string("schema")?.unwrap_or_default(),
                table: o.string("table")?.unwrap_or_default(),
            })
        })
        .collect()
}

/// One entry of `data.chunks[]`: a part of a large result fetched from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// `url`: a pre-signed storage URL — a bearer credential, hence secret.
    pub url: Secret,
    /// `rowCount`.
    pub row_count: Option<i64>,
    /// `uncompressedSize`.
    pub uncompressed_size: Option<i64>,
    /// `compressedSize`.
    pub compressed_size: Option<i64>,
}

/// A chunk as handed to the driver after a rewrite (see [`QueryResponse::hand_out_chunks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedOutChunk {
    /// Index of the chunk in the received `data.chunks`.
    pub index: usize,
    /// The URL the driver fetches it from now.
    pub url: String,
    /// Its row count after a cap cut it (`None`: as received).
    pub row_count: Option<u64>,
}

/// The answer to a query request or a `GET /queries/<qid>/result`.
///
/// The typed fields are a view of the body: edit the body only through the methods here
/// (`edit_rowtype`, `rowset_mut`, `set_row_counts`, `hand_out_chunks`, …), which keep both in
/// agreement, and serialise it with [`Self::to_json_bytes`].
#[derive(Clone)]
pub struct QueryResponse {
    /// `success`.
    pub success: bool,
    /// `code` (absent on plain success; 333333/333334 in progress; error codes on failure).
    pub code: Option<String>,
    /// `message` (may echo SQL literals: kept out of `Debug`).
    pub message: Option<String>,
    /// `data.queryId`.
    pub query_id: Option<String>,
    /// `data.statementTypeId`.
    pub statement_type_id: Option<i64>,
    /// `data.sqlState` (errors).
    pub sql_state: Option<String>,
    /// `data.errorCode` (errors).
    pub error_code: Option<String>,
    /// `data.finalDatabaseName`.
    pub final_database_name: Option<String>,
    /// `data.finalSchemaName`.
    pub final_schema_name: Option<String>,
    /// `data.finalWarehouseName`.
    pub final_warehouse_name: Option<String>,
    /// `data.finalRoleName`.
    pub final_role_name: Option<String>,
    /// `data.queryResultFormat`.
    pub query_result_format: Option<ResultFormat>,
    /// `data.rowtype[]`.
    pub rowtype: Vec<RowType>,
    /// `data.total`: rows in the whole result.
    pub total: Option<i64>,
    /// `data.returned`: rows inline in this response.
    pub returned: Option<i64>,
    /// Whether `data.rowset` (JSON rows) is present.
    pub has_rowset: bool,
    /// `data.chunks[]`.
    pub chunks: Vec<Chunk>,
    /// `data.qrmk`: the chunks' SSE-C key (sent as `x-amz-server-side-encryption-customer-key`).
    pub qrmk: Option<Secret>,
    /// `data.chunkHeaders`: headers to send with every chunk GET.
    pub chunk_headers: BTreeMap<String, Secret>,
    /// `data.getResultUrl` (333333/333334).
    pub get_result_url: Option<String>,
    /// `data.queryAbortsAfterSecs` (333333/333334).
    pub query_aborts_after_secs: Option<i64>,
    json: Value,
}

impl QueryResponse {
    /// Parses a query response body (decoded).
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "query response";
        let json = parse_object(WHAT, body)?;
        let root = Obj::new(WHAT, &json);
        let data = root.obj("data")?;
        if let Some(rowset) = data.raw("rowset") {
            if !rowset.is_array() {
                return Err(WireError::WrongType {
                    what: WHAT,
                    field: "data.rowset".to_owned(),
                    expected: "an array of rows",
                    found: type_name(rowset),
                });
            }
        }
        // Checked for type here so that `rowset_base64()` can rely on it.
        data.str("rowsetBase64")?;
        let chunks = data
            .array("chunks")?
            .iter()
            .map(|c| {
                let o = Obj::new(WHAT, c);
                Ok(Chunk {
                    url: o.secret("url")?.ok_or(WireError::MissingField {
                        what: WHAT,
                        field: "data.chunks[].url",
                    })?,
                    row_count: o.int("rowCount")?,
                    uncompressed_size: o.int("uncompressedSize")?,
                    compressed_size: o.int("compressedSize")?,
                })
            })
            .collect::<Result<_, WireError>>()?;
        let headers = data.obj("chunkHeaders")?;
        let chunk_headers = match headers.map {
            None => BTreeMap::new(),
            Some(map) => map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), Secret::new(s.as_str()))),
                    v => Err(WireError::WrongType {
                        what: WHAT,
                        field: "data.chunkHeaders.*".to_owned(),
                        expected: "a string",
                        found: type_name(v),
                    }),
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Self {
            success: root.bool("success")?.unwrap_or(false),
            code: root.code("code")?,
            message: root.string("message")?,
            query_id: data.string("queryId")?,
            statement_type_id: data.int("statementTypeId")?,
            sql_state: data.string("sqlState")?,
            error_code: data.code("errorCode")?,
            final_database_name: data.string("finalDatabaseName")?,
            final_schema_name: data.string("finalSchemaName")?,
            final_warehouse_name: data.string("finalWarehouseName")?,
            final_role_name: data.string("finalRoleName")?,
            query_result_format: data.str("queryResultFormat")?.map(ResultFormat::from_wire),
            rowtype: parse_rowtype(WHAT, data.array("rowtype")?)?,
            total: data.int("total")?,
            returned: data.int("returned")?,
            has_rowset: data.has("rowset"),
            chunks,
            qrmk: data.secret("qrmk")?,
            chunk_headers,
            get_result_url: data.string("getResultUrl")?,
            query_aborts_after_secs: data.int("queryAbortsAfterSecs")?,
            json,
        })
    }

    /// `data.rowsetBase64`: the inline Arrow IPC stream, still base64 (not decoded here).
    pub fn rowset_base64(&self) -> Option<&str> {
        self.json
            .get("data")
            .and_then(|d| d.get("rowsetBase64"))
            .and_then(Value::as_str)
    }

    /// `data.rowset`: the inline JSON rows.
    pub fn rowset(&self) -> Option<&[Value]> {
        self.json
            .get("data")
            .and_then(|d| d.get("rowset"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
    }

    /// 333333 or 333334: the driver will poll `get_result_url`.
    pub fn is_in_progress(&self) -> bool {
        self.code.as_deref().is_some_and(codes::is_in_progress)
    }

    /// 390112: the driver will renew its session and re-send with the same `requestId`.
    pub fn is_session_expired(&self) -> bool {
        self.code.as_deref() == Some(codes::SESSION_EXPIRED)
    }

    /// Replaces `data.chunks[index].url` (to route chunk fetches through Tollgate).
    pub fn set_chunk_url(&mut self, index: usize, url: impl Into<String>) -> Result<(), WireError> {
        let count = self.chunks.len();
        let err = WireError::NoSuchChunk {
            what: "query response",
            index,
            count,
        };
        let url = url.into();
        let slot = self
            .json
            .get_mut("data")
            .and_then(|d| d.get_mut("chunks"))
            .and_then(|c| c.get_mut(index))
            .and_then(Value::as_object_mut)
            .ok_or(err)?;
        slot.insert("url".to_owned(), Value::String(url.clone()));
        self.chunks[index].url = Secret::new(url);
        Ok(())
    }

    /// The parsed body, unknown fields included.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// `data.rowtype` as received (for maskers that read column types).
    pub fn rowtype_json(&self) -> &[Value] {
        self.json
            .pointer("/data/rowtype")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    fn data_mut(&mut self) -> Option<&mut serde_json::Map<String, Value>> {
        self.json.get_mut("data").and_then(Value::as_object_mut)
    }

    /// Edits `data.rowtype` (a masked column becomes text) and re-reads [`Self::rowtype`] from
    /// it, so that the typed view and the body never disagree. On error nothing changed.
    pub fn edit_rowtype(&mut self, edit: impl FnOnce(&mut [Value])) -> Result<(), WireError> {
        let mut cols = self.rowtype_json().to_vec();
        edit(&mut cols);
        let typed = parse_rowtype("query response", &cols)?;
        if let Some(data) = self.data_mut() {
            data.insert("rowtype".to_owned(), Value::Array(cols));
        }
        self.rowtype = typed;
        Ok(())
    }

    /// `data.rowset`, for masking and truncating the inline JSON rows in place (no typed field
    /// describes the rows themselves).
    pub fn rowset_mut(&mut self) -> Option<&mut Value> {
        self.data_mut()?.get_mut("rowset")
    }

    /// Replaces `data.rowsetBase64` (the re-encoded inline Arrow stream).
    pub fn set_rowset_base64(&mut self, b64: String) {
        if let Some(data) = self.data_mut() {
            data.insert("rowsetBase64".to_owned(), Value::String(b64));
        }
    }

    /// Sets `data.total` and `data.returned` (after a row cap), in the body and the typed view.
    pub fn set_row_counts(&mut self, total: u64, returned: u64) {
        let (t, r) = (
            i64::try_from(total).unwrap_or(i64::MAX),
            i64::try_from(returned).unwrap_or(i64::MAX),
        );
        if let Some(data) = self.data_mut() {
            data.insert("total".to_owned(), Value::from(t));
            data.insert("returned".to_owned(), Value::from(r));
        }
        self.total = Some(t);
        self.returned = Some(r);
    }

    /// Replaces `data.chunks` by `kept` — each the index of a received chunk, the URL it is now
    /// fetched from and, when a cap cut it, its new row count — and drops the storage keys
    /// (`qrmk`, `chunkHeaders`): after this the body holds no storage credential. The typed
    /// view follows.
    pub fn hand_out_chunks(&mut self, kept: &[HandedOutChunk]) -> Result<(), WireError> {
        let count = self.chunks.len();
        let received: Vec<Value> = self
            .json
            .pointer("/data/chunks")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut entries = Vec::with_capacity(kept.len());
        let mut typed = Vec::with_capacity(kept.len());
        for k in kept {
            let no_such = || WireError::NoSuchChunk {
                what: "query response",
                index: k.index,
                count,
            };
            if k.index >= count {
                return Err(no_such());
            }
            let mut entry = received.get(k.index).cloned().ok_or_else(no_such)?;
            let obj = entry.as_object_mut().ok_or_else(no_such)?;
            obj.insert("url".to_owned(), Value::String(k.url.clone()));
            let mut chunk = self.chunks[k.index].clone();
            chunk.url = Secret::new(k.url.clone());
            if let Some(rows) = k.row_count {
                let rows = i64::try_from(rows).unwrap_or(i64::MAX);
                obj.insert("rowCount".to_owned(), Value::from(rows));
                chunk.row_count = Some(rows);
            }
            entries.push(entry);
            typed.push(chunk);
        }
        if let Some(data) = self.data_mut() {
            data.insert("chunks".to_owned(), Value::Array(entries));
            data.remove("qrmk");
            data.remove("chunkHeaders");
        }
        self.chunks = typed;
        self.qrmk = None;
        self.chunk_headers.clear();
        Ok(())
    }

    /// Re-serialises the body.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.json).unwrap_or_default()
    }
}

impl fmt::Debug for QueryResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryResponse")
            .field("success", &self.success)
            .field("code", &self.code)
            .field(
                "message",
                &self
                    .message
                    .as_ref()
                    .map(|m| format!("<{} bytes>", m.len())),
            )
            .field("query_id", &self.query_id)
            .field("statement_type_id", &self.statement_type_id)
            .field("sql_state", &self.sql_state)
            .field("error_code", &self.error_code)
            .field("final_database_name", &self.final_database_name)
            .field("final_schema_name", &self.final_schema_name)
            .field("final_warehouse_name", &self.final_warehouse_name)
            .field("final_role_name", &self.final_role_name)
            .field("query_result_format", &self.query_result_format)
            .field("rowtype", &self.rowtype)
            .field("total", &self.total)
            .field("returned", &self.returned)
            .field("has_rowset", &self.has_rowset)
            .field(
                "rowset_base64",
                &self.rowset_base64().map(|s| format!("<{} bytes>", s.len())),
            )
            .field("chunks", &self.chunks)
            .field("qrmk", &self.qrmk)
            .field("chunk_headers", &self.chunk_headers)
            .field("get_result_url", &self.get_result_url)
            .field("query_aborts_after_secs", &self.query_aborts_after_secs)
            .finish_non_exhaustive()
    }
}

/// `POST /queries/v1/abort-request`: `{sqlText, requestId}` (the `requestId` of the statement
/// to cancel, in the body).
#[derive(Clone, PartialEq, Eq)]
pub struct AbortRequest {
    /// `requestId` of the statement to cancel.
    pub request_id: Option<String>,
    /// `sqlText` of the statement to cancel (kept out of `Debug`).
    pub sql_text: Option<String>,
}

impl AbortRequest {
    /// Parses an abort request body (decoded).
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "abort request";
        let json = parse_object(WHAT, body)?;
        let root = Obj::new(WHAT, &json);
        Ok(Self {
            request_id: root.string("requestId")?,
            sql_text: root.string("sqlText")?,
        })
    }
}

impl fmt::Debug for AbortRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbortRequest")
            .field("request_id", &self.request_id)
            .field(
                "sql_text",
                &self
                    .sql_text
                    .as_ref()
                    .map(|s| format!("<{} bytes>", s.len())),
            )
            .finish()
    }
}

/// One entry of a monitoring response's `data.queries[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitoringQuery {
    /// `id`.
    pub id: Option<String>,
    /// `status`: `RUNNING`, `SUCCESS`, `FAILED_WITH_ERROR`, `QUEUED`, …
    pub status: Option<String>,
}

/// The answer to `GET /monitoring/queries/<qid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitoringResponse {
    /// `success`.
    pub success: bool,
    /// `code`.
    pub code: Option<String>,
    /// `data.queries[]`.
    pub queries: Vec<MonitoringQuery>,
}

impl MonitoringResponse {
    /// Parses a monitoring response body (decoded).
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "monitoring response";
        let json = parse_object(WHAT, body)?;
        let root = Obj::new(WHAT, &json);
        let data = root.obj("data")?;
        let queries = data
            .array("queries")?
            .iter()
            .map(|q| {
                let o = Obj::new(WHAT, q);
                Ok(MonitoringQuery {
                    id: o.string("id")?,
                    status: o.string("status")?,
                })
            })
            .collect::<Result<_, WireError>>()?;
        Ok(Self {
            success: root.bool("success")?.unwrap_or(false),
            code: root.code("code")?,
            queries,
        })
    }
}

/// The generic `{data, code, message, success}` envelope (heartbeat, session delete,
/// telemetry, and any response whose `data` Tollgate does not model).
#[derive(Clone, PartialEq)]
pub struct Envelope {
    /// `success`.
    pub success: bool,
    /// `code`.
    pub code: Option<String>,
    /// `message` (kept out of `Debug`).
    pub message: Option<String>,
    /// `data`, as sent (`Null` when absent).
    pub data: Value,
}

impl Envelope {
    /// Parses any Snowflake response envelope (decoded body).
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "response";
        let json = parse_object(WHAT, body)?;
        let root = Obj::new(WHAT, &json);
        Ok(Self {
            success: root.bool("success")?.unwrap_or(false),
            code: root.code("code")?,
            message: root.string("message")?,
            data: root.raw("data").cloned().unwrap_or(Value::Null),
        })
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("success", &self.success)
            .field("code", &self.code)
            .field(
                "message",
                &self
                    .message
                    .as_ref()
                    .map(|m| format!("<{} bytes>", m.len())),
            )
            .field("data", &format_args!("<{}>", type_name(&self.data)))
            .finish()
    }
}
