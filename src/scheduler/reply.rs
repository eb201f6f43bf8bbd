//! Where a request's result goes. Normally straight to its caller; with `preserve_ordering`
//! through a sequencer that releases results in arrival order even when batches finish out
//! of order on different instances.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::Result;
use crate::request::InferResponse;

type Sender = oneshot::Sender<Result<InferResponse>>;

/// The obligation to answer one request. Every path that consumes an entry must call `send`
/// (an ordered reply that is never sent would hold back every later one).
pub enum Replier {
    Direct(Sender),
    Ordered {
        seq: u64,
        tx: Sender,
        order: Arc<Sequencer>,
    },
}

impl Replier {
    pub fn send(self, result: Result<InferResponse>) {
        match self {
            Replier::Direct(tx) => {
                let _ = tx.send(result);
            }
            Replier::Ordered { seq, tx, order } => order.complete(seq, tx, result),
        }
    }

    /// The caller has gone away (its receiver was dropped).
    pub fn is_closed(&self) -> bool {
        match self {
            Replier::Direct(tx) | Replier::Ordered { tx, .. } => tx.is_closed(),
        }
    }
}

/// Releases results strictly in sequence-number order.
#[derive(Default)]
pub struct Sequencer {
    state: Mutex<SequencerState>,
}

#[derive(Default)]
struct SequencerState {
    next_ticket: u64,
    next_release: u64,
    done: BTreeMap<u64, (Sender, Result<InferResponse>)>,
}

impl Sequencer {
    /// Takes the next sequence number; called in arrival order by the one enqueueing task.
    pub fn ticket(&self) -> u64 {
        let mut s = self.lock();
        let t = s.next_ticket;
        s.next_ticket += 1;
        t
    }

    fn complete(&self, seq: u64, tx: Sender, result: Result<InferResponse>) {
        let ready = {
            let mut s = self.lock();
            s.done.insert(seq, (tx, result));
            let mut ready = Vec::new();
            loop {
                let next = s.next_release;
                match s.done.remove(&next) {
                    Some(r) => {
                        ready.push(r);
                        s.next_release += 1;
                    }
                    None => break,
                }
            }
            ready
        };
        for (tx, r) in ready {
            let _ = tx.send(r);
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, SequencerState> {
        self.state.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn releases_in_ticket_order() {
        let order = Arc::new(Sequencer::default());
        let mut rxs = Vec::new();
        let mut repliers = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = oneshot::channel();
            repliers.push(Replier::Ordered {
                seq: order.ticket(),
                tx,
                order: order.clone(),
            });
            rxs.push(rx);
        }
        let mut repliers = repliers.into_iter();
        let (r0, r1, r2) = (
            repliers.next().unwrap(),
            repliers.next().unwrap(),
            repliers.next().unwrap(),
        );
        r2.send(Err(Error::internal("2")));
        r1.send(Err(Error::internal("1")));
        assert!(rxs[1].try_recv().is_err(), "1 must wait for 0");
        assert!(rxs[2].try_recv().is_err(), "2 must wait for 0");
        r0.send(Err(Error::internal("0")));
        for (i, rx) in rxs.iter_mut().enumerate() {
            assert_eq!(rx.try_recv().unwrap().unwrap_err().message, i.to_string());
        }
    }
}
