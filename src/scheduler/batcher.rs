//! The dynamic batcher: one task per model version owns the priority queues and decides,
//! through the pure `planner`, when to hand which requests to a free instance.
//!
//! Contracts: an instance slot (semaphore permit) is taken before a batch is formed and travels
//! with the batch, so batches keep growing while every instance is busy; admission counters are
//! checked by the caller at enqueue, so a full queue is refused without waiting; every entry the
//! task takes is answered (dispatched, expired or cancelled). A request the task would dispatch
//! alone at once (each request alone or no delay, nothing else queued, a slot free) is sent to
//! the instances by `enqueue` itself. Queue delays are waited on the batcher thread's `Timer`
//! (microsecond resolution), and how late a delayed batch leaves is observed.
//!
//! A model without `dynamic_batching` (Triton's default scheduler: one level, no delay, no
//! queue timeouts) needs none of the task's decisions: its requests go straight into the
//! instance threads' shared FIFO channel, sized to the queue, and an instance takes the next
//! one when it is free. That saves the batcher thread's two wake-ups per request under load
//! (the enqueue, and the instance slot coming back).

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::jobs::JobSender;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use super::QueueLimits;
use super::admission::{Admission, QueuePlace};
use super::batch::{Batch, ExecContext};
use super::entry::Entry;
use super::planner::{Action, PlanConfig, plan};
use super::queue::Queues;
use super::reply::{Replier, Sequencer};
use super::thread::BatcherThread;
use crate::error::{Error, Rejection, Result};
use crate::model::{DynamicBatching, TimeoutAction};
use crate::telemetry::spans;
use crate::telemetry::stats::FailureReason;
use crate::validate::ValidRequest;

/// The enqueueing side. Dropping every handle ends the task once the queues are drained.
pub(crate) struct DynamicScheduler {
    route: Route,
    admission: Arc<Admission>,
    order: Option<Arc<Sequencer>>,
    /// Keeps ticket order equal to queue order when responses must be released in order.
    order_lock: Mutex<()>,
    policy: DynamicBatching,
    ctx: Arc<ExecContext>,
    /// The instance slots the task hands out; none free = every instance is busy (or one is
    /// held for a batch that is about to leave).
    permits: Arc<Semaphore>,
    /// The instance threads' channel, for requests that skip the batcher task.
    jobs: JobSender<Batch>,
}

/// How an admitted request reaches the instances.
enum Route {
    /// Through the batcher task. With `direct`, the planner would run a lone request at once
    /// (each request alone, or no queue delay), so one may skip the task (`try_direct`).
    Task {
        tx: mpsc::Sender<Entry>,
        direct: bool,
    },
    /// Triton's default scheduler: straight into `jobs`, which is as deep as the queue; the
    /// request holds its queue place until an instance takes it (`QueuePlace`).
    Shared,
}

impl DynamicScheduler {
    /// Starts the batcher task on the current runtime. `jobs` reaches the instance threads;
    /// `instances` is how many batches may run at once; `alone` runs every request by itself.
    pub(crate) fn start(
        ctx: Arc<ExecContext>,
        db: DynamicBatching,
        alone: bool,
        instances: usize,
        limits: QueueLimits,
        jobs: JobSender<Batch>,
        thread: Arc<BatcherThread>,
    ) -> Self {
        let admission = Arc::new(Admission::new(&db, limits));
        let permits = Arc::new(Semaphore::new(instances.max(1)));
        let order = db.preserve_ordering.then(|| Arc::new(Sequencer::default()));
        let route = if alone {
            Route::Shared
        } else {
            Self::start_task(&ctx, &db, limits, &jobs, &permits, &admission, thread)
        };
        DynamicScheduler {
            route,
            admission,
            order,
            order_lock: Mutex::new(()),
            policy: db,
            ctx,
            permits,
            jobs,
        }
    }

    /// Spawns the batcher task on `thread`; the route to it.
    fn start_task(
        ctx: &Arc<ExecContext>,
        db: &DynamicBatching,
        limits: QueueLimits,
        jobs: &JobSender<Batch>,
        permits: &Arc<Semaphore>,
        admission: &Arc<Admission>,
        thread: Arc<BatcherThread>,
    ) -> Route {
        let (tx, rx) = mpsc::channel(limits.capacity.max(1));
        let cfg = PlanConfig {
            max_batch_size: ctx.spec.max_batch_size as usize,
            max_requests: usize::MAX,
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
        let direct = cfg.max_queue_delay.is_zero();
        let task = BatcherTask {
            ctx: ctx.clone(),
            rx,
            queues: Queues::new(db.priority_levels),
            permits: permits.clone(),
            permit: None,
            jobs: jobs.clone(),
            admission: admission.clone(),
            cfg,
            _thread: thread.clone(),
        };
        thread.spawn(task.run());
        Route::Task { tx, direct }
    }

    /// Takes a place in the queue at `level`, or refuses the request (an overload refusal for
    /// the caller to count) when the queue is full, its level is shed, or the queue ahead
    /// cannot drain within `queue_timeout`. On success the place is held until `release`.
    fn reserve(&self, level: usize, queue_timeout: Option<Duration>, id: &str) -> Result<()> {
        if let Err(why) = self.admission.try_admit(level) {
            let retry = self.ctx.load.retry_hint(level, self.admission.ahead(level));
            let msg = match why {
                Rejection::ShedByPriority => format!(
                    "Exceeds maximum queue size: the queue of model '{}' is past the high-water mark for priority level {}",
                    self.ctx.spec.name,
                    level + 1
                ),
                _ => "Exceeds maximum queue size".to_string(),
            };
            return Err(Error::rejected(why, retry, msg).with_request_id(id));
        }
        // A deadline that the queue ahead cannot drain in time is refused now, not at expiry.
        if let Some(timeout) = queue_timeout
            && let Some(wait) = self.ctx.load.estimate_wait(
                level,
                self.admission.ahead(level) - 1,
                self.all_busy(level),
            )
            && wait > timeout
        {
            self.admission.release(level);
            return Err(Error::rejected(
                Rejection::DeadlineUnmeetable,
                wait,
                format!(
                    "Request deadline cannot be met: {} ms left, model '{}' needs about {} ms to reach it",
                    timeout.as_millis(),
                    self.ctx.spec.name,
                    wait.as_millis()
                ),
            )
            .with_request_id(id));
        }
        Ok(())
    }

    /// The admission decision for a request known only by its head (level and queue timeout),
    /// before its tensors have arrived: the refusal `enqueue` would give now, or Ok without
    /// holding a place (`enqueue` decides again with the whole request).
    pub(crate) fn precheck(
        &self,
        level: usize,
        queue_timeout: Option<Duration>,
        id: &str,
    ) -> Result<()> {
        self.reserve(level, queue_timeout, id)?;
        self.admission.release(level);
        Ok(())
    }

    /// Queues `req`, whose answer goes to `reply`. A refusal (queue full, shed, deadline, or a
    /// task that has stopped) comes back as an error carrying its `Rejection`; the scheduler
    /// counts no refusals, the caller does.
    pub(crate) fn enqueue(
        &self,
        req: ValidRequest,
        reply: tokio::sync::oneshot::Sender<Result<crate::request::InferResponse>>,
    ) -> Result<()> {
        let level = req.level();
        self.reserve(level, req.queue_timeout(), req.id())?;
        let enqueued = Instant::now();
        let policy = &self.policy.queue_policies[level];
        let deadline = req.queue_timeout().map(|t| enqueued + t);
        let _guard = self.order.as_ref().map(|_| self.order_lock.lock());
        let reply = match &self.order {
            Some(order) => Replier::Ordered {
                seq: order.ticket(),
                tx: reply,
                order: order.clone(),
            },
            None => Replier::Direct(reply),
        };
        let entry = Entry {
            queue_span: spans::queue(req.context().span()),
            req,
            reply,
            enqueued,
            deadline,
            delay_on_timeout: policy.timeout_action == TimeoutAction::Delay,
        };
        // Counted before the send: once sent, the entry may run and leave the queue at once.
        self.ctx.stats.enqueued(level);
        let tx = match &self.route {
            Route::Shared => return self.send_shared(entry),
            Route::Task { tx, .. } => tx,
        };
        let entry = match self.try_direct(entry) {
            None => return Ok(()),
            Some(entry) => entry,
        };
        match tx.try_send(entry) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.admission.release(level);
                self.ctx.stats.left_queue(level);
                let entry = match e {
                    mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e) => e,
                };
                let err = stopping();
                entry.reply.send(Err(err.clone()));
                Err(err)
            }
        }
    }

    pub(crate) fn queued(&self) -> usize {
        self.admission.queued()
    }

    /// Instance slots free now.
    #[cfg(test)]
    pub(crate) fn free_instances(&self) -> usize {
        self.permits.available_permits()
    }

    /// Hands `entry` straight to a free instance when the batcher task would do just that: the
    /// policy runs a lone request at once, nothing else is queued (this entry holds the only
    /// place, so no earlier or higher-priority request is passed over) and an instance slot is
    /// free. Saves the hop through the batcher thread (a wake-up and a context switch per
    /// request). Returns the entry when it must go through the task.
    fn try_direct(&self, entry: Entry) -> Option<Entry> {
        let direct = matches!(self.route, Route::Task { direct: true, .. });
        if !direct || self.admission.queued() != 1 {
            return Some(entry);
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Some(entry);
        };
        hand_off(&self.ctx, &self.jobs, &self.admission, vec![entry], permit);
        None
    }

    /// `Route::Shared`: the entry goes into the instances' channel with its queue place.
    fn send_shared(&self, entry: Entry) -> Result<()> {
        let place = QueuePlace {
            admission: self.admission.clone(),
            level: entry.req.level(),
        };
        let batch = Batch::queued(self.ctx.clone(), entry, place);
        match self.jobs.try_send(batch) {
            Ok(()) => Ok(()),
            // Full cannot happen while admission bounds the queue to the channel's capacity;
            // either way the instances cannot take it, and the batch answers its request.
            Err(e) => {
                let err = stopping();
                e.into_inner().fail(err.clone());
                Err(err)
            }
        }
    }

    /// Whether a request arriving at `level` finds every instance busy. Through the task, no
    /// instance slot is free; in the shared channel, some request is already waiting (every
    /// instance takes the next one as soon as it is free).
    fn all_busy(&self, level: usize) -> bool {
        match self.route {
            Route::Task { .. } => self.permits.available_permits() == 0,
            Route::Shared => self.admission.ahead(level) > 1,
        }
    }
}

/// The refusal of a request whose scheduler (or instances) stopped taking work.
fn stopping() -> Error {
    Error::unavailable(super::STOPPING).refused(Rejection::Stopping, None)
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
    /// Keeps the thread this task runs on running until the task ends.
    _thread: Arc<BatcherThread>,
}

impl BatcherTask {
    async fn run(mut self) {
        let mut closed = false;
        let mut timer = self._thread.timer();
        loop {
            let now = Instant::now();
            for e in self.queues.expire(now) {
                self.fail(
                    e,
                    Error::unavailable("Request timeout expired"),
                    FailureReason::Rejected,
                );
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
                                FailureReason::Canceled,
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
                                self.record_lateness(&entries, &cfg);
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
                _ = timer.sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
                else => break,
            }
        }
        tracing::debug!(model = %self.ctx.spec.name, "batcher stops");
    }

    /// Answers an entry that will not run, counting it as a failure.
    fn fail(&self, e: Entry, err: Error, why: FailureReason) {
        self.admission.release(e.req.level());
        e.fail(&self.ctx.stats, err, why);
    }

    /// Observes how long after its queue delay ended a batch that waited for it is leaving
    /// (the timer's precision, plus any time waiting for a free instance). Batches that left
    /// early (full, preferred size) or models without a delay are not observed.
    fn record_lateness(&self, entries: &[Entry], cfg: &PlanConfig) {
        if cfg.max_queue_delay.is_zero() {
            return;
        }
        let Some(oldest) = entries.iter().map(|e| e.enqueued).min() else {
            return;
        };
        let due = oldest + cfg.max_queue_delay;
        let now = Instant::now();
        if now >= due {
            self.ctx.stats.batcher_late(now - due);
        }
    }

    fn dispatch(&self, entries: Vec<Entry>, permit: OwnedSemaphorePermit) {
        hand_off(&self.ctx, &self.jobs, &self.admission, entries, permit);
    }
}

/// Hands `entries` to the instance threads as one batch holding the instance slot `permit`,
/// and gives up their places in the queue: the one way a batch leaves, from the batcher task or
/// straight from `enqueue`.
fn hand_off(
    ctx: &Arc<ExecContext>,
    jobs: &JobSender<Batch>,
    admission: &Admission,
    entries: Vec<Entry>,
    permit: OwnedSemaphorePermit,
) {
    for e in &entries {
        admission.release(e.req.level());
    }
    if let Err(e) = jobs.try_send(Batch::new(ctx.clone(), entries, Some(permit))) {
        // Unreachable while permits bound the batches in flight to the channel's capacity;
        // if the instance threads are gone, answer instead of hanging.
        e.into_inner()
            .fail(Error::unavailable("the model's instances have stopped"));
    }
}
