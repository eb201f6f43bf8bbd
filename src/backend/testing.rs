//! A fake backend for scheduler tests: no ONNX Runtime, outputs copy the inputs, and every
//! execution is logged so tests can see how requests were batched and how many ran at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{ComputeTimes, RunOutput, Runner};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Shared record of what the fake instances executed.
#[derive(Default)]
pub struct FakeLog {
    /// Rows of each execution, in completion order.
    pub batches: Mutex<Vec<usize>>,
    running: AtomicUsize,
    /// Most executions seen running at the same moment.
    pub max_concurrent: AtomicUsize,
}

impl FakeLog {
    pub fn batches(&self) -> Vec<usize> {
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Output `i` is a copy of input `i`; each run takes `work` of real time.
pub struct FakeRunner {
    pub log: Arc<FakeLog>,
    pub work: Duration,
    /// Fail every run with this message (for error-path tests).
    pub fail: Option<String>,
    /// A batch whose first INT32 element is this value takes 5 × `work`.
    pub slow_value: Option<i32>,
}

impl Runner for FakeRunner {
    fn run(&mut self, inputs: Vec<Tensor>, outputs: &[&str]) -> Result<RunOutput> {
        let now = self.log.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.log.max_concurrent.fetch_max(now, Ordering::SeqCst);
        let first = inputs
            .first()
            .and_then(|t| t.data().get(..4))
            .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")));
        let slow = self.slow_value.is_some() && first == self.slow_value;
        std::thread::sleep(if slow { self.work * 5 } else { self.work });
        self.log.running.fetch_sub(1, Ordering::SeqCst);
        if let Some(msg) = &self.fail {
            return Err(Error::internal(msg.clone()));
        }
        let rows = inputs
            .first()
            .and_then(|t| t.shape().first())
            .copied()
            .unwrap_or(1) as usize;
        self.log
            .batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rows);
        let tensors = outputs
            .iter()
            .zip(inputs)
            .map(|(name, t)| t.renamed(*name))
            .collect();
        Ok(RunOutput {
            tensors,
            times: ComputeTimes {
                infer: self.work,
                ..Default::default()
            },
        })
    }
}
