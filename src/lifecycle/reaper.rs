//! Teardown of model versions that are gone. A version is torn down when its last reference
//! drops: the manager's, when it unloads or replaces the version, or the last request's that
//! still held it. Teardown joins the version's instance and tokenizer threads, which blocks,
//! and that last reference usually drops on an async worker; so `LoadedModel`'s `Drop` only
//! hands the remains to the reaper, which joins them on a blocking thread and then tells the
//! manager (which marks the version UNAVAILABLE "unloaded").

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::backend::instance::InstanceThread;
use crate::preprocess::tokenizer::TokenizerPool;

/// Remains handed over and not yet picked up. The reaper moves each one to a blocking thread
/// at once, so this only ever holds a burst; past it, a teardown gets a thread of its own.
const CAPACITY: usize = 64;

/// Told once a version's threads are joined: model name, version, build id.
pub(crate) type OnTornDown = Arc<dyn Fn(&str, i64, u64) + Send + Sync>;

/// What a version leaves to join once nothing uses it. Dropped unjoined (the runtime is going
/// away with the remains still queued), its threads end by themselves once their queues close.
pub(crate) struct Remains {
    pub model: String,
    pub version: i64,
    /// The build (`LoadedModel::id`) these remains are of.
    pub id: u64,
    pub threads: Vec<InstanceThread>,
    pub tokenizer: Option<TokenizerPool>,
    /// Counts the version as alive until the remains are joined or dropped.
    pub live: Live,
}

impl Remains {
    /// Joins every thread. Blocking: the reaper runs it on a blocking thread.
    fn join(self, on_torn_down: Option<&OnTornDown>) {
        let Remains {
            model,
            version,
            id,
            threads,
            tokenizer,
            live,
        } = self;
        if let Some(pool) = tokenizer {
            pool.shutdown();
        }
        for t in threads {
            t.join();
        }
        if let Some(tell) = on_torn_down {
            tell(&model, version, id);
        }
        drop(live);
    }
}

/// One version counted as alive, from its build until its remains are joined (or dropped).
pub(crate) struct Live(Arc<watch::Sender<usize>>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Handle to a manager's reaper. Every loaded version holds a clone, so that its `Drop` can
/// hand its remains over.
#[derive(Clone)]
pub(crate) struct Reaper {
    /// `None` without a runtime (unit tests): every teardown then gets a thread of its own.
    tx: Option<mpsc::Sender<Remains>>,
    on_torn_down: Option<OnTornDown>,
    live: Arc<watch::Sender<usize>>,
}

impl Reaper {
    /// Starts the reaper task on the current runtime, if there is one. It ends once every
    /// handle is gone.
    pub(crate) fn start(on_torn_down: Option<OnTornDown>) -> Reaper {
        let tx = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let (tx, mut rx) = mpsc::channel::<Remains>(CAPACITY);
            let tell = on_torn_down.clone();
            runtime.spawn(async move {
                while let Some(remains) = rx.recv().await {
                    let tell = tell.clone();
                    // Not awaited: remains whose instance is still executing a long batch must
                    // not hold up the teardown of the others.
                    drop(tokio::task::spawn_blocking(move || {
                        remains.join(tell.as_ref())
                    }));
                }
            });
            tx
        });
        Reaper {
            tx,
            on_torn_down,
            live: Arc::new(watch::channel(0).0),
        }
    }

    /// Counts a new version as alive until its `Remains` (which take the returned `Live`)
    /// are joined.
    pub(crate) fn register(&self) -> Live {
        self.live.send_modify(|n| *n += 1);
        Live(self.live.clone())
    }

    /// Versions registered and not yet torn down.
    pub(crate) fn alive(&self) -> usize {
        *self.live.borrow()
    }

    /// Tears `remains` down off the async workers. Never blocks and never joins here: it runs
    /// inside `Drop`, often on an async worker.
    pub(crate) fn reap(&self, remains: Remains) {
        let remains = match &self.tx {
            Some(tx) => match tx.try_send(remains) {
                Ok(()) => return,
                // A burst (shutdown retiring every version at once): still off the runtime.
                Err(mpsc::error::TrySendError::Full(r)) => {
                    tracing::debug!(
                        model = %r.model,
                        version = r.version,
                        "teardown queue full: joining this version on a thread of its own"
                    );
                    r
                }
                // The runtime is shutting down.
                Err(mpsc::error::TrySendError::Closed(r)) => r,
            },
            None => remains,
        };
        let tell = self.on_torn_down.clone();
        let spawned = std::thread::Builder::new()
            .name("nereid-teardown".into())
            .spawn(move || remains.join(tell.as_ref()));
        if let Err(e) = spawned {
            // The closure, and the remains with it, were dropped: the threads end by themselves.
            tracing::error!("cannot start a teardown thread: {e}");
        }
    }

    /// Resolves once every registered version has been torn down (at once when none is alive).
    pub(crate) async fn settled(&self) {
        let mut alive = self.live.subscribe();
        // Cannot fail: `self` holds the sender.
        let _ = alive.wait_for(|n| *n == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;

    use super::*;
    use crate::backend::Runner;
    use crate::backend::instance::{Job, RunHealth};
    use crate::backend::testing::{FakeLog, FakeRunner};

    struct Nothing;
    impl Job for Nothing {
        fn execute(self, _: &mut dyn Runner) -> RunHealth {
            RunHealth::Ok
        }
    }

    fn instance(jobs: crate::backend::jobs::JobReceiver<Nothing>) -> InstanceThread {
        let runner = FakeRunner {
            log: Arc::new(FakeLog::default()),
            ..Default::default()
        };
        InstanceThread::spawn("reaper-test".into(), Box::new(runner), jobs, None).unwrap()
    }

    #[tokio::test]
    async fn remains_are_joined_off_the_runtime_and_reported() {
        let told = Arc::new(Mutex::new(Vec::new()));
        let record = told.clone();
        // A current-thread runtime: its only async worker is this thread.
        let worker = std::thread::current().id();
        let reaper = Reaper::start(Some(Arc::new(move |m: &str, v: i64, id: u64| {
            let on_worker = std::thread::current().id() == worker;
            record.lock().push((m.to_string(), v, id, on_worker));
        })));
        let (jobs, rx) = crate::backend::jobs::bounded::<Nothing>(1);
        let live = reaper.register();
        assert_eq!(reaper.alive(), 1);
        let remains = Remains {
            model: "m".into(),
            version: 3,
            id: 7,
            threads: vec![instance(rx)],
            tokenizer: None,
            live,
        };
        // The queue closes after the hand-over, as when a version's scheduler drops right
        // after its `Drop` handed the remains over: the join waits for the thread to end.
        reaper.reap(remains);
        drop(jobs);
        reaper.settled().await;
        assert_eq!(reaper.alive(), 0);
        assert_eq!(*told.lock(), vec![("m".to_string(), 3, 7, false)]);
    }

    #[test]
    fn without_a_runtime_a_thread_of_its_own_joins() {
        let (done, told) = std::sync::mpsc::sync_channel(1);
        let reaper = Reaper::start(Some(Arc::new(move |_: &str, _: i64, id: u64| {
            let _ = done.send((id, std::thread::current().name().map(str::to_string)));
        })));
        let (jobs, rx) = crate::backend::jobs::bounded::<Nothing>(1);
        reaper.reap(Remains {
            model: "m".into(),
            version: 1,
            id: 9,
            threads: vec![instance(rx)],
            tokenizer: None,
            live: reaper.register(),
        });
        drop(jobs);
        let (id, thread) = told.recv().unwrap();
        assert_eq!((id, thread.as_deref()), (9, Some("nereid-teardown")));
    }
}
