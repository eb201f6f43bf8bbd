//! `Core`: the one façade both front-ends call. It speaks the server's own types
//! (requests, specs, statistics snapshots, index rows); front-ends translate to the wire.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tracing::Span;

use crate::error::{Code, Error, Rejection, Result};
use crate::model::ModelSpec;
use crate::model::config::ModelConfig;
use crate::model::manager::{IndexEntry, LoadRequest, LoadedModel, ModelManager, parse_version};
use crate::request::{InferRequest, InferResponse, RequestHead};
use crate::scheduler::Reply;
use crate::telemetry::Telemetry;
use crate::telemetry::logging::{LogSettings, LogUpdate};
use crate::telemetry::metrics::{self, StateRow};
use crate::telemetry::spans::{self, RemoteParent};
use crate::telemetry::stats::{Rejection as RejectionMetric, StatsSnapshot};
use crate::telemetry::trace::TraceUpdate;
use crate::validate::validate;

/// Extensions this server really implements, in Triton's order (grpc-protocol.md §6).
pub const EXTENSIONS: &[&str] = &[
    "classification",
    "model_configuration",
    "binary_tensor_data",
    "statistics",
    "trace",
    "logging",
];

/// Server-wide admission caps: whatever each model's queue allows, the whole server holds at
/// most this many requests, and this many bytes of request tensors, at once.
#[derive(Debug, Clone, Copy)]
pub struct InflightLimits {
    pub requests: usize,
    pub bytes: usize,
}

/// How long a client refused because the server is going away should wait: long enough for a
/// load balancer to have moved it to another replica.
const DRAINING_RETRY: Duration = Duration::from_secs(1);
/// How long a client refused because the model is not ready should wait.
const NOT_READY_RETRY: Duration = Duration::from_secs(1);

/// Requests and request bytes in the server now.
#[derive(Default)]
struct Inflight {
    requests: AtomicUsize,
    bytes: AtomicUsize,
}

/// A request counted against the server-wide caps until it is answered (or dropped).
struct InflightGuard {
    counts: Arc<Inflight>,
    bytes: usize,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.counts.requests.fetch_sub(1, Ordering::AcqRel);
        self.counts.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Trace settings as `(key, values)`: `trace_level` is a list, every other key one value.
pub type TraceSettings = Vec<(String, Vec<String>)>;

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
}

/// An accepted request waiting for its response. Dropping it cancels the request if it has not
/// started executing. Holding it keeps the model version loaded.
pub struct PendingInfer {
    stage: Stage,
    span: Span,
    _model: Arc<LoadedModel>,
    _inflight: InflightGuard,
}

/// Where an accepted request is: queued (waiting for its reply), or still being tokenized on
/// the tokenizer threads before it can be queued (text models).
enum Stage {
    Queued(Reply),
    Tokenizing(Pin<Box<dyn Future<Output = Result<Reply>> + Send>>),
}

impl Future for PendingInfer {
    type Output = Result<InferResponse>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let result = match &mut self.stage {
                Stage::Tokenizing(f) => match f.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(rx)) => {
                        self.stage = Stage::Queued(rx);
                        continue;
                    }
                    Poll::Ready(Err(e)) => Err(e),
                },
                Stage::Queued(rx) => match Pin::new(rx).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r.unwrap_or_else(|_| {
                        Err(Error::internal(
                            "the model instance dropped the request without replying",
                        ))
                    }),
                },
            };
            if let Err(e) = &result {
                spans::record_error(&self.span, &e.message);
            }
            return Poll::Ready(result);
        }
    }
}

pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

pub struct ModelMetadata {
    pub name: String,
    /// The requested version, or every READY version ascending.
    pub versions: Vec<String>,
    pub platform: String,
    /// The newest matching version's spec (inputs/outputs are the same for all versions).
    pub spec: Arc<ModelSpec>,
}

pub struct ModelStatistics {
    pub name: String,
    pub version: i64,
    pub stats: StatsSnapshot,
    /// GPU memory the version took at load, per device.
    pub gpu_memory: Vec<(i32, u64)>,
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
        }
    }

    /// First step of a graceful stop: readiness and health turn false so load balancers move
    /// traffic away, while requests are still served.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Requests (queued or running) in the server now.
    pub fn inflight(&self) -> usize {
        self.inflight.requests.load(Ordering::Acquire)
    }

    fn admit(&self, bytes: usize) -> Result<InflightGuard> {
        // A request larger than the whole byte cap would be "busy" forever: retrying cannot
        // help, so it is refused as invalid, without a retry hint.
        if bytes > self.limits.bytes {
            return Err(Error::invalid_arg(format!(
                "request of {bytes} bytes is larger than the server accepts in flight ({} bytes, --max-inflight-bytes)",
                self.limits.bytes
            )));
        }
        let n = self.inflight.requests.fetch_add(1, Ordering::AcqRel) + 1;
        let b = self.inflight.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        let guard = InflightGuard {
            counts: self.inflight.clone(),
            bytes,
        };
        if n > self.limits.requests || b > self.limits.bytes {
            let msg = if n > self.limits.requests {
                format!(
                    "Server is busy: {} requests in flight (--max-inflight-requests)",
                    self.limits.requests
                )
            } else {
                format!(
                    "Server is busy: more than {} bytes of requests in flight (--max-inflight-bytes)",
                    self.limits.bytes
                )
            };
            return Err(Error::rejected(
                Rejection::ServerBusy,
                Duration::from_millis(10),
                msg,
            ));
        }
        Ok(guard)
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

    /// Ready when the version resolves to a READY one with at least one healthy instance;
    /// lookups fail with Triton's errors.
    pub fn model_ready(&self, name: &str, version: &str) -> Result<bool> {
        self.check_running()?;
        let m = self.manager.get(name, version)?;
        Ok(m.load.healthy.load(Ordering::Acquire) > 0)
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
        Ok(ModelMetadata {
            name: model.spec.name.clone(),
            versions,
            platform: model.config.platform.clone(),
            spec: model.spec.clone(),
        })
    }

    pub fn model_config(&self, name: &str, version: &str) -> Result<Arc<ModelConfig>> {
        Ok(self.manager.get(name, version)?.config.clone())
    }

    /// Runs one request to completion. Dropping the future cancels it (the queued entry is skipped).
    /// Sampled for tracing by the trace settings, without a client trace context; front-ends
    /// that read one use `request_span` and `submit`.
    pub async fn infer(&self, req: InferRequest) -> Result<InferResponse> {
        let span = self.request_span("core", &req.model_name, &req.model_version, None);
        self.submit(req, &span)?.await
    }

    /// The span of one request, or `Span::none()` when the trace settings do not sample it.
    /// `protocol` names the front-end (`grpc`, `http`); `parent` is the client's W3C context
    /// (`spans::parent_from_headers`).
    pub fn request_span(
        &self,
        protocol: &'static str,
        model: &str,
        version: &str,
        parent: Option<&RemoteParent>,
    ) -> Span {
        if self.telemetry.trace.sample(model, parent.is_some()) {
            spans::request(protocol, model, version, parent)
        } else {
            Span::none()
        }
    }

    /// The checks that need no tensors, in `submit`'s order: the server is not draining, the
    /// model resolves to a serving version (a known one that is loading is an overload-style
    /// "not ready" with a retry hint), and the server-wide in-flight caps hold `bytes` more.
    /// A refusal for server load is timed from `arrival` in the model's rejection histogram.
    fn admit_head(
        &self,
        model_name: &str,
        model_version: &str,
        bytes: usize,
        arrival: Instant,
    ) -> Result<(Arc<LoadedModel>, InflightGuard)> {
        self.check_running()?;
        let inflight = self.admit(bytes);
        let model = self
            .manager
            .get(model_name, model_version)
            .map_err(|e| match e.code {
                // Known but not serving (loading, unloading): worth retrying shortly.
                Code::Unavailable => Error {
                    rejection: Some((Rejection::ModelNotReady, NOT_READY_RETRY)),
                    ..e
                },
                Code::NotFound if self.manager.is_loading(model_name) => Error {
                    rejection: Some((Rejection::ModelNotReady, NOT_READY_RETRY)),
                    ..e
                },
                _ => e,
            });
        match (inflight, model) {
            (Ok(g), Ok(m)) => Ok((m, g)),
            (Err(e), Ok(m)) => {
                m.stats.rejected(if e.rejection.is_some() {
                    RejectionMetric::ServerBusy
                } else {
                    RejectionMetric::TooLarge
                });
                m.stats.refusal_took(arrival.elapsed());
                Err(e)
            }
            (Err(e), Err(_)) | (Ok(_), Err(e)) => Err(e),
        }
    }

    /// Refuses a request from its head alone (model, version, id, parameters, the client's
    /// deadline), while its tensors are still arriving: when it would be refused for overload
    /// (draining, model not ready, server busy, queue full, shed by priority, deadline that
    /// cannot be met) the refusal comes now, counted as `submit` counts it. Anything else,
    /// including a head `submit` would reject as invalid, is Ok: `submit` decides with the
    /// whole request. The in-flight byte cap is left to `submit` (the tensors' size is not
    /// known yet).
    pub fn refuse_early(&self, head: &RequestHead<'_>) -> Result<()> {
        let overload = |e: Error| {
            if e.rejection.is_some() {
                Err(e)
            } else {
                Ok(())
            }
        };
        let model = match self.admit_head(head.model_name, head.model_version, 0, head.arrival) {
            Ok((m, _inflight)) => m,
            Err(e) => return overload(e),
        };
        let Ok((level, timeout)) = crate::validate::schedule_params(&model.spec, &head.params)
        else {
            return Ok(());
        };
        model
            .scheduler
            .precheck(level, timeout, head.id)
            // Every precheck error is an overload refusal.
            .inspect_err(|_| model.stats.refusal_took(head.arrival.elapsed()))
            .or_else(overload)
    }

    /// Validates and queues one request at once; errors here mean it was never accepted (the
    /// model did not run). The returned future resolves with the model's answer.
    pub fn submit(&self, req: InferRequest, span: &Span) -> Result<PendingInfer> {
        spans::record_id(span, &req.id);
        let accepted = {
            let bytes = req.inputs.iter().map(|i| i.data.len()).sum();
            self.admit_head(&req.model_name, &req.model_version, bytes, req.arrival)
        }
        .and_then(|(model, inflight)| {
            span.record("model_version", model.spec.version);
            let arrival = req.arrival;
            let valid = validate(req, &model.spec).inspect_err(|_| {
                model.stats.rejected(RejectionMetric::Invalid);
            })?;
            // Step 4: a text model's texts become token inputs on the tokenizer threads before
            // they are queued; other models are queued now, so a full queue is refused at once.
            let stage = if model.tokenizer.is_some() {
                let (m, span2) = (model.clone(), span.clone());
                Stage::Tokenizing(Box::pin(async move {
                    let pool = m.tokenizer.as_ref().expect("checked above");
                    let valid = pool.tokenize(valid).await.inspect_err(|e| {
                        // The tokenizer's own admission (a deadline it cannot meet).
                        if let Some((why, _)) = e.rejection {
                            m.stats.rejected(why.into());
                            m.stats.refusal_took(arrival.elapsed());
                        }
                    })?;
                    m.scheduler.enqueue(valid, arrival, span2)
                }))
            } else {
                let queued = model.scheduler.enqueue(valid, arrival, span.clone());
                let queued = queued.inspect_err(|e| {
                    if e.rejection.is_some() {
                        model.stats.refusal_took(arrival.elapsed())
                    }
                });
                Stage::Queued(queued?)
            };
            Ok(PendingInfer {
                stage,
                span: span.clone(),
                _model: model,
                _inflight: inflight,
            })
        });
        if let Err(e) = &accepted {
            spans::record_error(span, &e.message);
        }
        accepted
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
        Ok(models
            .iter()
            .map(|m| ModelStatistics {
                name: m.spec.name.clone(),
                version: m.spec.version,
                stats: m.stats.snapshot(),
                gpu_memory: m.gpu_memory.clone(),
            })
            .collect())
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

    pub fn repository_index(&self, ready_only: bool) -> Result<Vec<IndexEntry>> {
        self.manager.index(ready_only)
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
        let mut families = Vec::new();
        for m in self.manager.ready_versions("") {
            families.extend(m.stats.families(opts));
        }
        match self.manager.index(false) {
            Ok(rows) => {
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
            }
            Err(e) => tracing::warn!("metrics: cannot list model states: {e}"),
        }
        metrics::render(families, Some(&self.telemetry.system), opts)
    }
}
