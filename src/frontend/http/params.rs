//! JSON parameters → the neutral parse (`request::params`, `core::params`), and its errors in
//! the wording of Triton's HTTP front-end ("Unable to parse '<key>': ..."). Only the wire is
//! handled here: which JSON value maps to which `ParamValue`, and the messages.

use base64::Engine;
use serde_json::{Map, Value};

use super::json::{as_object, as_str, unable};
use super::tensor_json::kind;
use crate::core::params::{self as neutral, LoadValue};
use crate::error::{Error, Result};
use crate::lifecycle::manager::LoadRequest;
use crate::request::{
    Expected, OutputError, ParamError, ParamValue, RequestParams, RequestedOutput,
};
use crate::shm::ShmRef;

/// A JSON value as a neutral one: integers as `Int` when an i64 holds them.
pub(super) fn value(v: &Value) -> ParamValue<'_> {
    match v {
        Value::Bool(b) => ParamValue::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ParamValue::Int(i),
            (None, Some(u)) => ParamValue::Uint(u),
            (None, None) => n.as_f64().map_or(ParamValue::Other, ParamValue::Double),
        },
        Value::String(s) => ParamValue::Str(s),
        _ => ParamValue::Other,
    }
}

/// Triton's HTTP message for a refused parameter: the JSON accessor that failed on it.
pub(super) fn param_error(e: ParamError) -> Error {
    match e {
        ParamError::Kind {
            key,
            expected: Expected::Scalar,
        } => Error::invalid_arg(format!(
            "parameter '{key}' has invalid type. It should be either 'int', 'bool', 'float', or 'string'."
        )),
        ParamError::Kind { key, expected } => unable(
            &key,
            match expected {
                Expected::Bool => "attempt to access JSON non-boolean as boolean",
                Expected::Priority | Expected::Timeout | Expected::Classes | Expected::Uint32 => {
                    "attempt to access JSON non-unsigned-integer as unsigned-integer"
                }
                _ => "attempt to access JSON non-string as string",
            },
        ),
        ParamError::Reserved { .. } => Error::invalid_arg(
            "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified.",
        ),
        ParamError::Unknown { key } => {
            Error::invalid_arg(format!("unrecognized parameter '{key}'."))
        }
        ParamError::CorrelationIdTooLong => {
            Error::unsupported("string correlation ID cannot be longer than 128 characters")
        }
    }
}

/// A request's `parameters` object. JSON's `sequence_id` is an unsigned integer or a string:
/// a negative number does not wrap as gRPC's int64_param does, it is refused.
pub(super) fn request_params(p: &Map<String, Value>) -> Result<RequestParams> {
    RequestParams::parse(p.iter().map(|(k, v)| {
        let v = match (k.as_str(), value(v)) {
            ("sequence_id", ParamValue::Int(n)) if n < 0 => ParamValue::Other,
            (_, v) => v,
        };
        (k.as_str(), v)
    }))
    .map_err(param_error)
}

/// One `$request_output`: `name` and optional `parameters` (`binary_data`, `classification`,
/// and the place in shared memory it is written to, which goes with neither).
pub(super) fn requested_output(v: &Value) -> Result<(RequestedOutput, Option<ShmRef>)> {
    let o = as_object(v, "outputs")?;
    let name = as_str(
        o.get("name")
            .ok_or_else(|| unable("name", "missing member"))?,
        "name",
    )?;
    let params = match o.get("parameters") {
        Some(p) => Some(as_object(p, "parameters")?),
        None => None,
    };
    let placed = super::shm::tensor_ref(params)?;
    let param = |k: &str| params.and_then(|p| p.get(k)).map(value);
    if placed.is_some() {
        if param("classification").is_some() {
            return Err(Error::invalid_arg(
                "Output can't set both 'shared_memory_region' and 'classification'",
            ));
        }
        if param("binary_data") == Some(ParamValue::Bool(true)) {
            return Err(Error::invalid_arg(
                "Output can't set both 'shared_memory_region' and 'binary_data'",
            ));
        }
    }
    let output = RequestedOutput::parse(name.to_string(), param).map_err(|e| match e {
        OutputError::Param(e) => param_error(e),
    })?;
    Ok((output, placed))
}

/// The load route's `parameters`: `config` (model-config JSON in a string) and `file:<path>`
/// (base64 contents, decoded here: base64 is how JSON carries bytes).
pub(super) fn load_request(params: Option<&Map<String, Value>>) -> Result<LoadRequest> {
    let mut values = Vec::new();
    for (key, v) in params.into_iter().flatten() {
        let v = match v.as_str() {
            Some(text) if key.starts_with("file:") => LoadValue::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| {
                        Error::invalid_arg(format!(
                            "failed to decode the base64 content of load parameter '{key}': {e}"
                        ))
                    })?,
            ),
            Some(text) => LoadValue::Str(text.to_string()),
            None => LoadValue::Other,
        };
        values.push((key.clone(), v));
    }
    neutral::load_request(values).map_err(|e| match e {
        ParamError::Kind { key, .. } => {
            let got = params.and_then(|p| p.get(&key)).map_or("null", kind);
            Error::invalid_arg(format!(
                "invalid value type for load parameter '{key}', expected a JSON string, got a {got}"
            ))
        }
        ParamError::Unknown { key } | ParamError::Reserved { key } => {
            Error::invalid_arg(format!("unrecognized load parameter '{key}'."))
        }
        ParamError::CorrelationIdTooLong => param_error(ParamError::CorrelationIdTooLong),
    })
}

/// The unload route's `unload_dependents` parameter.
pub(super) fn unload_dependents(params: Option<&Map<String, Value>>) -> Result<bool> {
    let v = params.and_then(|p| p.get("unload_dependents")).map(value);
    neutral::unload_dependents(v).map_err(param_error)
}
