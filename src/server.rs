//! Composition root: backend, manager, core and front-ends wired together; startup loads,
//! readiness, and a graceful stop. The caller binds the listeners and owns the stop signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::Backend;
use crate::backend::OrtBackend;
use crate::cli::ServerConfig;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::frontend::listen::{H2_PREFACE_LEN, Listener};
use crate::frontend::tls::{Tls, TlsFiles};
use crate::lifecycle::manager::{ControlMode, ModelManager};
use crate::telemetry::{Telemetry, load_ratio::LoadRatio, metrics, trace::TraceControl};

pub struct RunningServer {
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub core: Arc<Core>,
    grpc: Option<JoinHandle<Result<()>>>,
    http: Option<JoinHandle<Result<()>>>,
    metrics: Option<JoinHandle<Result<()>>>,
}

/// The listeners a server serves on, bound by the caller; a missing one is a service turned off.
#[derive(Debug, Default)]
pub struct Listeners {
    pub grpc: Option<TcpListener>,
    pub http: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds every address `config` enables.
    pub async fn bind(config: &ServerConfig) -> Result<Listeners> {
        async fn maybe(addr: Option<SocketAddr>) -> Result<Option<TcpListener>> {
            match addr {
                Some(a) => Ok(Some(bind(a).await?)),
                None => Ok(None),
            }
        }
        Ok(Listeners {
            grpc: maybe(config.grpc_addr).await?,
            http: maybe(config.http_addr).await?,
            metrics: maybe(config.metrics_addr).await?,
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

/// The two moments of a graceful stop, as the front-ends see them.
struct DrainSignals {
    /// Turns true once the shutdown delay is over: the gRPC listener sends HTTP/2 GOAWAY on
    /// every connection (streams already opened finish; later ones are refused at the HTTP/2
    /// level, which a client or proxy may safely retry elsewhere), the HTTP listener closes
    /// idle kept-alive connections and each busy one after its response, and both stop
    /// accepting (their sockets close, so new connections are refused).
    closing: watch::Sender<bool>,
    /// Turns true at the very end (every request answered, or the exit timeout): the metrics
    /// listener and background tasks stop.
    stop: watch::Sender<bool>,
    /// Closed (every sender dropped) once the gRPC and HTTP front-ends have ended, i.e. their
    /// last connection closed.
    frontends: tokio::sync::mpsc::Receiver<()>,
}

/// Graceful stop, once `signal` resolves: health and readiness turn false while requests are
/// still served for `delay` (so load balancers notice), then the front-ends close their
/// connections gracefully (`DrainSignals::closing`), in-flight requests get up to
/// `exit_timeout` to finish, and the server stops. Requests that still reach the core after
/// that are refused with "Server exiting" and a retry hint.
async fn drain(
    core: Arc<Core>,
    signal: impl Future<Output = ()>,
    delay: std::time::Duration,
    exit_timeout: std::time::Duration,
    mut signals: DrainSignals,
) {
    signal.await;
    // Loads in flight are no longer wanted: they stop at their next step, and startup returns.
    core.manager().cancel_loads();
    // Sequence models refuse new sequences from here on; their running sequences continue.
    // (Before readiness turns false, so whoever sees it turn sees the refusal too.)
    for v in serving_versions(&core) {
        v.scheduler.refuse_new_sequences();
    }
    core.begin_drain();
    if !delay.is_zero() {
        tracing::info!(
            secs = delay.as_secs_f64(),
            "shutting down: health reports NOT_SERVING; still serving during the shutdown delay"
        );
        tokio::time::sleep(delay).await;
    }
    // The exit timeout counts from the end of the delay. Running sequences come first: their
    // continuations may arrive on any connection (HTTP ones included, which the GOAWAY step
    // closes), so the connections stay open until every sequence has ended or idled out, or
    // the exit timeout passes. Without running sequences this step is a no-op.
    let deadline = tokio::time::Instant::now() + exit_timeout;
    sequences_ended(&core, deadline).await;
    tracing::info!("shutting down: GOAWAY on gRPC connections, idle HTTP connections closed");
    let _ = signals.closing.send(true);
    // Woken by the last in-flight request's guard as it drops and by the front-ends' last
    // connection closing (a stream opened just before the GOAWAY still counts); the ticks
    // only log progress.
    let done = async {
        while signals.frontends.recv().await.is_some() {}
        core.idle().await;
    };
    let timeout = tokio::time::sleep_until(deadline);
    tokio::pin!(done, timeout);
    let second = std::time::Duration::from_secs(1);
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
    let answered = loop {
        tokio::select! {
            biased;
            _ = &mut done => break true,
            _ = &mut timeout => break false,
            _ = progress.tick() => {
                let left = deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .as_secs();
                tracing::info!(
                    inflight = core.inflight(),
                    "waiting for in-flight requests; timeout in {left} s"
                );
            }
        }
    };
    core.begin_shutdown();
    if answered {
        tracing::info!("shutting down: every accepted request was answered");
    } else {
        tracing::warn!(
            inflight = core.inflight(),
            "exit timeout reached with requests still in flight"
        );
    }
    let _ = signals.stop.send(true);
}

/// Every version currently serving.
fn serving_versions(core: &Core) -> Vec<Arc<crate::lifecycle::loader::LoadedModel>> {
    let m = core.manager();
    m.tracked()
        .iter()
        .flat_map(|name| m.ready_versions(name))
        .collect()
}

/// Resolves once no sequence model has a running or backlogged sequence, or at `deadline`.
/// Sequences end by their END, their idle timeout or their client going away, none of which
/// signals here, so this looks again every 50 ms.
async fn sequences_ended(core: &Core, deadline: tokio::time::Instant) {
    let mut logged = false;
    loop {
        let running: usize = serving_versions(core)
            .iter()
            .map(|v| v.scheduler.sequences())
            .sum();
        if running == 0 || tokio::time::Instant::now() >= deadline {
            return;
        }
        if !logged {
            tracing::info!(
                sequences = running,
                "shutting down: waiting for running sequences to end; new sequences are refused"
            );
            logged = true;
        }
        tokio::time::sleep(
            Duration::from_millis(50)
                .min(deadline.saturating_duration_since(tokio::time::Instant::now())),
        )
        .await;
    }
}

impl RunningServer {
    /// Starts serving on `grpc_listener` and `http_listener` at once (ServerLive is true from
    /// here), loads the repository with ONNX Runtime, and returns when the startup loads are
    /// done. `shutdown` resolving stops the server: new requests are refused, in-flight ones
    /// get `exit_timeout` to finish.
    pub async fn start(
        config: ServerConfig,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<RunningServer> {
        let backend: Arc<dyn Backend> = {
            let lib = config.onnxruntime_library.clone();
            let pool = config.ort_global_pool;
            let b =
                tokio::task::spawn_blocking(move || OrtBackend::init_with(lib.as_deref(), pool))
                    .await
                    .map_err(|e| {
                        Error::internal(format!("ONNX Runtime initialisation panicked: {e}"))
                    })??;
            Arc::new(b)
        };
        Self::start_with_backend(config, listeners, backend, shutdown).await
    }

    /// Like `start`, with the models run by `backend` (`config.onnxruntime_library` is then
    /// unused): tests run the whole server on the fake backend of `backend::testing`.
    pub async fn start_with_backend(
        config: ServerConfig,
        listeners: Listeners,
        backend: Arc<dyn Backend>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<RunningServer> {
        let Listeners {
            grpc: grpc_listener,
            http: http_listener,
            metrics: metrics_listener,
        } = listeners;
        let mut load = config.load.clone();
        load.gpus = tokio::task::spawn_blocking(crate::backend::devices::visible_gpus)
            .await
            .unwrap_or_default();
        let manager = ModelManager::new(backend, config.manager.clone(), load);
        let telemetry = Telemetry {
            trace: Arc::new(TraceControl::new(&config.trace)),
            log: config.log.clone(),
            system: Default::default(),
            metrics: config.metrics,
            load_ratio: Arc::new(LoadRatio::new(config.load_ratio_window)),
        };
        let core = Arc::new(
            Core::new(manager.clone(), config.server_id.clone(), config.inflight)
                .with_telemetry(telemetry)
                .with_client_shm(config.allow_client_shm),
        );
        for flag in &config.ignored {
            tracing::warn!("ignoring {flag}");
        }

        let conn = &config.connections;
        let load_tls = |files: &Option<TlsFiles>, alpn: &[&[u8]], what| {
            files
                .clone()
                .map(|f| Tls::load(f, alpn, what))
                .transpose()
                .map_err(Error::invalid_arg)
        };
        let grpc_tls = load_tls(&conn.grpc_tls, &[b"h2"], "gRPC")?;
        let http_tls = load_tls(&conn.http_tls, &[b"http/1.1"], "HTTP")?;
        let metrics_tls = load_tls(&conn.metrics_tls, &[b"http/1.1"], "metrics")?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let (closing_tx, closing_rx) = watch::channel(false);
        // Each supervised front-end holds a sender until it ends; the drain waits for all.
        let (frontend_tx, frontend_rx) = tokio::sync::mpsc::channel::<()>(1);
        let stop_rx_poll = stop_rx.clone();
        let reloadable: Vec<Arc<Tls>> = [&grpc_tls, &http_tls, &metrics_tls]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if !reloadable.is_empty() {
            reload_tls_on_sighup(reloadable, stop_rx.clone())?;
        }
        tokio::spawn(drain(
            core.clone(),
            shutdown,
            config.shutdown_delay,
            config.exit_timeout,
            DrainSignals {
                closing: closing_tx,
                stop: stop_tx,
                frontends: frontend_rx,
            },
        ));

        let mut grpc_addr = None;
        let mut grpc = None;
        if let Some(listener) = grpc_listener {
            let addr = listener
                .local_addr()
                .map_err(|e| Error::internal(e.to_string()))?;
            grpc_addr = Some(addr);
            let listener = Listener::new(listener, conn.listen, H2_PREFACE_LEN, grpc_tls);
            let serve = crate::frontend::grpc::serve::serve(
                listener,
                core.clone(),
                config.grpc_max_message_bytes,
                config.grpc_response_compression,
                config.grpc_restrictions.clone(),
                conn.http2,
                closing_rx.clone(),
            );
            grpc = Some(supervise(
                "gRPC",
                serve,
                closing_rx.clone(),
                config.exit_timeout,
                frontend_tx.clone(),
            ));
        }
        let mut http_addr = None;
        let mut http = None;
        if let Some(listener) = http_listener {
            let addr = listener
                .local_addr()
                .map_err(|e| Error::internal(e.to_string()))?;
            http_addr = Some(addr);
            let listener = Listener::new(listener, conn.listen, 0, http_tls);
            let serve = crate::frontend::http::serve(
                listener,
                core.clone(),
                config.http_max_input_size,
                config.http_overload_429,
                config.http_restrictions.clone(),
                conn.http1,
                closing_rx.clone(),
            );
            http = Some(supervise(
                "HTTP",
                async move { serve.await.map_err(|e| e.to_string()) },
                closing_rx.clone(),
                config.exit_timeout,
                frontend_tx.clone(),
            ));
        }
        drop(frontend_tx);
        let mut metrics_addr = None;
        let mut metrics = None;
        if let Some(listener) = metrics_listener {
            metrics_addr = Some(
                listener
                    .local_addr()
                    .map_err(|e| Error::internal(e.to_string()))?,
            );
            metrics = Some(serve_metrics(
                Listener::new(listener, conn.listen, 0, metrics_tls),
                conn.http1,
                core.clone(),
                config.metrics_interval,
                stop_rx.clone(),
            ));
        }
        core.set_live();

        let failures = manager.load_startup().await?;
        // Stopped during the startup loads: the loads that did not finish were cancelled, not failed.
        if !failures.is_empty() && !manager.stopping() {
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
        if manager.options().control_mode == ControlMode::Poll {
            tokio::spawn(crate::lifecycle::poll::run(manager.clone(), stop_rx_poll));
        }
        if let Some(addr) = grpc_addr {
            tracing::info!("Started GRPCInferenceService at {addr}");
        }
        if let Some(addr) = http_addr {
            tracing::info!("Started HTTPService at {addr}");
        }
        if let Some(addr) = metrics_addr {
            tracing::info!("Started Metrics Service at {addr}");
        }
        Ok(RunningServer {
            grpc_addr,
            http_addr,
            metrics_addr,
            core,
            grpc,
            http,
            metrics,
        })
    }

    /// Waits until the front-ends have stopped (after the shutdown signal).
    pub async fn wait(self) -> Result<()> {
        for (what, task) in [("gRPC", self.grpc), ("HTTP", self.http)] {
            if let Some(task) = task {
                task.await
                    .map_err(|e| Error::internal(format!("{what} server task failed: {e}")))??;
            }
        }
        if let Some(metrics) = self.metrics {
            metrics
                .await
                .map_err(|e| Error::internal(format!("metrics server task failed: {e}")))??;
        }
        // Front-ends are closed: free every model (sessions and instance threads).
        self.core.manager().shutdown().await;
        Ok(())
    }
}

/// Resolves once the stop signal has been given.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs a front-end until it ends by itself (graceful close: its connections finished their
/// requests and closed) or `exit_timeout` after `closing` turned, whichever comes first.
/// `ended` is held until then, so the drain sees the front-end end.
fn supervise(
    what: &'static str,
    serve: impl Future<Output = std::result::Result<(), String>> + Send + 'static,
    closing: watch::Receiver<bool>,
    exit_timeout: Duration,
    ended: tokio::sync::mpsc::Sender<()>,
) -> JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let _ended = ended;
        tokio::pin!(serve);
        tokio::select! {
            r = &mut serve => r.map_err(|e| Error::internal(format!("{what} server failed: {e}"))),
            _ = async { stopped(closing).await; tokio::time::sleep(exit_timeout).await } => {
                tracing::warn!("{what}: exit timeout reached with requests still in flight");
                Ok(())
            }
        }
    })
}

/// Serves `/metrics` until the stop signal, refreshing the machine-wide CPU and memory figures
/// and sampling the load ratio every `interval` (each scrape samples it too).
fn serve_metrics(
    listener: Listener,
    http1: crate::frontend::listen::Http1Options,
    core: Arc<Core>,
    interval: std::time::Duration,
    stop: watch::Receiver<bool>,
) -> JoinHandle<Result<()>> {
    let system = core.telemetry().system.clone();
    let sampled = core.clone();
    let mut refresh_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(std::time::Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    system.refresh();
                    sampled.sample_load();
                }
                _ = refresh_stop.wait_for(|s| *s) => break,
            }
        }
    });
    tokio::spawn(async move {
        let app = metrics::router(move || core.metrics_text());
        listener
            .serve_http1(app, http1, stop)
            .await
            .map_err(|e| Error::internal(format!("metrics server failed: {e}")))
    })
}

/// Re-reads every listener's certificate files on SIGHUP until the stop signal: new handshakes
/// get the new certificate, established connections keep theirs, and a file that fails to load
/// leaves that listener's current certificate in place (logged).
fn reload_tls_on_sighup(tls: Vec<Arc<Tls>>, mut stop: watch::Receiver<bool>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())
        .map_err(|e| Error::internal(format!("cannot watch SIGHUP: {e}")))?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                got = hangup.recv() => if got.is_none() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            for t in &tls {
                match t.reload() {
                    Ok(()) => tracing::info!("{}: TLS certificate reloaded", t.what()),
                    Err(e) => tracing::error!("{e}; keeping the current certificate"),
                }
            }
        }
    });
    Ok(())
}
