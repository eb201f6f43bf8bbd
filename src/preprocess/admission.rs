//! What tokenization costs, charged in admission as compute is (`scheduler::load`): the pool
//! keeps a moving average of tokenizer time per byte and the estimated time of the work queued
//! or running, so that
//!
//! - a request whose client deadline falls before its texts could be tokenized is refused at
//!   once (Unavailable, "Request deadline cannot be met", with a retry hint), not after;
//! - the time a request spent waiting for and in the tokenizer comes out of what its deadline
//!   leaves for the model's queue, where the scheduler's own admission takes over;
//! - small requests go in a lane of their own that the threads serve first, so an unrelated
//!   small request does not wait behind big texts queued before it (at most behind the jobs
//!   already running, each bounded by prefix tokenization).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Select};

/// Bytes of one text that tokenization reads at most in the common case: two prefixes of
/// 8 × max_length bytes (a longer text has more than max_length tokens by then).
const PREFIX_BYTES_PER_TOKEN: usize = 16;
/// Weight of the newest job in the moving average (as `scheduler::load`).
const WEIGHT: f64 = 1.0 / 8.0;

/// The bytes a request's texts are expected to cost: each text up to two prefixes.
pub(crate) fn cost_bytes(text_lens: impl IntoIterator<Item = usize>, max_length: usize) -> u64 {
    let cap = max_length.saturating_mul(PREFIX_BYTES_PER_TOKEN);
    text_lens
        .into_iter()
        .map(|n| n.min(cap) as u64)
        .fold(0u64, u64::saturating_add)
}

/// Whether a request of `bytes` goes in the small lane: no more than one text's worth.
pub(crate) fn is_small(bytes: u64, max_length: usize) -> bool {
    bytes <= max_length.saturating_mul(PREFIX_BYTES_PER_TOKEN) as u64
}

/// The tokenizer's recent speed and backlog, shared by the pool's handle and its threads.
pub(crate) struct TokenizerLoad {
    /// Nanoseconds per byte, as `f64` bits; 0 until the first job is measured.
    ns_per_byte: AtomicU64,
    /// Estimated nanoseconds of the jobs queued or running.
    backlog_ns: AtomicU64,
    threads: u64,
}

impl TokenizerLoad {
    pub(crate) fn new(threads: usize) -> Self {
        TokenizerLoad {
            ns_per_byte: AtomicU64::new(0f64.to_bits()),
            backlog_ns: AtomicU64::new(0),
            threads: threads.max(1) as u64,
        }
    }

    /// Estimated tokenizer time of `bytes`; zero before the first measurement.
    pub(crate) fn cost(&self, bytes: u64) -> Duration {
        let rate = f64::from_bits(self.ns_per_byte.load(Ordering::Relaxed));
        Duration::from_nanos((rate * bytes as f64).min(u64::MAX as f64) as u64)
    }

    /// When a job of `bytes` submitted now would be done: the backlog shared among the
    /// threads, then its own time.
    pub(crate) fn estimate(&self, bytes: u64) -> Duration {
        let backlog = self.backlog_ns.load(Ordering::Relaxed) / self.threads;
        Duration::from_nanos(backlog).saturating_add(self.cost(bytes))
    }

    /// A job of `cost` joins the backlog; it leaves it when the returned charge is dropped
    /// (the job done, skipped, or never queued).
    pub(crate) fn charge(self: &Arc<Self>, cost: Duration) -> Charge {
        let ns = u64::try_from(cost.as_nanos()).unwrap_or(u64::MAX);
        self.backlog_ns.fetch_add(ns, Ordering::Relaxed);
        Charge {
            load: self.clone(),
            ns,
        }
    }

    /// A job of `bytes` took `took`.
    pub(crate) fn record(&self, bytes: u64, took: Duration) {
        let sample = took.as_nanos() as f64 / bytes.max(1) as f64;
        let _ = self
            .ns_per_byte
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                let old = f64::from_bits(old);
                let new = if old == 0.0 {
                    sample
                } else {
                    old + WEIGHT * (sample - old)
                };
                Some(new.to_bits())
            });
    }
}

/// A job's share of the backlog, released when dropped.
pub(crate) struct Charge {
    load: Arc<TokenizerLoad>,
    ns: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        let ns = self.ns;
        let _ = self
            .load
            .backlog_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(ns))
            });
    }
}

/// The next job for a tokenizer thread, the small lane first; `None` once the pool is closed.
pub(crate) fn next_job<T>(small: &Receiver<T>, large: &Receiver<T>) -> Option<T> {
    if let Ok(job) = small.try_recv() {
        return Some(job);
    }
    let mut sel = Select::new();
    let s = sel.recv(small);
    sel.recv(large);
    let op = sel.select();
    let got = if op.index() == s {
        op.recv(small)
    } else {
        op.recv(large)
    };
    // Both lanes close together (the pool drops both senders).
    got.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_follow_measurements_and_the_backlog() {
        let load = Arc::new(TokenizerLoad::new(2));
        assert_eq!(load.estimate(1000), Duration::ZERO, "nothing measured yet");
        load.record(1000, Duration::from_micros(100)); // 100 ns per byte
        assert_eq!(load.cost(1000), Duration::from_micros(100));
        let held = load.charge(Duration::from_millis(4));
        // 4 ms ahead, shared by 2 threads, then its own 0.1 ms.
        assert_eq!(load.estimate(1000), Duration::from_micros(2100));
        drop(held);
        assert_eq!(load.estimate(1000), Duration::from_micros(100));
    }

    #[test]
    fn a_text_costs_at_most_two_prefixes() {
        assert_eq!(cost_bytes([10, 1 << 20], 256), 10 + 4096);
        assert!(is_small(4096, 256) && !is_small(4097, 256));
    }

    #[test]
    fn the_small_lane_is_served_first() {
        let (stx, srx) = crossbeam_channel::bounded(4);
        let (ltx, lrx) = crossbeam_channel::bounded(4);
        ltx.send("large").unwrap();
        stx.send("small").unwrap();
        assert_eq!(next_job(&srx, &lrx), Some("small"));
        assert_eq!(next_job(&srx, &lrx), Some("large"));
        drop((stx, ltx));
        assert_eq!(next_job(&srx, &lrx), None);
    }
}
