//! The local folders and the remote repositories seen as one: which models exist where (a name
//! in two repositories is an error, as for folders), and where the loader finds a remote model.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::{ModelObjects, RemoteRepo};
use crate::error::{Error, Result};
use crate::model::repository;

/// Where a model was found.
pub(crate) enum Found {
    Local(PathBuf),
    Remote(ModelObjects),
}

/// Whether a scan's listings are kept for the loads it starts (startup, poll) or not (the
/// index: a later explicit load must list anew).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    ForLoads,
    Look,
}

/// Every model across `locals` (folders, listed on a blocking thread) and `remotes` (one
/// listing each). Any repository that cannot be read fails the whole scan: a model must not
/// look removed because its store was unreachable.
pub(crate) async fn scan(
    locals: &[PathBuf],
    remotes: &[Arc<RemoteRepo>],
    usage: Use,
) -> Result<BTreeMap<String, Result<Found>>> {
    let repos = locals.to_vec();
    let local = tokio::task::spawn_blocking(move || repository::scan(&repos))
        .await
        .unwrap_or_else(|e| Err(Error::internal(format!("repository task failed: {e}"))))?;
    let mut found: BTreeMap<String, Result<Found>> = local
        .into_iter()
        .map(|(name, dir)| (name, dir.map(Found::Local)))
        .collect();
    for remote in remotes {
        let models = remote.survey().await?;
        if usage == Use::ForLoads {
            remote.prime(&models);
        }
        for (name, objects) in models {
            let dup = found.contains_key(&name);
            let entry = if dup {
                Err(twice())
            } else {
                Ok(Found::Remote(objects))
            };
            found.insert(name, entry);
        }
    }
    Ok(found)
}

fn twice() -> Error {
    Error::invalid_arg("model appears in two or more repositories")
}

/// The cache folder of model `name` and the fingerprint of its listing, when a remote
/// repository holds it (downloaded now if the cache does not hold that listing yet); `None`
/// when no remote repository holds it (the caller looks in the folders, with their errors).
pub(crate) async fn locate(
    locals: &[PathBuf],
    remotes: &[Arc<RemoteRepo>],
    name: &str,
) -> Result<Option<(PathBuf, u64)>> {
    let poll_failed = |e: Error| {
        Error::internal(format!(
            "failed to load '{name}', failed to poll from model repository: {}",
            e.message
        ))
    };
    let mut hits = Vec::new();
    for remote in remotes {
        if let Some(objects) = remote.model(name).await.map_err(poll_failed)? {
            hits.push((remote, objects));
        }
    }
    let Some((remote, objects)) = hits.pop() else {
        return Ok(None);
    };
    let in_folders = if locals.is_empty() {
        false
    } else {
        let repos = locals.to_vec();
        tokio::task::spawn_blocking(move || repository::scan(&repos))
            .await
            .unwrap_or_else(|e| Err(Error::internal(format!("repository task failed: {e}"))))
            .map_err(poll_failed)?
            .contains_key(name)
    };
    if !hits.is_empty() || in_folders {
        return Err(poll_failed(twice()));
    }
    let dir = remote
        .fetch(name, &objects)
        .await
        .map_err(|e| Error::internal(format!("failed to load '{name}': {}", e.message)))?;
    Ok(Some((dir, objects.fingerprint())))
}
