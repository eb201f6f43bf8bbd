//! Priority queues of pending requests: one FIFO per priority level plus the DELAY queue,
//! which holds requests whose queue timeout passed under `timeout_action: DELAY` and is served
//! after every level. Owned by one batcher task; no locking.

use std::collections::VecDeque;

use tokio::time::Instant;

/// What the planner needs to know about a pending request.
pub(crate) trait Pending {
    /// Rows this request adds to a batch.
    fn rows(&self) -> usize;
    /// Whether the two can run in one batch (same inputs and non-batch dims; token inputs of
    /// any length).
    fn batches_with(&self, other: &Self) -> bool;
    /// Token inputs: the padded length of this request's rows (a batch pads to the longest).
    fn seq_len(&self) -> Option<usize> {
        None
    }
    /// Token inputs: the real (unpadded) tokens of this request.
    fn real_tokens(&self) -> usize {
        0
    }
    fn enqueued(&self) -> Instant;
    /// When the request's queue timeout expires, if it has one.
    fn deadline(&self) -> Option<Instant>;
    /// 0-based priority level (0 = highest).
    fn level(&self) -> usize;
    /// On timeout: move to the DELAY queue (true) or reject (false).
    fn delay_on_timeout(&self) -> bool;
}

pub(crate) struct Queues<E> {
    levels: Vec<VecDeque<E>>,
    delayed: VecDeque<E>,
}

impl<E: Pending> Queues<E> {
    pub(crate) fn new(levels: usize) -> Self {
        Queues {
            levels: (0..levels.max(1)).map(|_| VecDeque::new()).collect(),
            delayed: VecDeque::new(),
        }
    }

    pub(crate) fn push(&mut self, e: E) {
        let level = e.level().min(self.levels.len() - 1);
        self.levels[level].push_back(e);
    }

    pub(crate) fn len(&self) -> usize {
        self.levels.iter().map(VecDeque::len).sum::<usize>() + self.delayed.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pending requests in service order: level 1 first, FIFO within a level, DELAY queue last.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &E> {
        self.levels.iter().flatten().chain(self.delayed.iter())
    }

    /// Removes the first `n` requests in service order.
    pub(crate) fn pop_front(&mut self, mut n: usize) -> Vec<E> {
        let mut out = Vec::with_capacity(n);
        for q in self
            .levels
            .iter_mut()
            .chain(std::iter::once(&mut self.delayed))
        {
            while n > 0 {
                match q.pop_front() {
                    Some(e) => {
                        out.push(e);
                        n -= 1;
                    }
                    None => break,
                }
            }
        }
        out
    }

    /// Handles queue timeouts at `now`: REJECT requests are returned, DELAY ones move to the
    /// DELAY queue (where they no longer time out).
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<E> {
        let mut rejected = Vec::new();
        for q in &mut self.levels {
            if !q.iter().any(|e| e.deadline().is_some_and(|d| d <= now)) {
                continue;
            }
            let mut keep = VecDeque::with_capacity(q.len());
            for e in q.drain(..) {
                match e.deadline() {
                    Some(d) if d <= now && e.delay_on_timeout() => self.delayed.push_back(e),
                    Some(d) if d <= now => rejected.push(e),
                    _ => keep.push_back(e),
                }
            }
            *q = keep;
        }
        rejected
    }

    /// The earliest queue timeout still ahead (DELAY-queue requests have none).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.levels
            .iter()
            .flatten()
            .filter_map(Pending::deadline)
            .min()
    }

    /// Removes every request whose `gone` is true (e.g. its client disconnected).
    pub(crate) fn remove_where(&mut self, mut gone: impl FnMut(&E) -> bool) -> Vec<E> {
        let mut removed = Vec::new();
        for q in self
            .levels
            .iter_mut()
            .chain(std::iter::once(&mut self.delayed))
        {
            if !q.iter().any(&mut gone) {
                continue;
            }
            let mut keep = VecDeque::with_capacity(q.len());
            for e in q.drain(..) {
                if gone(&e) {
                    removed.push(e)
                } else {
                    keep.push_back(e)
                }
            }
            *q = keep;
        }
        removed
    }
}
