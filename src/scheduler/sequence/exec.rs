//! Executing one sequence batch on an instance thread: the rows in slot order (a padding row
//! repeats the first real request's inputs), the control inputs beside them, then each real
//! row's outputs to its request. Padding rows get no response and count in the executed batch
//! size, as in Triton's `batch_stats`.

use std::sync::Arc;

use tokio::time::Instant;
use tracing::Span;

use super::super::assembly::{assemble_rows, split};
use super::super::batch::{ExecContext, Execution, fail_all, respond};
use super::super::entry::Entry;
use super::Layout;
use super::controls::control_tensors;
use super::table::{RowState, SlotId};
use crate::backend::Runner;
use crate::backend::instance::RunHealth;
use crate::error::{Error, Result};
use crate::model::SequenceSpec;
use crate::telemetry::spans;
use crate::telemetry::stats::FailureReason;
use crate::tensor::Tensor;
use crate::validate::ValidRequest;

impl Execution for Layout {
    fn execute(
        self: Box<Self>,
        ctx: Arc<ExecContext>,
        entries: Vec<Entry>,
        runner: &mut dyn Runner,
    ) -> RunHealth {
        execute(ctx, entries, *self, runner)
    }
}

/// Runs the batch; `entries` are its real rows in row order. The layout (and with it the
/// completion guard) is dropped at the end, after every reply has been sent, so the next
/// request of a sequence never overtakes this one.
fn execute(
    ctx: Arc<ExecContext>,
    entries: Vec<Entry>,
    layout: Layout,
    runner: &mut dyn Runner,
) -> RunHealth {
    let start = Instant::now();
    let _busy = ctx.stats.busy();
    let mut rows = layout.rows.clone();
    // A request whose client has gone is answered here; its row becomes a padding row.
    let mut kept = Vec::with_capacity(entries.len());
    let mut real = rows.iter_mut().filter(|r| **r);
    for mut e in entries {
        let row = real.next();
        if e.reply.is_closed() {
            if let Some(r) = row {
                *r = false;
            }
            e.fail(
                &ctx.stats,
                Error::cancelled("request cancelled: the client went away"),
                FailureReason::Canceled,
            );
        } else {
            ctx.stats.left_queue(e.req.level());
            e.queue_span = Span::none();
            kept.push(e);
        }
    }
    if kept.is_empty() {
        return RunHealth::Ok;
    }
    let batch_span = spans::batch(kept.iter().map(|e| e.req.context().span()), rows.len());
    let mut health = RunHealth::Ok;
    let result = run(
        &ctx,
        &kept,
        &rows,
        &layout.states,
        runner,
        &batch_span,
        &mut health,
    );
    drop(batch_span);
    let mut layout = layout;
    match result {
        Ok((wanted, out)) => {
            layout.done.stored = out.states;
            let times = out.times;
            ctx.stats.record_execution(rows.len(), times);
            respond(&ctx, kept, &wanted, Ok(out.tensors), start, times);
        }
        Err(e) => {
            let why = if health == RunHealth::Failed {
                FailureReason::Backend
            } else {
                FailureReason::Other
            };
            fail_all(&ctx.stats, kept, &e, why);
        }
    }
    drop(layout);
    health
}

struct Outputs {
    /// Per wanted output, one piece per kept entry.
    tensors: Vec<Vec<Tensor>>,
    times: crate::backend::ComputeTimes,
    /// The next implicit state of each real row that keeps one.
    states: Vec<(SlotId, u64, Vec<Tensor>)>,
}

fn run(
    ctx: &ExecContext,
    kept: &[Entry],
    rows: &[bool],
    row_states: &[RowState],
    runner: &mut dyn Runner,
    batch_span: &Span,
    health: &mut RunHealth,
) -> Result<(Vec<usize>, Outputs)> {
    let spec = &ctx.spec;
    let seq = spec
        .sequence
        .as_ref()
        .ok_or_else(|| Error::internal("a sequence batch for a model without sequence_batching"))?;
    let mut next = kept.iter();
    let row_reqs: Vec<Option<&ValidRequest>> = rows
        .iter()
        .map(|&real| {
            if real {
                next.next().map(|e| &e.req)
            } else {
                None
            }
        })
        .collect();
    let filler = &kept[0].req;
    let reqs: Vec<&ValidRequest> = row_reqs.iter().map(|r| r.unwrap_or(filler)).collect();
    let (mut inputs, wanted) = assemble_rows(spec, &reqs)?;
    let params: Vec<_> = row_reqs
        .iter()
        .map(|r| r.and_then(|r| r.sequence()))
        .collect();
    inputs.extend(control_tensors(&seq.controls, &params, spec.batching())?);
    inputs.extend(state_inputs(seq, rows, row_states, spec.batching())?);
    let mut names: Vec<&str> = wanted.iter().map(|&i| spec.graph_output(i)).collect();
    names.extend(seq.states.iter().map(|s| s.output.as_str()));
    let mut out = {
        let _compute = spans::compute(batch_span).entered();
        runner
            .run(inputs, &names)
            .inspect_err(|_| *health = RunHealth::Failed)?
    };
    let state_out = out.tensors.split_off(wanted.len().min(out.tensors.len()));
    let states = next_states(seq, rows, row_states, state_out, spec.batching())?;
    let per_row = split(spec, &wanted, out.tensors, &vec![1; rows.len()])?;
    // Keep the real rows' pieces, in entry order.
    let tensors = per_row
        .into_iter()
        .map(|pieces| {
            pieces
                .into_iter()
                .zip(rows)
                .filter(|(_, real)| **real)
                .map(|(p, _)| p)
                .collect()
        })
        .collect();
    Ok((
        wanted,
        Outputs {
            tensors,
            times: out.times,
            states,
        },
    ))
}

/// Each state's input for the batch: a real row's slot state, or the initial state (a START,
/// a sequence without state yet, a padding row: padding never touches a real state).
fn state_inputs(
    seq: &SequenceSpec,
    rows: &[bool],
    row_states: &[RowState],
    batching: bool,
) -> Result<Vec<Tensor>> {
    seq.states
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let parts: Vec<&Tensor> = rows
                .iter()
                .enumerate()
                .map(|(r, &real)| {
                    let held = row_states.get(r).and_then(|rs| rs.state.as_ref());
                    match held.and_then(|v| v.get(k)) {
                        Some(t) if real => t,
                        _ => &s.initial,
                    }
                })
                .collect();
            if batching {
                Tensor::concat_rows(&parts)
            } else {
                Ok(parts[0].clone())
            }
        })
        .collect()
}

/// The states the model produced, one row per real row that keeps its state (not an END),
/// renamed to the state's input for the next request.
fn next_states(
    seq: &SequenceSpec,
    rows: &[bool],
    row_states: &[RowState],
    produced: Vec<Tensor>,
    batching: bool,
) -> Result<Vec<(SlotId, u64, Vec<Tensor>)>> {
    if produced.len() != seq.states.len() {
        return Err(Error::internal(format!(
            "the model returned {} of its {} implicit state outputs",
            produced.len(),
            seq.states.len()
        )));
    }
    let mut per_state: Vec<Vec<Tensor>> = Vec::with_capacity(produced.len());
    for (t, s) in produced.into_iter().zip(&seq.states) {
        let pieces = if batching {
            t.split_rows(&vec![1; rows.len()])?
        } else {
            vec![t]
        };
        if pieces.len() != rows.len() {
            return Err(Error::internal(format!(
                "implicit state output '{}' has {} rows, the batch {}",
                s.output,
                pieces.len(),
                rows.len()
            )));
        }
        per_state.push(
            pieces
                .into_iter()
                .map(|p| p.renamed(s.input.clone()))
                .collect(),
        );
    }
    let mut out = Vec::new();
    for (r, (&real, rs)) in rows.iter().zip(row_states).enumerate() {
        let Some((sid, generation)) = rs.keep.filter(|_| real) else {
            continue;
        };
        out.push((
            sid,
            generation,
            per_state.iter().map(|p| p[r].clone()).collect(),
        ));
    }
    Ok(out)
}
