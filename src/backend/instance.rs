//! One OS thread per model instance. The thread owns its runner (and so its ORT session) for
//! its whole life; work arrives over a bounded channel shared by the model's instances and
//! the thread exits when every sender is gone.

use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use crate::backend::Runner;
use crate::error::{Error, Result};

/// Something an instance thread can execute with its runner.
pub trait Job: Send + 'static {
    fn execute(self, runner: &mut dyn Runner);
}

pub struct InstanceThread {
    pub name: String,
    handle: JoinHandle<()>,
}

impl InstanceThread {
    pub fn spawn<J: Job>(
        name: String,
        mut runner: Box<dyn Runner>,
        jobs: Receiver<J>,
    ) -> Result<Self> {
        let handle = std::thread::Builder::new()
            .name(thread_name(&name))
            .spawn(move || {
                while let Ok(job) = jobs.recv() {
                    job.execute(runner.as_mut());
                }
                tracing::debug!("instance thread exits");
            })
            .map_err(|e| {
                Error::internal(format!("failed to start instance thread '{name}': {e}"))
            })?;
        Ok(InstanceThread { name, handle })
    }

    /// Waits for the thread to finish. Blocking: call it from a blocking context only.
    pub fn join(self) {
        if self.handle.join().is_err() {
            tracing::error!(instance = %self.name, "instance thread panicked");
        }
    }
}

/// Linux limits thread names to 15 bytes; keep the tail, which carries the instance index.
fn thread_name(name: &str) -> String {
    let start = name.len().saturating_sub(15);
    let mut s = start;
    while !name.is_char_boundary(s) {
        s += 1;
    }
    name[s..].to_string()
}
