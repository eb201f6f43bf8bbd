//! Loads in flight, by model name, so that a load that is no longer wanted can be stopped:
//! superseded by a newer load of the same model, unloaded, or the server shuts down; and what
//! the manager does with a load that was stopped.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use super::LoadedModel;
use crate::backend::CancelToken;
use crate::error::{Error, Result};

pub(super) const SUPERSEDED: &str = "superseded by a newer load";
pub(super) const UNLOADED: &str = "unloaded";
pub(super) const SHUTTING_DOWN: &str = "the server is shutting down";

#[derive(Default)]
pub(super) struct PendingLoads {
    loads: Mutex<HashMap<String, Vec<CancelToken>>>,
    /// Set once at shutdown: every later load is cancelled from its start.
    stopping: AtomicBool,
}

impl PendingLoads {
    /// Registers a new load of `name`. `supersede`: cancel the loads of `name` already in flight.
    pub(super) fn begin(&self, name: &str, supersede: bool) -> CancelToken {
        let token = CancelToken::default();
        let mut loads = self.lock();
        if self.stopping.load(Ordering::SeqCst) {
            token.cancel(SHUTTING_DOWN);
        }
        let list = loads.entry(name.to_string()).or_default();
        if supersede {
            for old in list.iter() {
                old.cancel(SUPERSEDED);
            }
        }
        list.push(token.clone());
        token
    }

    /// Forgets a finished load.
    pub(super) fn end(&self, name: &str, token: &CancelToken) {
        let mut loads = self.lock();
        if let Some(list) = loads.get_mut(name) {
            list.retain(|t| !t.same(token));
            if list.is_empty() {
                loads.remove(name);
            }
        }
    }

    /// Stops every load of `name` in flight.
    pub(super) fn cancel(&self, name: &str, reason: &str) {
        if let Some(list) = self.lock().get(name) {
            for t in list {
                t.cancel(reason);
            }
        }
    }

    /// Stops every load in flight and every later one (server shutdown).
    pub(super) fn cancel_all(&self) {
        let loads = self.lock();
        self.stopping.store(true, Ordering::SeqCst);
        for t in loads.values().flatten() {
            t.cancel(SHUTTING_DOWN);
        }
    }

    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<String, Vec<CancelToken>>> {
        self.loads.lock()
    }
}

impl super::ModelManager {
    /// A load that is no longer wanted: nothing is installed, what was built is freed, and the
    /// error says where it stopped.
    pub(super) fn stopped(
        &self,
        name: &str,
        cancel: &CancelToken,
        built: Result<Vec<(i64, Result<LoadedModel>)>>,
    ) -> Error {
        let why = cancel.reason().unwrap_or_else(|| "cancelled".into());
        let mut message = format!("load of model '{name}' stopped ({why})");
        let mut stray = Vec::new();
        let mut note = |e: Error| {
            if e.code == crate::error::Code::Cancelled && e.message.starts_with("load of model") {
                message = e.message;
            }
        };
        match built {
            Ok(versions) => {
                for (_, r) in versions {
                    match r {
                        Ok(m) => stray.push(m),
                        Err(e) => note(e),
                    }
                }
            }
            Err(e) => note(e),
        }
        if let Some(e) = self.write().get_mut(name) {
            e.loading = None;
        }
        // Never installed: dropping them hands them to the reaper.
        drop(stray);
        tracing::info!(model = name, "{message}");
        Error::cancelled(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_loads_unloads_and_shutdown_cancel() {
        let p = PendingLoads::default();
        let first = p.begin("m", false);
        let startup = p.begin("m", false);
        assert!(!first.is_cancelled() && !startup.is_cancelled());
        let newer = p.begin("m", true);
        assert_eq!(first.reason().as_deref(), Some(SUPERSEDED));
        assert!(startup.is_cancelled() && !newer.is_cancelled());
        p.end("m", &first);
        p.end("m", &startup);
        let other = p.begin("o", false);
        p.cancel("m", UNLOADED);
        assert_eq!(newer.reason().as_deref(), Some(UNLOADED));
        assert!(!other.is_cancelled());
        p.cancel_all();
        assert_eq!(other.reason().as_deref(), Some(SHUTTING_DOWN));
        assert!(p.begin("late", false).is_cancelled());
    }
}
