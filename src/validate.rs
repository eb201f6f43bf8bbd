//! `InferRequest` + its `RequestContext` + `ModelSpec` → `ValidRequest`. The only constructor
//! of `ValidRequest` (`tokenized` is a text model's second step): everything downstream
//! (tokenizer, scheduler, backend) can trust names, types, shapes, sizes and the schedule.
//! Messages follow Triton's wording (behaviour.md §2, E7–E17) because clients match on them.

use std::collections::HashSet;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::{IoSpec, ModelSpec, SequenceSpec};
use crate::request::{
    CorrelationId, InferRequest, RequestContext, RequestParams, Schedule, SequenceParams,
};
use crate::tensor::{DataType, Tensor, bytes_codec, checked_byte_len, element_count, shape_string};

/// A request checked against one model version. Its fields are private: only this module
/// makes one (`validate`) or turns one into its tokenized form (`tokenized`), so what the
/// scheduler and the backend read through the accessors holds the checks made here.
#[derive(Debug)]
pub struct ValidRequest {
    ctx: RequestContext,
    /// Provided inputs, in the model's input order, shapes as the client sent them.
    inputs: Vec<Tensor>,
    /// Rows in this request: the batch dimension for batching models, else 1.
    batch_size: usize,
    /// Outputs to return, in response order.
    outputs: Vec<OutputRequest>,
    /// Text models, once tokenized.
    tokens: Option<Tokens>,
    /// Sequence models: the request's sequence id and flags (a non-zero id, checked
    /// against the model's CORRID control).
    sequence: Option<SequenceParams>,
}

#[derive(Debug, Clone, Copy)]
struct Tokens {
    /// The padded token length of this request's rows.
    seq_len: usize,
    /// The real (unpadded) tokens of all rows.
    real: usize,
}

impl ValidRequest {
    pub fn id(&self) -> &str {
        self.ctx.id()
    }

    /// The request's context: arrival, client deadline, span, and its schedule.
    pub fn context(&self) -> &RequestContext {
        &self.ctx
    }

    /// Priority level, 0-based (0 = the highest); 0 without dynamic batching.
    pub fn level(&self) -> usize {
        self.ctx.schedule().level
    }

    /// How long the request may wait in the queue; `None` = no limit.
    pub fn queue_timeout(&self) -> Option<Duration> {
        self.ctx.schedule().queue_timeout
    }

    /// Provided inputs, in the model's input order, shapes as the client sent them (text
    /// models once tokenized: the token inputs).
    pub fn inputs(&self) -> &[Tensor] {
        &self.inputs
    }

    /// Rows in this request: the batch dimension for batching models, else 1.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Outputs to return, in response order.
    pub fn outputs(&self) -> &[OutputRequest] {
        &self.outputs
    }

    /// Text models, once tokenized: the padded token length of this request's rows. Such
    /// requests batch with each other whatever their lengths (padded to the longest).
    pub fn seq_len(&self) -> Option<usize> {
        self.tokens.map(|t| t.seq_len)
    }

    /// Text models, once tokenized: the real (unpadded) tokens of all rows.
    pub fn real_tokens(&self) -> usize {
        self.tokens.map_or(0, |t| t.real)
    }

    /// Sequence models: the sequence id and START/END flags (`None` for other models).
    pub fn sequence(&self) -> Option<&SequenceParams> {
        self.sequence.as_ref()
    }
}

/// A text model's token inputs for one request, as the tokenizer made them.
#[derive(Debug)]
pub(crate) struct TokenInputs {
    /// INT64 `[batch_size, seq_len]` each.
    pub inputs: Vec<Tensor>,
    pub seq_len: usize,
    /// Tokens that are not padding.
    pub real_tokens: usize,
}

/// The second parsing step of a text model (`preprocess`): the text input becomes the
/// graph's token inputs. Each must be INT64 `[batch_size, seq_len]` and the real tokens must
/// fit in them; anything else is the tokenizer's bug, refused as an internal error. Time spent
/// tokenizing is charged to the client's deadline.
pub(crate) fn tokenized(mut req: ValidRequest, tokens: TokenInputs) -> Result<ValidRequest> {
    let TokenInputs {
        inputs,
        seq_len,
        real_tokens,
    } = tokens;
    let rows = req.batch_size;
    let want = [rows as i64, seq_len as i64];
    if let Some(t) = inputs
        .iter()
        .find(|t| t.dtype() != DataType::Int64 || t.shape() != want)
    {
        return Err(Error::internal(format!(
            "token input '{}' is {} {}, expected INT64 {}",
            t.name(),
            t.dtype().as_str(),
            shape_string(t.shape()),
            shape_string(&want)
        ))
        .with_request_id(req.id()));
    }
    if rows.checked_mul(seq_len).is_none_or(|n| real_tokens > n) {
        return Err(Error::internal(format!(
            "{real_tokens} real tokens do not fit in {rows} rows of {seq_len}"
        ))
        .with_request_id(req.id()));
    }
    req.inputs = inputs;
    req.tokens = Some(Tokens {
        seq_len,
        real: real_tokens,
    });
    req.ctx.charge_deadline(tokio::time::Instant::now());
    Ok(req)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputRequest {
    /// Index into `ModelSpec::outputs`.
    pub index: usize,
    pub classification: Option<u32>,
}

/// Checks `req` against `spec`; the request's `ctx` (from `Core::open_request`) moves into the
/// `ValidRequest` with the request's id and its schedule on the model. Errors carry the id.
pub(crate) fn validate(
    req: InferRequest,
    ctx: RequestContext,
    spec: &ModelSpec,
) -> Result<ValidRequest> {
    let id = req.id.clone();
    let sequence = req.params.sequence.clone();
    let mut valid = validate_inner(req, ctx, spec).map_err(|e| e.with_request_id(&id))?;
    if let Some(seq) = &spec.sequence {
        check_sequence(spec, seq, &sequence, valid.batch_size, &id)?;
        valid.sequence = Some(sequence);
    }
    Ok(valid)
}

/// The sequence checks that need only the model (sequence-batching.md §2, steps 3–5, in that
/// order): the id's kind fits the CORRID control, one row, a non-zero id. Only the CORRID
/// message carries the request id, as in Triton. Whether a continuation's sequence is running
/// is the scheduler's check (step 6).
fn check_sequence(
    spec: &ModelSpec,
    seq: &SequenceSpec,
    params: &SequenceParams,
    batch_size: usize,
    id: &str,
) -> Result<()> {
    let model = &spec.name;
    if let Some(corrid) = seq.corrid() {
        let want = corrid.dtype();
        let got = match params.id {
            CorrelationId::Str(_) => DataType::Bytes,
            CorrelationId::Uint(_) => DataType::Uint64,
        };
        if (got == DataType::Bytes) != (want == DataType::Bytes) {
            return Err(Error::invalid_arg(format!(
                "sequence batching control '{}' data-type is '{}', but model '{model}' expects '{}'",
                corrid.name,
                got.as_str(),
                want.as_str()
            ))
            .with_request_id(id));
        }
    }
    if batch_size > 1 {
        return Err(Error::invalid_arg(format!(
            "inference request to model '{model}' must specify batch-size 1 due to requirements of sequence batcher"
        )));
    }
    if params.id.is_none() {
        return Err(Error::invalid_arg(format!(
            "inference request to model '{model}' must specify a non-zero or non-empty correlation ID"
        )));
    }
    Ok(())
}

fn validate_inner(
    req: InferRequest,
    mut ctx: RequestContext,
    spec: &ModelSpec,
) -> Result<ValidRequest> {
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

    let schedule = schedule(spec, &req.params, ctx.deadline())?;
    ctx.admit(req.id, schedule);
    Ok(ValidRequest {
        ctx,
        inputs,
        batch_size,
        outputs,
        tokens: None,
        sequence: None,
    })
}

/// Where a request with `params` waits in `spec`'s queue, no longer than the client's
/// `deadline` allows. Priority 0 means the model's default level; a level the model does not
/// have, or a timeout override the model does not allow, is refused rather than silently
/// ignored.
pub(crate) fn schedule(
    spec: &ModelSpec,
    params: &RequestParams,
    deadline: Option<tokio::time::Instant>,
) -> Result<Schedule> {
    Ok(queue_policy(spec, params)?.within(deadline, tokio::time::Instant::now()))
}

fn queue_policy(spec: &ModelSpec, params: &RequestParams) -> Result<Schedule> {
    if spec.sequence.is_some() {
        // The sequence batcher applies any non-zero `timeout` to a sequence while it waits in
        // the backlog for a slot (sequence-batching.md §6.2); one priority level.
        return Ok(Schedule {
            level: 0,
            queue_timeout: (params.timeout_us > 0)
                .then(|| Duration::from_micros(params.timeout_us)),
        });
    }
    let Some(db) = &spec.dynamic_batching else {
        return Ok(Schedule::default());
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
    Ok(Schedule {
        level: level - 1,
        queue_timeout: (!timeout.is_zero()).then_some(timeout),
    })
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
