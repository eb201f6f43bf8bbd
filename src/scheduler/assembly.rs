//! Assembly: a batch's requests into the model's inputs (rows concatenated, token inputs padded
//! to the batch's longest row, `reshape` applied), and the model's outputs back into one piece
//! per request (split by rows, `reshape` undone, per-token outputs cut to each request's length).

use crate::error::{Error, Result};
use crate::model::text::{Pooling, TextSpec};
use crate::model::{IoSpec, ModelSpec};
use crate::preprocess::post;
use crate::tensor::{DataType, Tensor};
use crate::validate::ValidRequest;

use super::entry::Entry;

/// Builds the model's input tensors from the entries, and the sorted set of outputs any entry wants.
pub(super) fn assemble(spec: &ModelSpec, entries: &[Entry]) -> Result<(Vec<Tensor>, Vec<usize>)> {
    let reqs: Vec<&ValidRequest> = entries.iter().map(|e| &e.req).collect();
    assemble_rows(spec, &reqs)
}

/// `assemble` over requests in row order; a request may appear more than once (the sequence
/// batcher's padding rows repeat a real request's inputs).
pub(super) fn assemble_rows(
    spec: &ModelSpec,
    entries: &[&ValidRequest],
) -> Result<(Vec<Tensor>, Vec<usize>)> {
    let inputs = match &spec.text {
        Some(text) => token_inputs(spec, text, entries)?,
        None => {
            let mut inputs = Vec::with_capacity(spec.inputs.len());
            for io in &spec.inputs {
                let parts: Vec<&Tensor> = entries
                    .iter()
                    .filter_map(|e| e.inputs().iter().find(|t| t.name() == io.name))
                    .collect();
                if parts.is_empty() {
                    continue; // an optional input nobody sent
                }
                let mut t = if spec.batching() {
                    Tensor::concat_rows(&parts)?
                } else {
                    parts[0].clone()
                };
                if let Some(reshape) = &io.reshape {
                    // `reshaped` refuses a shape of another element count: a reshape that does
                    // not fit the data fails the batch instead of reaching ONNX Runtime.
                    let shape = model_shape(t.shape(), io, reshape, spec.batching());
                    t = t.reshaped(shape).map_err(|e| Error::internal(e.message))?;
                }
                inputs.push(t);
            }
            inputs
        }
    };
    let mut wanted: Vec<usize> = entries
        .iter()
        .flat_map(|e| e.outputs().iter().map(|o| o.index))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    Ok((inputs, wanted))
}

/// A text model's token inputs (the tokenizer replaced the text): every request's rows, padded
/// to the longest row of the batch.
fn token_inputs(
    spec: &ModelSpec,
    text: &TextSpec,
    entries: &[&ValidRequest],
) -> Result<Vec<Tensor>> {
    let mut inputs = Vec::with_capacity(3);
    for t in entries[0].inputs() {
        let parts: Vec<&Tensor> = entries
            .iter()
            .filter_map(|e| e.inputs().iter().find(|p| p.name() == t.name()))
            .filter(|p| p.dtype() == DataType::Int64 && p.shape().len() == 2)
            .collect();
        if parts.len() != entries.len() {
            return Err(Error::internal(format!(
                "text model '{}': input '{}' is not a tokenized input of every request in the batch",
                spec.name,
                t.name()
            )));
        }
        inputs.push(post::pad_concat(&parts, text.pad_value(t.name()))?);
    }
    Ok(inputs)
}

/// Applies each input's `reshape` (warmup samples use this to look like assembled batches).
pub(crate) fn model_inputs(spec: &ModelSpec, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
    inputs
        .into_iter()
        .map(|t| {
            match spec
                .inputs
                .iter()
                .find(|io| io.name == t.name())
                .and_then(|io| Some((io, io.reshape.as_ref()?)))
            {
                Some((io, reshape)) => {
                    let shape = model_shape(t.shape(), io, reshape, spec.batching());
                    t.reshaped(shape)
                }
                None => Ok(t),
            }
        })
        .collect()
}

/// The shape the model sees for an input with `reshape`: the request's variable dims fill the
/// reshape's -1 entries in order.
fn model_shape(shape: &[i64], io: &IoSpec, reshape: &[i64], batching: bool) -> Vec<i64> {
    let (head, item) = if batching {
        (&shape[..1], &shape[1..])
    } else {
        (&shape[..0], shape)
    };
    let mut vars = item
        .iter()
        .zip(&io.dims)
        .filter(|(_, d)| **d == -1)
        .map(|(s, _)| *s);
    let mut out = head.to_vec();
    out.extend(
        reshape
            .iter()
            .map(|&r| if r == -1 { vars.next().unwrap_or(1) } else { r }),
    );
    out
}

/// Splits each output into per-request pieces, with shapes back in the config's `dims`; a text
/// model's per-token outputs go back with each request's own length, not the batch's.
/// Returns, per output in `wanted` order, one tensor per entry.
pub(super) fn scatter(
    spec: &ModelSpec,
    wanted: &[usize],
    tensors: Vec<Tensor>,
    entries: &[Entry],
) -> Result<Vec<Vec<Tensor>>> {
    let rows: Vec<usize> = entries.iter().map(|e| e.req.batch_size()).collect();
    let per_output = split(spec, wanted, tensors, &rows)?;
    match &spec.text {
        Some(text) if text.pooling == Pooling::None => per_output
            .into_iter()
            .map(|pieces| {
                pieces
                    .into_iter()
                    .zip(entries)
                    .map(|(p, e)| post::trim_tokens(p, e.req.seq_len().unwrap_or(usize::MAX)))
                    .collect::<Result<Vec<Tensor>>>()
            })
            .collect(),
        _ => Ok(per_output),
    }
}

/// Each output in `wanted` order, split into one piece of `rows[i]` rows per request, in the
/// config's data type and `dims`.
pub(super) fn split(
    spec: &ModelSpec,
    wanted: &[usize],
    tensors: Vec<Tensor>,
    rows: &[usize],
) -> Result<Vec<Vec<Tensor>>> {
    let mut out = Vec::with_capacity(wanted.len());
    for (&index, mut t) in wanted.iter().zip(tensors) {
        let io = &spec.outputs[index];
        if io.reshape.is_some() {
            let shape = config_shape(t.shape(), io, spec.batching());
            t = t.reshaped(shape).map_err(|e| {
                Error::internal(format!(
                    "output '{}' does not fit its dims: {}",
                    io.name, e.message
                ))
            })?;
        }
        if t.dtype() != io.dtype {
            return Err(Error::internal(format!(
                "model produced {} for output '{}', its configuration says {}",
                t.dtype().as_str(),
                io.name,
                io.dtype.as_str()
            )));
        }
        let pieces = if spec.batching() {
            t.split_rows(rows)?
        } else {
            vec![t]
        };
        out.push(pieces);
    }
    Ok(out)
}

/// Undoes an output `reshape`: dims keep their fixed entries and take the rest from the model's shape.
fn config_shape(shape: &[i64], io: &IoSpec, batching: bool) -> Vec<i64> {
    let (head, item) = if batching {
        (&shape[..1.min(shape.len())], &shape[1.min(shape.len())..])
    } else {
        (&shape[..0], shape)
    };
    // Checked products: an overflow leaves the dim at -1, which `Tensor::reshaped` refuses.
    let fixed = io
        .dims
        .iter()
        .filter(|&&d| d > 0)
        .try_fold(1i64, |n, &d| n.checked_mul(d));
    let elements = item.iter().try_fold(1i64, |n, &d| n.checked_mul(d));
    let vars = io.dims.iter().filter(|&&d| d == -1).count();
    let mut out = head.to_vec();
    for &d in &io.dims {
        out.push(match (d, fixed, elements) {
            (-1, Some(f), Some(e)) if vars == 1 && f > 0 => e / f,
            (-1, ..) => -1,
            _ => d,
        });
    }
    out
}
