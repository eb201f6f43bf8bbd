//! Triton's sequence batcher (sequence-batching.md): the scheduler of a model with
//! `sequence_batching`. Requests carry a correlation id; each sequence holds a slot of one
//! instance from its START to its END (or its idle timeout), new sequences wait in a backlog
//! while every slot is taken, and each batch feeds the model the control inputs (START, END,
//! READY, CORRID) beside the request inputs.
//!
//! Ownership: the routing table (`table`) sits behind one lock shared by the enqueuing callers
//! and the batcher task. Routing must be synchronous: whether a continuation's sequence is
//! running decides its error (E28) before the call returns, and an END forgets its id at
//! once. The task alone forms batches (`Table::form_*`), on a wake-up from an enqueue, a
//! finished batch (`Completion`, dropped when the execution ends) or a timer (idle timeout,
//! batch delay). Every entry taken from the table is answered: executed, or failed here.
//!
//! Slots stay bound to an instance index (an instance runs one batch at a time). Implicit state
//! lives with the slot (`table::Slot`), never in a request: a batch takes a clone of each row's
//! state with the request (none for a START, which resets it), and the state the model produced
//! goes back into the slot when the batch's `Completion` drops, before the sequence's next
//! request can be taken. A released slot (END, idle, cancel) drops its state.

mod controls;
mod exec;
mod table;

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::backend::jobs::JobSender;
use tokio::sync::{Notify, oneshot};
use tokio::time::{Instant, sleep_until};

use super::STOPPING;
use super::batch::{Batch, ExecContext};
use super::entry::Entry;
use super::reply::Replier;
use super::thread::BatcherThread;
use crate::error::{Error, Rejection, Result};
use crate::model::SequenceSpec;
use crate::model::sequence::Strategy;
use crate::request::{CorrelationId, InferResponse};
use crate::telemetry::spans;
use crate::telemetry::stats::FailureReason;
use crate::tensor::Tensor;
use crate::validate::ValidRequest;
use table::{Caps, Form, Refused, RowState, SeqEntry, SlotId, Table};

/// Requests one sequence may have queued, by default (`--sequence-max-queue-size`).
pub(crate) const DEFAULT_PER_SEQUENCE: usize = 256;
/// Sequences that may wait for a slot, by default (`--sequence-max-backlog`).
pub(crate) const DEFAULT_BACKLOG: usize = 1024;

/// A sequence batch's rows, padding included, and the guard that reports its end.
pub(crate) struct Layout {
    /// Per row: a real request (the next of the batch's entries, in order) or a padding row.
    pub rows: Vec<bool>,
    /// Per row: the implicit state it runs with and where its next state goes (padding
    /// rows: the initial state, kept nowhere).
    pub states: Vec<RowState>,
    pub done: Completion,
}

/// Dropped when a batch's execution is over (or the batch is dropped unrun): frees the
/// instance (and the oldest strategy's slots) and wakes the batcher.
pub(crate) struct Completion {
    shared: Arc<Shared>,
    instance: usize,
    slots: Vec<usize>,
    /// The states the batch produced, stored into their slots with the instance's release,
    /// so the sequence's next request (which waits for it) runs with them.
    pub stored: Vec<(SlotId, u64, Vec<Tensor>)>,
}

impl Drop for Completion {
    fn drop(&mut self) {
        let mut t = self.shared.table.lock();
        for (sid, generation, state) in self.stored.drain(..) {
            t.store_state(sid, generation, state);
        }
        t.finished(self.instance, &self.slots);
        drop(t);
        self.shared.wake.notify_one();
    }
}

struct Shared {
    table: Mutex<Table>,
    wake: Notify,
    closed: AtomicBool,
    /// The server is stopping: new sequences (START) are refused, running ones continue.
    refuse_starts: AtomicBool,
}

/// The enqueuing side. Dropping it stops the task (nothing is in flight by then: every
/// caller's pending request holds the model version, and with it this handle).
pub(crate) struct SequenceScheduler {
    shared: Arc<Shared>,
    ctx: Arc<ExecContext>,
}

impl Drop for SequenceScheduler {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl SequenceScheduler {
    /// Starts the batcher task of `ctx.spec` (which has `sequence_batching`) on `thread`, for
    /// `instances` instances whose threads read `jobs`.
    pub(crate) fn start(
        ctx: Arc<ExecContext>,
        seq: SequenceSpec,
        instances: usize,
        caps: (usize, usize),
        jobs: JobSender<Batch>,
        thread: Arc<BatcherThread>,
    ) -> Self {
        let slots = seq.slots_per_instance(ctx.spec.max_batch_size);
        let caps = Caps {
            per_sequence: caps.0,
            backlog: caps.1,
        };
        let shared = Arc::new(Shared {
            table: Mutex::new(Table::new(instances, slots, caps, seq.idle)),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            refuse_starts: AtomicBool::new(false),
        });
        let task = Task {
            shared: shared.clone(),
            ctx: ctx.clone(),
            seq,
            jobs,
            _thread: thread.clone(),
        };
        thread.spawn(task.run());
        SequenceScheduler { shared, ctx }
    }

    /// Routes `req` (validated: it carries a non-zero id). A continuation of no running
    /// sequence is refused (E28, counted invalid); a full sequence queue or backlog is an
    /// overload refusal with a retry hint.
    pub(crate) fn enqueue(
        &self,
        req: ValidRequest,
        reply: oneshot::Sender<Result<InferResponse>>,
    ) -> Result<()> {
        let model = &self.ctx.spec.name;
        let Some(params) = req.sequence().cloned() else {
            return Err(Error::internal(format!(
                "request to sequence model '{model}' reached its scheduler without a sequence id"
            )));
        };
        if params.start && self.shared.refuse_starts.load(Ordering::Acquire) {
            // Row S of sequence-batching.md §3: continuations of running sequences still pass.
            return Err(Error::rejected(
                Rejection::ServerDraining,
                std::time::Duration::from_secs(1),
                STOPPING,
            )
            .with_request_id(req.id()));
        }
        let enqueued = Instant::now();
        // Applies only while the sequence waits in the backlog (`Table::expire_backlog`).
        let deadline = req.queue_timeout().map(|t| enqueued + t);
        let entry = Entry {
            queue_span: spans::queue(req.context().span()),
            req,
            reply: Replier::Direct(reply),
            deadline,
            enqueued,
            delay_on_timeout: false,
        };
        let seq = SeqEntry {
            entry,
            id: params.id.clone(),
            start: params.start,
            end: params.end,
            row: RowState::default(),
        };
        let routed = {
            let mut t = self.shared.table.lock();
            let routed = t.route(seq, enqueued);
            if routed.is_ok() {
                // Counted under the lock: the task may take the entry the moment it is free.
                self.ctx.stats.enqueued(0);
                self.ctx.stats.sequences(t.active(), t.backlogged());
            }
            routed.map_err(|(why, e)| (why, t.queued(), e.entry.req.id().to_string()))
        };
        match routed {
            Ok(()) => {
                self.shared.wake.notify_one();
                Ok(())
            }
            Err((Refused::NotStarted, ..)) => Err(Error::invalid_arg(format!(
                "inference request for sequence {} to model '{model}' must specify the START flag on the first request of the sequence",
                params.id
            ))
            .refused(Rejection::Invalid, None)),
            Err((Refused::Full, queued, id)) => Err(Error::rejected(
                Rejection::QueueFull,
                self.ctx.load.retry_hint(0, queued),
                "Exceeds maximum queue size",
            )
            .with_request_id(&id)),
        }
    }

    pub(crate) fn queued(&self) -> usize {
        self.shared.table.lock().queued()
    }

    /// From now on new sequences are refused (the server stops); running ones continue.
    pub(crate) fn refuse_new_sequences(&self) {
        self.shared.refuse_starts.store(true, Ordering::Release);
    }

    /// Whether sequence `id` runs here (or waits in the backlog).
    pub(crate) fn runs(&self, id: &CorrelationId) -> bool {
        self.shared.table.lock().knows(id)
    }

    /// Ends every running sequence (a reload or unload stopped waiting for them): their
    /// queued requests are answered UNAVAILABLE `sequence <id> of model '<m>' ended by a
    /// reload`. Returns the ids ended, so later continuations get the same answer.
    pub(crate) fn end_sequences(&self) -> Vec<CorrelationId> {
        let ended = self.shared.table.lock().end_running();
        let mut ids = Vec::with_capacity(ended.len());
        for (id, entries) in ended {
            for e in entries {
                e.fail(
                    &self.ctx.stats,
                    ended_by_reload(&id, &self.ctx.spec.name),
                    FailureReason::Canceled,
                );
            }
            ids.push(id);
        }
        self.shared.wake.notify_one();
        ids
    }

    /// Sequences holding a slot or waiting for one.
    pub(crate) fn sequences(&self) -> usize {
        let t = self.shared.table.lock();
        t.active() + t.backlogged()
    }
}

/// The inputs the sequence batcher adds to a warmup run of `rows` rows (`spec` has
/// `sequence_batching`): each control as for the first request of a sequence (START and READY
/// true, END false, CORRID 1 or "1") and each implicit state's initial value.
pub(crate) fn warmup_inputs(spec: &crate::model::ModelSpec, rows: usize) -> Result<Vec<Tensor>> {
    let Some(seq) = &spec.sequence else {
        return Ok(Vec::new());
    };
    let rows = if spec.batching() { rows.max(1) } else { 1 };
    let id = match seq.corrid().map(|c| c.dtype()) {
        Some(crate::tensor::DataType::Bytes) => CorrelationId::Str("1".into()),
        _ => CorrelationId::Uint(1),
    };
    let first = crate::request::SequenceParams {
        id,
        start: true,
        end: false,
    };
    let params = vec![Some(&first); rows];
    let mut out = controls::control_tensors(&seq.controls, &params, spec.batching())?;
    for s in &seq.states {
        let parts = vec![&s.initial; rows];
        out.push(if spec.batching() {
            Tensor::concat_rows(&parts)?
        } else {
            s.initial.clone()
        });
    }
    Ok(out)
}

/// The answer to a request of a sequence that a reload or unload ended.
pub(crate) fn ended_by_reload(id: &CorrelationId, model: &str) -> Error {
    Error::unavailable(format!(
        "sequence {id} of model '{model}' ended by a reload"
    ))
}

struct Task {
    shared: Arc<Shared>,
    ctx: Arc<ExecContext>,
    seq: SequenceSpec,
    jobs: JobSender<Batch>,
    /// Keeps the batcher thread running until the task ends.
    _thread: Arc<BatcherThread>,
}

impl Task {
    async fn run(self) {
        loop {
            let closed = self.shared.closed.load(Ordering::Acquire);
            if closed {
                let left = self.shared.table.lock().drain();
                for e in left {
                    self.fail(e, Error::unavailable(STOPPING), FailureReason::Canceled);
                }
                break;
            }
            let (batches, wake) = self.plan(Instant::now());
            for b in batches {
                if let Err(e) = self.jobs.try_send(b) {
                    // Unreachable while an instance runs one batch at a time (the channel
                    // holds one per instance); if the threads are gone, answer instead.
                    e.into_inner()
                        .fail(Error::unavailable("the model's instances have stopped"));
                }
            }
            let notified = self.shared.wake.notified();
            match wake {
                Some(t) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = sleep_until(t) => {}
                    }
                }
                None => notified.await,
            }
        }
        tracing::debug!(model = %self.ctx.spec.name, "sequence batcher stops");
    }

    /// One pass under the lock: idle timeouts, then the next batch of every free instance.
    /// Returns the batches to send and when to look again (absent a wake-up).
    fn plan(&self, now: Instant) -> (Vec<Batch>, Option<Instant>) {
        let mut batches = Vec::new();
        let mut wake: Option<Instant> = None;
        let mut later = |t: Instant| wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
        let (cancelled, expired, timed_out) = {
            let mut t = self.shared.table.lock();
            let expired = t.expire_idle(now);
            let timed_out = t.expire_backlog(now);
            for instance in 0..t.instances() {
                if t.is_busy(instance) {
                    continue;
                }
                let (form, slots) = match &self.seq.strategy {
                    Strategy::Direct {
                        max_queue_delay,
                        min_slot_utilization,
                    } => (
                        t.form_direct(instance, now, *min_slot_utilization, *max_queue_delay),
                        Vec::new(),
                    ),
                    Strategy::Oldest {
                        preferred_batch_sizes,
                        max_queue_delay,
                        ..
                    } => {
                        let rows = (self.ctx.spec.max_batch_size as usize).max(1);
                        let preferred = preferred_batch_sizes.last().copied().unwrap_or(rows);
                        t.form_oldest(instance, now, rows, preferred, *max_queue_delay)
                    }
                };
                match form {
                    Form::Dispatch(rows) => {
                        let layout_rows = rows.iter().map(Option::is_some).collect();
                        let mut states = Vec::with_capacity(rows.len());
                        let mut entries: Vec<Entry> = Vec::with_capacity(rows.len());
                        for row in rows {
                            match row {
                                Some(mut e) => {
                                    states.push(std::mem::take(&mut e.row));
                                    entries.push(e.entry);
                                }
                                None => states.push(RowState::default()),
                            }
                        }
                        let layout = Layout {
                            rows: layout_rows,
                            states,
                            done: Completion {
                                shared: self.shared.clone(),
                                instance,
                                slots,
                                stored: Vec::new(),
                            },
                        };
                        batches.push(Batch::custom(self.ctx.clone(), entries, Box::new(layout)));
                    }
                    Form::WaitUntil(at) => later(at),
                    Form::Idle => {}
                }
            }
            for at in [t.next_expiry(), t.next_backlog_deadline()]
                .into_iter()
                .flatten()
            {
                later(at);
            }
            self.ctx.stats.sequences(t.active(), t.backlogged());
            (t.take_cancelled(), expired, timed_out)
        };
        for e in timed_out {
            self.fail(
                e,
                Error::unavailable("timeout of the corresponding sequence has been expired"),
                FailureReason::Rejected,
            );
        }
        if expired > 0 {
            self.ctx.stats.idle_released(expired);
        }
        for e in cancelled {
            self.fail(
                e,
                Error::cancelled(
                    "the sequence was released: its client went away or it was idle too long",
                ),
                FailureReason::Canceled,
            );
        }
        (batches, wake)
    }

    fn fail(&self, e: Entry, err: Error, why: FailureReason) {
        e.fail(&self.ctx.stats, err, why);
    }
}
