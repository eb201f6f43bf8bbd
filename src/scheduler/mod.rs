//! Scheduling: how validated requests reach a model's instances.
//!
//! Without `dynamic_batching` (or with `max_batch_size: 0`) this is Triton's default scheduler:
//! each request executes alone on whichever instance is free first, waiting in one bounded
//! queue shared by the instance threads. With `dynamic_batching` a batcher task (`batcher`)
//! owns priority queues and forms batches with the pure `planner`. Either way a full queue is
//! refused at once with "Exceeds maximum queue size".

pub mod batch;
pub mod batcher;
pub mod planner;
pub mod queue;
pub mod reply;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::request::InferResponse;
use crate::telemetry::spans;
use crate::telemetry::stats::Rejection;
use crate::validate::ValidRequest;

pub use batch::{Batch, Entry, ExecContext};
use batcher::DynamicScheduler;
use reply::Replier;

/// Requests queued per model version (all priority levels together) before new ones are refused.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

pub type Reply = oneshot::Receiver<Result<InferResponse>>;

/// Handle to a model version's scheduler. Dropping it closes the queue: what was queued still
/// runs, then the instance threads exit.
pub enum Scheduler {
    Direct {
        tx: Sender<Batch>,
        ctx: Arc<ExecContext>,
    },
    Dynamic(DynamicScheduler),
}

impl Scheduler {
    /// Creates the scheduler for `ctx.spec` with `instances` instance threads to feed; returns
    /// the receiver those threads share. Must run inside a tokio runtime (the batcher is a task).
    pub fn start(
        ctx: Arc<ExecContext>,
        instances: usize,
        capacity: usize,
    ) -> (Scheduler, Receiver<Batch>) {
        match ctx.spec.dynamic_batching.clone() {
            None => {
                let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
                (Scheduler::Direct { tx, ctx }, rx)
            }
            Some(db) => {
                // Permits bound the batches in flight to `instances`, so this never fills.
                let (jobs, rx) = crossbeam_channel::bounded(instances.max(1));
                (
                    Scheduler::Dynamic(DynamicScheduler::start(ctx, db, instances, capacity, jobs)),
                    rx,
                )
            }
        }
    }

    /// Queues one request without waiting. The reply arrives on the returned receiver; dropping
    /// it cancels the request if it has not started. `span` is the request's span (or
    /// `Span::none()`); it travels with the queued entry.
    pub fn enqueue(
        &self,
        req: ValidRequest,
        arrival: Instant,
        span: tracing::Span,
    ) -> Result<Reply> {
        let (tx, rx) = oneshot::channel();
        match self {
            Scheduler::Direct { tx: jobs, ctx } => {
                let id = req.id.clone();
                let level = req.level;
                let entry = Entry {
                    req,
                    reply: Replier::Direct(tx),
                    arrival,
                    enqueued: Instant::now(),
                    deadline: None,
                    delay_on_timeout: false,
                    queue_span: spans::queue(&span),
                    span,
                };
                // Counted before the send: once sent, the entry may start at once.
                ctx.stats.enqueued(level);
                match jobs.try_send(Batch::new(ctx.clone(), vec![entry], None)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        ctx.stats.left_queue(level);
                        ctx.stats.rejected(Rejection::QueueFull);
                        return Err(
                            Error::unavailable("Exceeds maximum queue size").with_request_id(&id)
                        );
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        ctx.stats.left_queue(level);
                        ctx.stats.rejected(Rejection::Stopping);
                        return Err(Error::unavailable(
                            "Server is stopping, scheduler for model has stopped accepting new inference requests",
                        ));
                    }
                }
            }
            Scheduler::Dynamic(d) => d.enqueue(req, arrival, tx, span)?,
        }
        Ok(rx)
    }

    /// Requests waiting for an instance.
    pub fn queued(&self) -> usize {
        match self {
            Scheduler::Direct { tx, .. } => tx.len(),
            Scheduler::Dynamic(d) => d.queued(),
        }
    }
}
