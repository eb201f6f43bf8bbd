//! Reading untrusted JSON values with Triton's HTTP error texts ("Unable to parse '<field>':
//! attempt to access JSON non-string as string"), shared by every HTTP route.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

pub(super) fn unable(field: &str, detail: impl std::fmt::Display) -> Error {
    Error::invalid_arg(format!("Unable to parse '{field}': {detail}"))
}

pub(super) fn as_str<'a>(v: &'a Value, field: &str) -> Result<&'a str> {
    v.as_str()
        .ok_or_else(|| unable(field, "attempt to access JSON non-string as string"))
}

pub(super) fn as_u64(v: &Value, field: &str) -> Result<u64> {
    v.as_u64().ok_or_else(|| {
        unable(
            field,
            "attempt to access JSON non-unsigned-integer as unsigned-integer",
        )
    })
}

pub(super) fn as_bool(v: &Value, field: &str) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| unable(field, "attempt to access JSON non-boolean as boolean"))
}

pub(super) fn as_array<'a>(v: &'a Value, field: &str) -> Result<&'a Vec<Value>> {
    v.as_array()
        .ok_or_else(|| unable(field, "attempt to access JSON non-array as array"))
}

pub(super) fn as_object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| unable(field, "attempt to access JSON non-object as object"))
}

/// Parses a JSON document, with Triton's message prefix.
pub(super) fn parse_json(text: &[u8]) -> Result<Value> {
    serde_json::from_slice(text)
        .map_err(|e| Error::invalid_arg(format!("failed to parse the request JSON buffer: {e}")))
}
