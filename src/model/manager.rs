//! The model manager: the only owner and mutator of model state. It loads models from the
//! repositories (parse → auto-complete → normalize → sessions → instance threads), answers
//! lookups for requests with Triton's errors (behaviour.md E1–E5), and reports the index.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::sync::Semaphore;

use super::config::{self, ModelConfig};
use super::state::ModelState;
use super::{ModelSpec, autocomplete, repository};
use crate::backend::Backend;
use crate::backend::instance::InstanceThread;
use crate::error::{Error, Result};
use crate::scheduler::{ExecContext, Scheduler};
use crate::telemetry::stats::ModelStats;

#[derive(Debug, Clone)]
pub struct ManagerOptions {
    pub repositories: Vec<PathBuf>,
    pub auto_complete: bool,
    /// `max_batch_size` that auto-complete gives a batching model without one.
    pub default_max_batch_size: u32,
    /// `--model-config-name`: prefer `<model>/configs/<name>.pbtxt`.
    pub config_name: Option<String>,
    pub load_threads: usize,
    pub strict_readiness: bool,
    pub queue_capacity: usize,
    /// CUDA devices this process can use (`backend::devices::visible_gpus`).
    pub gpus: Vec<i32>,
}

/// One READY model version: its effective config, spec, queue, statistics and instance threads.
/// Requests hold an `Arc` to it for their whole life, so it outlives any unload while in use.
pub struct LoadedModel {
    pub config: Arc<ModelConfig>,
    pub spec: Arc<ModelSpec>,
    pub scheduler: Scheduler,
    pub stats: Arc<ModelStats>,
    /// Instance threads end by themselves once `scheduler` (the queue's sender) is dropped.
    _threads: Vec<InstanceThread>,
}

struct VersionSlot {
    state: ModelState,
    reason: String,
    model: Option<Arc<LoadedModel>>,
}

#[derive(Default)]
struct ModelEntry {
    versions: BTreeMap<i64, VersionSlot>,
    /// Set when the model failed before any version could be tried (config, policy, ...).
    failure: Option<String>,
}

/// What a RepositoryModelLoad asked for besides the model's name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadRequest {
    /// A JSON `ModelConfig` that replaces the config on disk for this load.
    pub config: Option<String>,
    /// Model files sent with the request: path relative to the model folder, and contents.
    pub files: Vec<(String, Vec<u8>)>,
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
    backend: Arc<dyn Backend>,
    opts: ManagerOptions,
    models: RwLock<BTreeMap<String, ModelEntry>>,
}

impl ModelManager {
    pub fn new(backend: Arc<dyn Backend>, opts: ManagerOptions) -> Self {
        ModelManager {
            backend,
            opts,
            models: RwLock::new(BTreeMap::new()),
        }
    }

    /// Loads every model of every repository, `load_threads` at a time, off the async workers.
    /// Returns the models that failed, with their reasons.
    pub async fn load_all(self: &Arc<Self>) -> Result<Vec<(String, String)>> {
        let found = repository::scan(&self.opts.repositories)?;
        let permits = Arc::new(Semaphore::new(self.opts.load_threads.max(1)));
        let mut tasks = Vec::new();
        for (name, dir) in found {
            let this = self.clone();
            let permits = permits.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = permits
                    .acquire_owned()
                    .await
                    .expect("semaphore never closed");
                let entry = match dir {
                    Ok(dir) => {
                        let (n, this2) = (name.clone(), this.clone());
                        tokio::task::spawn_blocking(move || this2.load_model(&n, &dir))
                            .await
                            .unwrap_or_else(|e| {
                                failed(Error::internal(format!("model load panicked: {e}")))
                            })
                    }
                    Err(e) => failed(e),
                };
                let failure = entry.failure.clone().or_else(|| {
                    let bad: Vec<String> = entry
                        .versions
                        .iter()
                        .filter(|(_, s)| s.state != ModelState::Ready)
                        .map(|(v, s)| format!("version {v}: {}", s.reason))
                        .collect();
                    (!bad.is_empty()).then(|| bad.join("; "))
                });
                this.models
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone(), entry);
                failure.map(|f| (name, f))
            }));
        }
        let mut failures = Vec::new();
        for t in tasks {
            if let Some(f) = t
                .await
                .map_err(|e| Error::internal(format!("model load task failed: {e}")))?
            {
                failures.push(f);
            }
        }
        Ok(failures)
    }

    /// Loads one model folder: every version its policy selects. Blocking.
    fn load_model(&self, name: &str, dir: &Path) -> ModelEntry {
        let started = std::time::Instant::now();
        tracing::info!(model = name, "loading");
        let prepared = self.prepare(name, dir);
        let (cfg, versions, mut first_io) = match prepared {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(model = name, error = %e, "failed to load");
                return failed(e);
            }
        };
        let cfg = Arc::new(cfg);
        let mut entry = ModelEntry::default();
        for v in versions.into_iter().rev() {
            let io = first_io.take();
            let slot = match self.load_version(&cfg, dir, v, io) {
                Ok(m) => {
                    // As the log line: from the start of the model's load (config included).
                    m.stats
                        .record_load(started.elapsed(), m.spec.instance_count());
                    tracing::info!(
                        model = name,
                        version = v,
                        ms = started.elapsed().as_millis() as u64,
                        "loaded, READY"
                    );
                    VersionSlot {
                        state: ModelState::Ready,
                        reason: String::new(),
                        model: Some(Arc::new(m)),
                    }
                }
                Err(e) => {
                    tracing::error!(model = name, version = v, error = %e, "failed to load version");
                    VersionSlot {
                        state: ModelState::Unavailable,
                        reason: e.reason(),
                        model: None,
                    }
                }
            };
            entry.versions.insert(v, slot);
        }
        entry
    }

    /// Config resolution (behaviour.md §5.6) up to the versions to load. Returns the graph
    /// description of the highest version when auto-complete had to read it.
    fn prepare(
        &self,
        name: &str,
        dir: &Path,
    ) -> Result<(ModelConfig, Vec<i64>, Option<crate::backend::ModelIo>)> {
        let mut cfg = config::read_config(
            dir,
            self.opts.config_name.as_deref(),
            self.opts.auto_complete,
        )?;
        let on_disk = repository::versions_on_disk(dir);
        let first_dir = on_disk.first().map(|v| dir.join(v.to_string()));
        config::fill_server_defaults(&mut cfg, name, first_dir.as_deref())?;
        let versions = repository::select_versions(name, cfg.version_policy.as_ref(), &on_disk)?;
        let mut io = None;
        // Auto-complete reads the graph only when the config leaves inputs or outputs to fill, so
        // a config that lists them keeps its good versions serving when another one is broken.
        let needs_graph =
            cfg.input.is_empty() && cfg.batch_input.is_empty() || cfg.output.is_empty();
        if self.opts.auto_complete && needs_graph {
            let newest = *versions
                .last()
                .expect("select_versions returns at least one");
            let path = model_file(dir, newest, &cfg)?;
            let found = self.backend.inspect(&path)?;
            autocomplete::auto_complete(&mut cfg, &found, self.opts.default_max_batch_size)?;
            io = Some(found);
        }
        config::normalize(&mut cfg, &self.opts.gpus)?;
        Ok((cfg, versions, io))
    }

    fn load_version(
        &self,
        cfg: &Arc<ModelConfig>,
        dir: &Path,
        version: i64,
        io: Option<crate::backend::ModelIo>,
    ) -> Result<LoadedModel> {
        let spec = Arc::new(config::to_spec(cfg, version, dir)?);
        let path = model_file(dir, version, cfg)?;
        let io = match io {
            Some(io) => io,
            None => self.backend.inspect(&path)?,
        };
        autocomplete::check_against_model(cfg, &io)?;
        let levels = spec
            .dynamic_batching
            .as_ref()
            .map_or(1, |d| d.priority_levels);
        let stats = Arc::new(ModelStats::new(&spec.name, version, levels));
        let ctx = Arc::new(ExecContext {
            spec: spec.clone(),
            stats: stats.clone(),
        });
        let (scheduler, rx) =
            Scheduler::start(ctx, spec.instance_count(), self.opts.queue_capacity);
        let mut threads = Vec::with_capacity(spec.instance_count());
        for group in &spec.instances {
            for i in 0..group.count {
                let runner = self.backend.create_runner(&spec, group, i)?;
                let name = format!("{}:{version}:{i}", group.name);
                threads.push(InstanceThread::spawn(name, runner, rx.clone())?);
            }
        }
        Ok(LoadedModel {
            config: cfg.clone(),
            spec,
            scheduler,
            stats,
            _threads: threads,
        })
    }

    /// Explicit load; only allowed with `--model-control-mode=explicit`.
    pub async fn load(&self, _name: &str, _req: LoadRequest) -> Result<()> {
        Err(Error::unavailable(
            "explicit model load / unload is not allowed if polling is enabled",
        ))
    }

    /// Explicit unload; only allowed with `--model-control-mode=explicit`.
    pub async fn unload(&self, _name: &str, _unload_dependents: bool) -> Result<()> {
        Err(Error::unavailable(
            "explicit model load / unload is not allowed if polling is enabled",
        ))
    }

    /// The version a request should use: `version` empty = the highest READY version.
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<LoadedModel>> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        let entry = models.get(name).ok_or_else(|| {
            Error::invalid_arg(format!("Request for unknown model: '{name}' is not found"))
        })?;
        if version.is_empty() {
            return entry
                .versions
                .values()
                .rev()
                .find_map(|s| s.model.clone().filter(|_| s.state == ModelState::Ready))
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "Request for unknown model: '{name}' has no available versions"
                    ))
                });
        }
        let v = parse_version(version)?;
        let slot = entry.versions.get(&v).ok_or_else(|| {
            Error::not_found(format!(
                "Request for unknown model: '{name}' version {v} is not found"
            ))
        })?;
        match (&slot.model, slot.state) {
            (Some(m), ModelState::Ready) => Ok(m.clone()),
            _ => Err(Error::unavailable(format!(
                "Request for unknown model: '{name}' version {v} is not at ready state"
            ))),
        }
    }

    /// Every READY version of `name` (ascending), or of every model when `name` is empty.
    pub fn ready_versions(&self, name: &str) -> Vec<Arc<LoadedModel>> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models
            .iter()
            .filter(|(n, _)| name.is_empty() || n.as_str() == name)
            .flat_map(|(_, e)| e.versions.values())
            .filter(|s| s.state == ModelState::Ready)
            .filter_map(|s| s.model.clone())
            .collect()
    }

    pub fn is_known(&self, name: &str) -> bool {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }

    /// Strict readiness: every model has a version and every tracked version is READY.
    pub fn all_ready(&self) -> bool {
        if !self.opts.strict_readiness {
            return true;
        }
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models.values().all(|e| {
            e.failure.is_none()
                && !e.versions.is_empty()
                && e.versions.values().all(|s| {
                    s.state == ModelState::Ready
                        || (s.state == ModelState::Unavailable && s.reason == "unloaded")
                })
        })
    }

    /// The repository index: one row per model folder found, one per tracked version.
    pub fn index(&self, ready_only: bool) -> Result<Vec<IndexEntry>> {
        let mut names: Vec<String> = repository::scan(&self.opts.repositories)?
            .into_keys()
            .collect();
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        names.extend(models.keys().cloned());
        names.sort();
        names.dedup();
        let mut rows = Vec::new();
        for name in names {
            match models.get(&name) {
                None if !ready_only => rows.push(IndexEntry {
                    name,
                    version: None,
                    state: None,
                    reason: String::new(),
                }),
                None => {}
                Some(e) => {
                    if let Some(f) = &e.failure
                        && !ready_only
                    {
                        rows.push(IndexEntry {
                            name: name.clone(),
                            version: None,
                            state: Some(ModelState::Unavailable),
                            reason: f.clone(),
                        });
                    }
                    for (v, s) in &e.versions {
                        if ready_only && s.state != ModelState::Ready {
                            continue;
                        }
                        rows.push(IndexEntry {
                            name: name.clone(),
                            version: Some(*v),
                            state: Some(s.state),
                            reason: s.reason.clone(),
                        });
                    }
                }
            }
        }
        Ok(rows)
    }
}

fn failed(e: Error) -> ModelEntry {
    ModelEntry {
        versions: BTreeMap::new(),
        failure: Some(e.reason()),
    }
}

/// `<dir>/<version>/<default_model_filename>`; it may also be a folder holding `model.onnx`.
fn model_file(dir: &Path, version: i64, cfg: &ModelConfig) -> Result<PathBuf> {
    let path = dir
        .join(version.to_string())
        .join(&cfg.default_model_filename);
    let path = if path.is_dir() {
        path.join(config::DEFAULT_MODEL_FILENAME)
    } else {
        path
    };
    if !path.is_file() {
        return Err(Error::invalid_arg(format!(
            "unable to find model file '{}' for model '{}' version {version}",
            path.display(),
            cfg.name
        )));
    }
    Ok(path)
}

/// Parses a request's version string (behaviour.md E5).
pub fn parse_version(s: &str) -> Result<i64> {
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
