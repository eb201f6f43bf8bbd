//! A batch: requests that execute together on one instance. Its execution assembles the model
//! inputs (`assembly`), runs them, scatters the outputs back to each request (`assembly`,
//! `classification`), replies and records statistics.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::Span;

use crate::backend::instance::{Job, RunHealth};
use crate::backend::{ComputeTimes, Runner};
use crate::error::{Error, Result};
use crate::model::ModelSpec;
use crate::model::text;
use crate::preprocess::post;
use crate::request::InferResponse;
use crate::telemetry::spans;
use crate::telemetry::stats::{FailureReason, ModelStats};
use crate::tensor::Tensor;

use super::admission::QueuePlace;
use super::assembly::{assemble, scatter};
use super::classification::finish_output;
use super::entry::Entry;

/// What every batch of one model version shares.
pub struct ExecContext {
    pub spec: Arc<ModelSpec>,
    pub stats: Arc<ModelStats>,
    pub load: Arc<super::load::LoadTracker>,
}

/// Boxed, so that a slot of the instances' channel is one pointer: the default scheduler's
/// channel is as deep as the queue (1024 by default) for every model version.
pub struct Batch(Box<Parts>);

const _: () = assert!(std::mem::size_of::<Batch>() == std::mem::size_of::<usize>());

struct Parts {
    ctx: Arc<ExecContext>,
    entries: Vec<Entry>,
    /// The instance slot this batch occupies (dynamic batcher); given back when the run ends.
    _permit: Option<OwnedSemaphorePermit>,
    /// When the batch took its slot.
    formed: Instant,
    /// A batch with its own way of executing (the sequence batcher's rows, padding rows and
    /// control inputs); `None` = the plain execution below.
    custom: Option<Box<dyn Execution>>,
    /// A request still holding its queue place (the default scheduler's shared channel): given
    /// back when an instance takes the batch.
    place: Option<QueuePlace>,
}

/// How a batch executes when it is not a plain batch of requests. Implemented by the
/// sequence batcher, which this module does not know.
pub(crate) trait Execution: Send + 'static {
    fn execute(
        self: Box<Self>,
        ctx: Arc<ExecContext>,
        entries: Vec<Entry>,
        runner: &mut dyn Runner,
    ) -> RunHealth;
}

impl Batch {
    pub fn new(
        ctx: Arc<ExecContext>,
        entries: Vec<Entry>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Batch(Box::new(Parts {
            ctx,
            entries,
            _permit: permit,
            formed: Instant::now(),
            custom: None,
            place: None,
        }))
    }

    /// A request that waits in the instances' channel, holding its queue `place`.
    pub(super) fn queued(ctx: Arc<ExecContext>, entry: Entry, place: QueuePlace) -> Self {
        Batch(Box::new(Parts {
            ctx,
            entries: vec![entry],
            _permit: None,
            formed: Instant::now(),
            custom: None,
            place: Some(place),
        }))
    }

    /// A batch that `exec` executes (the sequence batcher's).
    pub(super) fn custom(
        ctx: Arc<ExecContext>,
        entries: Vec<Entry>,
        exec: Box<dyn Execution>,
    ) -> Self {
        Batch(Box::new(Parts {
            ctx,
            entries,
            _permit: None,
            formed: Instant::now(),
            custom: Some(exec),
            place: None,
        }))
    }

    /// Answers every request of a batch that will not run.
    pub fn fail(self, err: Error) {
        let Parts { ctx, entries, .. } = *self.0;
        for entry in entries {
            entry.fail(&ctx.stats, err.clone(), FailureReason::Other);
        }
    }
}

impl Job for Batch {
    fn execute(self, runner: &mut dyn Runner) -> RunHealth {
        let Parts {
            ctx,
            entries,
            _permit: permit,
            mut formed,
            custom,
            place,
        } = *self.0;
        if place.is_some() {
            // It waited for this instance in the channel: its slot is held from now on.
            drop(place);
            formed = Instant::now();
        }
        if let Some(exec) = custom {
            return exec.execute(ctx, entries, runner);
        }
        let start = Instant::now();
        let busy = ctx.stats.busy();
        // Work whose client has gone is never run (no allocation when every client waits).
        let mut entries = entries;
        if entries.iter().any(|e| e.reply.is_closed()) {
            let (live, gone): (Vec<Entry>, Vec<Entry>) =
                entries.into_iter().partition(|e| !e.reply.is_closed());
            for e in gone {
                e.fail(
                    &ctx.stats,
                    Error::cancelled("request cancelled: the client went away"),
                    FailureReason::Canceled,
                );
            }
            entries = live;
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
        // The instance is done with the model: it counts as busy no longer (a client that has
        // its answer sees the gauge back down), and the batcher may form the next batch while
        // this thread scatters and answers (the channel holds at most one batch per slot).
        drop(busy);
        drop(permit);
        let (wanted, out) = match result {
            Ok(r) => r,
            Err(e) => {
                let why = if health == RunHealth::Failed {
                    FailureReason::Backend
                } else {
                    FailureReason::Other
                };
                fail_all(&ctx.stats, entries, &e, why);
                return health;
            }
        };
        // How long the batch held its instance slot so far: the run, and also the wait for the
        // instance thread to take it, which grows when the CPU is short (the queue drains at
        // that pace, not at the pace of the runs alone).
        ctx.load
            .record(formed.elapsed(), entries.iter().map(|e| e.req.level()));
        let times = out.times;
        let scattered = scatter(&ctx.spec, &wanted, out.tensors, &entries);
        ctx.stats.record_execution(rows.iter().sum(), times);
        respond(&ctx, entries, &wanted, scattered, start, times);
        RunHealth::Ok
    }
}

/// Answers every entry of a batch that left the queue (so no `left_queue`) with `err`.
pub(super) fn fail_all(stats: &ModelStats, entries: Vec<Entry>, err: &Error, why: FailureReason) {
    let now = Instant::now();
    for entry in entries {
        stats.record_failure(now - entry.enqueued, why);
        entry
            .reply
            .send(Err(err.clone().with_request_id(entry.req.id())));
    }
}

/// Answers each entry of an executed batch with its outputs (or the error that kept them).
pub(super) fn respond(
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
        Err(e) => return fail_all(&ctx.stats, entries, &e, FailureReason::Backend),
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
