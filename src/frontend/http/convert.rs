//! Wire ↔ core conversion for the HTTP/REST infer route: the request JSON with the binary
//! tensor extension (http-protocol.md §5–§6), raw binary bodies, and the response. The other
//! routes' JSON shapes are in `shapes`. Error texts follow Triton's HTTP front-end where
//! clients might match them ("Unable to parse '<field>': ...").

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value, json};

use super::json::{as_array, as_object, as_str, as_u64, parse_json, unable};
use super::params;
use super::tensor_json::{self, kind};
use crate::error::{Error, Result};
use crate::model::{IoSpec, ModelSpec};
use crate::request::{InferRequest, InferResponse, InputTensor, RequestParams};
use crate::shm::{ShmRef, ShmRefs};
use crate::tensor::{DataType, shape_string};

/// How each output goes back: binary section or JSON `data` (http-protocol.md §6.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputFormat {
    /// `binary_data_output`: the format of outputs that do not say.
    pub default_binary: bool,
    /// `binary_data` of the outputs the request listed.
    pub per_output: HashMap<String, bool>,
    /// The request's tensors in client shared memory: placed outputs come back as name,
    /// datatype and shape only.
    pub shm: ShmRefs,
}

impl OutputFormat {
    /// The formats a request asks for (`binary_data_output`, each output's `binary_data`).
    pub fn of(req: &InferRequest) -> Self {
        OutputFormat {
            default_binary: req.params.binary_output,
            per_output: req
                .outputs
                .iter()
                .filter_map(|o| Some((o.name.clone(), o.binary?)))
                .collect(),
            shm: ShmRefs::default(),
        }
    }

    /// Whether the output `name` is written to shared memory instead of the reply.
    pub fn in_shm(&self, name: &str) -> bool {
        self.shm.outputs.iter().any(|(n, _)| n == name)
    }

    pub fn is_binary(&self, name: &str) -> bool {
        self.per_output
            .get(name)
            .copied()
            .unwrap_or(self.default_binary)
    }
}

/// Where `Inference-Header-Content-Length` says the JSON header ends (`None`: no header,
/// the whole body is JSON; `Some(0)`: a raw binary request).
pub fn header_length(value: Option<&str>, body_len: usize) -> Result<Option<usize>> {
    let Some(v) = value else { return Ok(None) };
    let n: i64 = v.trim().parse().map_err(|_| {
        Error::invalid_arg(format!(
            "Unable to parse Inference-Header-Content-Length, got: {v}"
        ))
    })?;
    if n < 0 || n as u64 > body_len as u64 {
        return Err(Error::invalid_arg(format!(
            "inference header size should be in range (0, {body_len}), got: {v}"
        )));
    }
    Ok(Some(n as usize))
}

/// Decodes an infer request whose JSON header is `body[..header_len]` (the whole body when
/// `header_len` is `None`) and whose binary inputs follow it in input order.
pub fn infer_request(
    model: &str,
    version: &str,
    body: Bytes,
    header_len: Option<usize>,
) -> Result<(InferRequest, OutputFormat)> {
    let split = header_len.unwrap_or(body.len());
    if split > body.len() {
        return Err(Error::invalid_arg(format!(
            "inference header size should be in range (0, {}), got: {split}",
            body.len()
        )));
    }
    let doc = parse_json(&body[..split])?;
    let mut binary = body.slice(split..);
    let root = doc.as_object().ok_or_else(|| {
        unable(
            "inputs",
            format!("the request must be a JSON object, got a {}", kind(&doc)),
        )
    })?;
    let id = match root.get("id") {
        Some(v) => as_str(v, "id")?.to_string(),
        None => String::new(),
    };
    let params = match root.get("parameters") {
        Some(p) => params::request_params(as_object(p, "parameters")?)?,
        None => RequestParams::default(),
    };
    let inputs_json = root
        .get("inputs")
        .ok_or_else(|| unable("inputs", "the request has no 'inputs' member"))?;
    let mut inputs = Vec::new();
    let mut shm = ShmRefs::default();
    for input in as_array(inputs_json, "inputs")? {
        let (tensor, placed) = input_tensor(input, model, &mut binary)?;
        if let Some(r) = placed {
            shm.inputs.push((inputs.len(), r));
        }
        inputs.push(tensor);
    }
    if !binary.is_empty() {
        return Err(Error::invalid_arg(format!(
            "unexpected additional input data for model '{model}'"
        )));
    }
    let mut outputs = Vec::new();
    if let Some(list) = root.get("outputs") {
        for o in as_array(list, "outputs")? {
            let (output, placed) = params::requested_output(o)?;
            if let Some(r) = placed {
                shm.outputs.push((output.name.clone(), r));
            }
            outputs.push(output);
        }
    }
    let req = InferRequest {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id,
        inputs,
        outputs,
        params,
    };
    let format = OutputFormat {
        shm,
        ..OutputFormat::of(&req)
    };
    Ok((req, format))
}

/// Exactly one data source per input (Triton's ValidateInputContentType).
fn check_one_source(input: &Map<String, Value>, params: Option<&Map<String, Value>>) -> Result<()> {
    let has = |k: &str| params.is_some_and(|p| p.contains_key(k));
    let set: Vec<&str> = [
        (input.contains_key("data"), "'data'"),
        (has("binary_data_size"), "'binary_data_size'"),
        (has("shared_memory_region"), "'shared_memory_region'"),
    ]
    .into_iter()
    .filter_map(|(present, name)| present.then_some(name))
    .collect();
    if set.len() == 1 {
        return Ok(());
    }
    let but = if set.is_empty() {
        " no field is set".to_string()
    } else {
        format!(" set {}", set.join(" "))
    };
    Err(Error::invalid_arg(format!(
        "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', 'shared_memory_region' in 'parameters'. But{but}"
    )))
}

/// One input and, when its data is in shared memory, where (its data is then left empty).
fn input_tensor(
    v: &Value,
    model: &str,
    binary: &mut Bytes,
) -> Result<(InputTensor, Option<ShmRef>)> {
    let input = as_object(v, "inputs")?;
    let params = match input.get("parameters") {
        Some(p) => Some(as_object(p, "parameters")?),
        None => None,
    };
    check_one_source(input, params)?;
    let field = |k: &str| input.get(k).ok_or_else(|| unable(k, "missing member"));
    let name = as_str(field("name")?, "name")?.to_string();
    let datatype = as_str(field("datatype")?, "datatype")?.to_string();
    let mut shape = Vec::new();
    for d in as_array(field("shape")?, "shape")? {
        let d = as_u64(d, "shape")?;
        shape.push(i64::try_from(d).map_err(|_| unable("shape", "dimension too large"))?);
    }
    let param = |k: &str| params.and_then(|p| p.get(k));
    let placed = super::shm::tensor_ref(params)?;
    let data = if placed.is_some() {
        Bytes::new()
    } else if let Some(size) = param("binary_data_size") {
        let size = as_u64(size, "binary_data_size")?;
        if size > binary.len() as u64 {
            return Err(Error::invalid_arg(format!(
                "unexpected size for input '{name}', expecting {} additional bytes for model '{model}'",
                size - binary.len() as u64
            )));
        }
        binary.split_to(size as usize)
    } else {
        let Some(dtype) = DataType::from_wire(&datatype) else {
            return Err(Error::invalid_arg(format!(
                "invalid datatype '{datatype}' for input '{name}' for model '{model}'"
            )));
        };
        let count = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
            .ok_or_else(|| {
                unable(
                    "shape",
                    format!("{} has too many elements", shape_string(&shape)),
                )
            })?;
        tensor_json::decode_input(&name, dtype, count, &input["data"])?
    };
    let tensor = InputTensor {
        name,
        datatype,
        shape,
        data,
    };
    Ok((tensor, placed))
}

/// A header-less request (`Inference-Header-Content-Length: 0`): the whole body is the data of
/// the model's only input; its shape is deduced from the config (http-protocol.md §6.3).
/// Every output comes back binary.
pub(crate) fn raw_infer_request(
    spec: &ModelSpec,
    version: &str,
    body: Bytes,
) -> Result<(InferRequest, OutputFormat)> {
    let model = &spec.name;
    let [input]: &[IoSpec; 1] = spec.inputs.as_slice().try_into().map_err(|_| {
        Error::invalid_arg(format!(
            "Raw request must only have 1 input (found {}) to be deduced for model '{model}'",
            spec.inputs.len()
        ))
    })?;
    let (mut shape, data) = match input.dtype.byte_size() {
        None => {
            if input.dims != [1] {
                return Err(Error::invalid_arg(format!(
                    "Raw request for BYTES input '{}' of model '{model}' needs its configured shape to be [1], got {}",
                    input.name,
                    shape_string(&input.dims)
                )));
            }
            let len = u32::try_from(body.len()).map_err(|_| {
                Error::invalid_arg("Raw request BYTES element is larger than 4 GiB")
            })?;
            let mut data = BytesMut::with_capacity(body.len() + 4);
            data.extend_from_slice(&len.to_le_bytes());
            data.extend_from_slice(&body);
            (vec![1], data.freeze())
        }
        Some(elem) => (deduce_shape(input, model, elem, body.len())?, body),
    };
    if spec.batching() {
        shape.insert(0, 1);
    }
    let request = InferRequest {
        model_name: model.clone(),
        model_version: version.to_string(),
        id: String::new(),
        inputs: vec![InputTensor {
            name: input.name.clone(),
            datatype: input.dtype.as_str().to_string(),
            shape,
            data,
        }],
        outputs: Vec::new(),
        params: RequestParams {
            binary_output: true,
            ..RequestParams::default()
        },
    };
    let format = OutputFormat::of(&request);
    Ok((request, format))
}

/// The input's dims with its one variable dimension (if any) sized to fit `len` bytes.
fn deduce_shape(input: &IoSpec, model: &str, elem: usize, len: usize) -> Result<Vec<i64>> {
    let variable = input.dims.iter().filter(|&&d| d < 0).count();
    if variable == 0 {
        return Ok(input.dims.clone());
    }
    let fixed: usize = input
        .dims
        .iter()
        .filter(|&&d| d >= 0)
        .map(|&d| d as usize)
        .product();
    let row = fixed * elem;
    if variable > 1 || row == 0 || !len.is_multiple_of(row) {
        return Err(Error::invalid_arg(format!(
            "Raw request of {len} bytes cannot be deduced to a shape of input '{}' of model '{model}' with dims {} ({} bytes per element); at most one variable dimension is allowed",
            input.name,
            shape_string(&input.dims),
            elem
        )));
    }
    let n = (len / row) as i64;
    Ok(input
        .dims
        .iter()
        .map(|&d| if d < 0 { n } else { d })
        .collect())
}

/// The response body and, when some output went binary, the JSON header's length.
pub(crate) fn infer_response(
    resp: InferResponse,
    format: &OutputFormat,
) -> Result<(Bytes, Option<usize>)> {
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    let mut sections = Vec::new();
    for t in &resp.outputs {
        let mut o = Map::new();
        o.insert("name".into(), t.name().into());
        o.insert("datatype".into(), t.dtype().as_str().into());
        o.insert("shape".into(), t.shape().to_vec().into());
        if format.in_shm(t.name()) {
            // Written to the client's region: name, datatype and shape only.
        } else if format.is_binary(t.name()) {
            o.insert(
                "parameters".into(),
                json!({ "binary_data_size": t.data().len() }),
            );
            if !t.data().is_empty() {
                sections.push(t.data().clone());
            }
        } else {
            o.insert("data".into(), tensor_json::encode_output(t)?);
        }
        outputs.push(Value::Object(o));
    }
    let mut root = Map::new();
    if !resp.id.is_empty() {
        root.insert("id".into(), resp.id.into());
    }
    root.insert("model_name".into(), resp.model_name.into());
    root.insert(
        "model_version".into(),
        resp.model_version.to_string().into(),
    );
    root.insert("outputs".into(), Value::Array(outputs));
    let header = serde_json::to_vec(&Value::Object(root))
        .map_err(|e| Error::internal(format!("failed to write the response JSON: {e}")))?;
    if sections.is_empty() {
        return Ok((header.into(), None));
    }
    let header_len = header.len();
    let mut body =
        BytesMut::with_capacity(header_len + sections.iter().map(Bytes::len).sum::<usize>());
    body.extend_from_slice(&header);
    for s in &sections {
        body.extend_from_slice(s);
    }
    Ok((body.freeze(), Some(header_len)))
}

#[cfg(test)]
mod tests;
