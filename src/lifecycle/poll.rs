//! `--model-control-mode=poll`: re-reads the repositories every `--repository-poll-secs`.
//! New folders load, removed ones unload, changed ones reload without downtime. A change is
//! acted on only once the folder (or a remote model's listing) looked the same on two polls in
//! a row, so a half-copied drop is never loaded; a drop that fails to load leaves the serving version in place and is not
//! retried until the folder changes again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::watch;

use super::loader::fingerprint;
use super::manager::{ManagerOptions, ModelManager};
use super::remote::repos::{self, Found};
use crate::error::{Error, Result};

pub(crate) async fn run(manager: Arc<ModelManager>, mut stop: watch::Receiver<bool>) {
    let interval = manager.options().poll_interval;
    let mut state = PollState::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match look(manager.options()).await {
            Ok(found) => state.apply(&manager, &found),
            Err(e) => tracing::warn!(error = %e, "repository poll failed"),
        }
    }
}

/// What one poll sees: every model with the fingerprint of what its repository holds (`None`
/// for a name found in two repositories). A folder's files are walked on a blocking thread; a
/// remote repository costs one listing, its models fingerprinted by their objects' ETags.
async fn look(opts: &ManagerOptions) -> Result<BTreeMap<String, Option<u64>>> {
    let found = repos::scan(&opts.repositories, &opts.remotes, repos::Use::ForLoads).await?;
    tokio::task::spawn_blocking(move || {
        found
            .into_iter()
            .map(|(name, at)| {
                let fp = match at {
                    Ok(Found::Local(dir)) => Some(fingerprint(&dir)),
                    Ok(Found::Remote(objects)) => Some(objects.fingerprint()),
                    Err(_) => None,
                };
                (name, fp)
            })
            .collect()
    })
    .await
    .map_err(|e| Error::internal(format!("repository poll task failed: {e}")))
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
