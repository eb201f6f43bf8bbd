//! `Core`: the one façade both front-ends call. It speaks the server's own types
//! (requests, specs, statistics snapshots, index rows); front-ends translate to the wire.

//!
//! - `admission`: the request path from a front-end to a model's queue, and `PendingInfer`.
//! - `inflight`: the server-wide in-flight caps.
//! - `load`: samples of every loaded version's load for `nereid_load_ratio`.
//! - `params`: the repository and log settings parameters, parsed once for both front-ends.
//! - `reports`: metadata and statistics in neutral types both front-ends encode.

mod admission;
mod inflight;
mod load;
pub(crate) mod params;
mod reports;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::Span;

use crate::error::{Error, Rejection, Result};
use crate::lifecycle::manager::{IndexEntry, LoadRequest, ModelManager, parse_version};
use crate::model::ModelSpec;
use crate::model::config::ModelConfig;
use crate::request::{Origin, RequestContext};
use crate::shm::SharedMemory;
use crate::telemetry::Telemetry;
use crate::telemetry::logging::{LogSettings, LogUpdate};
use crate::telemetry::metrics::{self, StateRow};
use crate::telemetry::spans;
use crate::telemetry::trace::TraceUpdate;

use inflight::Inflight;
pub(crate) use inflight::{InflightBytes, InflightLimits};
pub(crate) use reports::{
    MemoryUsage, ModelMetadata, ModelStatistics, ServerMetadata, TensorMetadata,
};

/// How long a client refused because the server is going away should wait: long enough for a
/// load balancer to have moved it to another replica.
const DRAINING_RETRY: Duration = Duration::from_secs(1);

/// Extensions this server really implements, in Triton's order (grpc-protocol.md §6).
pub(crate) const EXTENSIONS: &[&str] = &[
    "classification",
    "sequence",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
    "cuda_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
];

/// The order in which Triton checks the keys of a trace settings update.
const TRACE_KEY_ORDER: &[&str] = &[
    "trace_file",
    "trace_level",
    "trace_rate",
    "trace_count",
    "log_frequency",
];

/// Trace settings as `(key, values)`: `trace_level` is a list, every other key one value.
pub(crate) type TraceSettings = Vec<(String, Vec<String>)>;

pub struct Core {
    manager: Arc<ModelManager>,
    server_id: String,
    /// True once the listeners are bound.
    live: AtomicBool,
    /// True once the startup loads have finished.
    started: AtomicBool,
    /// Shutdown began: health reports NOT_SERVING, requests are still served.
    draining: AtomicBool,
    /// New requests are refused ("Server exiting"); in-flight ones finish.
    stopping: AtomicBool,
    telemetry: Telemetry,
    limits: InflightLimits,
    inflight: Arc<Inflight>,
    /// Client shared-memory regions (`--allow-client-shm`).
    shm: SharedMemory,
}

impl Core {
    pub fn new(manager: Arc<ModelManager>, server_id: String, limits: InflightLimits) -> Self {
        Core {
            manager,
            server_id,
            live: AtomicBool::new(false),
            started: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            telemetry: Telemetry::default(),
            limits,
            inflight: Arc::default(),
            shm: SharedMemory::new(false),
        }
    }

    /// Client shared memory on (`--allow-client-shm=true`) or off (register and unregister
    /// refused; status answers).
    pub fn with_client_shm(mut self, allow: bool) -> Self {
        self.shm = SharedMemory::new(allow);
        self
    }

    /// The client shared-memory regions.
    pub fn shm(&self) -> &SharedMemory {
        &self.shm
    }

    /// First step of a graceful stop: readiness and health turn false so load balancers move
    /// traffic away, while requests are still served.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Requests (queued or running) in the server now.
    pub fn inflight(&self) -> usize {
        self.inflight.requests()
    }

    /// A count of request bytes that grows as a compressed request is expanded, against
    /// `--max-inflight-bytes` (see `InflightBytes`).
    pub fn inflight_bytes(&self) -> InflightBytes {
        InflightBytes::new(self.inflight.clone(), &self.limits)
    }

    /// Resolves once no request is in flight (at once when none is): woken by the last
    /// request's guard as it drops, not by polling.
    pub async fn idle(&self) {
        self.inflight.idle().await
    }

    /// Replaces the default telemetry (trace settings off, detached log settings).
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    pub fn set_live(&self) {
        self.live.store(true, Ordering::SeqCst);
    }

    pub fn set_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn check_running(&self) -> Result<()> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(Error::rejected(
                Rejection::ServerDraining,
                DRAINING_RETRY,
                "Server exiting",
            ));
        }
        Ok(())
    }

    pub fn live(&self) -> Result<bool> {
        self.check_running()?;
        Ok(self.live.load(Ordering::SeqCst))
    }

    pub fn ready(&self) -> Result<bool> {
        self.check_running()?;
        Ok(self.started.load(Ordering::SeqCst)
            && !self.draining.load(Ordering::SeqCst)
            && self.manager.all_ready())
    }

    /// Ready when the version resolves to a READY one with at least one healthy instance.
    /// A model or version that is unknown, loading, failed or unloaded is simply not ready
    /// (Triton's `ModelIsReady` swallows the lookup failure, behaviour.md §2 notes): only a
    /// stopping server is an error.
    pub fn model_ready(&self, name: &str, version: &str) -> Result<bool> {
        self.check_running()?;
        Ok(self
            .manager
            .get(name, version)
            .is_ok_and(|m| m.load.healthy.load(Ordering::Acquire) > 0))
    }

    pub fn server_metadata(&self) -> ServerMetadata {
        ServerMetadata {
            name: self.server_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            extensions: EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn model_metadata(&self, name: &str, version: &str) -> Result<ModelMetadata> {
        let model = self.manager.get(name, version)?;
        let versions = if version.is_empty() {
            self.manager
                .ready_versions(name)
                .iter()
                .map(|m| m.spec.version.to_string())
                .collect()
        } else {
            vec![model.spec.version.to_string()]
        };
        Ok(ModelMetadata::of(&model, versions))
    }

    /// The spec of the version `version` resolves to (what a raw HTTP request is decoded by).
    pub fn model_spec(&self, name: &str, version: &str) -> Result<Arc<ModelSpec>> {
        Ok(self.manager.get(name, version)?.spec.clone())
    }

    pub fn model_config(&self, name: &str, version: &str) -> Result<Arc<ModelConfig>> {
        Ok(self.manager.get(name, version)?.config.clone())
    }

    /// Opens one request as its front-end receives it, before decoding it: the context it
    /// carries to its queue entry. Its span is sampled by the trace settings of `model`, as a
    /// child of the client's W3C context when the origin carries a valid one; it is
    /// `Span::none()` when not sampled.
    pub fn open_request(&self, origin: Origin, model: &str, version: &str) -> RequestContext {
        let parent = spans::parent(&origin.trace);
        let span = if self.telemetry.trace.sample(model, parent.is_some()) {
            spans::request(origin.protocol.as_str(), model, version, parent.as_ref())
        } else {
            Span::none()
        };
        RequestContext::new(origin.arrival, origin.deadline, span)
    }

    /// Runs a front-end's decoding of the request opened as `ctx` inside its `receive` span;
    /// a request that does not decode is marked failed on its span.
    pub fn receive<T>(
        &self,
        ctx: &RequestContext,
        decode: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let _receive = spans::receive(ctx.span()).entered();
        decode().inspect_err(|e| spans::record_error(ctx.span(), &e.message))
    }

    /// Statistics of READY versions: all models (`name` empty), all versions (`version` empty) or one.
    pub fn statistics(&self, name: &str, version: &str) -> Result<Vec<ModelStatistics>> {
        let models = if name.is_empty() {
            self.manager.ready_versions("")
        } else if version.is_empty() {
            let v = self.manager.ready_versions(name);
            if v.is_empty() {
                return Err(Error::invalid_arg(format!(
                    "requested model '{name}' is not available"
                )));
            }
            v
        } else {
            let want = parse_version(version)?;
            let v: Vec<_> = self
                .manager
                .ready_versions(name)
                .into_iter()
                .filter(|m| m.spec.version == want)
                .collect();
            if v.is_empty() {
                return Err(Error::invalid_arg(format!(
                    "requested model version is not available for model '{name}'"
                )));
            }
            v
        };
        Ok(models.iter().map(|m| ModelStatistics::of(m)).collect())
    }

    /// RepositoryModelLoad: (re)loads `name`, optionally with a JSON config override and model
    /// files sent in the request. Returns when every selected version finished loading.
    pub async fn load_model(&self, name: &str, req: LoadRequest) -> Result<()> {
        self.check_running()?;
        self.manager.load(name, req).await
    }

    /// RepositoryModelUnload: marks the model's versions UNLOADING and returns; in-flight
    /// requests finish, then the versions are freed.
    pub async fn unload_model(&self, name: &str, unload_dependents: bool) -> Result<()> {
        self.check_running()?;
        self.manager.unload(name, unload_dependents).await
    }

    /// RepositoryIndex: every model folder in the repositories (read now, off the async
    /// workers) and every tracked version.
    pub async fn repository_index(&self, ready_only: bool) -> Result<Vec<IndexEntry>> {
        self.manager.index(ready_only).await
    }

    pub fn manager(&self) -> &Arc<ModelManager> {
        &self.manager
    }

    /// The settings scope: None = global; a model must have a READY version.
    fn trace_scope<'a>(&self, model: &'a str) -> Result<Option<&'a str>> {
        if model.is_empty() {
            return Ok(None);
        }
        match self.manager.get(model, "") {
            Ok(_) => Ok(Some(model)),
            Err(_) => Err(Error::invalid_arg(format!(
                "Request for unknown model : {model}"
            ))),
        }
    }

    /// TraceSetting read: the global settings (`model` empty) or a model's effective ones.
    pub fn trace_settings(&self, model: &str) -> Result<TraceSettings> {
        let scope = self.trace_scope(model)?;
        Ok(self.telemetry.trace.settings(scope))
    }

    /// TraceSetting update. `pairs` are `(key, values)`, `None` (or an empty list) clearing the
    /// key; see `TraceUpdate::parse`. Returns the settings after the update.
    pub fn update_trace_settings<'a, I, S>(&self, model: &str, pairs: I) -> Result<TraceSettings>
    where
        I: IntoIterator<Item = (&'a str, Option<Vec<S>>)>,
        S: AsRef<str>,
    {
        let scope = self.trace_scope(model)?;
        let mut pairs: Vec<_> = pairs.into_iter().collect();
        // Checked in Triton's order whatever the wire's (a gRPC map has none), so a request
        // with two faults always names the same one.
        pairs.sort_by_key(|(k, _)| {
            TRACE_KEY_ORDER
                .iter()
                .position(|o| o == k)
                .unwrap_or(TRACE_KEY_ORDER.len())
        });
        let update = TraceUpdate::parse(pairs)?;
        self.telemetry.trace.update(scope, &update);
        Ok(self.telemetry.trace.settings(scope))
    }

    pub fn log_settings(&self) -> LogSettings {
        self.telemetry.log.settings()
    }

    /// LogSettings update, validated as a whole before anything changes.
    pub fn update_log_settings(&self, update: &LogUpdate) -> Result<LogSettings> {
        self.telemetry.log.update(update)
    }

    /// The Prometheus text exposition: every loaded version's series, model states, and the
    /// server-wide families.
    pub fn metrics_text(&self) -> String {
        let opts = &self.telemetry.metrics;
        self.sample_load();
        let mut families = self.telemetry.load_ratio.families();
        for m in self.manager.ready_versions("") {
            families.extend(m.stats.families(opts));
        }
        // Tracked models only: a folder never loaded has no state to report.
        let rows = self.manager.tracked_rows();
        let states: Vec<StateRow<'_>> = rows
            .iter()
            .filter_map(|r| {
                Some(StateRow {
                    model: &r.name,
                    version: r.version.map(|v| v.to_string()).unwrap_or_default(),
                    state: r.state?.as_str(),
                })
            })
            .collect();
        families.extend(metrics::state_families(&states));
        metrics::render(families, Some(&self.telemetry.system), opts)
    }
}
