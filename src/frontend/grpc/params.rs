//! gRPC parameters → the neutral parse (`request::params`, `core::params`), and its errors in
//! Triton's gRPC wording (grpc-protocol.md §4.8, §4.12, §5). Only the wire is handled here:
//! which `oneof` member maps to which `ParamValue`, and the messages.

use std::collections::HashMap;

use crate::core::params::{self as neutral, LoadValue};
use crate::error::{Error, Result};
use crate::lifecycle::manager::LoadRequest;
use crate::pb::inference::{
    self as pb, infer_parameter::ParameterChoice as P, log_settings_request,
    model_infer_request::InferRequestedOutputTensor, model_repository_parameter,
};
use crate::request::{
    Expected, OutputError, ParamError, ParamValue, RequestParams, RequestedOutput,
};
use crate::shm::ShmRef;
use crate::telemetry::logging::LogUpdate;

/// An `InferParameter` as a neutral value. gRPC takes `uint64_param` for `priority` only; for
/// any other key it is not a value the key can take.
fn infer_value<'a>(key: &str, p: &'a pb::InferParameter) -> ParamValue<'a> {
    match &p.parameter_choice {
        Some(P::BoolParam(b)) => ParamValue::Bool(*b),
        Some(P::Int64Param(n)) => ParamValue::Int(*n),
        Some(P::Uint64Param(n)) if key == "priority" => ParamValue::Uint(*n),
        Some(P::DoubleParam(d)) => ParamValue::Double(*d),
        Some(P::StringParam(s)) => ParamValue::Str(s),
        Some(P::Uint64Param(_)) | None => ParamValue::Other,
    }
}

/// What a key takes, in the names of the `oneof` members.
fn members(expected: Expected) -> &'static str {
    match expected {
        Expected::Bool => "bool_param",
        Expected::Priority => "int64_param or uint64_param",
        Expected::Timeout | Expected::Classes => "int64_param",
        Expected::IntOrString => "int64_param or string_param",
        Expected::Uint32 => "uint32_param",
        Expected::String => "string_param",
        Expected::Bytes => "bytes_param",
        Expected::Scalar => "bool_param, int64_param, double_param or string_param",
    }
}

/// Triton's message for a parameter of `map` refused by the neutral parse.
fn param_error(e: ParamError, map: &HashMap<String, pb::InferParameter>) -> Error {
    match e {
        ParamError::Kind {
            key,
            expected: Expected::Scalar,
        } if matches!(
            map.get(&key).and_then(|p| p.parameter_choice.as_ref()),
            Some(P::Uint64Param(_))
        ) =>
        {
            Error::invalid_arg(format!(
                "uint64_param is only supported for the 'priority' parameter, got it for '{key}'"
            ))
        }
        ParamError::Kind { key, expected } => Error::invalid_arg(format!(
            "invalid value type for '{key}' parameter, expected {}.",
            members(expected)
        )),
        ParamError::Reserved { key } => Error::invalid_arg(format!(
            "parameter keys starting with 'triton_' are reserved, got '{key}'"
        )),
        ParamError::Unknown { key } => {
            Error::invalid_arg(format!("unrecognized parameter '{key}'."))
        }
        ParamError::CorrelationIdTooLong => Error::unsupported(TOO_LONG),
    }
}

/// Triton's message for a string `sequence_id` over 128 bytes (UNSUPPORTED).
const TOO_LONG: &str = "string correlation ID cannot be longer than 128 characters";

/// A `ModelInferRequest`'s parameters.
pub(crate) fn request_params(map: &HashMap<String, pb::InferParameter>) -> Result<RequestParams> {
    RequestParams::parse(map.iter().map(|(k, v)| (k.as_str(), infer_value(k, v))))
        .map_err(|e| param_error(e, map))
}

/// One requested output with its parameters (`classification`; shared memory is `shm`'s).
pub(crate) fn requested_output(o: InferRequestedOutputTensor) -> Result<RequestedOutput> {
    let map = &o.parameters;
    let parsed = RequestedOutput::parse(o.name.clone(), |k| map.get(k).map(|v| infer_value(k, v)));
    parsed.map_err(|e| match e {
        OutputError::Param(ParamError::Kind {
            expected: Expected::Classes,
            ..
        }) => Error::invalid_arg(format!(
            "invalid value for 'classification' parameter of output '{}', expected a positive int64_param",
            o.name
        )),
        OutputError::Param(e) => param_error(e, map),
    })
}

/// The `config` and `file:<path>` parameters of RepositoryModelLoad (grpc-protocol.md §4.8).
pub(crate) fn load_request(
    params: HashMap<String, pb::ModelRepositoryParameter>,
) -> Result<LoadRequest> {
    use model_repository_parameter::ParameterChoice as R;
    let values = params.into_iter().map(|(k, v)| {
        let v = match v.parameter_choice {
            Some(R::StringParam(s)) => LoadValue::Str(s),
            Some(R::BytesParam(b)) => LoadValue::Bytes(b),
            _ => LoadValue::Other,
        };
        (k, v)
    });
    neutral::load_request(values).map_err(|e| match e {
        ParamError::Kind { key, expected } => Error::invalid_arg(format!(
            "invalid value type for load parameter '{key}', expected {}.",
            members(expected)
        )),
        ParamError::Unknown { key } | ParamError::Reserved { key } => {
            Error::invalid_arg(format!("unrecognized load parameter '{key}'."))
        }
        ParamError::CorrelationIdTooLong => Error::unsupported(TOO_LONG),
    })
}

/// The `unload_dependents` parameter of RepositoryModelUnload.
pub(crate) fn unload_dependents(
    params: &HashMap<String, pb::ModelRepositoryParameter>,
) -> Result<bool> {
    use model_repository_parameter::ParameterChoice as R;
    let value = params
        .get("unload_dependents")
        .map(|p| match &p.parameter_choice {
            Some(R::BoolParam(b)) => ParamValue::Bool(*b),
            Some(R::Int64Param(n)) => ParamValue::Int(*n),
            Some(R::StringParam(s)) => ParamValue::Str(s),
            Some(R::BytesParam(_)) | None => ParamValue::Other,
        });
    neutral::unload_dependents(value).map_err(|e| param_error(e, &HashMap::new()))
}

/// A LogSettings request's update, with Triton's messages for a wrong value kind.
pub(crate) fn log_update(
    settings: &HashMap<String, log_settings_request::SettingValue>,
) -> Result<LogUpdate> {
    use log_settings_request::setting_value::ParameterChoice as L;
    neutral::log_update(|k| {
        settings.get(k).map(|v| match &v.parameter_choice {
            Some(L::BoolParam(b)) => ParamValue::Bool(*b),
            Some(L::Uint32Param(n)) => ParamValue::Uint(u64::from(*n)),
            Some(L::StringParam(s)) => ParamValue::Str(s),
            None => ParamValue::Other,
        })
    })
    .map_err(|e| {
        let (key, what) = match &e {
            ParamError::Kind { key, expected } => (
                key.as_str(),
                match expected {
                    Expected::Bool => "boolean",
                    Expected::Uint32 => "int32",
                    _ => "string",
                },
            ),
            ParamError::Reserved { key } | ParamError::Unknown { key } => (key.as_str(), "string"),
            ParamError::CorrelationIdTooLong => ("sequence_id", "string"),
        };
        Error::invalid_arg(format!("expect {what} for '{key}'"))
    })
}

/// The place `params` give tensor `tensor` in a region, with gRPC's member kinds: the region
/// a `string_param`, offset and byte size `int64_param`s; byte size required with a region,
/// neither without one.
pub(crate) fn shm_ref(
    tensor: &str,
    params: &HashMap<String, pb::InferParameter>,
) -> Result<Option<ShmRef>> {
    let kind = |key: &str, member: &str| {
        Error::invalid_arg(format!(
            "invalid value type for '{key}' parameter for tensor '{tensor}', expected {member}."
        ))
    };
    let int = |key: &str| -> Result<Option<u64>> {
        match params.get(key).map(|p| &p.parameter_choice) {
            None => Ok(None),
            Some(Some(P::Int64Param(n))) => u64::try_from(*n)
                .map(Some)
                .map_err(|_| kind(key, "int64_param")),
            Some(_) => Err(kind(key, "int64_param")),
        }
    };
    let region = match params
        .get("shared_memory_region")
        .map(|p| &p.parameter_choice)
    {
        None => None,
        Some(Some(P::StringParam(s))) => Some(s.clone()),
        Some(_) => return Err(kind("shared_memory_region", "string_param")),
    };
    let offset = int("shared_memory_offset")?;
    let byte_size = int("shared_memory_byte_size")?;
    let Some(region) = region else {
        for (key, v) in [
            ("shared_memory_offset", offset),
            ("shared_memory_byte_size", byte_size),
        ] {
            if v.is_some() {
                return Err(Error::invalid_arg(format!(
                    "'{key}' can not be specified without 'shared_memory_region' parameter for tensor '{tensor}'"
                )));
            }
        }
        return Ok(None);
    };
    let Some(byte_size) = byte_size else {
        return Err(Error::invalid_arg(format!(
            "'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter for tensor '{tensor}'"
        )));
    };
    Ok(Some(ShmRef {
        region,
        offset: offset.unwrap_or(0),
        byte_size,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use log_settings_request::{SettingValue, setting_value::ParameterChoice as L};

    fn req(pairs: &[(&str, L)]) -> HashMap<String, SettingValue> {
        pairs
            .iter()
            .map(|(k, p)| {
                (
                    k.to_string(),
                    SettingValue {
                        parameter_choice: Some(p.clone()),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn log_value_kinds() {
        let e = log_update(&req(&[("log_info", L::Uint32Param(1))])).unwrap_err();
        assert_eq!(e.message, "expect boolean for 'log_info'");
        let e = log_update(&req(&[("log_verbose_level", L::BoolParam(true))])).unwrap_err();
        assert_eq!(e.message, "expect int32 for 'log_verbose_level'");
        let e = log_update(&req(&[("log_format", L::BoolParam(true))])).unwrap_err();
        assert_eq!(e.message, "expect string for 'log_format'");
        let u = log_update(&req(&[
            ("log_warning", L::BoolParam(false)),
            ("log_verbose_level", L::Uint32Param(2)),
            ("log_file", L::StringParam("x".into())),
        ]))
        .unwrap();
        assert_eq!(u.warning, Some(false));
        assert_eq!(u.verbose_level, Some(2));
        assert_eq!(u.file.as_deref(), Some("x"));
        assert_eq!(u.info, None);
    }

    fn infer_params(pairs: Vec<(&str, P)>) -> HashMap<String, pb::InferParameter> {
        pairs
            .into_iter()
            .map(|(k, p)| {
                (
                    k.to_string(),
                    pb::InferParameter {
                        parameter_choice: Some(p),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn request_parameter_messages() {
        let msg = |pairs| request_params(&infer_params(pairs)).unwrap_err().message;
        assert_eq!(
            msg(vec![("timeout", P::Uint64Param(5))]),
            "invalid value type for 'timeout' parameter, expected int64_param."
        );
        assert_eq!(
            msg(vec![("custom", P::Uint64Param(5))]),
            "uint64_param is only supported for the 'priority' parameter, got it for 'custom'"
        );
        assert_eq!(
            msg(vec![("triton_x", P::BoolParam(true))]),
            "parameter keys starting with 'triton_' are reserved, got 'triton_x'"
        );
        let p = request_params(&infer_params(vec![("priority", P::Uint64Param(3))])).unwrap();
        assert_eq!(p.priority, 3);
        let unload = |p| {
            let map = HashMap::from([(
                "unload_dependents".to_string(),
                pb::ModelRepositoryParameter {
                    parameter_choice: Some(p),
                },
            )]);
            unload_dependents(&map)
        };
        assert!(unload(model_repository_parameter::ParameterChoice::BoolParam(true)).unwrap());
        assert_eq!(
            unload(model_repository_parameter::ParameterChoice::Int64Param(1))
                .unwrap_err()
                .message,
            "invalid value type for 'unload_dependents' parameter, expected bool_param."
        );
    }
}
