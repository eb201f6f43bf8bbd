//! Scheduling: how validated requests reach a model's instances.
//!
//! Without `dynamic_batching` (or with `max_batch_size: 0`) this is Triton's default scheduler:
//! each request executes alone on whichever instance is free first, waiting in one bounded
//! queue shared by the instance threads. With `dynamic_batching` a batcher task (`batcher`)
//! owns priority queues and forms batches with the pure `planner`. Either way a full queue is
//! refused at once with "Exceeds maximum queue size".

pub(crate) mod admission;
pub(crate) mod assembly;
pub(crate) mod batch;
pub(crate) mod batcher;
pub(crate) mod classification;
pub(crate) mod entry;
pub(crate) mod load;
pub(crate) mod planner;
pub(crate) mod queue;
pub(crate) mod reply;
pub(crate) mod sequence;
#[cfg(test)]
mod tests;
pub(crate) mod thread;
pub(crate) mod timer;

use std::sync::Arc;

use crate::backend::jobs::JobReceiver as Receiver;
use tokio::sync::oneshot;

use crate::error::Result;
use crate::request::InferResponse;
use crate::validate::ValidRequest;

pub(crate) use batch::{Batch, ExecContext};
use batcher::DynamicScheduler;
pub(crate) use thread::{BatcherThread, BatcherThreads};

/// Triton's text for a request that a scheduler no longer takes (the server is stopping, the
/// version is going away).
pub(crate) const STOPPING: &str =
    "Server is stopping, scheduler for model has stopped accepting new inference requests";

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
    /// Sequence models: requests one sequence may have queued.
    pub sequence_queue: usize,
    /// Sequence models: new sequences that may wait for a slot.
    pub sequence_backlog: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            capacity: DEFAULT_QUEUE_CAPACITY,
            priority_reserve: 0.2,
            sequence_queue: sequence::DEFAULT_PER_SEQUENCE,
            sequence_backlog: sequence::DEFAULT_BACKLOG,
        }
    }
}

/// Handle to a model version's scheduler. Dropping it closes the queue: what was queued still
/// runs, then the instance threads exit.
pub struct Scheduler(Kind);

/// A model with `sequence_batching` gets the sequence batcher; every other model the dynamic
/// batcher's scheduler (which also runs Triton's default scheduler, without its task).
enum Kind {
    Dynamic(DynamicScheduler),
    Sequence(sequence::SequenceScheduler),
}

impl Scheduler {
    /// Creates the scheduler for `ctx.spec` with `instances` instance threads to feed; returns
    /// the receiver those threads share. The batcher is a task on `thread`.
    /// Without `dynamic_batching` there is no task: each request runs alone, queued in the
    /// instance threads' channel (Triton's default scheduler), still with a bounded queue and
    /// cancellation.
    pub fn start(
        ctx: Arc<ExecContext>,
        instances: usize,
        limits: QueueLimits,
        thread: Arc<BatcherThread>,
    ) -> (Scheduler, Receiver<Batch>) {
        // Through a batcher, permits bound the batches in flight to `instances`; the default
        // scheduler queues in the channel itself, as deep as the queue. Either way it never fills.
        let channel = |queue_here: bool| {
            crate::backend::jobs::bounded(if queue_here {
                limits.capacity.max(1)
            } else {
                instances.max(1)
            })
        };
        if let Some(seq) = ctx.spec.sequence.clone() {
            let (jobs, rx) = channel(false);
            let caps = (limits.sequence_queue, limits.sequence_backlog);
            let s = sequence::SequenceScheduler::start(ctx, seq, instances, caps, jobs, thread);
            return (Scheduler(Kind::Sequence(s)), rx);
        }
        let (db, alone) = match ctx.spec.dynamic_batching.clone() {
            Some(db) => (db, false),
            None => (crate::model::DynamicBatching::default_scheduler(), true),
        };
        let (jobs, rx) = channel(alone);
        (
            Scheduler(Kind::Dynamic(DynamicScheduler::start(
                ctx, db, alone, instances, limits, jobs, thread,
            ))),
            rx,
        )
    }

    /// Instance slots free now (the dynamic batcher's; a sequence scheduler reports none).
    #[cfg(test)]
    pub(crate) fn free_instances(&self) -> usize {
        match &self.0 {
            Kind::Dynamic(d) => d.free_instances(),
            Kind::Sequence(_) => 0,
        }
    }

    /// Queues one request (with its context: span, schedule) without waiting. The reply
    /// arrives on the returned receiver; dropping it cancels the request if it has not started.
    /// A refusal is an error carrying its `Rejection`, for the caller to count.
    pub fn enqueue(&self, req: ValidRequest) -> Result<Reply> {
        let (tx, rx) = oneshot::channel();
        match &self.0 {
            Kind::Dynamic(d) => d.enqueue(req, tx)?,
            Kind::Sequence(s) => s.enqueue(req, tx)?,
        }
        Ok(rx)
    }

    /// Refuses now what `enqueue` would refuse for a request at `level` with `queue_timeout`
    /// (queue full, shed by priority, deadline unmeetable); holds no place when it admits.
    /// A sequence model decides with the whole request (its id), so it admits here.
    pub fn precheck(
        &self,
        level: usize,
        queue_timeout: Option<std::time::Duration>,
        id: &str,
    ) -> Result<()> {
        match &self.0 {
            Kind::Dynamic(d) => d.precheck(level, queue_timeout, id),
            Kind::Sequence(_) => Ok(()),
        }
    }

    /// The server is stopping: a sequence model refuses new sequences from now on and keeps
    /// serving the running ones (sequence-batching.md §3 row S); other models are unaffected.
    pub fn refuse_new_sequences(&self) {
        if let Kind::Sequence(s) = &self.0 {
            s.refuse_new_sequences();
        }
    }

    /// Sequences a sequence model is running or holding in its backlog (0 for other models).
    pub fn sequences(&self) -> usize {
        match &self.0 {
            Kind::Sequence(s) => s.sequences(),
            Kind::Dynamic(_) => 0,
        }
    }

    /// Whether sequence `id` runs on this (sequence) model version.
    pub(crate) fn runs_sequence(&self, id: &crate::request::CorrelationId) -> bool {
        match &self.0 {
            Kind::Sequence(s) => s.runs(id),
            Kind::Dynamic(_) => false,
        }
    }

    /// Ends every running sequence (see `SequenceScheduler::end_sequences`); the ids ended.
    pub(crate) fn end_sequences(&self) -> Vec<crate::request::CorrelationId> {
        match &self.0 {
            Kind::Sequence(s) => s.end_sequences(),
            Kind::Dynamic(_) => Vec::new(),
        }
    }

    /// Requests waiting for an instance.
    pub fn queued(&self) -> usize {
        match &self.0 {
            Kind::Dynamic(d) => d.queued(),
            Kind::Sequence(s) => s.queued(),
        }
    }
}
