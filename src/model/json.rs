//! Typed access to JSON config files, so that every malformed or missing field becomes an `Error::Config`
//! naming the file and the field instead of a serde message about a struct the user never sees.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Reads a JSON file into an object; a missing file is an `Io` error, bad JSON a `Config` error.
pub(crate) fn read_json_object(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(Error::Config {
            path: path.to_path_buf(),
            field: "<root>".into(),
            reason: format!("expected a JSON object, found {}", json_kind(&other)),
        }),
        Err(e) => Err(Error::Config {
            path: path.to_path_buf(),
            field: "<root>".into(),
            reason: format!("not valid JSON: {e}"),
        }),
    }
}

/// Like [`read_json_object`] but `Ok(None)` when the file does not exist.
pub(crate) fn read_optional_json_object(path: &Path) -> Result<Option<Map<String, Value>>> {
    if path.is_file() {
        read_json_object(path).map(Some)
    } else {
        Ok(None)
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed field access on one JSON object, with errors that name the file and field.
pub(crate) struct Fields<'a> {
    pub path: &'a Path,
    pub map: &'a Map<String, Value>,
    /// Prefix for nested objects, e.g. "quantization_config.".
    pub prefix: &'a str,
}

impl<'a> Fields<'a> {
    pub(crate) fn err(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::Config {
            path: self.path.to_path_buf(),
            field: format!("{}{field}", self.prefix),
            reason: reason.into(),
        }
    }

    /// The value of `field`, treating JSON null as absent.
    pub(crate) fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    pub(crate) fn wrong_type(&self, field: &str, want: &str, got: &Value) -> Error {
        self.err(field, format!("expected {want}, found {}", json_kind(got)))
    }

    pub(crate) fn opt_i64(&self, field: &str) -> Result<Option<i64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(field, "an integer", v)),
        }
    }

    pub(crate) fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.opt_i64(field)? {
            None => Ok(None),
            Some(x) => usize::try_from(x)
                .map(Some)
                .map_err(|_| self.err(field, format!("must not be negative, found {x}"))),
        }
    }

    pub(crate) fn req_usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?
            .ok_or_else(|| self.err(field, "required field is missing"))
    }

    /// A positive size: present, integer, > 0.
    pub(crate) fn req_size(&self, field: &str) -> Result<usize> {
        let v = self.req_usize(field)?;
        if v == 0 {
            return Err(self.err(field, "must be greater than zero"));
        }
        Ok(v)
    }

    pub(crate) fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(field, "a number", v)),
        }
    }

    pub(crate) fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.wrong_type(field, "a boolean", v)),
        }
    }

    pub(crate) fn opt_str(&self, field: &str) -> Result<Option<&'a str>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.wrong_type(field, "a string", v)),
        }
    }

    pub(crate) fn opt_object(&self, field: &str) -> Result<Option<&'a Map<String, Value>>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_object()
                .map(Some)
                .ok_or_else(|| self.wrong_type(field, "an object", v)),
        }
    }

    /// A token id or list of token ids (HF allows both for eos_token_id).
    pub(crate) fn token_ids(&self, field: &str) -> Result<Vec<u32>> {
        let to_id = |v: &Value| -> Result<u32> {
            v.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| self.wrong_type(field, "a token id (non-negative integer)", v))
        };
        match self.get(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(to_id).collect(),
            Some(v) => Ok(vec![to_id(v)?]),
        }
    }
}
