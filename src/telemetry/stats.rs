//! Per model-version statistics with Triton's counting rules (behaviour.md §6). One recorder
//! per loaded version, fed at fixed points (admission, queue exit, execution, reply); it keeps
//! the `ModelStatistics` snapshot and the version's Prometheus series (`metrics`) together, so
//! the two can never disagree about what happened.
//!
//! The fixed points, and who calls them:
//! - `refused`: a request refused before it was accepted (`error::Rejection`), with the time
//!   from its arrival to the refusal. `Core` alone calls it, once per refusal, whichever layer
//!   refused. Not part of Triton's statistics.
//! - `enqueued` / `left_queue`: the scheduler, when a request is accepted and when it starts
//!   executing or is answered without executing (`nv_inference_pending_request_count`, queue
//!   depth per priority level).
//! - `busy`: an instance thread for the span of one execution.
//! - `record_execution`, `record_success`, `record_failure`: the executing batch (or the
//!   batcher for requests that expire or are cancelled while queued).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::proto::MetricFamily;

pub(crate) use super::metrics::FailureReason;
use super::metrics::{MetricsOptions, ModelMetrics};
use super::sequence::SequenceMetrics;
use crate::backend::ComputeTimes;
use crate::error::Rejection;

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

pub struct ModelStats {
    inner: Mutex<StatsSnapshot>,
    metrics: ModelMetrics,
    /// Versions with `sequence_batching` only.
    sequence: Option<SequenceMetrics>,
}

impl Default for ModelStats {
    /// A recorder with empty labels, for tests.
    fn default() -> Self {
        ModelStats::new("", 0, 1)
    }
}

/// Marks an instance busy until dropped.
pub struct Busy<'a>(&'a ModelStats);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.metrics.instances_busy.dec();
    }
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

impl ModelStats {
    /// The recorder of `model` version `version`, whose scheduler has `priority_levels` levels.
    pub fn new(model: &str, version: i64, priority_levels: usize) -> Self {
        ModelStats {
            inner: Mutex::new(StatsSnapshot::default()),
            metrics: ModelMetrics::new(model, version, priority_levels),
            sequence: None,
        }
    }

    /// Adds the sequence batcher's series (`nereid_sequence_*`), at 0 from the load on.
    pub fn with_sequences(mut self, model: &str, version: i64) -> Self {
        self.sequence = Some(SequenceMetrics::new(model, version));
        self
    }

    /// The sequence batcher's occupancy now: sequences holding a slot and backlogged ones.
    pub fn sequences(&self, active: usize, backlog: usize) {
        if let Some(m) = &self.sequence {
            m.active.set(active as i64);
            m.backlog.set(backlog as i64);
        }
    }

    /// `n` sequence slots were released by the idle timeout.
    pub fn idle_released(&self, n: usize) {
        if let Some(m) = &self.sequence {
            m.idle_released.inc_by(n as u64);
        }
    }

    /// The version finished loading: how long it took and how many instances it runs.
    pub fn record_load(&self, took: Duration, instances: usize) {
        self.metrics.load_secs.set(took.as_secs_f64());
        self.metrics.instances.set(instances as i64);
    }

    /// A request was refused before being accepted, `took` after its arrival (or its head's);
    /// the time is observed for the reasons that are timed (`Rejection::is_timed`).
    pub fn refused(&self, why: Rejection, took: Duration) {
        self.metrics.rejected(why).inc();
        if why.is_timed() {
            self.metrics.rejection_seconds.observe(took.as_secs_f64());
        }
    }

    /// A batch that waited for its queue delay left `late` after that delay ended.
    pub fn batcher_late(&self, late: Duration) {
        self.metrics.batcher_lateness.observe(late.as_secs_f64());
    }

    /// A request was accepted into the queue at priority `level` (0-based).
    pub fn enqueued(&self, level: usize) {
        self.metrics.pending.inc();
        self.depth(level).inc();
    }

    /// A queued request started executing, or was answered without executing.
    pub fn left_queue(&self, level: usize) {
        self.metrics.pending.dec();
        self.depth(level).dec();
    }

    fn depth(&self, level: usize) -> &prometheus::IntGauge {
        let d = &self.metrics.queue_depth;
        &d[level.min(d.len() - 1)]
    }

    /// An instance runs a batch until the returned guard is dropped.
    pub fn busy(&self) -> Busy<'_> {
        self.metrics.instances_busy.inc();
        Busy(self)
    }

    /// Instances executing a batch now.
    pub fn busy_instances(&self) -> usize {
        self.metrics.instances_busy.get().max(0) as usize
    }

    /// One model execution of `batch_size` rows (the sum over its requests).
    pub fn record_execution(&self, batch_size: usize, times: ComputeTimes) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        {
            let mut s = self.lock();
            s.execution_count += 1;
            s.last_inference_ms = now_ms;
            let b = s.batches.entry(batch_size as u64).or_default();
            b.compute_input.add(times.input);
            b.compute_infer.add(times.infer);
            b.compute_output.add(times.output);
        }
        let m = &self.metrics;
        m.exec_count.inc();
        m.batch_size.observe(batch_size as f64);
        m.compute_seconds
            .observe((times.input + times.infer + times.output).as_secs_f64());
    }

    /// One request completed successfully; each request is charged its execution's full compute times.
    pub fn record_success(
        &self,
        rows: usize,
        queue: Duration,
        total: Duration,
        times: ComputeTimes,
    ) {
        {
            let mut s = self.lock();
            s.inference_count += rows as u64;
            s.success.add(total);
            s.queue.add(queue);
            s.compute_input.add(times.input);
            s.compute_infer.add(times.infer);
            s.compute_output.add(times.output);
        }
        // Triton adds whole microseconds per request (ns / 1000).
        let m = &self.metrics;
        m.success.inc();
        m.inference_count.inc_by(rows as u64);
        m.request_us.inc_by(us(total));
        m.queue_us.inc_by(us(queue));
        m.compute_input_us.inc_by(us(times.input));
        m.compute_infer_us.inc_by(us(times.infer));
        m.compute_output_us.inc_by(us(times.output));
        m.request_seconds.observe(total.as_secs_f64());
        m.queue_seconds.observe(queue.as_secs_f64());
    }

    /// An accepted request ended in error (execution failure, cancellation, timeout).
    pub fn record_failure(&self, total: Duration, why: FailureReason) {
        self.lock().fail.add(total);
        self.metrics.failure(why).inc();
    }

    /// This version's Prometheus families.
    pub fn families(&self, opts: &MetricsOptions) -> Vec<MetricFamily> {
        let mut out = self.metrics.families(opts);
        if let Some(m) = &self.sequence {
            out.extend(m.families());
        }
        out
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.lock().clone()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, StatsSnapshot> {
        self.inner.lock()
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
        s.record_failure(Duration::from_nanos(50), FailureReason::Canceled);
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

    #[test]
    fn metrics_follow_the_same_points() {
        let s = ModelStats::new("m", 3, 2);
        let t = ComputeTimes {
            input: Duration::from_micros(10),
            infer: Duration::from_micros(100),
            output: Duration::from_micros(5),
        };
        s.enqueued(1);
        s.enqueued(0);
        s.left_queue(1);
        let busy = s.busy();
        s.record_execution(2, t);
        s.record_success(2, Duration::from_micros(7), Duration::from_micros(200), t);
        s.record_failure(Duration::from_micros(1), FailureReason::Backend);
        s.refused(Rejection::QueueFull, Duration::from_micros(3));
        s.refused(Rejection::Invalid, Duration::from_micros(4));
        let m = &s.metrics;
        assert_eq!(m.instances_busy.get(), 1);
        drop(busy);
        assert_eq!(m.instances_busy.get(), 0);
        assert_eq!(m.pending.get(), 1);
        assert_eq!((m.queue_depth[0].get(), m.queue_depth[1].get()), (1, 0));
        assert_eq!(m.success.get(), 1);
        assert_eq!(m.inference_count.get(), 2);
        assert_eq!(m.exec_count.get(), 1);
        assert_eq!(m.request_us.get(), 200);
        assert_eq!(m.compute_infer_us.get(), 100);
        assert_eq!(m.failure(FailureReason::Backend).get(), 1);
        assert_eq!(m.failure(FailureReason::Other).get(), 0);
        assert_eq!(m.rejected(Rejection::QueueFull).get(), 1);
        assert_eq!(m.rejected(Rejection::Invalid).get(), 1);
        assert_eq!(m.rejected(Rejection::ServerBusy).get(), 0);
        // Only the admission-control refusal is timed.
        assert_eq!(m.rejection_seconds.get_sample_count(), 1);
        assert_eq!(m.request_seconds.get_sample_count(), 1);
        assert_eq!(m.batch_size.get_sample_sum(), 2.0);
    }
}
