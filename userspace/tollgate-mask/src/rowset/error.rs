//! Why a result set could not be masked.

/// Why a result set could not be masked. Messages say what is wrong and where (column index
/// and name, row, record batch, byte offset), never a data value.
///
/// Every error is final: the caller must not forward the result (or any further output of a
/// streaming masker that failed) and should turn the error into a driver-visible error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RowsetError {
    /// The rules and the result disagree on the number of columns.
    #[error(
        "masking rules cover {rules} columns but the {what} has {columns}; \
         refusing to mask a result whose columns are not all accounted for"
    )]
    ColumnCount {
        /// Number of rules.
        rules: usize,
        /// Number of columns in the result.
        columns: usize,
        /// Where the columns were counted: `rowtype` or `Arrow schema`.
        what: &'static str,
    },
    /// A masked column's rowtype entry has no `type`.
    #[error("column {column} (`{name}`): rowtype entry has no `type`, so it cannot be masked")]
    MissingType {
        /// Column index (0-based).
        column: usize,
        /// Column name as the rowtype gives it.
        name: String,
    },
    /// A masked column has a type the rule cannot handle.
    #[error(
        "column {column} (`{name}`): cannot {action} a {logical} column stored as {physical}; \
         refusing to pass it through unmasked"
    )]
    UnsupportedType {
        /// Column index (0-based).
        column: usize,
        /// Column name.
        name: String,
        /// What the rule asked for: `mask` or `scan`.
        action: &'static str,
        /// Snowflake logical type (`TIMESTAMP_TZ`, …).
        logical: String,
        /// Physical encoding (an Arrow data type).
        physical: String,
    },
    /// A value of a masked column is not a valid encoding of its type.
    #[error("column {column} (`{name}`), {location}: value is {problem}; refusing to pass it through unmasked")]
    BadValue {
        /// Column index (0-based).
        column: usize,
        /// Column name.
        name: String,
        /// Where the value is: `row N` (JSON, 0-based within the rowset or chunk, with the
        /// chunk's byte offset) or `record batch B, row N` (Arrow).
        location: String,
        /// What it should have been.
        problem: &'static str,
    },
    /// The JSON rowset or chunk is not well-formed.
    #[error("malformed JSON rowset, {location}: {problem}")]
    MalformedJson {
        /// Where: `row N` and, for chunks, `at byte offset X`.
        location: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A JSON row has the wrong number of values.
    #[error(
        "JSON rowset, {location}: row has {found} values but the result has {expected} columns"
    )]
    RowWidth {
        /// Where: `row N` and, for chunks, `at byte offset X`.
        location: String,
        /// Values found in the row.
        found: usize,
        /// Columns expected.
        expected: usize,
    },
    /// The Arrow IPC stream is malformed.
    #[error("malformed Arrow IPC stream, {location}: {problem}")]
    MalformedIpc {
        /// Where: the message's byte offset and, for record batches, the batch number.
        location: String,
        /// What is wrong (the Arrow decoder's own description, for structural errors).
        problem: String,
    },
    /// The input ended inside a JSON row or an Arrow message, or a JSON chunk ended with a
    /// separator.
    #[error("truncated {format}: {what} starting at byte offset {offset} is incomplete")]
    Truncated {
        /// `JSON chunk` or `Arrow IPC stream`.
        format: &'static str,
        /// What was cut off (`row 12`, `message`, `schema`).
        what: String,
        /// Byte offset of the incomplete part in the input.
        offset: u64,
    },
    /// Masked values of one column would not fit one Arrow string array (2 GiB).
    #[error(
        "record batch {batch}, column {column} (`{name}`): masked values exceed the 2 GiB \
         an Arrow string array can hold"
    )]
    OutputTooLarge {
        /// Record batch number (0-based).
        batch: usize,
        /// Column index (0-based).
        column: usize,
        /// Column name.
        name: String,
    },
    /// Re-encoding a masked record batch failed.
    #[error("record batch {batch}: could not encode the masked batch: {problem}")]
    Encode {
        /// Record batch number (0-based); the schema message is reported as batch 0.
        batch: usize,
        /// The Arrow writer's description.
        problem: String,
    },
    /// A streaming masker was used after it had failed.
    #[error("the masker already failed on earlier input; discard all of its output")]
    Failed,
}

/// Describes an Arrow error without risking a data value in the message: only variants whose
/// messages are about structure keep their text.
pub(crate) fn describe_arrow_error(e: &arrow_schema::ArrowError) -> String {
    use arrow_schema::ArrowError as E;
    let text = match e {
        E::IpcError(m) | E::ParseError(m) | E::SchemaError(m) | E::MemoryError(m) => m.as_str(),
        E::NotYetImplemented(m) => m.as_str(),
        E::IoError(m, _) => m.as_str(),
        E::InvalidArgumentError(_) => "invalid array data",
        E::ComputeError(_) => "compute error",
        E::CastError(_) => "cast error",
        E::ExternalError(_) => "external error",
        E::DivideByZero => "divide by zero",
        E::ArithmeticOverflow(_) => "arithmetic overflow",
        E::CsvError(_) | E::JsonError(_) | E::AvroError(_) => "format error",
        E::CDataInterface(_) => "C data interface error",
        E::DictionaryKeyOverflowError => "dictionary key overflow",
        E::RunEndIndexOverflowError => "run end index overflow",
        E::OffsetOverflowError(_) => "offset overflow",
        _ => "error",
    };
    // Structural messages are short; a long one is cut rather than trusted.
    let mut s: String = text.chars().take(200).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}
