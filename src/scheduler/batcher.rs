//! The dynamic batcher: one task per model version owns the priority queues and decides,
//! through the pure `planner`, when to hand which requests to a free instance.
//!
//! Contracts: an instance slot (semaphore permit) is taken before a batch is formed and travels
//! with the batch, so batches keep growing while every instance is busy; admission counters are
//! checked by the caller at enqueue, so a full queue is refused without waiting; every entry the
//! task takes is answered (dispatched, expired or cancelled).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender as JobSender;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, sleep_until};

use super::batch::{Batch, Entry, ExecContext};
use super::planner::{Action, PlanConfig, plan};
use super::queue::Queues;
use super::reply::{Replier, Sequencer};
use crate::error::{Error, Result};
use crate::model::{DynamicBatching, TimeoutAction};
use crate::validate::ValidRequest;

/// Queue-size bookkeeping shared by the enqueuing callers and the batcher task.
pub struct Admission {
    /// Per level: (queued now, limit; 0 = none).
    levels: Vec<(AtomicUsize, usize)>,
    total: AtomicUsize,
    capacity: usize,
}

impl Admission {
    fn new(db: &DynamicBatching, capacity: usize) -> Self {
        Admission {
            levels: db
                .queue_policies
                .iter()
                .map(|p| (AtomicUsize::new(0), p.max_queue_size))
                .collect(),
            total: AtomicUsize::new(0),
            capacity,
        }
    }

    fn try_admit(&self, level: usize) -> bool {
        let (count, limit) = &self.levels[level];
        let ok = count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (*limit == 0 || n < *limit).then_some(n + 1)
            })
            .is_ok();
        if !ok {
            return false;
        }
        if self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_err()
        {
            count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn release(&self, level: usize) {
        self.levels[level].0.fetch_sub(1, Ordering::AcqRel);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn queued(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// The enqueueing side. Dropping every handle ends the task once the queues are drained.
pub struct DynamicScheduler {
    tx: mpsc::Sender<Entry>,
    admission: Arc<Admission>,
    order: Option<Arc<Sequencer>>,
    /// Keeps ticket order equal to queue order when responses must be released in order.
    order_lock: Mutex<()>,
    policy: DynamicBatching,
}

impl DynamicScheduler {
    /// Starts the batcher task on the current runtime. `jobs` reaches the instance threads;
    /// `instances` is how many batches may run at once.
    pub fn start(
        ctx: Arc<ExecContext>,
        db: DynamicBatching,
        instances: usize,
        capacity: usize,
        jobs: JobSender<Batch>,
    ) -> Self {
        let admission = Arc::new(Admission::new(&db, capacity));
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let cfg = PlanConfig {
            max_batch_size: ctx.spec.max_batch_size as usize,
            preferred_batch_sizes: db.preferred_batch_sizes.clone(),
            max_queue_delay: db.max_queue_delay,
            max_batch_tokens: ctx
                .spec
                .text
                .as_ref()
                .map(|t| t.max_batch_tokens)
                .filter(|&b| b > 0),
            max_padding_ratio: ctx
                .spec
                .text
                .as_ref()
                .map(|t| t.max_padding_ratio)
                .filter(|&r| r > 0.0),
        };
        let task = BatcherTask {
            ctx,
            rx,
            queues: Queues::new(db.priority_levels),
            permits: Arc::new(Semaphore::new(instances.max(1))),
            permit: None,
            jobs,
            admission: admission.clone(),
            cfg,
        };
        tokio::spawn(task.run());
        let order = db.preserve_ordering.then(|| Arc::new(Sequencer::default()));
        DynamicScheduler {
            tx,
            admission,
            order,
            order_lock: Mutex::new(()),
            policy: db,
        }
    }

    pub fn enqueue(
        &self,
        req: ValidRequest,
        arrival: Instant,
        reply: tokio::sync::oneshot::Sender<Result<crate::request::InferResponse>>,
    ) -> Result<()> {
        let level = req.level;
        if !self.admission.try_admit(level) {
            return Err(Error::unavailable("Exceeds maximum queue size").with_request_id(&req.id));
        }
        let enqueued = Instant::now();
        let policy = &self.policy.queue_policies[level];
        let deadline = req.queue_timeout.map(|t| enqueued + t);
        let _guard = self
            .order
            .as_ref()
            .map(|_| self.order_lock.lock().unwrap_or_else(|p| p.into_inner()));
        let reply = match &self.order {
            Some(order) => Replier::Ordered {
                seq: order.ticket(),
                tx: reply,
                order: order.clone(),
            },
            None => Replier::Direct(reply),
        };
        let entry = Entry {
            req,
            reply,
            arrival,
            enqueued,
            deadline,
            delay_on_timeout: policy.timeout_action == TimeoutAction::Delay,
        };
        match self.tx.try_send(entry) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.admission.release(level);
                let entry = match e {
                    mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e) => e,
                };
                let err = Error::unavailable(
                    "Server is stopping, scheduler for model has stopped accepting new inference requests",
                );
                entry.reply.send(Err(err.clone()));
                Err(err)
            }
        }
    }

    pub fn queued(&self) -> usize {
        self.admission.queued()
    }
}

struct BatcherTask {
    ctx: Arc<ExecContext>,
    rx: mpsc::Receiver<Entry>,
    queues: Queues<Entry>,
    permits: Arc<Semaphore>,
    /// A free instance slot held while waiting for the batch to fill.
    permit: Option<OwnedSemaphorePermit>,
    jobs: JobSender<Batch>,
    admission: Arc<Admission>,
    cfg: PlanConfig,
}

impl BatcherTask {
    async fn run(mut self) {
        let mut closed = false;
        loop {
            let now = Instant::now();
            for e in self.queues.expire(now) {
                self.fail(e, Error::unavailable("Request timeout expired"));
            }
            let mut wake = self.queues.next_deadline();
            let mut want_permit = false;
            if !self.queues.is_empty() {
                if self.permit.is_none() {
                    self.permit = self.permits.clone().try_acquire_owned().ok();
                }
                match self.permit.take() {
                    Some(permit) => {
                        for e in self.queues.remove_where(|e| e.reply.is_closed()) {
                            self.fail(
                                e,
                                Error::cancelled("request cancelled: the client went away"),
                            );
                        }
                        // Once closed, nothing more will arrive: do not wait for batches to fill.
                        let cfg = if closed {
                            PlanConfig {
                                max_queue_delay: Default::default(),
                                ..self.cfg.clone()
                            }
                        } else {
                            self.cfg.clone()
                        };
                        match plan(&mut self.queues, now, &cfg) {
                            Action::Dispatch(entries) => {
                                self.dispatch(entries, permit);
                                continue;
                            }
                            Action::WaitUntil(t) => {
                                self.permit = Some(permit);
                                wake = Some(wake.map_or(t, |w| w.min(t)));
                            }
                            Action::Idle => self.permit = Some(permit),
                        }
                    }
                    None => want_permit = true,
                }
            } else if closed {
                break;
            }
            tokio::select! {
                biased;
                msg = self.rx.recv(), if !closed => match msg {
                    Some(e) => {
                        self.queues.push(e);
                        while let Ok(e) = self.rx.try_recv() {
                            self.queues.push(e);
                        }
                    }
                    None => closed = true,
                },
                p = self.permits.clone().acquire_owned(), if want_permit => self.permit = p.ok(),
                _ = sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
                else => break,
            }
        }
        tracing::debug!(model = %self.ctx.spec.name, "batcher stops");
    }

    /// Answers an entry that will not run, counting it as a failure.
    fn fail(&self, e: Entry, err: Error) {
        self.admission.release(e.req.level);
        self.ctx.stats.record_failure(Instant::now() - e.enqueued);
        let id = e.req.id.clone();
        e.reply.send(Err(err.with_request_id(&id)));
    }

    fn dispatch(&self, entries: Vec<Entry>, permit: OwnedSemaphorePermit) {
        for e in &entries {
            self.admission.release(e.req.level);
        }
        if let Err(e) = self
            .jobs
            .try_send(Batch::new(self.ctx.clone(), entries, Some(permit)))
        {
            // Unreachable while permits bound the batches in flight to the channel's capacity;
            // if the instance threads are gone, answer instead of hanging.
            let batch = e.into_inner();
            batch.fail(Error::unavailable("the model's instances have stopped"));
        }
    }
}
