//! The error of the message parsers (JSON bodies of requests and responses).

/// Why a Snowflake JSON body could not be turned into a typed message.
///
/// Messages name the body and the field and say what was expected; they never quote values
/// (which may be credentials, SQL or patient data).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The body is not JSON at all (or is truncated JSON).
    #[error("the {what} body is not valid JSON ({source}); expected a JSON object")]
    Json {
        /// Which message was being parsed, e.g. "login request".
        what: &'static str,
        /// The JSON syntax error (position and kind; it never quotes the input).
        #[source]
        source: serde_json::Error,
    },
    /// The body is valid JSON but not an object.
    #[error("the {what} body is a JSON {found}; expected a JSON object")]
    NotAnObject {
        /// Which message was being parsed.
        what: &'static str,
        /// The JSON type found instead ("array", "string", …).
        found: &'static str,
    },
    /// A field the message cannot do without is absent.
    #[error("the {what} body has no `{field}`; expected it to be present")]
    MissingField {
        /// Which message was being parsed.
        what: &'static str,
        /// The JSON path of the missing field, e.g. "data" or "sqlText".
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("`{field}` in the {what} body is a JSON {found}; expected {expected}")]
    WrongType {
        /// Which message was being parsed.
        what: &'static str,
        /// The JSON path of the field (dynamic for map entries such as `bindings.1.value`).
        field: String,
        /// What the protocol allows there.
        expected: &'static str,
        /// The JSON type found instead.
        found: &'static str,
    },
    /// An edit addressed an element that does not exist.
    #[error("the {what} has {count} chunks; there is no chunk {index} to edit")]
    NoSuchChunk {
        /// Which message was being edited.
        what: &'static str,
        /// The index asked for.
        index: usize,
        /// How many chunks there are.
        count: usize,
    },
}
