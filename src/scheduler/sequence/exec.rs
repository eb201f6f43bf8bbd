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
use crate::backend::Runner;
use crate::backend::instance::RunHealth;
use crate::error::{Error, Result};
use crate::telemetry::spans;
use crate::telemetry::stats::FailureReason;
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
    let result = run(&ctx, &kept, &rows, runner, &batch_span, &mut health);
    drop(batch_span);
    match result {
        Ok((wanted, out)) => {
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
    tensors: Vec<Vec<crate::tensor::Tensor>>,
    times: crate::backend::ComputeTimes,
}

fn run(
    ctx: &ExecContext,
    kept: &[Entry],
    rows: &[bool],
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
    let names: Vec<&str> = wanted.iter().map(|&i| spec.graph_output(i)).collect();
    let out = {
        let _compute = spans::compute(batch_span).entered();
        runner
            .run(inputs, &names)
            .inspect_err(|_| *health = RunHealth::Failed)?
    };
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
        },
    ))
}
