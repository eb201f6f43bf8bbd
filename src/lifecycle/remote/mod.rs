//! Model repositories in object stores (`s3://`, `gs://`, `as://`): a `RemoteRepo` lists its
//! models (one listing per survey; a model's fingerprint is a hash of its objects' keys, sizes
//! and ETags, so a changed object is noticed by its ETag) and copies a model into the local
//! cache (`cache`) before the loader reads it. A copy is served only once every object of the
//! listing arrived with the listed size and ETag; a failed download leaves what serves, and
//! the cache, as they were.

mod cache;
pub(crate) mod repos;
mod store;
pub(crate) mod url;

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use store::{Listed, Store, StoreError, StoreErrorKind};
use url::RemoteUrl;

/// Objects downloaded at once for one model.
const PARALLEL_DOWNLOADS: usize = 4;
/// A model at least this large logs its download's progress (every tenth).
const PROGRESS_FROM_BYTES: u64 = 32 << 20;

/// One `--model-repository` in an object store, with its cache folder.
#[derive(Debug)]
pub struct RemoteRepo {
    url: RemoteUrl,
    store: Store,
    /// This repository's folder under `--model-cache-dir`.
    cache: PathBuf,
    /// The snapshot last handed to the loader per model: kept by the next prune, as the
    /// version it loaded may still be serving.
    handed: parking_lot::Mutex<HashMap<String, PathBuf>>,
    /// Listings from the last startup or poll survey, each used once by the load it started
    /// (that load then loads what the survey saw, with no second listing).
    primed: parking_lot::Mutex<HashMap<String, ModelObjects>>,
}

/// The objects of one model: its key prefix and the listing under it.
#[derive(Debug, Clone)]
pub(crate) struct ModelObjects {
    prefix: String,
    objects: Vec<Listed>,
}

impl ModelObjects {
    /// A hash of the listing (relative key, size, ETag): equal = nothing changed.
    pub(crate) fn fingerprint(&self) -> u64 {
        let mut items: Vec<(&str, u64, Option<&str>)> = self
            .objects
            .iter()
            .map(|o| {
                let rel = o.key.strip_prefix(&self.prefix).unwrap_or(&o.key);
                (rel, o.size, o.etag.as_deref())
            })
            .collect();
        items.sort_unstable();
        let mut h = DefaultHasher::new();
        items.hash(&mut h);
        h.finish()
    }

    fn total_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }
}

impl RemoteRepo {
    /// Parses Triton's URL forms and opens the store (no request yet).
    pub fn open(given: &str, cache_root: &Path) -> std::result::Result<RemoteRepo, String> {
        let url = RemoteUrl::parse(given)?;
        let store = Store::open(&url)?;
        Ok(RemoteRepo {
            cache: cache::repo_dir(cache_root, given),
            url,
            store,
            handed: parking_lot::Mutex::new(HashMap::new()),
            primed: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    fn failed(&self, e: &StoreError) -> Error {
        Error::internal(format!(
            "failed to read model repository '{}': {e}",
            self.url
        ))
    }

    /// Every model in the repository with its objects, from one listing. A model is a
    /// "folder": a first key segment under the prefix with at least one object below it.
    pub(crate) async fn survey(&self) -> Result<BTreeMap<String, ModelObjects>> {
        let listed = self
            .store
            .list(&self.url.prefix)
            .await
            .map_err(|e| self.failed(&e))?;
        let root = if self.url.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.url.prefix)
        };
        let mut models: BTreeMap<String, ModelObjects> = BTreeMap::new();
        for o in listed {
            let Some((name, rest)) = o.key.strip_prefix(&root).and_then(|r| r.split_once('/'))
            else {
                continue; // a file at the repository's root, not a model
            };
            if name.is_empty() || name.starts_with('.') || rest.is_empty() {
                continue;
            }
            let name = name.to_string();
            models
                .entry(name.clone())
                .or_insert_with(|| ModelObjects {
                    prefix: self.url.model_prefix(&name),
                    objects: Vec::new(),
                })
                .objects
                .push(o);
        }
        Ok(models)
    }

    /// Keeps `models` (a survey's result) for the loads that survey starts: each listing is
    /// used once, by `model`. Replaces what an earlier survey left unused.
    pub(crate) fn prime(&self, models: &BTreeMap<String, ModelObjects>) {
        *self.primed.lock() = models.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }

    /// The objects of model `name`: the primed listing if a survey left one, else one listing
    /// of its prefix; `None` when it has none.
    pub(crate) async fn model(&self, name: &str) -> Result<Option<ModelObjects>> {
        if let Some(objects) = self.primed.lock().remove(name) {
            return Ok(Some(objects));
        }
        let prefix = self.url.model_prefix(name);
        let objects = self
            .store
            .list(prefix.trim_end_matches('/'))
            .await
            .map_err(|e| self.failed(&e))?;
        Ok((!objects.is_empty()).then_some(ModelObjects { prefix, objects }))
    }

    /// The local folder holding `model` as `objects` lists it: the cached snapshot of that
    /// listing, downloaded now if it is not there yet. The error names the URL and the object.
    pub(crate) async fn fetch(&self, model: &str, objects: &ModelObjects) -> Result<PathBuf> {
        let fp = objects.fingerprint();
        let dest = cache::snapshot_dir(&self.cache, model, fp);
        if !tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            self.download(model, objects, &dest).await?;
        } else {
            tracing::debug!(model, path = %dest.display(), "model already in the cache");
        }
        let previous = self.handed.lock().insert(model.to_string(), dest.clone());
        let (repo, m) = (self.cache.clone(), model.to_string());
        let keep: Vec<PathBuf> = std::iter::once(dest.clone()).chain(previous).collect();
        let _ = tokio::task::spawn_blocking(move || cache::prune(&repo, &m, &keep)).await;
        Ok(dest)
    }

    async fn download(&self, model: &str, objects: &ModelObjects, dest: &Path) -> Result<()> {
        let fail = |what: String| {
            Error::internal(format!(
                "failed to download model '{model}' from '{}': {what}",
                self.url
            ))
        };
        let (repo, m) = (self.cache.clone(), model.to_string());
        let staging = tokio::task::spawn_blocking(move || cache::stage(&repo, &m))
            .await
            .map_err(|e| fail(e.to_string()))??;
        let total = objects.total_bytes();
        tracing::info!(
            model,
            url = %self.url,
            objects = objects.objects.len(),
            bytes = total,
            "downloading the model into the cache"
        );
        let progress = Progress::new(model, total);
        let root = staging.path().to_path_buf();
        let mut jobs = futures_util::stream::iter(objects.objects.iter().cloned().map(|o| {
            self.download_into(o, objects.prefix.clone(), root.clone(), progress.clone())
        }))
        .buffer_unordered(PARALLEL_DOWNLOADS);
        // After a failure the other downloads stop at their next step (`Progress::stopped`),
        // and all of them are waited for: a filesystem step still running on a blocking thread
        // must not recreate the staging folder once it is removed.
        let mut failure = None;
        while let Some(r) = jobs.next().await {
            if let Err(e) = r {
                progress.stop();
                failure.get_or_insert(e);
            }
        }
        drop(jobs);
        if let Some(e) = failure {
            return Err(fail(e)); // dropping the staging folder removes what arrived
        }
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || cache::commit(staging, &dest))
            .await
            .map_err(|e| fail(e.to_string()))??;
        tracing::info!(model, url = %self.url, bytes = total, "model downloaded");
        Ok(())
    }

    /// Object `o` into its file under the staging folder `root`.
    async fn download_into(
        &self,
        o: Listed,
        prefix: String,
        root: PathBuf,
        progress: Arc<Progress>,
    ) -> std::result::Result<(), String> {
        let rest = o.key.strip_prefix(&prefix).unwrap_or(&o.key);
        if progress.stopped() {
            return Ok(()); // another object failed; the caller reports that one
        }
        if rest.ends_with('/') && o.size == 0 {
            return Ok(()); // a "folder" marker object
        }
        let rel = cache::relative_file(rest)
            .ok_or_else(|| format!("object key '{}' is not a relative file path", o.key))?;
        self.download_one(&o, &root.join(rel), &progress).await
    }

    /// One object into `path`, checked against its listing: the same ETag when it is read, and
    /// exactly the listed size once read (an object replaced or cut short since the listing
    /// fails the download).
    async fn download_one(
        &self,
        o: &Listed,
        path: &Path,
        progress: &Progress,
    ) -> std::result::Result<(), String> {
        let key = &o.key;
        let mut got = self.store.get(key).await.map_err(|e| match e.kind {
            StoreErrorKind::NotFound => format!("object '{key}' vanished during the download"),
            _ => format!("object '{key}': {e}"),
        })?;
        let changed = || format!("object '{key}' changed during the download");
        if got.size != o.size || (o.etag.is_some() && got.etag.is_some() && got.etag != o.etag) {
            return Err(changed());
        }
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| format!("cannot write the model cache: {e}"))?;
        }
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| format!("cannot write the model cache: {e}"))?;
        let mut written: u64 = 0;
        while let Some(chunk) = got.body.next().await {
            if progress.stopped() {
                return Ok(());
            }
            let chunk = chunk.map_err(|e| format!("object '{key}': {e}"))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot write the model cache: {e}"))?;
            written = written.saturating_add(chunk.len() as u64);
            progress.add(chunk.len() as u64);
        }
        file.flush()
            .await
            .map_err(|e| format!("cannot write the model cache: {e}"))?;
        if written != o.size {
            return Err(changed());
        }
        Ok(())
    }
}

/// The progress of one model's download: a log line at each tenth of the bytes of a large
/// one, and the flag that stops the other objects once one failed.
struct Progress {
    model: String,
    total: u64,
    done: AtomicU64,
    stop: AtomicBool,
}

impl Progress {
    fn new(model: &str, total: u64) -> Arc<Progress> {
        Arc::new(Progress {
            model: model.to_string(),
            total,
            done: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        if self.total < PROGRESS_FROM_BYTES {
            return;
        }
        let before = self.done.fetch_add(n, Ordering::Relaxed);
        let after = before.saturating_add(n);
        let tenth = |b: u64| b.saturating_mul(10) / self.total;
        if tenth(after) > tenth(before) {
            tracing::info!(
                model = %self.model,
                downloaded = after,
                total = self.total,
                percent = (after.saturating_mul(100) / self.total).min(100),
                "downloading the model"
            );
        }
    }
}

#[cfg(test)]
impl RemoteRepo {
    /// A repository over `store` (an in-memory one in tests).
    fn over(given: &str, store: Store, cache_root: &Path) -> RemoteRepo {
        RemoteRepo {
            cache: cache::repo_dir(cache_root, given),
            url: RemoteUrl::parse(given).expect("test URL"),
            store,
            handed: parking_lot::Mutex::new(HashMap::new()),
            primed: parking_lot::Mutex::new(HashMap::new()),
        }
    }
}

#[cfg(test)]
mod tests;
