//! The server-wide in-flight caps (`--max-inflight-requests`, `--max-inflight-bytes`): every
//! accepted request holds an `InflightGuard` until it is answered or dropped. The guard that
//! brings the count to zero wakes whoever waits for the server to be idle (the drain).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::{Error, Rejection, Result};

/// Server-wide admission caps: whatever each model's queue allows, the whole server holds at
/// most this many requests, and this many bytes of request tensors, at once.
#[derive(Debug, Clone, Copy)]
pub struct InflightLimits {
    pub requests: usize,
    pub bytes: usize,
}

/// Requests and request bytes in the server now.
#[derive(Default)]
pub(super) struct Inflight {
    requests: AtomicUsize,
    bytes: AtomicUsize,
    /// Notified each time the request count drops to zero.
    idle: Notify,
}

/// A request counted against the server-wide caps until it is answered (or dropped).
pub(super) struct InflightGuard {
    counts: Arc<Inflight>,
    bytes: usize,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.counts.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        if self.counts.requests.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.counts.idle.notify_waiters();
        }
    }
}

impl Inflight {
    /// Requests (queued or running) counted now.
    pub(super) fn requests(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    /// Resolves once no request is counted (at once when none is).
    pub(super) async fn idle(&self) {
        loop {
            // Registered before the count is read, so a guard dropping in between still wakes it.
            let woken = self.idle.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.requests() == 0 {
                return;
            }
            woken.await;
        }
    }

    /// Counts one request of `bytes` against `limits`; over a cap it is refused (and uncounted
    /// again when the returned error drops the guard).
    pub(super) fn admit(
        self: &Arc<Self>,
        limits: &InflightLimits,
        bytes: usize,
    ) -> Result<InflightGuard> {
        // A request larger than the whole byte cap would be "busy" forever: retrying cannot
        // help, so it is refused as invalid, without a retry hint.
        if bytes > limits.bytes {
            return Err(Error::invalid_arg(format!(
                "request of {bytes} bytes is larger than the server accepts in flight ({} bytes, --max-inflight-bytes)",
                limits.bytes
            ))
            .refused(Rejection::TooLarge, None));
        }
        let n = self.requests.fetch_add(1, Ordering::AcqRel) + 1;
        let b = self.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        let guard = InflightGuard {
            counts: self.clone(),
            bytes,
        };
        if n > limits.requests || b > limits.bytes {
            let msg = if n > limits.requests {
                format!(
                    "Server is busy: {} requests in flight (--max-inflight-requests)",
                    limits.requests
                )
            } else {
                format!(
                    "Server is busy: more than {} bytes of requests in flight (--max-inflight-bytes)",
                    limits.bytes
                )
            };
            return Err(Error::rejected(
                Rejection::ServerBusy,
                Duration::from_millis(10),
                msg,
            ));
        }
        Ok(guard)
    }
}

/// Bytes of a request being decompressed, counted against `--max-inflight-bytes` chunk by chunk
/// before each chunk is allocated (a compressed message says nothing of its expanded size). It
/// is not a request: the request is counted again, in full, when it is submitted, so the front
/// end drops this once the expanded message is handed on.
pub struct InflightBytes {
    counts: Arc<Inflight>,
    limit: usize,
    bytes: usize,
}

impl InflightBytes {
    pub(super) fn new(counts: Arc<Inflight>, limits: &InflightLimits) -> Self {
        InflightBytes {
            counts,
            limit: limits.bytes,
            bytes: 0,
        }
    }

    /// A count of its own, shared with no server (unit tests of a front-end's expansion).
    pub fn alone(limits: &InflightLimits) -> Self {
        InflightBytes::new(Arc::default(), limits)
    }

    /// Counts `n` more bytes. A request that alone passes the cap is refused as one whose size
    /// is known would be (invalid, no retry hint); one that passes it with the others in flight
    /// is "busy". Either way nothing more is counted (the bytes are released on drop).
    pub fn grow(&mut self, n: usize) -> Result<()> {
        let total = self.bytes.checked_add(n).filter(|&t| t <= self.limit);
        let Some(total) = total else {
            return Err(Error::invalid_arg(format!(
                "request of more than {} bytes (decompressed) is larger than the server accepts in flight ({} bytes, --max-inflight-bytes)",
                self.limit, self.limit
            ))
            .refused(Rejection::TooLarge, None));
        };
        let all = self.counts.bytes.fetch_add(n, Ordering::AcqRel) + n;
        self.bytes = total;
        if all > self.limit {
            return Err(Error::rejected(
                Rejection::ServerBusy,
                Duration::from_millis(10),
                format!(
                    "Server is busy: more than {} bytes of requests in flight (--max-inflight-bytes)",
                    self.limit
                ),
            ));
        }
        Ok(())
    }
}

impl Drop for InflightBytes {
    fn drop(&mut self) {
        self.counts.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: InflightLimits = InflightLimits {
        requests: 4,
        bytes: 1 << 20,
    };

    /// In paused time the clock moves only when every task waits on a timer: the waiter ends
    /// with the clock where it was, so it was woken by the guard, not by a polling timer.
    #[tokio::test(start_paused = true)]
    async fn idle_is_woken_by_the_last_guard() {
        let counts = Arc::new(Inflight::default());
        counts.idle().await; // nothing in flight: at once
        let first = counts.admit(&LIMITS, 10).unwrap();
        let second = counts.admit(&LIMITS, 10).unwrap();
        let started = tokio::time::Instant::now();
        let waiter = tokio::spawn({
            let counts = counts.clone();
            async move { counts.idle().await }
        });
        tokio::task::yield_now().await;
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one request is still in flight");
        drop(second);
        waiter.await.unwrap();
        assert_eq!(tokio::time::Instant::now(), started);
        assert_eq!(
            (counts.requests(), counts.bytes.load(Ordering::Acquire)),
            (0, 0)
        );
    }
}
