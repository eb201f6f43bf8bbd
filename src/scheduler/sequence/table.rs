//! The sequence batcher's state and its decisions, with no I/O: which slot or backlog queue a
//! request joins (or why it is refused), which slots an idle timeout frees, and which requests
//! an instance's next batch takes (sequence-batching.md §5, §6).
//!
//! Contracts: every entry taken out of the table (a batch, an expired or cancelled sequence) is
//! handed back to the caller, who must answer it; a slot is in exactly one of three states:
//! free (in the heap, empty queue), owned by a running id (`owner`), or draining (its END was
//! routed: no owner, its queue ends with the END request). Requests of one sequence leave in
//! arrival order, at most one per batch.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::super::entry::Entry;
use super::super::queue::Pending;
use crate::request::CorrelationId;
use crate::tensor::Tensor;

/// One queued request of a sequence, with the flags it was routed with.
pub(crate) struct SeqEntry {
    pub entry: Entry,
    pub id: CorrelationId,
    pub start: bool,
    pub end: bool,
    /// Filled when a batch takes the request (`take_head`): its slot's implicit state.
    pub row: RowState,
}

/// The implicit state a batch row runs with, and where its next state goes.
#[derive(Default)]
pub(crate) struct RowState {
    /// The slot's state (one tensor per state, one row each); `None` = the initial state
    /// (a START request, or a sequence with no state yet).
    pub state: Option<Vec<Tensor>>,
    /// The slot and its generation that the model's new state is stored into after the run;
    /// `None` for an END request (its state is freed with it).
    pub keep: Option<(SlotId, u64)>,
}

/// A sequence slot: `slot` is the batch row (direct) or candidate index (oldest) within
/// `instance`. Ordered slot first, so the free heap hands out the lowest slot index across
/// all instances first (as Triton packs sequences into low rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SlotId {
    pub slot: usize,
    pub instance: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Slot(SlotId),
    /// The key of a backlog queue.
    Backlog(u64),
}

#[derive(Default)]
struct Slot {
    /// The running id that owns the slot; `None` when free or draining after its END.
    owner: Option<CorrelationId>,
    queue: VecDeque<SeqEntry>,
    /// Arrival of the owner's latest request: the idle timer counts from here.
    last_arrival: Option<Instant>,
    /// Oldest strategy: a request of this slot is executing (the next one waits for it).
    in_flight: bool,
    free: bool,
    /// The implicit state the sequence's next request runs with (§7); `None` = initial.
    state: Option<Vec<Tensor>>,
    /// Bumped each time the slot is released, so a batch that ran for an earlier sequence
    /// never stores its state into the next one.
    generation: u64,
}

/// A new sequence waiting for a slot.
struct Backlogged {
    key: u64,
    id: CorrelationId,
    entries: VecDeque<SeqEntry>,
}

struct Instance {
    /// A batch of this instance is executing (an instance runs one batch at a time).
    busy: bool,
    slots: Vec<Slot>,
}

/// A backlog queue's deadline: the earliest of its requests' deadlines.
fn deadline(b: &Backlogged) -> Option<Instant> {
    b.entries.iter().filter_map(|e| e.entry.deadline).min()
}

/// Why a request was not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// A continuation (no START) for an id that is neither running nor backlogged (E28).
    NotStarted,
    /// The sequence's queue or the backlog is at its cap.
    Full,
}

/// Caps on what may wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    /// Requests one sequence may have queued (in its slot or in the backlog).
    pub per_sequence: usize,
    /// Sequences that may wait in the backlog for a slot.
    pub backlog: usize,
}

/// What an instance should do next.
pub(crate) enum Form {
    /// Run these rows: `Some` = a real request (in row order), `None` = a padding row.
    Dispatch(Vec<Option<SeqEntry>>),
    /// Nothing to run before this instant (a batch is waiting to fill).
    WaitUntil(Instant),
    Idle,
}

pub(crate) struct Table {
    routes: HashMap<CorrelationId, Route>,
    instances: Vec<Instance>,
    free: BinaryHeap<Reverse<SlotId>>,
    /// Oldest first.
    backlog: VecDeque<Backlogged>,
    next_key: u64,
    caps: Caps,
    idle: Duration,
    /// Entries answered outside a batch (cancelled sequences), for the caller to fail.
    cancelled: Vec<Entry>,
}

impl Table {
    pub(crate) fn new(instances: usize, slots: usize, caps: Caps, idle: Duration) -> Self {
        let mut free = BinaryHeap::with_capacity(instances * slots);
        let instances = (0..instances.max(1))
            .map(|instance| Instance {
                busy: false,
                slots: (0..slots.max(1))
                    .map(|slot| {
                        free.push(Reverse(SlotId { slot, instance }));
                        Slot {
                            free: true,
                            ..Default::default()
                        }
                    })
                    .collect(),
            })
            .collect();
        Table {
            routes: HashMap::new(),
            instances,
            free,
            backlog: VecDeque::new(),
            next_key: 0,
            caps,
            idle,
            cancelled: Vec::new(),
        }
    }

    fn slot(&mut self, id: SlotId) -> &mut Slot {
        &mut self.instances[id.instance].slots[id.slot]
    }

    /// Routes one request (§5.2): to its sequence's slot or backlog queue, a new START to the
    /// lowest free slot or a new backlog queue. An END forgets the id at once. On refusal the
    /// entry comes back (boxed: it is large) with the reason.
    pub(crate) fn route(
        &mut self,
        e: SeqEntry,
        now: Instant,
    ) -> Result<(), (Refused, Box<SeqEntry>)> {
        let cap = self.caps.per_sequence.max(1);
        match self.routes.get(&e.id).copied() {
            Some(Route::Slot(sid)) => {
                let end = e.end;
                let slot = self.slot(sid);
                if slot.queue.len() >= cap {
                    return Err((Refused::Full, Box::new(e)));
                }
                slot.last_arrival = Some(now);
                if end {
                    slot.owner = None;
                }
                let id = e.id.clone();
                slot.queue.push_back(e);
                if end {
                    self.routes.remove(&id);
                }
            }
            Some(Route::Backlog(key)) => {
                let Some(b) = self.backlog.iter_mut().find(|b| b.key == key) else {
                    // Unreachable: a backlog route always names a queue in the backlog.
                    self.routes.remove(&e.id);
                    return Err((Refused::NotStarted, Box::new(e)));
                };
                if b.entries.len() >= cap {
                    return Err((Refused::Full, Box::new(e)));
                }
                let (end, id) = (e.end, e.id.clone());
                b.entries.push_back(e);
                if end {
                    self.routes.remove(&id);
                }
            }
            None if !e.start => return Err((Refused::NotStarted, Box::new(e))),
            None => {
                let id = e.id.clone();
                let end = e.end;
                if let Some(Reverse(sid)) = self.free.pop() {
                    let slot = self.slot(sid);
                    slot.free = false;
                    slot.owner = (!end).then(|| id.clone());
                    slot.last_arrival = Some(now);
                    slot.queue.push_back(e);
                    if !end {
                        self.routes.insert(id, Route::Slot(sid));
                    }
                } else {
                    if self.backlog.len() >= self.caps.backlog {
                        return Err((Refused::Full, Box::new(e)));
                    }
                    let key = self.next_key;
                    self.next_key += 1;
                    self.backlog.push_back(Backlogged {
                        key,
                        id: id.clone(),
                        entries: VecDeque::from([e]),
                    });
                    if !end {
                        self.routes.insert(id, Route::Backlog(key));
                    }
                }
            }
        }
        Ok(())
    }

    /// A slot whose sequence is over (END taken, idle, cancelled) goes to the oldest backlog
    /// queue, whose requests move into it; with no backlog it returns to the free pool. A
    /// backlog queue whose client has gone is discarded on the way (§6.3).
    fn release(&mut self, sid: SlotId) {
        let slot = self.slot(sid);
        slot.state = None;
        slot.generation = slot.generation.wrapping_add(1);
        while let Some(b) = self.backlog.pop_front() {
            if b.entries.front().is_some_and(|e| e.entry.reply.is_closed()) {
                if self.routes.get(&b.id) == Some(&Route::Backlog(b.key)) {
                    self.routes.remove(&b.id);
                }
                self.cancelled
                    .extend(b.entries.into_iter().map(|e| e.entry));
                continue;
            }
            let running = self.routes.get(&b.id) == Some(&Route::Backlog(b.key));
            if running {
                self.routes.insert(b.id.clone(), Route::Slot(sid));
            }
            let last = b.entries.back().map(|e| e.entry.enqueued);
            let slot = self.slot(sid);
            slot.owner = running.then_some(b.id);
            slot.queue = b.entries;
            slot.last_arrival = last;
            return;
        }
        let slot = self.slot(sid);
        slot.owner = None;
        slot.last_arrival = None;
        slot.free = true;
        self.free.push(Reverse(sid));
    }

    /// Ends a sequence early (idle or cancelled): its queued requests are handed back to be
    /// answered as cancelled and its slot is released.
    fn drop_sequence(&mut self, sid: SlotId) {
        let slot = self.slot(sid);
        let owner = slot.owner.take();
        let queued: Vec<Entry> = slot.queue.drain(..).map(|e| e.entry).collect();
        if let Some(id) = owner {
            self.routes.remove(&id);
        }
        self.cancelled.extend(queued);
        self.release(sid);
    }

    /// Releases the slots whose owner's latest request arrived `idle` or more ago (§6.1);
    /// returns how many. Backlogged and draining sequences are not timed out.
    pub(crate) fn expire_idle(&mut self, now: Instant) -> usize {
        let idle = self.idle;
        let expired: Vec<SlotId> = self.slots_where(|s| {
            s.owner.is_some()
                && s.last_arrival
                    .is_some_and(|t| now.duration_since(t) >= idle)
        });
        for &sid in &expired {
            self.drop_sequence(sid);
        }
        expired.len()
    }

    /// Drops the backlog queues whose deadline (the earliest of their requests' arrival +
    /// `timeout`) has passed (§6.2): every request of such a queue is handed back, to be
    /// answered with Triton's backlog timeout error, and its id forgotten. Sequences that hold
    /// a slot are never timed out this way.
    pub(crate) fn expire_backlog(&mut self, now: Instant) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.backlog.len());
        for b in self.backlog.drain(..) {
            if deadline(&b).is_some_and(|d| d <= now) {
                if self.routes.get(&b.id) == Some(&Route::Backlog(b.key)) {
                    self.routes.remove(&b.id);
                }
                out.extend(b.entries.into_iter().map(|e| e.entry));
            } else {
                kept.push_back(b);
            }
        }
        self.backlog = kept;
        out
    }

    /// When the next backlog queue times out, if any has a deadline.
    pub(crate) fn next_backlog_deadline(&self) -> Option<Instant> {
        self.backlog.iter().filter_map(deadline).min()
    }

    /// When the next idle timeout falls due, if any sequence is running.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.instances
            .iter()
            .flat_map(|i| &i.slots)
            .filter(|s| s.owner.is_some())
            .filter_map(|s| s.last_arrival)
            .min()
            .map(|t| t + self.idle)
    }

    fn slots_where(&self, f: impl Fn(&Slot) -> bool) -> Vec<SlotId> {
        let mut out = Vec::new();
        for (instance, i) in self.instances.iter().enumerate() {
            for (slot, s) in i.slots.iter().enumerate() {
                if f(s) {
                    out.push(SlotId { slot, instance });
                }
            }
        }
        out
    }

    /// Entries of sequences ended early, to be answered CANCELLED by the caller.
    pub(crate) fn take_cancelled(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.cancelled)
    }

    /// Drops every sequence whose next request's client has gone (§6.3), on `instance`.
    fn drop_abandoned(&mut self, instance: usize) {
        let gone = self.slots_where(|s| s.queue.front().is_some_and(|e| e.entry.reply.is_closed()));
        for sid in gone.into_iter().filter(|s| s.instance == instance) {
            self.drop_sequence(sid);
        }
    }

    pub(crate) fn instances(&self) -> usize {
        self.instances.len()
    }

    pub(crate) fn is_busy(&self, instance: usize) -> bool {
        self.instances[instance].busy
    }

    /// The batch of `instance` ended; `slots` are the oldest strategy's slots it carried.
    pub(crate) fn finished(&mut self, instance: usize, slots: &[usize]) {
        let i = &mut self.instances[instance];
        i.busy = false;
        for &s in slots {
            i.slots[s].in_flight = false;
        }
    }

    /// Takes the head of `sid`'s queue into a batch, with the slot's state (none for a START,
    /// which resets it); an END releases the slot (and frees its state) behind it.
    fn take_head(&mut self, sid: SlotId) -> Option<SeqEntry> {
        let slot = self.slot(sid);
        let mut e = slot.queue.pop_front()?;
        e.row = RowState {
            state: if e.start { None } else { slot.state.clone() },
            keep: (!e.end).then_some((sid, slot.generation)),
        };
        if e.end && self.slot(sid).queue.is_empty() {
            self.release(sid);
        }
        Some(e)
    }

    /// Direct strategy (§5.3): rows 0..=H of `instance`, H the highest slot with a queued
    /// request; each slot in between without one that can join gets a padding row. With a
    /// slot-utilization target and a delay, waits until enough slots are ready or the oldest
    /// head has waited `delay`.
    pub(crate) fn form_direct(
        &mut self,
        instance: usize,
        now: Instant,
        min_utilization: f32,
        delay: Duration,
    ) -> Form {
        if self.instances[instance].busy {
            return Form::Idle;
        }
        self.drop_abandoned(instance);
        let slots = &self.instances[instance].slots;
        let heads: Vec<usize> = (0..slots.len())
            .filter(|&s| !slots[s].queue.is_empty())
            .collect();
        let (Some(&first), Some(&highest)) = (heads.first(), heads.last()) else {
            return Form::Idle;
        };
        if min_utilization > 0.0 && !delay.is_zero() {
            let oldest = heads
                .iter()
                .filter_map(|&s| slots[s].queue.front().map(|e| e.entry.enqueued))
                .min()
                .unwrap_or(now);
            let used = heads.len() as f32 / slots.len() as f32;
            if used < min_utilization && oldest + delay > now {
                return Form::WaitUntil(oldest + delay);
            }
        }
        let joins: Vec<bool> = {
            let lead = &slots[first].queue[0].entry;
            (0..=highest)
                .map(|s| {
                    slots[s]
                        .queue
                        .front()
                        .is_some_and(|e| lead.batches_with(&e.entry))
                })
                .collect()
        };
        let rows = joins
            .into_iter()
            .enumerate()
            .map(|(slot, joins)| {
                joins
                    .then(|| self.take_head(SlotId { slot, instance }))
                    .flatten()
            })
            .collect();
        self.instances[instance].busy = true;
        Form::Dispatch(rows)
    }

    /// Oldest strategy (§5.4): the oldest ready heads of `instance` (one per sequence, none of
    /// a sequence with a request executing) that batch with the oldest, up to `max_rows`; runs
    /// at once when the largest preferred size is reached, else after `delay` from the oldest.
    /// Returns the slots taken as well (they stay in flight until the batch ends).
    pub(crate) fn form_oldest(
        &mut self,
        instance: usize,
        now: Instant,
        max_rows: usize,
        preferred: usize,
        delay: Duration,
    ) -> (Form, Vec<usize>) {
        if self.instances[instance].busy {
            return (Form::Idle, Vec::new());
        }
        self.drop_abandoned(instance);
        let slots = &self.instances[instance].slots;
        let mut ready: Vec<(Instant, usize)> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.in_flight)
            .filter_map(|(i, s)| s.queue.front().map(|e| (e.entry.enqueued, i)))
            .collect();
        ready.sort_unstable();
        let Some(&(oldest, lead)) = ready.first() else {
            return (Form::Idle, Vec::new());
        };
        let lead = &slots[lead].queue[0].entry;
        let chosen: Vec<usize> = ready
            .iter()
            .filter(|(_, s)| lead.batches_with(&slots[*s].queue[0].entry))
            .map(|&(_, s)| s)
            .take(max_rows.max(1))
            .collect();
        if chosen.len() < preferred.max(1) && oldest + delay > now {
            return (Form::WaitUntil(oldest + delay), Vec::new());
        }
        let mut rows = Vec::with_capacity(chosen.len());
        for &slot in &chosen {
            self.instances[instance].slots[slot].in_flight = true;
            rows.push(self.take_head(SlotId { slot, instance }));
        }
        self.instances[instance].busy = true;
        (Form::Dispatch(rows), chosen)
    }

    /// Stores the state a batch row produced, unless the slot was released since.
    pub(crate) fn store_state(&mut self, sid: SlotId, generation: u64, state: Vec<Tensor>) {
        let slot = self.slot(sid);
        if slot.generation == generation {
            slot.state = Some(state);
        }
    }

    /// Sequences holding a slot (running or draining).
    pub(crate) fn active(&self) -> usize {
        self.instances
            .iter()
            .flat_map(|i| &i.slots)
            .filter(|s| !s.free)
            .count()
    }

    /// Sequences waiting for a slot.
    pub(crate) fn backlogged(&self) -> usize {
        self.backlog.len()
    }

    /// Requests queued in slots and in the backlog.
    pub(crate) fn queued(&self) -> usize {
        let slots: usize = self
            .instances
            .iter()
            .flat_map(|i| &i.slots)
            .map(|s| s.queue.len())
            .sum();
        slots + self.backlog.iter().map(|b| b.entries.len()).sum::<usize>()
    }

    /// Whether `id` is running here or waiting in the backlog.
    pub(crate) fn knows(&self, id: &CorrelationId) -> bool {
        self.routes.contains_key(id)
    }

    /// Ends every running and backlogged sequence (a reload's drain timed out): their ids are
    /// forgotten and their queued requests handed back, per id, to be answered. Slots whose
    /// END was already routed finish normally.
    pub(crate) fn end_running(&mut self) -> Vec<(CorrelationId, Vec<Entry>)> {
        let mut out = Vec::new();
        let owned = self.slots_where(|s| s.owner.is_some());
        for sid in owned {
            let slot = self.slot(sid);
            let Some(id) = slot.owner.take() else {
                continue;
            };
            let queued = slot.queue.drain(..).map(|e| e.entry).collect();
            self.routes.remove(&id);
            out.push((id, queued));
            self.release(sid);
        }
        let mut kept = VecDeque::with_capacity(self.backlog.len());
        for b in self.backlog.drain(..) {
            if self.routes.get(&b.id) == Some(&Route::Backlog(b.key)) {
                self.routes.remove(&b.id);
                out.push((b.id, b.entries.into_iter().map(|e| e.entry).collect()));
            } else {
                kept.push_back(b);
            }
        }
        self.backlog = kept;
        out
    }

    /// Empties the table (the scheduler stops): every queued entry, to be answered.
    pub(crate) fn drain(&mut self) -> Vec<Entry> {
        let mut out = self.take_cancelled();
        for i in &mut self.instances {
            for s in &mut i.slots {
                out.extend(s.queue.drain(..).map(|e| e.entry));
            }
        }
        for b in self.backlog.drain(..) {
            out.extend(b.entries.into_iter().map(|e| e.entry));
        }
        self.routes.clear();
        out
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
