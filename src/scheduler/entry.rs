//! A queued request: the entry the queues, the planner and a batch pass along. Whoever holds an
//! `Entry` owns the obligation to reply.

use tokio::time::Instant;
use tracing::Span;

use super::queue::Pending;
use super::reply::Replier;
use crate::error::Error;
use crate::telemetry::stats::{FailureReason, ModelStats};
use crate::validate::ValidRequest;

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
