//! What a model version's recent executions say about how fast its queue drains. Feeds the
//! retry hints of rejections and the admission check of deadlines.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Longest retry hint given; beyond this a client should look elsewhere anyway.
const MAX_HINT: Duration = Duration::from_secs(30);
const MIN_HINT: Duration = Duration::from_millis(1);

pub struct LoadTracker {
    /// Exponentially weighted mean execution time (ns); 0 until the first execution.
    service_ns: AtomicU64,
    /// Exponentially weighted mean requests per execution, × 1000.
    per_exec_milli: AtomicU64,
    instances: usize,
    /// Instances currently taking work (circuit breakers closed).
    pub healthy: AtomicUsize,
}

impl LoadTracker {
    pub fn new(instances: usize) -> Self {
        LoadTracker {
            service_ns: AtomicU64::new(0),
            per_exec_milli: AtomicU64::new(0),
            instances: instances.max(1),
            healthy: AtomicUsize::new(instances.max(1)),
        }
    }

    /// One execution of `requests` requests took `took`.
    pub fn record(&self, took: Duration, requests: usize) {
        // Weight 1/8: follows a change within a few dozen executions, ignores single outliers.
        let ewma = |cell: &AtomicU64, sample: u64| {
            let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    old - old / 8 + sample / 8
                })
            });
        };
        ewma(&self.service_ns, took.as_nanos().max(1) as u64);
        ewma(&self.per_exec_milli, requests.max(1) as u64 * 1000);
    }

    /// Expected wait before a request with `ahead` requests in front of it starts;
    /// `None` while there is no execution to go by. With `all_busy`, no instance is free now:
    /// the request also waits for a running execution to end, counted as a whole one (the
    /// worst case), so that what admission lets in rarely expires in the queue after all.
    pub fn estimate_wait(&self, ahead: usize, all_busy: bool) -> Option<Duration> {
        let service = self.service_ns.load(Ordering::Relaxed);
        if service == 0 {
            return None;
        }
        let per_exec = (self.per_exec_milli.load(Ordering::Relaxed) as f64 / 1000.0).max(1.0);
        let healthy = self
            .healthy
            .load(Ordering::Relaxed)
            .clamp(1, self.instances);
        let per_round = per_exec * healthy as f64;
        let rounds = if all_busy {
            (ahead as f64 / per_round).floor() + 1.0
        } else {
            (ahead as f64 / per_round).ceil()
        };
        Some(Duration::from_nanos((rounds * service as f64) as u64))
    }

    /// When a refused request may succeed: the time to drain `queued` requests.
    pub fn retry_hint(&self, queued: usize) -> Duration {
        self.estimate_wait(queued, false)
            .unwrap_or(MIN_HINT)
            .clamp(MIN_HINT, MAX_HINT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_follow_the_drain_rate() {
        let t = LoadTracker::new(2);
        assert_eq!(t.estimate_wait(10, false), None);
        assert_eq!(t.retry_hint(10), MIN_HINT);
        t.record(Duration::from_millis(10), 4);
        // 16 ahead, 4 per execution, 2 instances: 2 rounds of 10 ms.
        assert_eq!(t.estimate_wait(16, false), Some(Duration::from_millis(20)));
        assert_eq!(t.estimate_wait(0, false), Some(Duration::ZERO));
        // Every instance busy: first a running execution ends (a whole round, the worst case),
        // then the rounds of the requests ahead.
        assert_eq!(t.estimate_wait(0, true), Some(Duration::from_millis(10)));
        assert_eq!(t.estimate_wait(7, true), Some(Duration::from_millis(10)));
        assert_eq!(t.estimate_wait(8, true), Some(Duration::from_millis(20)));
        t.healthy.store(1, Ordering::Relaxed);
        assert_eq!(t.estimate_wait(16, false), Some(Duration::from_millis(40)));
        assert_eq!(t.retry_hint(1_000_000), MAX_HINT);
    }
}
