//! Composition root: backend, manager, core and front-ends wired together; startup loads,
//! readiness, and a graceful stop. The caller binds the listeners and owns the stop signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::Backend;
use crate::backend::ort::OrtBackend;
use crate::cli::ServerConfig;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::frontend::grpc::{GrpcService, HealthService};
use crate::model::manager::ModelManager;
use crate::pb::health::health_server::HealthServer;
use crate::pb::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::telemetry::{Telemetry, metrics, trace::TraceControl};

pub struct RunningServer {
    pub grpc_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub core: Arc<Core>,
    grpc: Option<JoinHandle<Result<()>>>,
    metrics: Option<JoinHandle<Result<()>>>,
}

/// The listeners a server serves on, bound by the caller; a missing one is a service turned off.
/// `Some(grpc_listener).into()` gives a gRPC-only server.
#[derive(Debug, Default)]
pub struct Listeners {
    pub grpc: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
}

impl From<Option<TcpListener>> for Listeners {
    fn from(grpc: Option<TcpListener>) -> Self {
        Listeners {
            grpc,
            metrics: None,
        }
    }
}

impl Listeners {
    /// Binds every address `config` enables.
    pub async fn bind(config: &ServerConfig) -> Result<Listeners> {
        Ok(Listeners {
            grpc: match config.grpc_addr {
                Some(a) => Some(bind(a).await?),
                None => None,
            },
            metrics: match config.metrics_addr {
                Some(a) => Some(bind(a).await?),
                None => None,
            },
        })
    }
}

/// Binds `addr`, with Triton's message when the port is taken.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            Error::unavailable(format!("Socket '{addr}' already in use"))
        }
        _ => Error::unavailable(format!("failed to bind '{addr}': {e}")),
    })
}

impl RunningServer {
    /// Starts serving on the listeners at once (ServerLive is true from here), loads the
    /// repository, and returns when the startup loads are done. `shutdown` resolving stops the
    /// server: new requests are refused, in-flight ones get `exit_timeout` to finish.
    pub async fn start(
        config: ServerConfig,
        listeners: impl Into<Listeners>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<RunningServer> {
        let Listeners {
            grpc: grpc_listener,
            metrics: metrics_listener,
        } = listeners.into();
        let backend: Arc<dyn Backend> = {
            let lib = config.onnxruntime_library.clone();
            let b = tokio::task::spawn_blocking(move || OrtBackend::init(lib.as_deref()))
                .await
                .map_err(|e| {
                    Error::internal(format!("ONNX Runtime initialisation panicked: {e}"))
                })??;
            Arc::new(b)
        };
        let mut opts = config.manager.clone();
        opts.gpus = tokio::task::spawn_blocking(crate::backend::devices::visible_gpus)
            .await
            .unwrap_or_default();
        let manager = Arc::new(ModelManager::new(backend, opts));
        let telemetry = Telemetry {
            trace: Arc::new(TraceControl::new(&config.trace)),
            log: config.log.clone(),
            system: Default::default(),
            metrics: config.metrics,
        };
        let core = Arc::new(
            Core::new(manager.clone(), config.server_id.clone()).with_telemetry(telemetry),
        );
        for flag in &config.ignored {
            tracing::warn!("ignoring {flag}");
        }

        let (stop_tx, stop_rx) = watch::channel(false);
        {
            let core = core.clone();
            tokio::spawn(async move {
                shutdown.await;
                tracing::info!("shutting down: refusing new requests, finishing in-flight ones");
                core.begin_shutdown();
                let _ = stop_tx.send(true);
            });
        }

        let mut grpc_addr = None;
        let mut grpc = None;
        if let Some(listener) = grpc_listener {
            let addr = listener
                .local_addr()
                .map_err(|e| Error::internal(e.to_string()))?;
            grpc_addr = Some(addr);
            let limit = config.grpc_max_message_bytes;
            let svc = GrpcInferenceServiceServer::new(GrpcService::new(core.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit);
            let health = HealthServer::new(HealthService::new(core.clone()));
            let mut stop = stop_rx.clone();
            let grpc_stop = stop_rx.clone();
            let timeout = config.exit_timeout;
            // Small responses must not wait for Nagle's algorithm (40 ms stalls with delayed ACKs).
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            grpc = Some(tokio::spawn(async move {
                let serve = tonic::transport::Server::builder()
                    .add_service(svc)
                    .add_service(health)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop.wait_for(|s| *s).await;
                    });
                let mut stop = grpc_stop;
                tokio::pin!(serve);
                tokio::select! {
                    r = &mut serve => r.map_err(|e| Error::internal(format!("gRPC server failed: {e}"))),
                    _ = async { let _ = stop.wait_for(|s| *s).await; tokio::time::sleep(timeout).await } => {
                        tracing::warn!("exit timeout reached with requests still in flight");
                        Ok(())
                    }
                }
            }));
        }
        let mut metrics_addr = None;
        let mut metrics = None;
        if let Some(listener) = metrics_listener {
            metrics_addr = Some(
                listener
                    .local_addr()
                    .map_err(|e| Error::internal(e.to_string()))?,
            );
            metrics = Some(serve_metrics(
                listener,
                core.clone(),
                config.metrics_interval,
                stop_rx.clone(),
            ));
        }
        core.set_live();

        let failures = manager.load_all().await?;
        if !failures.is_empty() {
            for (model, reason) in &failures {
                tracing::error!(model, reason, "model failed to load");
            }
            if config.exit_on_error {
                core.begin_shutdown();
                return Err(Error::internal(format!(
                    "failed to load all models: {}",
                    failures
                        .iter()
                        .map(|(m, r)| format!("{m}: {r}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                )));
            }
        }
        core.set_started();
        if let Some(addr) = grpc_addr {
            tracing::info!("Started GRPCInferenceService at {addr}");
        }
        if let Some(addr) = metrics_addr {
            tracing::info!("Started Metrics Service at {addr}");
        }
        Ok(RunningServer {
            grpc_addr,
            metrics_addr,
            core,
            grpc,
            metrics,
        })
    }

    /// Waits until the front-ends have stopped (after the shutdown signal).
    pub async fn wait(self) -> Result<()> {
        if let Some(grpc) = self.grpc {
            grpc.await
                .map_err(|e| Error::internal(format!("gRPC server task failed: {e}")))??;
        }
        if let Some(metrics) = self.metrics {
            metrics
                .await
                .map_err(|e| Error::internal(format!("metrics server task failed: {e}")))??;
        }
        Ok(())
    }
}

/// Serves `/metrics` until the stop signal, refreshing the machine-wide CPU and memory figures
/// every `interval`.
fn serve_metrics(
    listener: TcpListener,
    core: Arc<Core>,
    interval: std::time::Duration,
    stop: watch::Receiver<bool>,
) -> JoinHandle<Result<()>> {
    let system = core.telemetry().system.clone();
    let mut refresh_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(std::time::Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => system.refresh(),
                _ = refresh_stop.wait_for(|s| *s) => break,
            }
        }
    });
    let router = metrics::router(move || core.metrics_text());
    let mut stop = stop;
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .map_err(|e| Error::internal(format!("metrics server failed: {e}")))
    })
}
