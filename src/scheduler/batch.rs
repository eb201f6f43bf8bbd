//! A batch: requests that execute together on one instance. Assembles the model inputs
//! (concatenating rows, applying `reshape`), runs, scatters outputs back to each request
//! (undoing `reshape`, classification), replies and records statistics.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::Span;

use crate::backend::instance::{Job, RunHealth};
use crate::backend::{ComputeTimes, Runner};
use crate::error::{Error, Result};
use crate::model::text::{self, Pooling, TextSpec};
use crate::model::{IoSpec, ModelSpec};
use crate::preprocess::post;
use crate::request::InferResponse;
use crate::telemetry::spans;
use crate::telemetry::stats::{FailureReason, ModelStats};
use crate::tensor::{DataType, Tensor, bytes_codec};
use crate::validate::{OutputRequest, ValidRequest};

use super::queue::Pending;
use super::reply::Replier;

/// What every batch of one model version shares.
pub struct ExecContext {
    pub spec: Arc<ModelSpec>,
    pub stats: Arc<ModelStats>,
    pub load: Arc<super::load::LoadTracker>,
}

/// One queued request and the channel its reply must go to. Whoever holds an `Entry` owns the
/// obligation to reply (or to drop it, which the waiting caller sees as cancellation).
pub struct Entry {
    /// The request, with its context (id, schedule, span: the batch span links to it).
    pub req: ValidRequest,
    pub reply: Replier,
    pub enqueued: Instant,
    /// When the queue timeout expires (`None` = never).
    pub deadline: Option<Instant>,
    /// Under `timeout_action: DELAY` an expired entry waits behind the others instead of failing.
    pub delay_on_timeout: bool,
    /// Open while the entry waits; dropping it (execution start or answer) ends the queue span.
    pub queue_span: Span,
}

impl Entry {
    /// Answers an entry that will not run: it leaves the queue and counts as a failure.
    pub fn fail(self, stats: &ModelStats, err: Error, why: FailureReason) {
        stats.left_queue(self.req.level());
        stats.record_failure(Instant::now() - self.enqueued, why);
        let id = self.req.id().to_string();
        self.reply.send(Err(err.with_request_id(&id)));
    }
}

impl Pending for Entry {
    fn rows(&self) -> usize {
        self.req.batch_size()
    }

    /// Requests batch together when they carry the same inputs with the same non-batch dims;
    /// tokenized text requests of one model batch whatever their token lengths.
    fn batches_with(&self, other: &Self) -> bool {
        match (self.req.seq_len(), other.req.seq_len()) {
            (Some(_), Some(_)) => return true,
            (None, None) => {}
            _ => return false,
        }
        let (a, b) = (self.req.inputs(), other.req.inputs());
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.name() == y.name() && x.shape().get(1..) == y.shape().get(1..))
    }

    fn seq_len(&self) -> Option<usize> {
        self.req.seq_len()
    }

    fn real_tokens(&self) -> usize {
        self.req.real_tokens()
    }

    fn enqueued(&self) -> Instant {
        self.enqueued
    }

    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn level(&self) -> usize {
        self.req.level()
    }

    fn delay_on_timeout(&self) -> bool {
        self.delay_on_timeout
    }
}

pub struct Batch {
    ctx: Arc<ExecContext>,
    entries: Vec<Entry>,
    /// The instance slot this batch occupies (dynamic batcher); released when execution ends.
    _permit: Option<OwnedSemaphorePermit>,
    /// When the batch took its slot.
    formed: Instant,
}

impl Batch {
    pub fn new(
        ctx: Arc<ExecContext>,
        entries: Vec<Entry>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Batch {
            ctx,
            entries,
            _permit: permit,
            formed: Instant::now(),
        }
    }

    /// Answers every request of a batch that will not run.
    pub fn fail(self, err: Error) {
        for entry in self.entries {
            entry.fail(&self.ctx.stats, err.clone(), FailureReason::Other);
        }
    }
}

impl Job for Batch {
    fn execute(self, runner: &mut dyn Runner) -> RunHealth {
        let Batch {
            ctx,
            entries,
            _permit,
            formed,
        } = self;
        let start = Instant::now();
        let _busy = ctx.stats.busy();
        // Work whose client has gone is never run.
        let (mut entries, gone): (Vec<Entry>, Vec<Entry>) =
            entries.into_iter().partition(|e| !e.reply.is_closed());
        for e in gone {
            e.fail(
                &ctx.stats,
                Error::cancelled("request cancelled: the client went away"),
                FailureReason::Canceled,
            );
        }
        if entries.is_empty() {
            return RunHealth::Ok;
        }
        for e in &mut entries {
            ctx.stats.left_queue(e.req.level());
            e.queue_span = Span::none();
        }
        let rows: Vec<usize> = entries.iter().map(|e| e.req.batch_size()).collect();
        let batch_span = spans::batch(
            entries.iter().map(|e| e.req.context().span()),
            rows.iter().sum(),
        );
        // A failure to assemble is the requests' fault; a failed run counts against the instance.
        let mut health = RunHealth::Ok;
        let spec = &ctx.spec;
        let result = assemble(spec, &entries).and_then(|(inputs, wanted)| {
            let names: Vec<&str> = wanted.iter().map(|&i| spec.graph_output(i)).collect();
            let _compute = spans::compute(&batch_span).entered();
            // Text: the graph's token output is pooled/normalised into the config output.
            let lengths = spec.text.as_ref().and_then(|_| {
                inputs
                    .iter()
                    .find(|t| t.name() == text::ATTENTION_MASK)
                    .map(post::row_lengths)
            });
            let mut out = runner
                .run(inputs, &names)
                .inspect_err(|_| health = RunHealth::Failed)?;
            if let Some(text) = &spec.text {
                let lengths = lengths.unwrap_or_default();
                let t0 = Instant::now();
                out.tensors = out
                    .tensors
                    .into_iter()
                    .map(|t| post::finish(t, &lengths, text.pooling, text.normalize, &text.output))
                    .collect::<Result<_>>()?;
                out.times.output += t0.elapsed();
            }
            Ok((wanted, out))
        });
        drop(batch_span);
        let (wanted, out) = match result {
            Ok(r) => r,
            Err(e) => {
                let now = Instant::now();
                let why = if health == RunHealth::Failed {
                    FailureReason::Backend
                } else {
                    FailureReason::Other
                };
                for entry in entries {
                    ctx.stats.record_failure(now - entry.enqueued, why);
                    entry
                        .reply
                        .send(Err(e.clone().with_request_id(entry.req.id())));
                }
                return health;
            }
        };
        // How long the batch held its instance slot so far: the run, and also the wait for the
        // instance thread to take it, which grows when the CPU is short (the queue drains at
        // that pace, not at the pace of the runs alone).
        ctx.load
            .record(formed.elapsed(), entries.iter().map(|e| e.req.level()));
        let times = out.times;
        let scattered = scatter(&ctx.spec, &wanted, out.tensors, &rows).and_then(|per_output| {
            match &ctx.spec.text {
                // Per-token outputs go back with each request's own length, not the batch's.
                Some(text) if text.pooling == Pooling::None => per_output
                    .into_iter()
                    .map(|pieces| {
                        pieces
                            .into_iter()
                            .zip(&entries)
                            .map(|(p, e)| {
                                post::trim_tokens(p, e.req.seq_len().unwrap_or(usize::MAX))
                            })
                            .collect::<Result<Vec<Tensor>>>()
                    })
                    .collect(),
                _ => Ok(per_output),
            }
        });
        ctx.stats.record_execution(rows.iter().sum(), times);
        respond(&ctx, entries, &wanted, scattered, start, times);
        RunHealth::Ok
    }
}

/// Builds the model's input tensors from the entries, and the sorted set of outputs any entry wants.
fn assemble(spec: &ModelSpec, entries: &[Entry]) -> Result<(Vec<Tensor>, Vec<usize>)> {
    let inputs = match &spec.text {
        Some(text) => token_inputs(spec, text, entries)?,
        None => {
            let mut inputs = Vec::with_capacity(spec.inputs.len());
            for io in &spec.inputs {
                let parts: Vec<&Tensor> = entries
                    .iter()
                    .filter_map(|e| e.req.inputs().iter().find(|t| t.name() == io.name))
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
        .flat_map(|e| e.req.outputs().iter().map(|o| o.index))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    Ok((inputs, wanted))
}

/// A text model's token inputs (the tokenizer replaced the text): every request's rows, padded
/// to the longest row of the batch.
fn token_inputs(spec: &ModelSpec, text: &TextSpec, entries: &[Entry]) -> Result<Vec<Tensor>> {
    let mut inputs = Vec::with_capacity(3);
    for t in entries[0].req.inputs() {
        let parts: Vec<&Tensor> = entries
            .iter()
            .filter_map(|e| e.req.inputs().iter().find(|p| p.name() == t.name()))
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

/// Splits each output into per-request pieces, with shapes back in the config's `dims`.
/// Returns, per output in `wanted` order, one tensor per entry.
fn scatter(
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

fn respond(
    ctx: &ExecContext,
    entries: Vec<Entry>,
    wanted: &[usize],
    scattered: Result<Vec<Vec<Tensor>>>,
    start: Instant,
    times: ComputeTimes,
) {
    let spec = &ctx.spec;
    let scattered = match scattered {
        Ok(s) => s,
        Err(e) => {
            let now = Instant::now();
            for entry in entries {
                ctx.stats
                    .record_failure(now - entry.enqueued, FailureReason::Backend);
                entry
                    .reply
                    .send(Err(e.clone().with_request_id(entry.req.id())));
            }
            return;
        }
    };
    for (i, entry) in entries.into_iter().enumerate() {
        let outputs: Result<Vec<Tensor>> = entry
            .req
            .outputs()
            .iter()
            .map(|o| {
                let k = wanted
                    .iter()
                    .position(|&w| w == o.index)
                    .expect("wanted covers every request");
                // A clone shares the data (`Bytes`); a request may name the same output twice.
                finish_output(spec, o, scattered[k][i].clone())
            })
            .collect();
        let now = Instant::now();
        match outputs {
            Ok(outputs) => {
                ctx.stats.record_success(
                    entry.req.batch_size(),
                    start - entry.enqueued,
                    now - entry.enqueued,
                    times,
                );
                let resp = InferResponse {
                    model_name: spec.name.clone(),
                    model_version: spec.version,
                    id: entry.req.id().to_string(),
                    outputs,
                };
                entry.reply.send(Ok(resp));
            }
            Err(e) => {
                ctx.stats
                    .record_failure(now - entry.enqueued, FailureReason::Other);
                entry.reply.send(Err(e.with_request_id(entry.req.id())));
            }
        }
    }
}

fn finish_output(spec: &ModelSpec, o: &OutputRequest, t: Tensor) -> Result<Tensor> {
    match o.classification {
        None => Ok(t),
        Some(k) => classify(spec, &spec.outputs[o.index], t, k as usize),
    }
}

/// The classification extension: top-k "value:index[:label]" strings per batch item.
fn classify(spec: &ModelSpec, io: &IoSpec, t: Tensor, k: usize) -> Result<Tensor> {
    let values = numeric_values(&t)?;
    let rows = if spec.batching() {
        t.shape().first().copied().unwrap_or(1).max(0) as usize
    } else {
        1
    };
    let per_row = values.len().checked_div(rows).unwrap_or(0);
    let k = k.min(per_row);
    let mut strings: Vec<String> = Vec::with_capacity(rows * k);
    for r in 0..rows {
        let row = &values[r * per_row..(r + 1) * per_row];
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| {
            row[b]
                .0
                .partial_cmp(&row[a].0)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        for &i in idx.iter().take(k) {
            let label = io.labels.as_ref().and_then(|l| l.get(i));
            strings.push(match label {
                Some(l) => format!("{}:{i}:{l}", row[i].1),
                None => format!("{}:{i}", row[i].1),
            });
        }
    }
    let shape = if spec.batching() {
        vec![rows as i64, k as i64]
    } else {
        vec![k as i64]
    };
    let data = bytes_codec::encode(strings.iter().map(|s| s.as_bytes()));
    Tensor::new(t.name(), DataType::Bytes, shape, data).map_err(|e| Error::internal(e.message))
}

/// Elements as (ordering key, text as Triton prints it).
fn numeric_values(t: &Tensor) -> Result<Vec<(f64, String)>> {
    macro_rules! ints {
        ($ty:ty) => {
            t.data()
                .chunks_exact(size_of::<$ty>())
                .map(|c| {
                    let v = <$ty>::from_le_bytes(c.try_into().expect("chunk size"));
                    (v as f64, v.to_string())
                })
                .collect()
        };
    }
    macro_rules! floats {
        ($conv:expr, $n:expr) => {
            t.data()
                .chunks_exact($n)
                .map(|c| {
                    let v: f64 = $conv(c);
                    (v, format!("{v:.6}"))
                })
                .collect()
        };
    }
    Ok(match t.dtype() {
        DataType::Bool | DataType::Uint8 => ints!(u8),
        DataType::Int8 => ints!(i8),
        DataType::Uint16 => ints!(u16),
        DataType::Int16 => ints!(i16),
        DataType::Uint32 => ints!(u32),
        DataType::Int32 => ints!(i32),
        DataType::Uint64 => ints!(u64),
        DataType::Int64 => ints!(i64),
        DataType::Fp16 => floats!(
            |c: &[u8]| half::f16::from_le_bytes([c[0], c[1]]).to_f64(),
            2
        ),
        DataType::Bf16 => floats!(
            |c: &[u8]| half::bf16::from_le_bytes([c[0], c[1]]).to_f64(),
            2
        ),
        DataType::Fp32 => floats!(
            |c: &[u8]| f32::from_le_bytes(c.try_into().expect("4")) as f64,
            4
        ),
        DataType::Fp64 => floats!(|c: &[u8]| f64::from_le_bytes(c.try_into().expect("8")), 8),
        DataType::Bytes => {
            return Err(Error::invalid_arg(format!(
                "classification is not supported for BYTES output '{}'",
                t.name()
            )));
        }
    })
}
