//! Scheduling: how validated requests reach a model's instances.
//!
//! Without `dynamic_batching` (or with `max_batch_size: 0`) this is Triton's default scheduler:
//! each request executes alone on whichever instance is free first, waiting in one bounded
//! queue shared by the instance threads. With `dynamic_batching` a batcher task (`batcher`)
//! owns priority queues and forms batches with the pure `planner`. Either way a full queue is
//! refused at once with "Exceeds maximum queue size".

pub(crate) mod assembly;
pub(crate) mod batch;
pub(crate) mod batcher;
pub(crate) mod classification;
pub(crate) mod entry;
pub(crate) mod load;
pub(crate) mod planner;
pub(crate) mod queue;
pub(crate) mod reply;
#[cfg(test)]
mod tests;
pub(crate) mod thread;
pub(crate) mod timer;

use std::sync::Arc;

use crossbeam_channel::Receiver;
use tokio::sync::oneshot;

use crate::error::Result;
use crate::request::InferResponse;
use crate::validate::ValidRequest;

pub(crate) use batch::{Batch, ExecContext};
use batcher::DynamicScheduler;
pub(crate) use thread::{BatcherThread, BatcherThreads};

/// Requests queued per model version (all priority levels together) before new ones are refused.
pub(crate) const DEFAULT_QUEUE_CAPACITY: usize = 1024;

pub(crate) type Reply = oneshot::Receiver<Result<InferResponse>>;

/// Queue limits shared by every model: the capacity of one version's queue and the share of it
/// kept for the highest priority level.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub capacity: usize,
    /// Fraction of `capacity` that only the highest priority may fill (lower levels are shed
    /// in order as the queue passes its high-water marks).
    pub priority_reserve: f64,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            capacity: DEFAULT_QUEUE_CAPACITY,
            priority_reserve: 0.2,
        }
    }
}

/// Handle to a model version's scheduler. Dropping it closes the queue: what was queued still
/// runs, then the instance threads exit.
pub struct Scheduler(DynamicScheduler);

impl Scheduler {
    /// Creates the scheduler for `ctx.spec` with `instances` instance threads to feed; returns
    /// the receiver those threads share. The batcher is a task on `thread`.
    /// Without `dynamic_batching` the same task runs every request alone (Triton's default
    /// scheduler), which still gives it bounded queues, deadlines and cancellation.
    pub fn start(
        ctx: Arc<ExecContext>,
        instances: usize,
        limits: QueueLimits,
        thread: Arc<BatcherThread>,
    ) -> (Scheduler, Receiver<Batch>) {
        // Permits bound the batches in flight to `instances`, so this never fills.
        let (jobs, rx) = crossbeam_channel::bounded(instances.max(1));
        let (db, alone) = match ctx.spec.dynamic_batching.clone() {
            Some(db) => (db, false),
            None => (crate::model::DynamicBatching::default_scheduler(), true),
        };
        (
            Scheduler(DynamicScheduler::start(
                ctx, db, alone, instances, limits, jobs, thread,
            )),
            rx,
        )
    }

    /// Queues one request (with its context: span, schedule) without waiting. The reply
    /// arrives on the returned receiver; dropping it cancels the request if it has not started.
    /// A refusal is an error carrying its `Rejection`, for the caller to count.
    pub fn enqueue(&self, req: ValidRequest) -> Result<Reply> {
        let (tx, rx) = oneshot::channel();
        self.0.enqueue(req, tx)?;
        Ok(rx)
    }

    /// Refuses now what `enqueue` would refuse for a request at `level` with `queue_timeout`
    /// (queue full, shed by priority, deadline unmeetable); holds no place when it admits.
    pub fn precheck(
        &self,
        level: usize,
        queue_timeout: Option<std::time::Duration>,
        id: &str,
    ) -> Result<()> {
        self.0.precheck(level, queue_timeout, id)
    }

    /// Requests waiting for an instance.
    pub fn queued(&self) -> usize {
        self.0.queued()
    }
}
