//! One OS thread per model instance. The thread owns its runner (and so its ORT session) for
//! its whole life; work arrives over a bounded channel shared by the model's instances and
//! the thread exits when every sender is gone.
//!
//! Circuit breaker: after `threshold` executions in a row fail, the instance stops taking work
//! (the other instances take it), rebuilds its runner in the background (a new session, warmed
//! up) and comes back half-open: one more failure takes it out again.

use std::sync::Weak;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::backend::jobs::JobReceiver as Receiver;

use crate::backend::Runner;
use crate::error::{Error, Result};

/// Whether an execution says anything bad about the instance that ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunHealth {
    Ok,
    Failed,
}

/// Something an instance thread can execute with its runner.
pub(crate) trait Job: Send + 'static {
    fn execute(self, runner: &mut dyn Runner) -> RunHealth;
}

/// How a faulty instance is taken out and restored.
pub(crate) struct Recovery {
    /// Consecutive failed executions that open the breaker.
    pub threshold: u32,
    /// Creates and warms a replacement runner.
    pub rebuild: Box<dyn FnMut() -> Result<Box<dyn Runner>> + Send>,
    /// Told `false` when the instance leaves service and `true` when it is back.
    pub on_change: Box<dyn Fn(bool) + Send>,
    /// The instance gives up rebuilding once this is gone (its model was unloaded).
    pub alive: Weak<dyn Send + Sync>,
}

pub(crate) struct InstanceThread {
    pub name: String,
    handle: JoinHandle<()>,
}

impl InstanceThread {
    pub(crate) fn spawn<J: Job>(
        name: String,
        runner: Box<dyn Runner>,
        jobs: Receiver<J>,
        recovery: Option<Recovery>,
    ) -> Result<Self> {
        let thread_name = name.clone();
        let handle = std::thread::Builder::new()
            .name(short_name(&name))
            .spawn(move || serve(&thread_name, runner, jobs, recovery))
            .map_err(|e| {
                Error::internal(format!("failed to start instance thread '{name}': {e}"))
            })?;
        Ok(InstanceThread { name, handle })
    }

    /// Waits for the thread to finish. Blocking: call it from a blocking context only.
    pub(crate) fn join(self) {
        if self.handle.join().is_err() {
            tracing::error!(instance = %self.name, "instance thread panicked");
        }
    }
}

fn serve<J: Job>(
    name: &str,
    mut runner: Box<dyn Runner>,
    jobs: Receiver<J>,
    mut recovery: Option<Recovery>,
) {
    let mut failures = 0u32;
    while let Ok(job) = jobs.recv() {
        match job.execute(runner.as_mut()) {
            RunHealth::Ok => failures = 0,
            RunHealth::Failed => failures += 1,
        }
        let Some(rec) = recovery
            .as_mut()
            .filter(|r| r.threshold > 0 && failures >= r.threshold)
        else {
            continue;
        };
        tracing::warn!(
            instance = name,
            failures,
            "instance keeps failing: taking it out of service and rebuilding it"
        );
        (rec.on_change)(false);
        let mut backoff = Duration::from_millis(50);
        loop {
            if rec.alive.upgrade().is_none() {
                return;
            }
            match (rec.rebuild)() {
                Ok(fresh) => {
                    runner = fresh;
                    break;
                }
                Err(e) => {
                    tracing::warn!(instance = name, error = %e, "rebuilding the instance failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        // Half-open: the next failure takes it out again.
        failures = rec.threshold - 1;
        tracing::info!(
            instance = name,
            "instance rebuilt and warmed up: back in service"
        );
        (rec.on_change)(true);
    }
    tracing::debug!(instance = name, "instance thread exits");
}

/// Linux limits thread names to 15 bytes; keep the tail, which carries the instance index.
fn short_name(name: &str) -> String {
    let mut s = name.len().saturating_sub(15);
    while !name.is_char_boundary(s) {
        s += 1;
    }
    name[s..].to_string()
}
