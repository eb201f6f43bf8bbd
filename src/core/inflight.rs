//! The server-wide in-flight caps (`--max-inflight-requests`, `--max-inflight-bytes`): every
//! accepted request holds an `InflightGuard` until it is answered or dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
}

/// A request counted against the server-wide caps until it is answered (or dropped).
pub(super) struct InflightGuard {
    counts: Arc<Inflight>,
    bytes: usize,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.counts.requests.fetch_sub(1, Ordering::AcqRel);
        self.counts.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Inflight {
    /// Requests (queued or running) counted now.
    pub(super) fn requests(&self) -> usize {
        self.requests.load(Ordering::Acquire)
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
