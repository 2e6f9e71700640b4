//! Small typed accessors over `serde_json::Value` that report errors as [`WireError`]s.
//!
//! Snowflake's messages are loosely typed (numbers sometimes arrive as strings, absent and
//! `null` mean the same), so the accessors are lenient where the drivers are and strict where
//! a wrong type would change what Tollgate believes a message says.

use serde_json::{Map, Value};

use super::WireError;

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Parses a body that must be a JSON object.
pub(crate) fn parse_object(what: &'static str, body: &[u8]) -> Result<Value, WireError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|source| WireError::Json { what, source })?;
    if !value.is_object() {
        return Err(WireError::NotAnObject {
            what,
            found: type_name(&value),
        });
    }
    Ok(value)
}

/// A view on one JSON object with the message name for errors.
#[derive(Clone, Copy)]
pub(crate) struct Obj<'a> {
    pub what: &'static str,
    pub map: Option<&'a Map<String, Value>>,
}

impl<'a> Obj<'a> {
    pub fn new(what: &'static str, value: &'a Value) -> Self {
        Self {
            what,
            map: value.as_object(),
        }
    }

    pub fn empty(what: &'static str) -> Self {
        Self { what, map: None }
    }

    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map?.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, field: &str, expected: &'static str, found: &Value) -> WireError {
        WireError::WrongType {
            what: self.what,
            field: field.to_owned(),
            expected,
            found: type_name(found),
        }
    }

    /// A nested object; absent or null gives an empty view.
    pub fn obj(&self, key: &str) -> Result<Obj<'a>, WireError> {
        match self.raw(key) {
            None => Ok(Obj::empty(self.what)),
            Some(v @ Value::Object(_)) => Ok(Obj::new(self.what, v)),
            Some(v) => Err(self.wrong(key, "an object", v)),
        }
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>, WireError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    pub fn string(&self, key: &str) -> Result<Option<String>, WireError> {
        Ok(self.str(key)?.map(str::to_owned))
    }

    /// A string where servers sometimes send numbers (`code`).
    pub fn code(&self, key: &str) -> Result<Option<String>, WireError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(v) => Err(self.wrong(key, "a string or number", v)),
        }
    }

    /// An integer, also accepted as a decimal string.
    pub fn int(&self, key: &str) -> Result<Option<i64>, WireError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "an integer", &Value::Number(n.clone()))),
            Some(v @ Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| self.wrong(key, "an integer", v)),
            Some(v) => Err(self.wrong(key, "an integer", v)),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, WireError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(key, "a boolean", v)),
        }
    }

    pub fn array(&self, key: &str) -> Result<&'a [Value], WireError> {
        match self.raw(key) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(v) => Err(self.wrong(key, "an array", v)),
        }
    }

    pub fn secret(&self, key: &str) -> Result<Option<super::Secret>, WireError> {
        Ok(self.str(key)?.map(super::Secret::new))
    }

    pub fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }
}
