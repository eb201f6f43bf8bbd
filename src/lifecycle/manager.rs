//! The model manager: the only owner and mutator of model state. It decides what to load
//! (control modes), loads and swaps versions without downtime, retires unloaded ones (the last
//! reference to a version tears it down, through the `reaper`), answers request lookups with
//! typed errors (Triton's texts, behaviour.md E1–E5) and reports the index. Building a version
//! happens in `loader`, and every scan or fingerprint of the repositories, on blocking threads.

use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::drains::SequenceDrains;
use super::loader::{LoadOptions, Loader, fingerprint};
use super::overrides;
use super::reaper::{OnTornDown, Reaper};
use super::remote::{RemoteRepo, repos};
use crate::backend::{Backend, CancelToken};
use crate::error::{Error, Result};
use crate::model::paths::scrub_error;
use crate::model::state::ModelState;
use crate::model::{config_json, repository};

pub(crate) use super::loader::LoadedModel;

mod pending;
mod queries;

use pending::PendingLoads;

/// How long a cancelled load's build may take to reach its next step before it is abandoned
/// (left to finish on its blocking thread, its result dropped).
const ABANDON_AFTER: Duration = Duration::from_millis(500);

/// How long shutdown waits for the versions it retires to be torn down: SIGTERM must end the
/// process within `--exit-timeout-secs` + 2 s.
const TEARDOWN_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMode {
    /// Load everything at startup; no load/unload API; repository changes ignored.
    None,
    /// Like `None`, and the repositories are re-read every poll interval.
    Poll,
    /// Only `startup_models` at startup; the load/unload API decides the rest.
    Explicit,
}

#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// The repository folders.
    pub repositories: Vec<PathBuf>,
    /// The repositories in object stores (`s3://`, `gs://`, `as://`).
    pub remotes: Vec<Arc<RemoteRepo>>,
    pub control_mode: ControlMode,
    /// `--load-model` names for explicit mode (`*` = all).
    pub startup_models: Vec<String>,
    pub poll_interval: Duration,
    pub load_threads: usize,
    pub strict_readiness: bool,
    /// How long a replaced or unloaded sequence model serves its running sequences.
    pub sequence_drain_timeout: Duration,
}

/// What a RepositoryModelLoad asked for besides the model's name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadRequest {
    /// A JSON `ModelConfig` that replaces the config on disk for this load.
    pub config: Option<String>,
    /// Model files sent with the request: path relative to the model folder, and contents.
    pub files: Vec<(String, Vec<u8>)>,
}

struct VersionSlot {
    state: ModelState,
    reason: String,
    model: Option<Arc<LoadedModel>>,
    /// While UNLOADING: the build (`LoadedModel::id`) whose teardown turns it UNAVAILABLE.
    retiring: Option<u64>,
}

#[derive(Default)]
struct ModelEntry {
    versions: BTreeMap<i64, VersionSlot>,
    /// The last load failed before any version could be tried, and nothing serves.
    failure: Option<String>,
    /// The last (re)load failed while older versions kept serving.
    reload_error: Option<String>,
    /// Progress of a load in flight, shown in the index.
    loading: Option<String>,
    /// Fingerprint of what is serving; `None` after an override load (always reload then).
    source: Option<u64>,
    /// Files sent with the load request; removed when replaced or unloaded.
    _override_dir: Option<tempfile::TempDir>,
}

impl ModelEntry {
    fn serving(&self) -> bool {
        self.versions.values().any(|s| s.state == ModelState::Ready)
    }
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: Option<i64>,
    pub state: Option<ModelState>,
    pub reason: String,
}

pub struct ModelManager {
    opts: ManagerOptions,
    loader: Arc<Loader>,
    models: RwLock<BTreeMap<String, ModelEntry>>,
    /// One lock per model name: loads and unloads of the same model run one at a time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// `--model-load-thread-count` loads at a time.
    load_permits: Semaphore,
    /// Loads in flight, so that a newer load, an unload or shutdown can stop them.
    pending: PendingLoads,
    /// Old sequence model versions still serving their running sequences (`drains.rs`).
    drains: Arc<SequenceDrains>,
    me: Weak<ModelManager>,
}

impl ModelManager {
    pub fn new(backend: Arc<dyn Backend>, opts: ManagerOptions, load: LoadOptions) -> Arc<Self> {
        let permits = opts.load_threads.max(1);
        Arc::new_cyclic(|me: &Weak<ModelManager>| {
            let manager = me.clone();
            let torn_down: OnTornDown = Arc::new(move |name, version, id| {
                if let Some(m) = manager.upgrade() {
                    m.torn_down(name, version, id);
                }
            });
            ModelManager {
                drains: SequenceDrains::new(opts.sequence_drain_timeout),
                opts,
                loader: Arc::new(Loader::new(backend, load, Reaper::start(Some(torn_down)))),
                models: RwLock::new(BTreeMap::new()),
                locks: Mutex::new(HashMap::new()),
                load_permits: Semaphore::new(permits),
                pending: PendingLoads::default(),
                me: me.clone(),
            }
        })
    }

    pub fn options(&self) -> &ManagerOptions {
        &self.opts
    }

    /// Startup loads for the control mode. Returns the models that failed, with their reasons.
    pub async fn load_startup(&self) -> Result<Vec<(String, String)>> {
        let opts = &self.opts;
        // Explicit mode with named models reads no listing (a remote store may not answer
        // yet; each load reports its own repository errors).
        let names: Vec<String> = match opts.control_mode {
            ControlMode::Explicit if !opts.startup_models.iter().any(|m| m == "*") => {
                opts.startup_models.clone()
            }
            _ => repos::scan(&opts.repositories, &opts.remotes, repos::Use::ForLoads)
                .await?
                .into_keys()
                .collect(),
        };
        let me = self
            .me
            .upgrade()
            .expect("the manager is alive while it loads");
        let mut loads = tokio::task::JoinSet::new();
        for name in names {
            let me = me.clone();
            loads.spawn(async move {
                me.load_from_repository(&name, None, false)
                    .await
                    .err()
                    .map(|e| (name, e.message))
            });
        }
        let mut failures = Vec::new();
        while let Some(r) = loads.join_next().await {
            match r {
                Ok(Some(f)) => failures.push(f),
                Ok(None) => {}
                Err(e) => return Err(Error::internal(format!("model load task failed: {e}"))),
            }
        }
        failures.sort();
        Ok(failures)
    }

    /// RepositoryModelLoad. Only in explicit mode.
    pub async fn load(&self, name: &str, req: LoadRequest) -> Result<()> {
        if self.opts.control_mode != ControlMode::Explicit {
            return Err(Error::unavailable(
                "explicit model load / unload is not allowed if polling is enabled",
            ));
        }
        check_name(name)?;
        self.load_from_repository(name, Some(req), true).await
    }

    /// RepositoryModelUnload. Only in explicit mode; unloading an unknown model succeeds.
    pub async fn unload(&self, name: &str, _unload_dependents: bool) -> Result<()> {
        if self.opts.control_mode != ControlMode::Explicit {
            return Err(Error::unavailable(
                "explicit model load / unload is not allowed if polling is enabled",
            ));
        }
        // A load in flight stops first, so the unload does not wait for it to finish.
        self.pending.cancel(name, pending::UNLOADED);
        let lock = self.lock_for(name);
        let _guard = lock.lock().await;
        self.retire_all(name);
        Ok(())
    }

    /// Loads (or reloads) `name`. Unchanged files and no override: nothing to do. Otherwise the
    /// new versions load beside the serving ones and replace them only if all of them load.
    /// `supersede`: loads of `name` already in flight stop (a RepositoryModelLoad; startup and
    /// poll loads queue behind them instead).
    pub(crate) async fn load_from_repository(
        &self,
        name: &str,
        req: Option<LoadRequest>,
        supersede: bool,
    ) -> Result<()> {
        let cancel = self.pending.begin(name, supersede);
        let result = self.load_cancellable(name, req, &cancel).await;
        self.pending.end(name, &cancel);
        result
    }

    async fn load_cancellable(
        &self,
        name: &str,
        req: Option<LoadRequest>,
        cancel: &CancelToken,
    ) -> Result<()> {
        let lock = self.lock_for(name);
        let _guard = lock.lock().await;
        let req = req.unwrap_or_default();
        let override_config = req
            .config
            .as_deref()
            .map(config_json::from_json)
            .transpose()
            .map_err(|e| poll_failure(name, e))?;
        if !req.files.is_empty() && override_config.is_none() {
            return Err(Error::invalid_arg(format!(
                "failed to load '{name}': the 'config' parameter must be given with 'file:' parameters"
            )));
        }
        let plain = override_config.is_none() && req.files.is_empty();
        // The folder: found in the repositories (and fingerprinted), or written from the request.
        let remote = match req.files.is_empty() {
            true => repos::locate(&self.opts.repositories, &self.opts.remotes, name).await?,
            false => None,
        };
        // A config on disk (or in the cache copy of a remote model) is read here, as Triton
        // reads it when it polls the repository.
        let (dir, override_dir, source, disk_config) = {
            let (repos, n, files) = (self.opts.repositories.clone(), name.to_string(), req.files);
            let (loader, read_disk) = (self.loader.clone(), override_config.is_none());
            blocking(move || {
                if let Some((dir, source)) = remote {
                    let config = read_disk.then(|| loader.read_config(&dir)).transpose();
                    Ok((dir, None, Some(source), config))
                } else if files.is_empty() {
                    let dir = find(&repos, &n)?;
                    let source = fingerprint(&dir);
                    let config = read_disk.then(|| loader.read_config(&dir)).transpose();
                    Ok((dir, None, Some(source), config))
                } else {
                    // A path refused as unsafe stays the client's error; one the file
                    // system cannot take (too long) is a poll failure, as in Triton.
                    let tmp = overrides::write_files(&n, &files).map_err(|e| match e.code {
                        crate::error::Code::Internal => poll_failure(&n, e),
                        _ => e,
                    })?;
                    Ok((tmp.path().join(&n), Some(tmp), None, Ok(None)))
                }
            })
            .await?
        };
        // A config that cannot be read is a poll failure for the client; the index keeps the
        // reason (relative to the model folder) as a failed load's.
        let disk_config = match disk_config {
            Ok(c) => c,
            Err(e) => {
                let roots: Vec<&std::path::Path> = self
                    .opts
                    .repositories
                    .iter()
                    .map(PathBuf::as_path)
                    .chain([dir.as_path()])
                    .collect();
                let reason = scrub_error(e.clone(), &roots).reason();
                let mut models = self.write();
                let entry = models.entry(name.to_string()).or_default();
                if entry.serving() {
                    entry.reload_error = Some(reason);
                } else {
                    entry.failure = Some(reason);
                }
                return Err(poll_failure(name, e));
            }
        };
        let override_config = override_config.or(disk_config);
        {
            let mut models = self.write();
            let entry = models.entry(name.to_string()).or_default();
            if plain && source.is_some() && entry.source == source && entry.serving() {
                return Ok(());
            }
            entry.loading = Some("loading".into());
        }
        let _permit = self.load_permits.acquire().await.expect("never closed");
        tracing::info!(model = name, "loading");
        let (loader, n, d) = (self.loader.clone(), name.to_string(), dir.clone());
        let me = self.me.clone();
        let token = cancel.clone();
        // A cancel wakes this task at once: a step that cannot be interrupted (a session being
        // created) is abandoned, and the blocking thread drops its result when it ends.
        let (wake, woken) = tokio::sync::oneshot::channel::<()>();
        let wake = parking_lot::Mutex::new(Some(wake));
        let _hook = cancel.on_cancel(move || {
            if let Some(tx) = wake.lock().take() {
                let _ = tx.send(());
            }
        });
        let build = tokio::task::spawn_blocking(move || {
            let progress = |step: String| {
                if let Some(m) = me.upgrade()
                    && let Some(e) = m.write().get_mut(&n)
                {
                    e.loading = Some(step);
                }
            };
            let mut prepared = loader.prepare(&n, &d, override_config.as_ref())?;
            let versions = prepared.versions.clone();
            Ok::<_, Error>(
                versions
                    .into_iter()
                    .rev()
                    .map(|v| {
                        let built = loader.build_version(&mut prepared, &d, v, &progress, &token);
                        (v, built)
                    })
                    .collect::<Vec<_>>(),
            )
        });
        let joined = |r: std::result::Result<_, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| Err(Error::internal(format!("model load panicked: {e}"))))
        };
        tokio::pin!(build);
        let built = tokio::select! {
            r = &mut build => joined(r),
            _ = woken => {
                // A warmup run or a step boundary ends within microseconds of the cancel, and
                // the build then reports where it stopped; session creation cannot be
                // interrupted and is abandoned after a grace period.
                match tokio::time::timeout(ABANDON_AFTER, &mut build).await {
                    Ok(r) => joined(r),
                    Err(_) => Err(Error::cancelled("abandoned")),
                }
            }
        };
        if cancel.is_cancelled() {
            return Err(self.stopped(name, cancel, built));
        }
        // Clients see errors relative to the model folder; the log keeps the full text.
        let mut roots: Vec<PathBuf> = self.opts.repositories.clone();
        roots.push(dir.clone());
        roots.extend(override_dir.as_ref().map(|t| t.path().to_path_buf()));
        let roots: Vec<&std::path::Path> = roots.iter().map(PathBuf::as_path).collect();
        self.install(name, built, source.filter(|_| plain), override_dir, &roots)
    }

    /// Swaps freshly built versions in (or records why they could not be).
    fn install(
        &self,
        name: &str,
        built: Result<Vec<(i64, Result<LoadedModel>)>>,
        source: Option<u64>,
        override_dir: Option<tempfile::TempDir>,
        roots: &[&std::path::Path],
    ) -> Result<()> {
        let clean = |e: &Error| scrub_error(e.clone(), roots);
        // Versions let go of here; dropped once the lock is released (a last reference hands
        // its version to the reaper).
        let mut released: Vec<Arc<LoadedModel>> = Vec::new();
        let result = {
            let mut models = self.write();
            let entry = models.entry(name.to_string()).or_default();
            entry.loading = None;
            let serving = entry.serving();
            match built {
                Err(e) => {
                    tracing::error!(model = name, error = %e, "failed to load");
                    let e = clean(&e);
                    if serving {
                        entry.reload_error = Some(e.reason());
                    } else {
                        entry.failure = Some(e.reason());
                    }
                    Err(Error::invalid_arg(format!(
                        "load failed for model '{name}': {}",
                        e.message
                    )))
                }
                Ok(versions) => {
                    let failed: Vec<String> = versions
                        .iter()
                        .filter_map(|(v, r)| {
                            r.as_ref().err().map(|e| {
                                format!(
                                    "version {v} is at UNAVAILABLE state: {};\n",
                                    clean(e).reason()
                                )
                            })
                        })
                        .collect();
                    if !failed.is_empty() && serving {
                        // Keep what serves; discard the whole new set.
                        entry.reload_error = Some(failed.concat());
                        released.extend(
                            versions
                                .into_iter()
                                .filter_map(|(_, r)| r.ok())
                                .map(Arc::new),
                        );
                    } else {
                        let new: Vec<i64> = versions.iter().map(|(v, _)| *v).collect();
                        for (v, r) in versions {
                            let slot = match r {
                                Ok(m) => {
                                    tracing::info!(
                                        model = name,
                                        version = v,
                                        ms = m.load_duration.as_millis() as u64,
                                        "loaded, READY"
                                    );
                                    VersionSlot {
                                        state: ModelState::Ready,
                                        reason: String::new(),
                                        model: Some(Arc::new(m)),
                                        retiring: None,
                                    }
                                }
                                Err(e) => {
                                    tracing::error!(model = name, version = v, error = %e, "failed to load version");
                                    VersionSlot {
                                        state: ModelState::Unavailable,
                                        reason: clean(&e).reason(),
                                        model: None,
                                        retiring: None,
                                    }
                                }
                            };
                            // A replaced build drains in the background; its teardown leaves
                            // the new slot alone (another build id).
                            if let Some(old) = entry.versions.insert(v, slot).and_then(|s| s.model)
                            {
                                released.push(old);
                            }
                        }
                        for (_, slot) in entry.versions.iter_mut().filter(|(v, _)| !new.contains(v))
                        {
                            released.extend(slot.retire());
                        }
                        entry.failure = None;
                        entry.reload_error = None;
                        entry.source = source;
                        entry._override_dir = override_dir;
                    }
                    if failed.is_empty() {
                        Ok(())
                    } else {
                        Err(Error::invalid_arg(format!(
                            "load failed for model '{name}': {}",
                            failed.concat()
                        )))
                    }
                }
            }
        };
        if !self.stopping() {
            self.drains.adopt(name, &released);
        }
        drop(released);
        result
    }

    /// Unloads every version of `name`: UNLOADING now, UNAVAILABLE "unloaded" once the last
    /// request using it is done and its threads are joined (`torn_down`).
    pub(crate) fn retire_all(&self, name: &str) {
        let mut released = Vec::new();
        if let Some(entry) = self.write().get_mut(name) {
            for slot in entry.versions.values_mut() {
                released.extend(slot.retire());
            }
            entry.source = None;
            entry.failure = None;
            entry.reload_error = None;
            entry._override_dir = None;
        }
        if !self.stopping() {
            self.drains.adopt(name, &released);
        }
        drop(released);
    }

    /// The reaper joined build `id` of `name` `version`: its slot, if still UNLOADING for that
    /// build, is UNAVAILABLE "unloaded" now.
    fn torn_down(&self, name: &str, version: i64, id: u64) {
        let mut models = self.write();
        let Some(slot) = models
            .get_mut(name)
            .and_then(|e| e.versions.get_mut(&version))
        else {
            return;
        };
        if slot.state == ModelState::Unloading && slot.retiring == Some(id) {
            slot.state = ModelState::Unavailable;
            slot.reason = "unloaded".into();
            slot.retiring = None;
            tracing::info!(model = name, version, "unloaded");
        }
    }

    fn lock_for(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn write(&self) -> parking_lot::RwLockWriteGuard<'_, BTreeMap<String, ModelEntry>> {
        self.models.write()
    }

    fn read(&self) -> parking_lot::RwLockReadGuard<'_, BTreeMap<String, ModelEntry>> {
        self.models.read()
    }

    /// Stops every load in flight and refuses later ones (the server is shutting down).
    pub fn cancel_loads(&self) {
        self.pending.cancel_all();
    }

    /// True once `cancel_loads` was called.
    pub fn stopping(&self) -> bool {
        self.pending.stopping()
    }

    /// Unloads everything and waits until every version is torn down (server shutdown), for
    /// at most `TEARDOWN_WAIT`: a request still running past the exit timeout keeps its
    /// version (and its instance thread) alive; the process exit frees those.
    pub async fn shutdown(&self) {
        self.cancel_loads();
        for name in self.tracked() {
            self.retire_all(&name);
        }
        let reaper = self.loader.reaper();
        if tokio::time::timeout(TEARDOWN_WAIT, reaper.settled())
            .await
            .is_err()
        {
            tracing::warn!(
                versions = reaper.alive(),
                "shutting down with model versions still in use"
            );
        }
    }
}

impl VersionSlot {
    /// Lets go of the version: UNLOADING until its build is torn down. Returns the manager's
    /// reference, to drop outside the lock.
    fn retire(&mut self) -> Option<Arc<LoadedModel>> {
        let model = self.model.take()?;
        self.state = ModelState::Unloading;
        self.retiring = Some(model.id);
        Some(model)
    }
}

/// The model folder of `name` in `repos`. Blocking (it scans them).
fn find(repos: &[PathBuf], name: &str) -> Result<PathBuf> {
    let found = repository::scan(repos)
        .map_err(|e| poll_failure(name, format!("cannot read the model repositories: {e}")))?;
    match found.get(name) {
        Some(Ok(dir)) => Ok(dir.clone()),
        Some(Err(e)) => Err(poll_failure(name, &e.message)),
        None => Err(poll_failure(
            name,
            format!("no folder '{name}' in the model repositories {repos:?}"),
        )),
    }
}

/// A load that cannot be polled from the repositories (no such folder, an unreadable or
/// unparsable config, a config override or `file:` that cannot be used): Triton's text, with
/// the reason in the log only (behaviour.md E31).
fn poll_failure(name: &str, reason: impl std::fmt::Display) -> Error {
    tracing::error!(model = name, error = %reason, "failed to poll from model repository");
    Error::internal(format!(
        "failed to load '{name}', failed to poll from model repository"
    ))
}

/// Runs blocking filesystem work (a scan, a fingerprint, writing override files) on a
/// blocking thread, never on an async worker.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(Error::internal(format!("repository task failed: {e}"))))
}

/// Model names may not be empty, contain '/', or be '..' / '.'.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == ".." || name == "." {
        return Err(Error::invalid_arg(format!("invalid model name '{name}'")));
    }
    Ok(())
}

/// Parses a request's version string (behaviour.md E5).
pub(crate) fn parse_version(s: &str) -> Result<i64> {
    match s.parse::<i64>() {
        Ok(v) if v >= 0 => Ok(v),
        Ok(_) => Err(Error::invalid_arg(format!(
            "invalid model version specified '{s}' , version should be an integral value > 0"
        ))),
        Err(e) => Err(Error::invalid_arg(format!(
            "failed to get model version from specified version string '{s}' (details: {e}), version should be an integral value > 0"
        ))),
    }
}
