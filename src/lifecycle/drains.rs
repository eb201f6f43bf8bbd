//! Sequences across reloads and unloads (sequence-batching.md §7, issue 19): a sequence model
//! version that a reload replaced, or an unload removed, while sequences still ran on it keeps
//! serving those sequences' continuations until they end, idle out or the drain timeout
//! (`--sequence-drain-timeout-secs`) passes; new sequences (START) go to whatever the manager
//! serves now. When the timeout passes, the old version's remaining sequences are ended: their
//! queued requests, and any continuation that arrives later, get UNAVAILABLE `sequence <id> of
//! model '<m>' ended by a reload` (until a new START reuses the id).
//!
//! Ownership: `SequenceDrains` holds the old versions (`Arc<LoadedModel>`, so they stay alive
//! while draining) and the ids ended per model; one task per drained version watches it and
//! lets go of it at the end, after which the reaper tears it down as usual.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::loader::LoadedModel;
use crate::error::Result;
use crate::request::{CorrelationId, SequenceParams};
use crate::scheduler::sequence::ended_by_reload;

/// Ids remembered as "ended by a reload" per model, at most (the oldest are not tracked: a
/// model ends at most its slots and backlog at once, far below this).
const MAX_ENDED: usize = 65_536;

/// How often a drain looks whether its sequences have ended (they end by END, idle timeout or
/// cancellation, none of which signals here).
const POLL: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Inner {
    /// Per model, the old versions still serving continuations.
    draining: HashMap<String, Vec<Arc<LoadedModel>>>,
    /// Per model, the ids whose sequence a drain ended.
    ended: HashMap<String, HashSet<CorrelationId>>,
}

pub(crate) struct SequenceDrains {
    inner: Mutex<Inner>,
    timeout: Duration,
}

impl SequenceDrains {
    pub(crate) fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(SequenceDrains {
            inner: Mutex::new(Inner::default()),
            timeout,
        })
    }

    /// Takes the versions of `name` that a reload or unload let go of and that still run
    /// sequences; each drains on a task of its own. Must be called on the runtime.
    pub(crate) fn adopt(self: &Arc<Self>, name: &str, released: &[Arc<LoadedModel>]) {
        for m in released {
            if m.spec.sequence.is_none() || m.scheduler.sequences() == 0 {
                continue;
            }
            tracing::info!(
                model = name,
                version = m.spec.version,
                sequences = m.scheduler.sequences(),
                timeout_s = self.timeout.as_secs_f64(),
                "version replaced or unloaded with running sequences: serving their continuations until they end"
            );
            self.inner
                .lock()
                .draining
                .entry(name.to_string())
                .or_default()
                .push(m.clone());
            let me = self.clone();
            let m = m.clone();
            let name = name.to_string();
            tokio::spawn(async move { me.drain(name, m).await });
        }
    }

    async fn drain(self: Arc<Self>, name: String, m: Arc<LoadedModel>) {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if m.scheduler.sequences() == 0 {
                break;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                let ended = m.scheduler.end_sequences();
                tracing::warn!(
                    model = name,
                    version = m.spec.version,
                    sequences = ended.len(),
                    "sequence drain timeout: ending the sequences still running on the old version"
                );
                let mut inner = self.inner.lock();
                let set = inner.ended.entry(name.clone()).or_default();
                for id in ended {
                    if set.len() < MAX_ENDED {
                        set.insert(id);
                    }
                }
                break;
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
        }
        let mut inner = self.inner.lock();
        if let Some(list) = inner.draining.get_mut(&name) {
            list.retain(|v| !Arc::ptr_eq(v, &m));
            if list.is_empty() {
                inner.draining.remove(&name);
            }
        }
    }

    /// Where a request of `name` with sequence `p` must go: the old version its sequence runs
    /// on (a continuation), or `None` for the serving version. A continuation of a sequence
    /// that a drain ended is refused; a START forgets that.
    pub(crate) fn home(&self, name: &str, p: &SequenceParams) -> Result<Option<Arc<LoadedModel>>> {
        if p.id.is_none() {
            return Ok(None);
        }
        let mut inner = self.inner.lock();
        if p.start {
            if let Some(set) = inner.ended.get_mut(name) {
                set.remove(&p.id);
            }
            return Ok(None);
        }
        if inner.ended.get(name).is_some_and(|s| s.contains(&p.id)) {
            return Err(ended_by_reload(&p.id, name));
        }
        Ok(inner
            .draining
            .get(name)
            .and_then(|list| list.iter().find(|v| v.scheduler.runs_sequence(&p.id)))
            .cloned())
    }
}
