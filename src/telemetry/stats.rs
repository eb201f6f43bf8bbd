//! Per model-version statistics with Triton's counting rules (behaviour.md §6). One recorder,
//! fed at fixed points by the executing batch; `ModelStatistics` reads snapshots.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::backend::ComputeTimes;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dur {
    pub count: u64,
    pub ns: u64,
}

impl Dur {
    fn add(&mut self, d: Duration) {
        self.count += 1;
        self.ns += d.as_nanos() as u64;
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchDur {
    pub compute_input: Dur,
    pub compute_infer: Dur,
    pub compute_output: Dur,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Milliseconds since the Unix epoch of the latest execution; 0 before the first.
    pub last_inference_ms: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub success: Dur,
    pub fail: Dur,
    pub queue: Dur,
    pub compute_input: Dur,
    pub compute_infer: Dur,
    pub compute_output: Dur,
    /// Keyed by executed batch size.
    pub batches: BTreeMap<u64, BatchDur>,
}

#[derive(Debug, Default)]
pub struct ModelStats {
    inner: Mutex<StatsSnapshot>,
}

impl ModelStats {
    /// One model execution of `batch_size` rows (the sum over its requests).
    pub fn record_execution(&self, batch_size: usize, times: ComputeTimes) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut s = self.lock();
        s.execution_count += 1;
        s.last_inference_ms = now_ms;
        let b = s.batches.entry(batch_size as u64).or_default();
        b.compute_input.add(times.input);
        b.compute_infer.add(times.infer);
        b.compute_output.add(times.output);
    }

    /// One request completed successfully; each request is charged its execution's full compute times.
    pub fn record_success(
        &self,
        rows: usize,
        queue: Duration,
        total: Duration,
        times: ComputeTimes,
    ) {
        let mut s = self.lock();
        s.inference_count += rows as u64;
        s.success.add(total);
        s.queue.add(queue);
        s.compute_input.add(times.input);
        s.compute_infer.add(times.infer);
        s.compute_output.add(times.output);
    }

    /// An accepted request ended in error (execution failure, cancellation, timeout).
    pub fn record_failure(&self, total: Duration) {
        self.lock().fail.add(total);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatsSnapshot> {
        // A panic while holding this lock cannot leave the counters inconsistent in a way that
        // matters more than losing them, so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_triton_rules() {
        let s = ModelStats::default();
        let t = ComputeTimes {
            input: Duration::from_nanos(10),
            infer: Duration::from_nanos(100),
            output: Duration::from_nanos(5),
        };
        s.record_execution(3, t);
        s.record_success(2, Duration::from_nanos(7), Duration::from_nanos(200), t);
        s.record_success(1, Duration::from_nanos(9), Duration::from_nanos(210), t);
        s.record_failure(Duration::from_nanos(50));
        let snap = s.snapshot();
        assert_eq!(snap.inference_count, 3);
        assert_eq!(snap.execution_count, 1);
        assert_eq!(snap.queue, Dur { count: 2, ns: 16 });
        assert_eq!(snap.success.count, snap.queue.count);
        assert_eq!(snap.compute_infer, Dur { count: 2, ns: 200 });
        assert_eq!(snap.fail, Dur { count: 1, ns: 50 });
        assert_eq!(snap.batches[&3].compute_infer, Dur { count: 1, ns: 100 });
        assert!(snap.last_inference_ms > 0);
    }
}
