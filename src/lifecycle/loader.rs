//! Building model versions, off the async workers: config resolution (behaviour.md §5.6),
//! sessions and instance threads, warmup on every instance, and the fingerprint that tells
//! whether a model folder changed.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::reaper::{Live, Reaper, Remains};
use super::warmup;
use crate::backend::devices;
use crate::backend::instance::{InstanceThread, Recovery};
use crate::backend::{Backend, CancelToken, Runner};
use crate::error::{Error, Result};
use crate::model::config::{self, ModelConfig};
use crate::model::io::ModelIo;
use crate::model::limits::ConfigLimits;
use crate::model::{DeviceKind, ModelSpec, autocomplete, paths, repository};
use crate::preprocess::tokenizer::{self, TokenizerPool};
use crate::scheduler::load::LoadTracker;
use crate::scheduler::{
    BatcherThreads, ExecContext, QueueLimits, Scheduler, assembly::model_inputs,
};
use crate::telemetry::stats::ModelStats;

/// One loaded model version: its effective config, spec, queue, statistics and instance threads.
/// Requests hold an `Arc` to it for their whole life, so it outlives an unload while in use;
/// dropping the last reference tears it down (`Drop`, through the reaper).
pub struct LoadedModel {
    pub config: Arc<ModelConfig>,
    pub spec: Arc<ModelSpec>,
    pub scheduler: Scheduler,
    pub stats: Arc<ModelStats>,
    /// Drain rate and healthy instances (retry hints, deadline admission, readiness).
    pub load: Arc<LoadTracker>,
    /// Time from the start of the load to READY (sessions and warmup included).
    pub load_duration: Duration,
    /// GPU memory the load took, per device (free memory before minus after).
    pub gpu_memory: Vec<(i32, u64)>,
    /// Text models: the tokenizer threads requests pass through before the scheduler.
    pub tokenizer: Option<TokenizerPool>,
    /// Which build this is (unique in the process): a reload builds the same version anew.
    pub id: u64,
    threads: Vec<InstanceThread>,
    reaper: Reaper,
    live: Option<Live>,
}

impl Drop for LoadedModel {
    /// The last reference is gone, often on an async worker: the reaper joins the threads on a
    /// blocking thread. The queue closes when `scheduler` drops, right after this; that is
    /// what lets the instance threads end, so the join never waits on a queue left open.
    fn drop(&mut self) {
        let Some(live) = self.live.take() else { return };
        self.reaper.reap(Remains {
            model: self.spec.name.clone(),
            version: self.spec.version,
            id: self.id,
            threads: std::mem::take(&mut self.threads),
            tokenizer: self.tokenizer.take(),
            live,
        });
    }
}

/// A model's resolved config and the versions its policy selects.
pub(crate) struct Prepared {
    pub config: Arc<ModelConfig>,
    pub versions: Vec<i64>,
    io: Option<ModelIo>,
}

/// How a model folder becomes a loaded model: config resolution, limits, devices, queues.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub auto_complete: bool,
    /// `max_batch_size` that auto-complete gives a batching model without one.
    pub default_max_batch_size: u32,
    /// `--model-config-name`: prefer `<model>/configs/<name>.pbtxt`.
    pub config_name: Option<String>,
    pub queue_limits: QueueLimits,
    /// CUDA devices this process can use (`backend::devices::visible_gpus`).
    pub gpus: Vec<i32>,
    /// `--model-load-gpu-limit`: per device, the fraction of its memory loads may fill.
    pub gpu_limits: Vec<(i32, f64)>,
    /// Estimated GPU memory of an instance = model file size × this factor.
    pub gpu_safety_factor: f64,
    /// Ceilings on what one config may ask for (instances, threads, warmup bytes, text length).
    pub limits: ConfigLimits,
}

pub(crate) struct Loader {
    backend: Arc<dyn Backend>,
    opts: LoadOptions,
    /// Where the loaded versions' batchers run.
    batchers: BatcherThreads,
    /// Tears down the versions built here once they are gone.
    reaper: Reaper,
}

/// Build ids (`LoadedModel::id`).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Loader {
    pub(crate) fn new(backend: Arc<dyn Backend>, opts: LoadOptions, reaper: Reaper) -> Self {
        Loader {
            backend,
            opts,
            batchers: Default::default(),
            reaper,
        }
    }

    pub(crate) fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    /// Resolves the config (from `override_config` or the folder) up to the versions to load.
    /// The config of the model folder `dir` as the server options name it (`--model-config-name`,
    /// auto-complete of a folder without one).
    pub(crate) fn read_config(&self, dir: &Path) -> Result<ModelConfig> {
        config::read_config(
            dir,
            self.opts.config_name.as_deref(),
            self.opts.auto_complete,
        )
    }

    pub(crate) fn prepare(
        &self,
        name: &str,
        dir: &Path,
        override_config: Option<&ModelConfig>,
    ) -> Result<Prepared> {
        let mut cfg = match override_config {
            Some(c) => c.clone(),
            None => config::read_config(
                dir,
                self.opts.config_name.as_deref(),
                self.opts.auto_complete,
            )?,
        };
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
            let found = self.backend.inspect(&model_file(dir, newest, &cfg)?)?;
            autocomplete::auto_complete(&mut cfg, &found, self.opts.default_max_batch_size)?;
            io = Some(found);
        }
        config::normalize(&mut cfg, &self.opts.gpus)?;
        Ok(Prepared {
            config: Arc::new(cfg),
            versions,
            io,
        })
    }

    /// Creates one version's instances, warms each one, then starts serving threads.
    /// `progress` receives human-readable steps for the repository index.
    #[allow(
        clippy::disallowed_types,
        reason = "runs on a blocking thread: the load duration is real time, not the runtime's clock"
    )]
    pub(crate) fn build_version(
        &self,
        prepared: &mut Prepared,
        dir: &Path,
        version: i64,
        progress: &dyn Fn(String),
        cancel: &CancelToken,
    ) -> Result<LoadedModel> {
        let started = std::time::Instant::now();
        stop_if_cancelled(&prepared.config.name, cancel, "")?;
        let cfg = &prepared.config;
        let mut spec = crate::model::spec::to_spec(cfg, version, dir)?;
        let limits = &self.opts.limits;
        limits.check_instances(&spec)?;
        if let Some(text) = &spec.text {
            limits.check_text(&spec.name, text.max_length, text.threads)?;
        }
        let path = model_file(dir, version, cfg)?;
        let io = match prepared.io.take() {
            Some(io) => io,
            None => self.backend.inspect(&path)?,
        };
        // A text model's config lists the text input and the post-processed output; the graph
        // is checked against the token inputs and token output instead.
        if spec.text.is_none() {
            autocomplete::check_against_model(cfg, &io)?;
        }
        let encoder = tokenizer::prepare(&mut spec, &io)?;
        if let Some(text) = &spec.text {
            // Again with `max_length` resolved (it may come from the tokenizer file).
            limits.check_text(&spec.name, text.max_length, text.threads)?;
        }
        let spec = Arc::new(spec);
        let total = spec.instance_count();
        let gpu_before = self.admit_gpu(&spec, &path)?;
        let mut samples = warmup::samples(cfg, &spec, dir, limits)?;
        if let Some(encoder) = &encoder {
            // Text models warm up on token inputs: the samples' texts go through the tokenizer.
            let mut tokenized = Vec::with_capacity(samples.len());
            for mut s in samples {
                match encoder.encode_inputs(&s.inputs) {
                    Ok(encoded) => {
                        s.inputs = encoded.inputs;
                        tokenized.push(s);
                    }
                    Err(e) if s.required => {
                        return Err(Error::invalid_arg(format!(
                            "warmup sample '{}': {}",
                            s.name, e.message
                        )));
                    }
                    Err(e) => {
                        tracing::warn!(model = %spec.name, version, sample = %s.name, error = %e, "default warmup skipped")
                    }
                }
            }
            samples = tokenized;
        }
        let samples = Arc::new(samples);
        let mut runners: Vec<(String, Box<dyn Runner>, crate::model::InstanceSpec, u32)> =
            Vec::with_capacity(total);
        for group in &spec.instances {
            for i in 0..group.count {
                stop_if_cancelled(&spec.name, cancel, "")?;
                progress(format!(
                    "creating instance {}/{total} of version {version}",
                    runners.len() + 1
                ));
                runners.push((
                    format!("{}:{version}:{i}", group.name),
                    self.backend.create_runner(&spec, group, i)?,
                    group.clone(),
                    i,
                ));
            }
        }
        // A session created after the cancel is dropped here with the others.
        stop_if_cancelled(&spec.name, cancel, "")?;
        if !samples.is_empty() {
            tracing::info!(
                model = %spec.name,
                version,
                samples = samples.len(),
                instances = total,
                "warming up"
            );
            progress(format!(
                "warming up version {version} ({} samples × {total} instances)",
                samples.len()
            ));
        }
        for (instance, runner, _, _) in &mut runners {
            warm(&spec, &samples, instance, runner.as_mut(), cancel)?;
        }
        let levels = spec
            .dynamic_batching
            .as_ref()
            .map_or(1, |d| d.priority_levels);
        let mut stats = ModelStats::new(&spec.name, version, levels);
        if spec.sequence.is_some() {
            stats = stats.with_sequences(&spec.name, version);
        }
        let stats = Arc::new(stats);
        let load = Arc::new(LoadTracker::new(total, levels));
        let ctx = Arc::new(ExecContext {
            spec: spec.clone(),
            stats: stats.clone(),
            load: load.clone(),
        });
        let (scheduler, rx) = Scheduler::start(
            ctx.clone(),
            total,
            self.opts.queue_limits,
            self.batchers.get()?,
        );
        let threshold = breaker_threshold(cfg)?;
        let alive: Arc<dyn Send + Sync> = ctx;
        let mut threads = Vec::with_capacity(total);
        for (name, runner, group, i) in runners {
            let (backend, spec2, samples, load2) = (
                self.backend.clone(),
                spec.clone(),
                samples.clone(),
                load.clone(),
            );
            let instance = name.clone();
            let recovery = Recovery {
                threshold,
                rebuild: Box::new(move || {
                    let mut r = backend.create_runner(&spec2, &group, i)?;
                    warm(
                        &spec2,
                        &samples,
                        &instance,
                        r.as_mut(),
                        &CancelToken::default(),
                    )?;
                    Ok(r)
                }),
                on_change: Box::new(move |up| {
                    if up {
                        load2.healthy.fetch_add(1, Ordering::Relaxed);
                    } else {
                        load2.healthy.fetch_sub(1, Ordering::Relaxed);
                    }
                }),
                alive: Arc::downgrade(&alive),
            };
            threads.push(InstanceThread::spawn(
                name,
                runner,
                rx.clone(),
                Some(recovery),
            )?);
        }
        let tokenizer = encoder
            .map(|e| TokenizerPool::start(&e, self.opts.queue_limits.capacity))
            .transpose()?;
        let gpu_memory = gpu_before
            .into_iter()
            .filter_map(|(id, free_before)| {
                let (free_after, _) = devices::memory_info(id).ok()?;
                Some((id, free_before.saturating_sub(free_after)))
            })
            .collect();
        stats.record_load(started.elapsed(), total);
        Ok(LoadedModel {
            config: cfg.clone(),
            spec,
            scheduler,
            stats,
            load,
            load_duration: started.elapsed(),
            gpu_memory,
            tokenizer,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            threads,
            reaper: self.reaper.clone(),
            live: Some(self.reaper.register()),
        })
    }

    /// GPU memory admission: before creating GPU instances, refuse a load whose estimated need
    /// (model file size × instances on the device × safety factor) does not fit the device's
    /// free memory or its `--model-load-gpu-limit`. Returns each device's free memory before.
    fn admit_gpu(&self, spec: &ModelSpec, model_path: &Path) -> Result<Vec<(i32, u64)>> {
        let mut per_device: Vec<(i32, u64)> = Vec::new();
        for g in &spec.instances {
            if let DeviceKind::Gpu(id) = g.kind {
                match per_device.iter_mut().find(|(d, _)| *d == id) {
                    Some((_, n)) => *n += g.count as u64,
                    None => per_device.push((id, g.count as u64)),
                }
            }
        }
        let file_size = std::fs::metadata(model_path).map(|m| m.len()).unwrap_or(0);
        let mut before = Vec::new();
        for (id, instances) in per_device {
            let (free, total) = devices::memory_info(id)
                .map_err(|e| Error::unavailable(format!("cannot read GPU {id} memory: {e}")))?;
            let need = (file_size as f64 * instances as f64 * self.opts.gpu_safety_factor) as u64;
            let limit = self
                .opts
                .gpu_limits
                .iter()
                .find(|(d, _)| *d == id)
                .map(|(_, f)| *f);
            devices::admit(id, need, free, total, limit).map_err(|e| {
                Error::unavailable(format!(
                    "not enough GPU memory to load model '{}': {e}",
                    spec.name
                ))
            })?;
            before.push((id, free));
        }
        Ok(before)
    }
}

/// Runs the warmup samples on one instance. A configured sample's failure is an error; a
/// default one only logs (zeros are not valid input for every model).
fn warm(
    spec: &ModelSpec,
    samples: &[warmup::WarmupSample],
    instance: &str,
    runner: &mut dyn Runner,
    cancel: &CancelToken,
) -> Result<()> {
    let outputs: Vec<&str> = (0..spec.outputs.len())
        .map(|i| spec.graph_output(i))
        .collect();
    for sample in samples {
        for done in 0..sample.count {
            let stopped = || {
                format!(
                    " after {done} of {} runs of warmup sample '{}' on instance {instance}",
                    sample.count, sample.name
                )
            };
            stop_if_cancelled(&spec.name, cancel, &stopped())?;
            let run = model_inputs(spec, sample.inputs.clone()).and_then(|mut inputs| {
                // A sequence model's graph also takes the controls and states the batcher feeds.
                let rows = inputs
                    .first()
                    .and_then(|t| t.shape().first())
                    .map_or(1, |&d| d.max(1) as usize);
                inputs.extend(crate::scheduler::sequence::warmup_inputs(spec, rows)?);
                runner.run_cancellable(inputs, &outputs, cancel)
            });
            if run.is_err() {
                // The terminate flag fails the run in progress: report the cancel, not that.
                stop_if_cancelled(&spec.name, cancel, &stopped())?;
            }
            if let Err(e) = run {
                if sample.required {
                    return Err(Error::invalid_arg(format!(
                        "warmup sample '{}' failed on instance {instance} of model '{}': {}",
                        sample.name, spec.name, e.message
                    )));
                }
                tracing::warn!(model = %spec.name, sample = %sample.name, error = %e, "default warmup failed; continuing");
                break;
            }
        }
    }
    Ok(())
}

/// A CANCELLED error when the load of `model` is no longer wanted; `at` says where it stopped.
fn stop_if_cancelled(model: &str, cancel: &CancelToken, at: &str) -> Result<()> {
    if !cancel.is_cancelled() {
        return Ok(());
    }
    let why = cancel.reason().unwrap_or_else(|| "cancelled".into());
    Err(Error::cancelled(format!(
        "load of model '{model}' stopped ({why}){at}"
    )))
}

/// The `circuit_breaker_failures` model parameter: failed executions in a row that take an
/// instance out of service to be rebuilt (default 5; 0 turns the breaker off).
fn breaker_threshold(cfg: &ModelConfig) -> Result<u32> {
    match cfg.parameters.get("circuit_breaker_failures") {
        None => Ok(5),
        Some(p) => p.string_value.trim().parse().map_err(|_| {
            Error::invalid_arg(format!(
                "parameter 'circuit_breaker_failures' of model '{}' expects a non-negative integer, got '{}'",
                cfg.name, p.string_value
            ))
        }),
    }
}

/// `<dir>/<version>/<default_model_filename>`; it may also be a folder holding `model.onnx`.
pub(crate) fn model_file(dir: &Path, version: i64, cfg: &ModelConfig) -> Result<PathBuf> {
    let name = &cfg.default_model_filename;
    let path = paths::inside(
        &dir.join(version.to_string()),
        &cfg.name,
        "default_model_filename",
        name,
    )?;
    let path = if path.is_dir() {
        path.join(config::DEFAULT_MODEL_FILENAME)
    } else {
        path
    };
    if !path.is_file() {
        tracing::warn!(model = %cfg.name, path = %path.display(), "model file not found");
        return Err(Error::invalid_arg(format!(
            "unable to find model file '{version}/{}' for model '{}' version {version}",
            paths::printable(name.trim_start_matches('/')),
            cfg.name
        )));
    }
    Ok(path)
}

/// A hash of every file below `dir` (relative path, size, modification time). Equal fingerprints
/// mean nothing in the folder changed. Blocking (it walks the folder): off the async workers.
pub(crate) fn fingerprint(dir: &Path) -> u64 {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(PathBuf, u64, Option<std::time::SystemTime>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                walk(&path, root, out);
            } else {
                let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                out.push((rel, meta.len(), meta.modified().ok()));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files);
    files.sort();
    let mut h = DefaultHasher::new();
    files.hash(&mut h);
    h.finish()
}
