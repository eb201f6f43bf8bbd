//! What a model version's recent executions say about how fast its queue drains. Feeds the
//! retry hints of rejections and the admission check of deadlines.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Longest retry hint given; beyond this a client should look elsewhere anyway.
const MAX_HINT: Duration = Duration::from_secs(30);
const MIN_HINT: Duration = Duration::from_millis(1);
/// Weight of the newest execution in the moving averages: follows a change within a few dozen
/// executions, ignores single outliers.
const WEIGHT: f64 = 1.0 / 8.0;
/// Least share of the drain rate a level is assumed to keep, however much of it higher levels
/// took recently (keeps the estimate finite when they took all of it).
const MIN_SHARE: f64 = 0.1;
/// Deviations of the execution time added per round, scaled by the square root of the rounds
/// (independent rounds): a deadline is admitted only if the queue drains in time when the
/// executions run this much slower than their average.
const DEVIATIONS: f64 = 2.0;

/// Moving averages over recent executions.
#[derive(Debug)]
struct Recent {
    /// Seconds per execution.
    service: f64,
    /// Mean absolute deviation of the seconds per execution.
    deviation: f64,
    /// Requests per execution, per priority level (0 = the highest).
    per_level: Vec<f64>,
}

pub struct LoadTracker {
    /// `None` until the first execution.
    recent: Mutex<Option<Recent>>,
    levels: usize,
    instances: usize,
    /// Instances currently taking work (circuit breakers closed).
    pub healthy: AtomicUsize,
}

impl LoadTracker {
    /// For a model version with `instances` instances and `levels` priority levels.
    pub fn new(instances: usize, levels: usize) -> Self {
        LoadTracker {
            recent: Mutex::new(None),
            levels: levels.max(1),
            instances: instances.max(1),
            healthy: AtomicUsize::new(instances.max(1)),
        }
    }

    /// One execution took `took` and ran requests of these priority levels.
    pub fn record(&self, took: Duration, levels: impl IntoIterator<Item = usize>) {
        let took = took.as_secs_f64();
        let mut recent = self.recent.lock();
        // The first execution is the whole average; later ones weigh `WEIGHT`.
        let w = if recent.is_none() { 1.0 } else { WEIGHT };
        let r = recent.get_or_insert_with(|| Recent {
            service: took,
            deviation: 0.0,
            per_level: vec![0.0; self.levels],
        });
        r.deviation += w * ((took - r.service).abs() - r.deviation);
        r.service += w * (took - r.service);
        for avg in &mut r.per_level {
            *avg *= 1.0 - w;
        }
        for l in levels {
            r.per_level[l.min(self.levels - 1)] += w;
        }
    }

    /// Expected wait before a request at priority `level` starts, with `ahead` requests of its
    /// level or higher in front of it; `None` while there is no execution to go by.
    ///
    /// The queue drains in rounds (every healthy instance runs one execution of the recent
    /// average size); requests of higher levels keep arriving during the wait and go first, so
    /// of each round only the share the recent executions gave to `level` and below is counted.
    /// With `all_busy`, no instance is free now: the request also waits for a running execution
    /// to end, counted as a whole one (the worst case). Each round is taken a little slower than
    /// average (`DEVIATIONS`), so that what admission lets in rarely expires in the queue.
    pub fn estimate_wait(&self, level: usize, ahead: usize, all_busy: bool) -> Option<Duration> {
        let guard = self.recent.lock();
        let recent = guard.as_ref()?;
        let total: f64 = recent.per_level.iter().sum();
        let above: f64 = recent.per_level[..level.min(self.levels - 1)].iter().sum();
        let share = if total > 0.0 {
            (1.0 - above / total).max(MIN_SHARE)
        } else {
            1.0
        };
        let healthy = self
            .healthy
            .load(Ordering::Relaxed)
            .clamp(1, self.instances);
        let per_round = total.max(1.0) * healthy as f64 * share;
        let rounds = if all_busy {
            (ahead as f64 / per_round).floor() + 1.0
        } else {
            (ahead as f64 / per_round).ceil()
        };
        Some(Duration::from_secs_f64(
            rounds * recent.service + DEVIATIONS * recent.deviation * rounds.sqrt(),
        ))
    }

    /// When a request refused at `level` may succeed: the time to drain the `queued` requests
    /// of its level and above.
    pub fn retry_hint(&self, level: usize, queued: usize) -> Duration {
        self.estimate_wait(level, queued, false)
            .unwrap_or(MIN_HINT)
            .clamp(MIN_HINT, MAX_HINT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn estimates_follow_the_drain_rate() {
        let t = LoadTracker::new(2, 1);
        assert_eq!(t.estimate_wait(0, 10, false), None);
        assert_eq!(t.retry_hint(0, 10), MIN_HINT);
        t.record(Duration::from_millis(10), [0; 4]);
        // 16 ahead, 4 per execution, 2 instances: 2 rounds of 10 ms.
        assert_eq!(t.estimate_wait(0, 16, false), ms(20));
        assert_eq!(t.estimate_wait(0, 0, false), ms(0));
        // Every instance busy: first a running execution ends (a whole round, the worst case),
        // then the rounds of the requests ahead.
        assert_eq!(t.estimate_wait(0, 0, true), ms(10));
        assert_eq!(t.estimate_wait(0, 7, true), ms(10));
        assert_eq!(t.estimate_wait(0, 8, true), ms(20));
        t.healthy.store(1, Ordering::Relaxed);
        assert_eq!(t.estimate_wait(0, 16, false), ms(40));
        assert_eq!(t.retry_hint(0, 1_000_000), MAX_HINT);
    }

    #[test]
    fn request_counts_move_by_an_eighth() {
        let t = LoadTracker::new(1, 1);
        t.record(Duration::from_millis(8), [0; 8]);
        t.record(Duration::from_millis(8), [0]);
        // Requests per execution: 8 + (1 − 8)/8 = 7.125.
        assert_eq!(t.estimate_wait(0, 7, false), ms(8));
        assert_eq!(t.estimate_wait(0, 8, false), ms(16));
    }

    #[test]
    fn uneven_executions_lengthen_the_estimate() {
        let t = LoadTracker::new(1, 1);
        t.record(Duration::from_millis(10), [0]);
        t.record(Duration::from_millis(26), [0]);
        // service 10 + 16/8 = 12 ms; deviation 0 + 16/8 = 2 ms, two per round, × √rounds.
        assert_eq!(t.estimate_wait(0, 1, false), ms(12 + 4));
        assert_eq!(t.estimate_wait(0, 4, false), ms(48 + 8));
        assert_eq!(t.estimate_wait(0, 0, false), ms(0));
    }

    #[test]
    fn lower_levels_leave_room_for_higher_arrivals() {
        let t = LoadTracker::new(1, 2);
        // Executions of 10 ms with 2 high- and 6 low-priority requests.
        t.record(Duration::from_millis(10), [0, 0, 1, 1, 1, 1, 1, 1]);
        // The high level drains 8 per round; the low one gets 6 of every 8.
        assert_eq!(t.estimate_wait(0, 16, false), ms(20));
        assert_eq!(t.estimate_wait(1, 12, false), ms(20));
        assert_eq!(t.estimate_wait(1, 13, false), ms(30));
        assert_eq!(t.retry_hint(1, 24), Duration::from_millis(40));
        // A level that higher ones crowd out entirely still drains at the least share.
        let t = LoadTracker::new(1, 2);
        t.record(Duration::from_millis(10), [0; 10]);
        assert_eq!(t.estimate_wait(1, 1, false), ms(10));
        assert_eq!(t.estimate_wait(1, 2, false), ms(20));
    }
}
