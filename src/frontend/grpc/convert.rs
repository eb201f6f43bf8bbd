//! Wire ↔ core conversion for the gRPC front-end.

use bytes::Bytes;

use super::params;
use crate::error::{Error, Result};
use crate::lifecycle::manager::IndexEntry;
use crate::pb::inference::{
    self as pb, model_infer_request::InferInputTensor, model_infer_response::InferOutputTensor,
};
use crate::request::{InferRequest, InferResponse, InputTensor};
use crate::shm::ShmRefs;
use crate::tensor::{DataType, bytes_codec};

/// Decodes a `ModelInferRequest`. Raw entries are taken in input order by the inputs that are
/// not in shared memory; typed `contents` are converted to the same little-endian layout
/// (narrowing 32-bit carriers as Triton does). Inputs and outputs placed in shared memory are
/// listed in the `ShmRefs` (such an input's data is left empty for `SharedMemory::place`).
pub(crate) fn infer_request(req: pb::ModelInferRequest) -> Result<(InferRequest, ShmRefs)> {
    let model = req.model_name.clone();
    let params = params::request_params(&req.parameters)?;
    let use_raw = !req.raw_input_contents.is_empty();
    let mut raw = req.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    let mut refs = ShmRefs::default();
    for input in req.inputs {
        let data = if let Some(r) = params::shm_ref(&input.name, &input.parameters)? {
            if input.contents.is_some() {
                return Err(Error::invalid_arg(format!(
                    "unexpected 'content' provided when using shared memory for input tensor '{}' for model '{model}'",
                    input.name
                )));
            }
            refs.inputs.push((inputs.len(), r));
            Bytes::new()
        } else if use_raw {
            if input.contents.is_some() {
                return Err(Error::invalid_arg(format!(
                    "contents field must not be specified when using raw_input_contents for '{}' for model '{model}'",
                    input.name
                )));
            }
            raw.next().ok_or_else(|| no_data(&input.name, &model))?
        } else {
            typed_contents(&input, &model)?
        };
        inputs.push(InputTensor {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            data,
        });
    }
    let mut outputs = Vec::with_capacity(req.outputs.len());
    for o in req.outputs {
        let placed = params::shm_ref(&o.name, &o.parameters)?;
        if placed.is_some() && o.parameters.contains_key("classification") {
            return Err(Error::invalid_arg(
                "output can't set both 'shared_memory_region' and 'classification'",
            ));
        }
        if let Some(r) = placed {
            refs.outputs.push((o.name.clone(), r));
        }
        outputs.push(params::requested_output(o)?);
    }
    let req = InferRequest {
        model_name: req.model_name,
        model_version: req.model_version,
        id: req.id,
        inputs,
        outputs,
        params,
    };
    Ok((req, refs))
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n).
pub(crate) fn grpc_timeout(v: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn no_data(input: &str, model: &str) -> Error {
    Error::invalid_arg(format!(
        "unable to find data for input tensor '{input}' for model '{model}' in request."
    ))
}

/// Converts typed `contents` into raw little-endian bytes for the declared datatype.
fn typed_contents(input: &InferInputTensor, model: &str) -> Result<Bytes> {
    let Some(c) = &input.contents else {
        return Err(no_data(&input.name, model));
    };
    let Some(dtype) = DataType::from_wire(&input.datatype) else {
        return Err(Error::invalid_arg(format!(
            "invalid datatype '{}' for input '{}' for model '{model}'",
            input.datatype, input.name
        )));
    };
    let mismatch = || {
        Error::invalid_arg(format!(
            "unexpected explicit tensor data for input tensor '{}' for model '{model}' of type {}, expected datatype {}",
            input.name,
            populated_field(c).unwrap_or("<none>"),
            dtype.as_str()
        ))
    };
    let expected_field = match dtype {
        DataType::Bool => "bool_contents",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int_contents",
        DataType::Int64 => "int64_contents",
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => "uint_contents",
        DataType::Uint64 => "uint64_contents",
        DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
        DataType::Fp16 | DataType::Bf16 => {
            return Err(Error::invalid_arg(format!(
                "{} input '{}' for model '{model}' must be sent in raw_input_contents",
                dtype.as_str(),
                input.name
            )));
        }
    };
    if populated_field(c).is_some_and(|f| f != expected_field) {
        return Err(mismatch());
    }
    let mut out = Vec::new();
    match dtype {
        DataType::Bool => out.extend(c.bool_contents.iter().map(|&b| b as u8)),
        DataType::Int8 => out.extend(c.int_contents.iter().map(|&v| v as i8 as u8)),
        DataType::Int16 => c
            .int_contents
            .iter()
            .for_each(|&v| out.extend_from_slice(&(v as i16).to_le_bytes())),
        DataType::Int32 => c
            .int_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Int64 => c
            .int64_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Uint8 => out.extend(c.uint_contents.iter().map(|&v| v as u8)),
        DataType::Uint16 => c
            .uint_contents
            .iter()
            .for_each(|&v| out.extend_from_slice(&(v as u16).to_le_bytes())),
        DataType::Uint32 => c
            .uint_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Uint64 => c
            .uint64_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Fp32 => c
            .fp32_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Fp64 => c
            .fp64_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Bytes => out = bytes_codec::encode(c.bytes_contents.iter().map(|b| b.as_ref())),
        DataType::Fp16 | DataType::Bf16 => unreachable!("rejected above"),
    }
    Ok(out.into())
}

fn populated_field(c: &pb::InferTensorContents) -> Option<&'static str> {
    [
        (!c.bool_contents.is_empty(), "bool_contents"),
        (!c.int_contents.is_empty(), "int_contents"),
        (!c.int64_contents.is_empty(), "int64_contents"),
        (!c.uint_contents.is_empty(), "uint_contents"),
        (!c.uint64_contents.is_empty(), "uint64_contents"),
        (!c.fp32_contents.is_empty(), "fp32_contents"),
        (!c.fp64_contents.is_empty(), "fp64_contents"),
        (!c.bytes_contents.is_empty(), "bytes_contents"),
    ]
    .into_iter()
    .find_map(|(set, name)| set.then_some(name))
}

/// Outputs go in `raw_output_contents`, one entry per output at the same index.
pub(crate) fn infer_response(resp: InferResponse) -> pb::ModelInferResponse {
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    let mut raw = Vec::with_capacity(resp.outputs.len());
    for t in resp.outputs {
        let (name, dtype, shape, data) = t.into_parts();
        outputs.push(InferOutputTensor {
            name,
            datatype: dtype.as_str().to_string(),
            shape,
            ..Default::default()
        });
        raw.push(data);
    }
    pb::ModelInferResponse {
        model_name: resp.model_name,
        model_version: resp.model_version.to_string(),
        id: resp.id,
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}

pub(crate) fn repository_index(rows: Vec<IndexEntry>) -> pb::RepositoryIndexResponse {
    pb::RepositoryIndexResponse {
        models: rows
            .into_iter()
            .map(|r| pb::repository_index_response::ModelIndex {
                name: r.name,
                version: r.version.map(|v| v.to_string()).unwrap_or_default(),
                state: r.state.map(|s| s.as_str().to_string()).unwrap_or_default(),
                reason: r.reason,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(grpc_timeout("m"), None);
        assert_eq!(grpc_timeout("123456789S"), None);
        assert_eq!(grpc_timeout("10x"), None);
    }
}
