//! `InferRequest` + `ModelSpec` → `ValidRequest`. The only constructor of `ValidRequest`:
//! everything downstream (scheduler, backend) can trust names, types, shapes and sizes.
//! Messages follow Triton's wording (behaviour.md §2, E7–E17) because clients match on them.

use std::collections::HashSet;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::{IoSpec, ModelSpec};
use crate::request::{InferRequest, RequestParams};
use crate::tensor::{DataType, Tensor, bytes_codec, checked_byte_len, element_count, shape_string};

/// A request checked against one model version.
#[derive(Debug)]
pub struct ValidRequest {
    pub id: String,
    /// Provided inputs, in the model's input order, shapes as the client sent them.
    pub inputs: Vec<Tensor>,
    /// Rows in this request: the batch dimension for batching models, else 1.
    pub batch_size: usize,
    /// Outputs to return, in response order.
    pub outputs: Vec<OutputRequest>,
    pub params: RequestParams,
    /// Priority level, 0-based (0 = the highest); 0 without dynamic batching.
    pub level: usize,
    /// How long the request may wait in the queue; `None` = no limit.
    pub queue_timeout: Option<Duration>,
    /// Text models, once tokenized: the padded token length of this request's rows. Such
    /// requests batch with each other whatever their lengths (padded to the longest).
    pub seq_len: Option<usize>,
    /// Text models, once tokenized: the real (unpadded) tokens of all rows.
    pub real_tokens: usize,
    _sealed: Sealed,
}

impl ValidRequest {
    /// The second parsing step of a text model (`preprocess`): the text input becomes the
    /// graph's token inputs, each `[batch_size, seq_len]`, holding `real_tokens` real tokens.
    pub fn with_token_inputs(
        mut self,
        inputs: Vec<Tensor>,
        seq_len: usize,
        real_tokens: usize,
    ) -> ValidRequest {
        self.inputs = inputs;
        self.seq_len = Some(seq_len);
        self.real_tokens = real_tokens;
        self
    }
}

/// Only this module can build a `ValidRequest`.
#[derive(Debug)]
struct Sealed;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputRequest {
    /// Index into `ModelSpec::outputs`.
    pub index: usize,
    pub classification: Option<u32>,
}

pub fn validate(req: InferRequest, spec: &ModelSpec) -> Result<ValidRequest> {
    let id = req.id.clone();
    validate_inner(req, spec).map_err(|e| e.with_request_id(&id))
}

fn validate_inner(req: InferRequest, spec: &ModelSpec) -> Result<ValidRequest> {
    let model = &spec.name;
    let mut seen = HashSet::new();
    for input in &req.inputs {
        if !seen.insert(input.name.as_str()) {
            return Err(Error::invalid_arg(format!(
                "input '{}' already exists in request",
                input.name
            )));
        }
        if !spec.inputs.iter().any(|i| i.name == input.name) {
            return Err(Error::invalid_arg(format!(
                "unexpected inference input '{}' for model '{model}'",
                input.name
            )));
        }
    }
    let missing: Vec<&str> = spec
        .inputs
        .iter()
        .filter(|i| !i.optional && !seen.contains(i.name.as_str()))
        .map(|i| i.name.as_str())
        .collect();
    if !missing.is_empty() {
        let required = spec.inputs.iter().filter(|i| !i.optional).count();
        let got: Vec<String> = req.inputs.iter().map(|i| format!("'{}'", i.name)).collect();
        let missing: Vec<String> = missing.iter().map(|n| format!("'{n}'")).collect();
        let expected = if required == spec.inputs.len() {
            format!("expected {required} inputs")
        } else {
            format!(
                "expected number of inputs between {required} and {}",
                spec.inputs.len()
            )
        };
        return Err(Error::invalid_arg(format!(
            "{expected} but got {} inputs for model '{model}'. Got input(s) [{}], but missing required input(s) [{}]. Please provide all required input(s).",
            req.inputs.len(),
            got.join(", "),
            missing.join(", ")
        )));
    }

    let mut batch: Option<usize> = None;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    let mut by_name: Vec<_> = req.inputs.into_iter().map(Some).collect();
    for io in &spec.inputs {
        let Some(slot) = by_name
            .iter_mut()
            .find(|i| i.as_ref().is_some_and(|i| i.name == io.name))
        else {
            continue;
        };
        let input = slot.take().expect("found above");
        let dtype = DataType::from_wire(&input.datatype)
            .filter(|d| *d == io.dtype)
            .ok_or_else(|| {
                Error::invalid_arg(format!(
                    "inference input '{}' data-type is '{}', but model '{model}' expects '{}'",
                    io.name,
                    input.datatype,
                    io.dtype.as_str()
                ))
            })?;
        if input.shape.iter().any(|&d| d < 0) {
            return Err(Error::invalid_arg(format!(
                "All input dimensions should be specified for input '{}' for model '{model}', got {}",
                io.name,
                shape_string(&input.shape)
            )));
        }
        let item_shape = if spec.batching() {
            let Some(&rows) = input.shape.first() else {
                return Err(Error::invalid_arg(format!(
                    "input '{}' has no shape but model requires batch dimension for '{model}'",
                    io.name
                )));
            };
            let rows = rows as usize;
            match batch {
                None => batch = Some(rows),
                Some(b) if b != rows => {
                    return Err(Error::invalid_arg(format!(
                        "input '{}' batch size does not match other inputs for '{model}'",
                        io.name
                    )));
                }
                Some(_) => {}
            }
            &input.shape[1..]
        } else {
            &input.shape[..]
        };
        check_dims(io, item_shape, &input.shape, spec)?;
        check_data(io, dtype, &input.shape, &input.data, model)?;
        // check_dims and check_data above hold the request to the constructor's invariant;
        // `new` checks it again rather than trusting that.
        inputs.push(Tensor::new(input.name, dtype, input.shape, input.data)?);
    }

    let batch_size = if spec.batching() {
        let rows = batch.unwrap_or(0);
        if rows as u64 > spec.max_batch_size as u64 {
            return Err(Error::invalid_arg(format!(
                "inference request batch-size must be <= {} for '{model}'",
                spec.max_batch_size
            )));
        }
        rows
    } else {
        1
    };

    let outputs = if req.outputs.is_empty() {
        (0..spec.outputs.len())
            .map(|index| OutputRequest {
                index,
                classification: None,
            })
            .collect()
    } else {
        let mut outs = Vec::with_capacity(req.outputs.len().min(spec.outputs.len()));
        let mut named = HashSet::new();
        for o in req.outputs {
            // Each requested output is answered once: repeats would multiply the response
            // (200 names of one output, 200 copies of it), so they are refused as Triton does.
            if !named.insert(o.name.clone()) {
                return Err(Error::invalid_arg(format!(
                    "output '{}' already exists in request",
                    o.name
                )));
            }
            let index = spec
                .outputs
                .iter()
                .position(|s| s.name == o.name)
                .ok_or_else(|| {
                    Error::invalid_arg(format!(
                        "unexpected inference output '{}' for model '{model}'",
                        o.name
                    ))
                })?;
            outs.push(OutputRequest {
                index,
                classification: o.classification,
            });
        }
        outs
    };

    let (level, queue_timeout) = schedule_params(spec, &req.params)?;
    Ok(ValidRequest {
        id: req.id,
        inputs,
        batch_size,
        outputs,
        params: req.params,
        level,
        queue_timeout,
        seq_len: None,
        real_tokens: 0,
        _sealed: Sealed,
    })
}

/// The priority level and queue timeout of a request to a dynamically batched model.
/// Priority 0 means the model's default level; a level the model does not have, or a timeout
/// override the model does not allow, is refused rather than silently ignored.
pub fn schedule_params(
    spec: &ModelSpec,
    params: &RequestParams,
) -> Result<(usize, Option<Duration>)> {
    let (level, timeout) = queue_policy_params(spec, params)?;
    let Some(deadline) = params.deadline else {
        return Ok((level, timeout));
    };
    let left = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_micros(1));
    Ok((level, Some(timeout.map_or(left, |t| t.min(left)))))
}

fn queue_policy_params(
    spec: &ModelSpec,
    params: &RequestParams,
) -> Result<(usize, Option<Duration>)> {
    let Some(db) = &spec.dynamic_batching else {
        return Ok((0, None));
    };
    let model = &spec.name;
    let level = match params.priority {
        0 => db.default_priority_level,
        p if db.priorities_enabled && p <= db.priority_levels as u64 => p as usize,
        p => {
            return Err(Error::invalid_arg(if db.priorities_enabled {
                format!(
                    "priority {p} is out of range for model '{model}': it has priority levels 1..={}",
                    db.priority_levels
                )
            } else {
                format!(
                    "priority {p} given but model '{model}' does not enable priority levels (dynamic_batching.priority_levels is 0)"
                )
            }));
        }
    };
    let policy = &db.queue_policies[level - 1];
    let default = policy.default_timeout;
    let timeout = match params.timeout_us {
        0 => default,
        t if policy.allow_timeout_override => {
            let t = Duration::from_micros(t);
            // A smaller request timeout wins; with no default timeout the request's own applies.
            if default.is_zero() { t } else { t.min(default) }
        }
        _ => {
            return Err(Error::invalid_arg(format!(
                "request timeout override is not allowed for model '{model}' (its queue policy sets allow_timeout_override: false)"
            )));
        }
    };
    Ok((level - 1, (!timeout.is_zero()).then_some(timeout)))
}

fn check_dims(io: &IoSpec, item_shape: &[i64], full: &[i64], spec: &ModelSpec) -> Result<()> {
    let fits = item_shape.len() == io.dims.len()
        && item_shape
            .iter()
            .zip(&io.dims)
            .all(|(&got, &want)| want == -1 || got == want);
    if fits {
        return Ok(());
    }
    let mut expected = io.dims.clone();
    let mut note = String::new();
    if spec.batching() {
        expected.insert(0, -1);
        note = " NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be prepended to each input shape. If you want to specify the full shape including the batch dim in your input dims config, try making the max_batch_size to be zero. See the model configuration docs for more info on max_batch_size.".into();
    }
    Err(Error::invalid_arg(format!(
        "unexpected shape for input '{}' for model '{}'. Expected {}, got {}.{note}",
        io.name,
        spec.name,
        shape_string(&expected),
        shape_string(full)
    )))
}

fn check_data(io: &IoSpec, dtype: DataType, shape: &[i64], data: &[u8], model: &str) -> Result<()> {
    let elements = element_count(shape);
    match dtype.byte_size() {
        Some(size) => {
            let expected = elements.and_then(|n| checked_byte_len(n, size));
            if expected != Some(data.len()) {
                let expected =
                    expected.map_or_else(|| format!("more than {}", isize::MAX), |n| n.to_string());
                return Err(Error::invalid_arg(format!(
                    "input byte size mismatch for input '{}' for model '{model}'. Expected {expected}, got {}",
                    io.name,
                    data.len()
                )));
            }
        }
        None => {
            let elements = elements.ok_or_else(|| {
                Error::invalid_arg(format!(
                    "input '{}' for model '{model}' has too many elements: {}",
                    io.name,
                    shape_string(shape)
                ))
            })?;
            bytes_codec::check(data, elements).map_err(|e| {
                Error::invalid_arg(format!(
                    "{e} for inference input '{}' for model '{model}'",
                    io.name
                ))
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
