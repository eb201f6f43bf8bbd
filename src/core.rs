//! `Core`: the one façade both front-ends call. It speaks the server's own types
//! (requests, specs, statistics snapshots, index rows); front-ends translate to the wire.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};
use crate::model::ModelSpec;
use crate::model::config::ModelConfig;
use crate::model::manager::{IndexEntry, LoadRequest, ModelManager, parse_version};
use crate::request::{InferRequest, InferResponse};
use crate::telemetry::stats::StatsSnapshot;
use crate::validate::validate;

/// Extensions this server really implements, in Triton's order (grpc-protocol.md §6).
pub const EXTENSIONS: &[&str] = &["classification", "model_configuration", "statistics"];

pub struct Core {
    manager: Arc<ModelManager>,
    server_id: String,
    /// True once the listeners are bound.
    live: AtomicBool,
    /// True once the startup loads have finished.
    started: AtomicBool,
    stopping: AtomicBool,
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
    pub fn new(manager: Arc<ModelManager>, server_id: String) -> Self {
        Core {
            manager,
            server_id,
            live: AtomicBool::new(false),
            started: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
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
            return Err(Error::unavailable("Server exiting"));
        }
        Ok(())
    }

    pub fn live(&self) -> Result<bool> {
        self.check_running()?;
        Ok(self.live.load(Ordering::SeqCst))
    }

    pub fn ready(&self) -> Result<bool> {
        self.check_running()?;
        Ok(self.started.load(Ordering::SeqCst) && self.manager.all_ready())
    }

    /// Ready when the version resolves to a READY one; lookups fail with Triton's errors.
    pub fn model_ready(&self, name: &str, version: &str) -> Result<bool> {
        self.check_running()?;
        self.manager.get(name, version).map(|_| true)
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
    pub async fn infer(&self, req: InferRequest) -> Result<InferResponse> {
        self.check_running()?;
        let model = self.manager.get(&req.model_name, &req.model_version)?;
        let arrival = req.arrival;
        let valid = validate(req, &model.spec)?;
        // Step 4: a text model's texts become token inputs on the tokenizer threads.
        let valid = match &model.tokenizer {
            Some(pool) => pool.tokenize(valid).await?,
            None => valid,
        };
        let reply = model.scheduler.enqueue(valid, arrival)?;
        reply.await.map_err(|_| {
            Error::internal("the model instance dropped the request without replying")
        })?
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
}
