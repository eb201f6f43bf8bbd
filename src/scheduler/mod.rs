//! Scheduling: how validated requests reach a model's instances.
//!
//! This is Triton's default scheduler: each request executes alone (a client-side batch is one
//! execution) on whichever instance is free first. Requests wait in one bounded queue shared by
//! the model's instance threads; a full queue rejects at once with "Exceeds maximum queue size".

pub mod batch;

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::request::InferResponse;
use crate::validate::ValidRequest;

pub use batch::{Batch, Entry, ExecContext};

/// Queued requests per model version before new ones are refused.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// Handle to a model version's queue. Dropping every handle (and so the sender) closes the
/// queue; instance threads finish what was queued and exit.
pub struct Scheduler {
    tx: Sender<Batch>,
    ctx: Arc<ExecContext>,
}

pub type Reply = oneshot::Receiver<Result<InferResponse>>;

impl Scheduler {
    /// Creates the queue; the receiver goes to the instance threads.
    pub fn new(ctx: Arc<ExecContext>, capacity: usize) -> (Scheduler, Receiver<Batch>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        (Scheduler { tx, ctx }, rx)
    }

    /// Queues one request without waiting. The reply arrives on the returned receiver; dropping
    /// it cancels the request if it has not started.
    pub fn enqueue(&self, req: ValidRequest, arrival: Instant) -> Result<Reply> {
        let (reply, rx) = oneshot::channel();
        let id = req.id.clone();
        let entry = Entry { req, reply, arrival, enqueued: Instant::now() };
        match self.tx.try_send(Batch::new(self.ctx.clone(), vec![entry])) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(Error::unavailable("Exceeds maximum queue size").with_request_id(&id)),
            Err(TrySendError::Disconnected(_)) => Err(Error::unavailable(
                "Server is stopping, scheduler for model has stopped accepting new inference requests",
            )),
        }
    }

    /// Requests waiting for an instance.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}
