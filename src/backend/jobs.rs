//! The bounded channel from a model version's scheduler to its instance threads, which wakes
//! the instance that went idle last.
//!
//! A plain channel wakes its waiting receivers in turn, so lone requests rotate over every
//! instance and each run starts on caches the other instances' runs evicted (measured on
//! `minilm`: 7.8–9.5 ms of compute per sentence with two instances, 6.3 ms with one). Here a
//! receiver that finds nothing pushes itself on an idle stack and parks; a send unparks the
//! top of the stack. Under load every instance stays busy and takes the next job as it
//! finishes, as before.
//!
//! No job waits while an instance idles: a receiver registers before its last look at the
//! channel and a sender sends before it pops, both under the stack's lock or ordered by it,
//! so either the receiver sees the job or the sender sees the receiver. A receiver that finds
//! a job on that last look, after a sender already popped it, passes the sender's wake on to
//! the next idle receiver (the job it took was another's, and the sender's job still waits).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, MutexGuard};
use std::thread::{Thread, ThreadId};

use crossbeam_channel::{RecvError, TryRecvError, TrySendError};

/// Creates a channel of `capacity` jobs (at least 1).
pub(crate) fn bounded<J>(capacity: usize) -> (JobSender<J>, JobReceiver<J>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
    let shared = Arc::new(Shared {
        idle: Mutex::new(Vec::new()),
        senders: AtomicUsize::new(1),
    });
    (
        JobSender {
            tx: Some(tx),
            shared: shared.clone(),
        },
        JobReceiver { rx, shared },
    )
}

struct Shared {
    /// Receivers parked waiting for a job, the one that went idle last on top.
    idle: Mutex<Vec<Thread>>,
    /// Live `JobSender`s: the last one to go wakes every parked receiver to see the end.
    senders: AtomicUsize,
}

impl Shared {
    fn idle(&self) -> MutexGuard<'_, Vec<Thread>> {
        self.idle.lock()
    }

    /// Puts `me` on top of the idle stack.
    fn register(&self, me: &Thread) {
        self.idle().push(me.clone());
    }

    /// Takes `me` off the idle stack; false when a sender popped it first (and unparked it).
    fn forget(&self, me: ThreadId) -> bool {
        let mut idle = self.idle();
        match idle.iter().rposition(|t| t.id() == me) {
            Some(i) => {
                idle.remove(i);
                true
            }
            None => false,
        }
    }

    /// `me` registered, then found a job on its own look: not idle after all. If a sender
    /// popped it meanwhile, that sender's wake was meant for a job still in the channel, so it
    /// goes to the next idle receiver; kept, it would be spent on a busy thread while that job
    /// waited for it and another receiver stayed parked.
    fn busy_after_all(&self, me: ThreadId) {
        if !self.forget(me) {
            self.wake_last_idle();
        }
    }

    /// Unparks the receiver that went idle last, if any (taking it off the stack).
    fn wake_last_idle(&self) {
        let top = self.idle().pop();
        if let Some(t) = top {
            t.unpark();
        }
    }
}

pub(crate) struct JobSender<J> {
    /// `None` only while this (last) sender is being dropped.
    tx: Option<crossbeam_channel::Sender<J>>,
    shared: Arc<Shared>,
}

impl<J> JobSender<J> {
    /// Queues `job` without waiting and wakes the instance that went idle last, if any.
    pub(crate) fn try_send(&self, job: J) -> Result<(), TrySendError<J>> {
        match &self.tx {
            Some(tx) => tx.try_send(job)?,
            None => return Err(TrySendError::Disconnected(job)),
        }
        self.shared.wake_last_idle();
        Ok(())
    }
}

impl<J> Clone for JobSender<J> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        JobSender {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<J> Drop for JobSender<J> {
    fn drop(&mut self) {
        // Disconnect first, then wake: a receiver that registers after the wake finds the
        // channel disconnected on its look before parking.
        let tx = self.tx.take();
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            drop(tx);
            let parked = std::mem::take(&mut *self.shared.idle());
            for t in parked {
                t.unpark();
            }
        }
    }
}

pub struct JobReceiver<J> {
    rx: crossbeam_channel::Receiver<J>,
    shared: Arc<Shared>,
}

impl<J> Clone for JobReceiver<J> {
    fn clone(&self) -> Self {
        JobReceiver {
            rx: self.rx.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<J> JobReceiver<J> {
    /// Waits for the next job; an error once the channel is empty and every sender is gone.
    pub fn recv(&self) -> Result<J, RecvError> {
        // Only a receiver that finds nothing needs its own handle (to register as idle).
        let mut me: Option<std::thread::Thread> = None;
        loop {
            match self.rx.try_recv() {
                Ok(job) => return Ok(job),
                Err(TryRecvError::Disconnected) => return Err(RecvError),
                Err(TryRecvError::Empty) => {}
            }
            let me = me.get_or_insert_with(std::thread::current);
            self.shared.register(me);
            match self.rx.try_recv() {
                Ok(job) => {
                    self.shared.busy_after_all(me.id());
                    return Ok(job);
                }
                Err(TryRecvError::Disconnected) => {
                    self.shared.forget(me.id());
                    return Err(RecvError);
                }
                Err(TryRecvError::Empty) => {}
            }
            std::thread::park();
            // Woken by a send (already popped), by the end, or spuriously: look again.
            self.shared.forget(me.id());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Spawns receivers that report (their index, the job) for every job, after announcing
    /// each time they are about to wait.
    fn receivers(
        rx: &JobReceiver<u32>,
        n: usize,
    ) -> (
        mpsc::Receiver<(usize, u32)>,
        Vec<std::thread::JoinHandle<()>>,
    ) {
        let (done_tx, done) = mpsc::channel();
        let handles = (0..n)
            .map(|i| {
                let rx = rx.clone();
                let done_tx = done_tx.clone();
                std::thread::spawn(move || {
                    while let Ok(job) = rx.recv() {
                        done_tx.send((i, job)).unwrap();
                    }
                })
            })
            .collect();
        (done, handles)
    }

    fn wait_idle(tx: &JobSender<u32>, n: usize) {
        // Observable state, not time: the receivers are on the stack.
        while tx.shared.idle().len() != n {
            std::thread::yield_now();
        }
    }

    #[test]
    fn lone_jobs_go_to_the_receiver_that_idled_last() {
        let (tx, rx) = bounded::<u32>(8);
        let (done, handles) = receivers(&rx, 3);
        drop(rx);
        wait_idle(&tx, 3);
        let mut who = Vec::new();
        for job in 0..20 {
            tx.try_send(job).unwrap();
            let (i, got) = done.recv().unwrap();
            assert_eq!(got, job);
            who.push(i);
            wait_idle(&tx, 3);
        }
        // One after another, every job runs on the same (last idle) receiver.
        assert!(who.iter().all(|&i| i == who[0]), "rotated: {who:?}");
        drop(tx);
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn every_job_is_taken_and_the_end_wakes_every_receiver() {
        let (tx, rx) = bounded::<u32>(4);
        let (done, handles) = receivers(&rx, 4);
        drop(rx);
        let senders: Vec<_> = (0..3)
            .map(|s| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for k in 0..2_000u32 {
                        let mut job = s * 10_000 + k;
                        loop {
                            match tx.try_send(job) {
                                Ok(()) => break,
                                Err(TrySendError::Full(j)) => {
                                    job = j;
                                    std::thread::yield_now();
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        drop(tx);
        let mut got: Vec<u32> = Vec::new();
        for h in handles {
            h.join().unwrap();
        }
        while let Ok((_, j)) = done.try_recv() {
            got.push(j);
        }
        got.sort_unstable();
        let want: Vec<u32> = (0..3)
            .flat_map(|s| (0..2_000).map(move |k| s * 10_000 + k))
            .collect();
        assert_eq!(got, want);
    }

    /// The race `busy_after_all` closes, driven step by step: this thread is receiver A, B is
    /// parked below it. A registers; a job is already in the channel (its sender popped before
    /// either registered); a second sender pops A. A's last look takes the first job, so the
    /// second sender's job must wake B, not wait for A.
    #[test]
    fn a_wake_spent_on_a_receiver_that_found_a_job_goes_to_the_next_idle_one() {
        let (tx, rx) = bounded::<u32>(8);
        let (done, handles) = receivers(&rx, 1);
        wait_idle(&tx, 1);
        let me = std::thread::current();
        rx.shared.register(&me);
        tx.tx.as_ref().unwrap().try_send(0).unwrap();
        tx.try_send(1).unwrap();
        assert!(matches!(rx.rx.try_recv(), Ok(0)));
        rx.shared.busy_after_all(me.id());
        // A hang detector, not a time bound: B gets job 1 without another send.
        let got = done.recv_timeout(std::time::Duration::from_secs(30));
        assert_eq!(got, Ok((0, 1)), "job 1 waited while B stayed parked");
        assert!(rx.shared.idle().iter().all(|t| t.id() != me.id()));
        drop((tx, rx));
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn a_send_after_the_receivers_are_gone_is_refused() {
        let (tx, rx) = bounded::<u32>(1);
        drop(rx);
        assert!(matches!(tx.try_send(1), Err(TrySendError::Disconnected(1))));
    }
}
