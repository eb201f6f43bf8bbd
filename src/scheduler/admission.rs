//! Queue admission: the per-level and total counters that bound a model version's queue, shared
//! by the enqueuing callers, the batcher task and, for the default scheduler, the batches that
//! still hold their places in the instances' channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::QueueLimits;
use crate::error::Rejection;
use crate::model::DynamicBatching;

/// Queue-size bookkeeping shared by the enqueuing callers and the batcher task.
pub(crate) struct Admission {
    /// Per level: (queued now, limit; 0 = none).
    levels: Vec<(AtomicUsize, usize)>,
    total: AtomicUsize,
    limits: QueueLimits,
}

impl Admission {
    pub(super) fn new(db: &DynamicBatching, limits: QueueLimits) -> Self {
        Admission {
            levels: db
                .queue_policies
                .iter()
                .map(|p| (AtomicUsize::new(0), p.max_queue_size))
                .collect(),
            total: AtomicUsize::new(0),
            limits,
        }
    }

    /// Most requests the whole queue may hold when this one is at `level` (0 = highest):
    /// the highest level may fill it, each lower level stops at a lower high-water mark, the
    /// lowest at `capacity × (1 − priority_reserve)`.
    fn level_capacity(&self, level: usize) -> usize {
        let n = self.levels.len();
        if n <= 1 || level == 0 {
            return self.limits.capacity;
        }
        let share = 1.0 - self.limits.priority_reserve * level as f64 / (n - 1) as f64;
        ((self.limits.capacity as f64 * share) as usize).max(1)
    }

    pub(super) fn try_admit(&self, level: usize) -> std::result::Result<(), Rejection> {
        let (count, limit) = &self.levels[level];
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (*limit == 0 || n < *limit).then_some(n + 1)
            })
            .map_err(|_| Rejection::QueueFull)?;
        let cap = self.level_capacity(level);
        let admitted = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            });
        if admitted.is_err() {
            count.fetch_sub(1, Ordering::AcqRel);
            return Err(if cap < self.limits.capacity {
                Rejection::ShedByPriority
            } else {
                Rejection::QueueFull
            });
        }
        Ok(())
    }

    pub(super) fn release(&self, level: usize) {
        self.levels[level].0.fetch_sub(1, Ordering::AcqRel);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }

    /// Requests queued at `level` or above (served before a new one at `level`).
    pub(super) fn ahead(&self, level: usize) -> usize {
        self.levels[..=level]
            .iter()
            .map(|(c, _)| c.load(Ordering::Acquire))
            .sum()
    }

    pub(crate) fn queued(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// A request's place in the queue while it waits in the shared channel; given back when an
/// instance takes it (or when the batch is answered without running).
pub(crate) struct QueuePlace {
    pub(super) admission: Arc<Admission>,
    pub(super) level: usize,
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.admission.release(self.level);
    }
}
