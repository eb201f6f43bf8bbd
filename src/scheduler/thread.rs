//! The thread the batchers run on. Each model version's batcher is a task, but not on the
//! front-end runtime: when a flood of requests fills that runtime's queue with thousands of
//! tasks, a batcher there would wait its turn behind them, and the queued requests it should
//! start (or expire on time) would wait with it. Here the batchers have a single-threaded runtime
//! of their own that the OS schedules like any other thread.

use parking_lot::Mutex;
use std::future::Future;
use std::sync::{Arc, Weak};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// A running batcher thread. Every batcher task holds one reference, so the thread lasts until
/// the last batcher has drained its queue; then it ends by itself.
pub struct BatcherThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    /// Batchers here wait on a microsecond timer (`Timer::precise`); false on a test's
    /// paused-time runtime, where only tokio's timer follows the clock.
    precise: bool,
}

impl BatcherThread {
    pub fn start() -> Result<Arc<Self>> {
        let failed =
            |e: std::io::Error| Error::internal(format!("failed to start the batcher thread: {e}"));
        let runtime = Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(failed)?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("nereid-batcher".into())
            .spawn(move || {
                // Queue delays of tens of µs must not be rounded up by the default 50 µs slack.
                super::timer::set_thread_timer_slack();
                runtime.block_on(async {
                    let _ = stopped.await;
                })
            })
            .map_err(failed)?;
        Ok(Arc::new(BatcherThread {
            handle,
            stop: Some(stop),
            precise: true,
        }))
    }

    /// Batchers on the caller's own runtime instead (tests in paused time, whose clock only
    /// that runtime's tasks see).
    #[cfg(test)]
    pub fn on_current_runtime() -> Arc<Self> {
        Arc::new(BatcherThread {
            handle: Handle::current(),
            stop: None,
            precise: false,
        })
    }

    /// The timer a batcher on this thread waits with; call it on this thread (the timer
    /// registers with the thread's runtime).
    pub(crate) fn timer(&self) -> super::timer::Timer {
        if self.precise {
            super::timer::Timer::precise()
        } else {
            super::timer::Timer::tokio()
        }
    }

    /// A batcher "thread" whose tasks never run (its runtime is never driven), for tests of
    /// what happens without the batcher task. The runtime is leaked: dropping it here could
    /// run inside the test's runtime, where that is not allowed.
    #[cfg(test)]
    pub fn stalled() -> Arc<Self> {
        let runtime = Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime");
        Arc::new(BatcherThread {
            handle: Box::leak(Box::new(runtime)).handle().clone(),
            stop: None,
            precise: false,
        })
    }

    /// Runs `task` on this thread; the task should hold a clone of `self` until it ends.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(task);
    }
}

impl Drop for BatcherThread {
    /// The last batcher is gone: let the thread end (without waiting for it, since this may run
    /// on that very thread).
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Hands out the batcher thread shared by every model version, starting one when none runs.
#[derive(Default)]
pub(crate) struct BatcherThreads(Mutex<Weak<BatcherThread>>);

impl BatcherThreads {
    pub(crate) fn get(&self) -> Result<Arc<BatcherThread>> {
        let mut current = self.0.lock();
        if let Some(thread) = current.upgrade() {
            return Ok(thread);
        }
        let thread = BatcherThread::start()?;
        *current = Arc::downgrade(&thread);
        Ok(thread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_thread_lasts_while_a_batcher_holds_it() {
        let threads = BatcherThreads::default();
        let a = threads.get().unwrap();
        let b = threads.get().unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one thread shared by every batcher");
        let (tx, rx) = std::sync::mpsc::channel();
        let held = a.clone();
        a.spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let name = std::thread::current().name().map(str::to_string);
            tx.send(name).unwrap();
            drop(held);
        });
        drop((a, b));
        // The task still holds the thread: its timer fires and it runs to the end.
        let name = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(name.as_deref(), Some("nereid-batcher"));
        // Once the last holder is gone a new one is started on demand.
        std::thread::sleep(Duration::from_millis(20));
        assert!(threads.0.lock().upgrade().is_none());
        let c = threads.get().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        c.spawn(async move { tx.send(()).unwrap() });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }
}
