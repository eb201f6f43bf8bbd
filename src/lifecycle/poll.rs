//! `--model-control-mode=poll`: re-reads the repositories every `--repository-poll-secs`.
//! New folders load, removed ones unload, changed ones reload without downtime. A change is
//! acted on only once the folder looked the same on two polls in a row, so a half-copied drop
//! is never loaded; a drop that fails to load leaves the serving version in place and is not
//! retried until the folder changes again.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::loader::fingerprint;
use super::manager::ModelManager;
use crate::error::Result;
use crate::model::repository;

pub(crate) async fn run(manager: Arc<ModelManager>, mut stop: watch::Receiver<bool>) {
    let interval = manager.options().poll_interval;
    let mut state = PollState::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let repos = manager.options().repositories.clone();
        match tokio::task::spawn_blocking(move || look(&repos)).await {
            Ok(Ok(found)) => state.apply(&manager, &found),
            Ok(Err(e)) => tracing::warn!(error = %e, "repository poll failed"),
            Err(e) => tracing::warn!(error = %e, "repository poll task failed"),
        }
    }
}

/// What one poll sees: every model folder with the fingerprint of its files (`None` for a
/// name found in two repositories). Blocking: it walks every folder.
fn look(repos: &[PathBuf]) -> Result<BTreeMap<String, Option<u64>>> {
    Ok(repository::scan(repos)?
        .into_iter()
        .map(|(name, dir)| (name, dir.ok().map(|d| fingerprint(&d))))
        .collect())
}

#[derive(Default)]
struct PollState {
    /// Fingerprint seen on the previous poll for a folder that differs from what serves.
    seen: HashMap<String, u64>,
    /// Fingerprint of the last load attempt per model, to not retry a broken drop forever.
    attempted: HashMap<String, u64>,
}

impl PollState {
    /// Acts on what a poll found: loads what changed and held still, unloads what is gone.
    fn apply(&mut self, manager: &Arc<ModelManager>, found: &BTreeMap<String, Option<u64>>) {
        for (name, fp) in found {
            let Some(fp) = *fp else { continue };
            if manager.source_of(name) == Some(fp) || self.attempted.get(name) == Some(&fp) {
                self.seen.remove(name);
                continue;
            }
            if self.seen.insert(name.clone(), fp) != Some(fp) {
                continue; // changed since the last poll: wait until it holds still
            }
            self.seen.remove(name);
            self.attempted.insert(name.clone(), fp);
            tracing::info!(model = %name, "repository change detected; loading");
            let (m, n) = (manager.clone(), name.clone());
            tokio::spawn(async move {
                if let Err(e) = m.load_from_repository(&n, None, false).await {
                    tracing::error!(model = %n, error = %e, "poll: load failed; what was serving keeps serving");
                }
            });
        }
        for name in manager.tracked() {
            if !found.contains_key(&name) && manager.source_of(&name).is_some() {
                tracing::info!(model = %name, "model folder removed; unloading");
                manager.retire_all(&name);
                self.attempted.remove(&name);
            }
        }
    }
}
