//! The command line, with `tritonserver`'s flag names, turned into a validated `ServerConfig`.
//! Pure: no I/O beyond checking that repository folders exist (object-store repositories are
//! only parsed and opened; their first request is the first listing).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};

mod backend;
mod connections;
mod repos;
pub(crate) use connections::ConnectionOptions;

use crate::backend::GlobalThreadPool;
use crate::frontend::grpc::compression::ResponseCompression;
use crate::frontend::restrict::{Api, Restrictions};
use crate::lifecycle::loader::LoadOptions;
use crate::lifecycle::manager::{ControlMode, ManagerOptions};
use crate::model::limits::{self, ConfigLimits};
use crate::scheduler::{DEFAULT_QUEUE_CAPACITY, QueueLimits};
use crate::telemetry::logging::{LogControl, LogFormat, LogSettings};
use crate::telemetry::metrics::MetricsOptions;
use crate::telemetry::trace::TraceConfig;

/// Parses Triton's boolean spellings: true/false, on/off, 1/0 (any case).
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "on" | "1" => Ok(true),
        "false" | "off" | "0" => Ok(false),
        _ => Err(format!("expected true/false, on/off or 1/0, got '{s}'")),
    }
}

/// `--model-control-mode` (any case, as Triton).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ControlModeArg {
    None,
    Poll,
    Explicit,
}

impl From<ControlModeArg> for ControlMode {
    fn from(m: ControlModeArg) -> Self {
        match m {
            ControlModeArg::None => ControlMode::None,
            ControlModeArg::Poll => ControlMode::Poll,
            ControlModeArg::Explicit => ControlMode::Explicit,
        }
    }
}

/// `--grpc-infer-response-compression-level`, in Triton's spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionLevelArg {
    None,
    Low,
    Medium,
    High,
}

impl From<CompressionLevelArg> for ResponseCompression {
    fn from(l: CompressionLevelArg) -> Self {
        match l {
            CompressionLevelArg::None => ResponseCompression::None,
            CompressionLevelArg::Low => ResponseCompression::Low,
            CompressionLevelArg::Medium => ResponseCompression::Medium,
            CompressionLevelArg::High => ResponseCompression::High,
        }
    }
}

/// `--http-overload-status`: Triton's 503, or 429 for clients that back off on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OverloadStatus {
    #[value(name = "503")]
    ServiceUnavailable,
    #[value(name = "429")]
    TooManyRequests,
}

/// `--log-format`, in Triton's spellings (`text` is accepted for `default`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    #[value(name = "default", alias = "text")]
    Default,
    #[value(name = "ISO8601")]
    Iso8601,
    #[value(name = "json")]
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(f: LogFormatArg) -> Self {
        match f {
            LogFormatArg::Default => LogFormat::Default,
            LogFormatArg::Iso8601 => LogFormat::Iso8601,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

/// `--log-verbose` takes a level; `true`/`false` mean 1/0 as in Triton.
fn parse_verbose(s: &str) -> Result<u32, String> {
    s.parse::<u32>().or_else(|_| parse_bool(s).map(u32::from))
}

#[derive(Debug, Parser)]
#[command(
    name = "nereid",
    version,
    about = "Nereid: a Triton-compatible inference server for ONNX models (KServe v2 HTTP/REST and gRPC).",
    long_about = "Nereid serves a Triton model repository of ONNX models over the KServe v2 HTTP/REST and gRPC protocols with Triton's extensions. Flags follow tritonserver's names; boolean flags take true/false, on/off or 1/0."
)]
pub struct Cli {
    /// Model repository folder (<repo>/<model>/config.pbtxt, <repo>/<model>/<version>/model.onnx), or an object store: s3://bucket/path, s3://host:port/bucket/path, s3://https://host:port/bucket/path, gs://bucket/path, as://account/container/path. Repeatable.
    #[arg(
        long = "model-repository",
        alias = "model-store",
        value_name = "DIR|URL",
        required = true
    )]
    pub model_repository: Vec<PathBuf>,

    /// `--model-cache-dir` (`cli/repos.rs`).
    #[command(flatten)]
    pub repos: repos::RepoArgs,

    /// Model control mode: `none` (load every model at startup), `poll` (also apply repository
    /// changes every --repository-poll-secs) or `explicit` (load --load-model models at startup;
    /// the load/unload API does the rest).
    #[arg(long, value_enum, ignore_case = true, default_value_t = ControlModeArg::None, value_name = "MODE")]
    pub model_control_mode: ControlModeArg,

    /// Model to load at startup in explicit mode; repeatable; `*` loads every model.
    #[arg(long, value_name = "NAME")]
    pub load_model: Vec<String>,

    /// Seconds between repository polls in poll mode.
    #[arg(long, default_value_t = 15, value_name = "SECS")]
    pub repository_poll_secs: u64,

    /// Use <model>/configs/<NAME>.pbtxt instead of config.pbtxt where it exists.
    #[arg(long, value_name = "NAME")]
    pub model_config_name: Option<String>,

    /// Turn off auto-complete of model configs from the ONNX file; configs must then list inputs and outputs.
    #[arg(long)]
    pub disable_auto_complete_config: bool,

    /// Deprecated alias: `true` is the same as --disable-auto-complete-config.
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub strict_model_config: bool,

    /// Ready only when every model is loaded (true), or as soon as the server started (false).
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "true", value_name = "BOOL")]
    pub strict_readiness: bool,

    /// Exit when a model fails to load at startup.
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "true", value_name = "BOOL")]
    pub exit_on_error: bool,

    /// Seconds to keep serving after SIGINT/SIGTERM while health reports NOT_SERVING, so load
    /// balancers can move traffic away before new requests are refused.
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub shutdown_delay_secs: u64,

    /// Seconds to let in-flight requests finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub exit_timeout_secs: u64,

    /// Models loaded in parallel at startup.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub model_load_thread_count: usize,

    /// Server name reported by ServerMetadata.
    #[arg(long, default_value = "triton", value_name = "ID")]
    pub id: String,

    /// Serve the gRPC protocol.
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "true", value_name = "BOOL")]
    pub allow_grpc: bool,

    /// gRPC port (0 picks a free port; the log line "Started GRPCInferenceService at ..." shows it).
    #[arg(long, default_value_t = 8001, value_name = "PORT")]
    pub grpc_port: u16,

    /// Address the gRPC server binds.
    #[arg(long, default_value = "0.0.0.0", value_name = "ADDR")]
    pub grpc_address: IpAddr,

    /// Compress gRPC infer responses: the level picks gzip or deflate among the encodings the
    /// client accepts, as Triton (gRPC core) does.
    #[arg(long, value_enum, default_value_t = CompressionLevelArg::None, value_name = "LEVEL")]
    pub grpc_infer_response_compression_level: CompressionLevelArg,

    /// Let clients register system shared-memory regions and name them in requests (as
    /// Triton's flag); when false, register and unregister are refused and status answers.
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "false", value_name = "BOOL")]
    pub allow_client_shm: bool,

    /// Serve the HTTP/REST protocol.
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "true", value_name = "BOOL")]
    pub allow_http: bool,

    /// HTTP port (0 picks a free port; the log line "Started HTTPService at ..." shows it).
    #[arg(long, default_value_t = 8000, value_name = "PORT")]
    pub http_port: u16,

    /// Address the HTTP server binds.
    #[arg(long, default_value = "0.0.0.0", value_name = "ADDR")]
    pub http_address: IpAddr,

    /// Largest HTTP request body in bytes (after decompression); larger ones get a 400.
    #[arg(long, default_value_t = crate::frontend::http::DEFAULT_MAX_INPUT_SIZE, value_name = "BYTES")]
    pub http_max_input_size: usize,

    /// HTTP status of load rejections (queue full, shed, deadline, busy): 503 as Triton, or 429.
    #[arg(long, value_enum, default_value_t = OverloadStatus::ServiceUnavailable, value_name = "STATUS")]
    pub http_overload_status: OverloadStatus,

    /// HTTP worker threads. Accepted for tritonserver compatibility: HTTP requests share the
    /// server's async runtime with gRPC, so there is no separate pool to size.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub http_thread_count: usize,

    /// Serve the gRPC calls of GROUPS only to clients sending metadata
    /// `triton-grpc-protocol-<KEY>: <VALUE>` (others get UNAVAILABLE). GROUPS, comma-separated:
    /// health, metadata, inference, shared-memory, model-config, model-repository, statistics,
    /// trace, logging. Repeatable; a group may appear in one flag only. Default: none restricted.
    #[arg(long, value_name = "GROUPS:KEY=VALUE")]
    pub grpc_restricted_protocol: Vec<String>,

    /// Serve the HTTP routes of GROUPS only to clients sending header `<KEY>: <VALUE>` (others
    /// get 403). Groups and rules as --grpc-restricted-protocol. Default: none restricted.
    #[arg(long, value_name = "GROUPS:KEY=VALUE")]
    pub http_restricted_api: Vec<String>,

    /// Serve Prometheus metrics (`/metrics`) on their own port.
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "true", value_name = "BOOL")]
    pub allow_metrics: bool,

    /// Metrics port (0 picks a free port; the log line "Started Metrics Service at ..." shows it).
    #[arg(long, default_value_t = 8002, value_name = "PORT")]
    pub metrics_port: u16,

    /// Refuse model loads that would fill more than FRACTION of GPU DEVICE's memory (`<device>:<fraction>`). Repeatable.
    #[arg(long, value_name = "DEVICE:FRACTION")]
    pub model_load_gpu_limit: Vec<String>,

    /// Estimated GPU memory of one instance = model file size × this factor (load admission).
    #[arg(long, default_value_t = 2.0, value_name = "FACTOR")]
    pub model_load_gpu_safety_factor: f64,

    /// Requests one model version may queue (all priority levels together) before new ones are
    /// refused at once; config `max_queue_size` limits each level further.
    #[arg(long, default_value_t = DEFAULT_QUEUE_CAPACITY, value_name = "N")]
    pub max_queue_size_per_model: usize,

    /// Percent of each model's queue kept for its highest priority level; lower levels are shed
    /// (refused) in order as the queue fills past their high-water marks.
    #[arg(long, default_value_t = 20.0, value_name = "PERCENT")]
    pub priority_reserve_percent: f64,

    /// Sequence models: requests one sequence may have queued (in its slot or waiting for one)
    /// before more are refused with "Exceeds maximum queue size".
    #[arg(long, default_value_t = crate::scheduler::sequence::DEFAULT_PER_SEQUENCE, value_name = "N")]
    pub sequence_max_queue_size: usize,

    /// Sequence models: new sequences that may wait for a free slot (per model version) before
    /// a new START is refused with "Exceeds maximum queue size".
    #[arg(long, default_value_t = crate::scheduler::sequence::DEFAULT_BACKLOG, value_name = "N")]
    pub sequence_max_backlog: usize,

    /// Sequence models: after a reload or unload, how long the old version keeps serving the
    /// continuations of its running sequences (new sequences go to the new version at once);
    /// then those sequences end with UNAVAILABLE "sequence <id> of model '<m>' ended by a reload".
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub sequence_drain_timeout_secs: u64,

    /// Requests in flight in the whole server (queued or running) before new ones are refused.
    #[arg(long, default_value_t = 8192, value_name = "N")]
    pub max_inflight_requests: usize,

    /// Bytes of request tensors in flight in the whole server before new requests are refused.
    #[arg(long, default_value_t = 1 << 30, value_name = "BYTES")]
    pub max_inflight_bytes: usize,

    /// Most instances one model version may ask for (instance_group counts, all groups and
    /// GPUs together); a config asking for more fails to load.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_INSTANCES_PER_MODEL, value_name = "N")]
    pub max_instances_per_model: usize,

    /// Most ONNX Runtime threads one model version may ask for: instances × (intra_op_thread_count
    /// plus inter_op_thread_count); a config asking for more fails to load. With the global
    /// thread pool sessions own no threads, and the pool's own threads are bounded by this instead.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_MODEL_THREADS, value_name = "N")]
    pub max_model_threads: usize,

    /// Largest `tokenizer_threads` a text model may ask for; a config asking for more fails to load.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_TOKENIZER_THREADS, value_name = "N")]
    pub max_tokenizer_threads: usize,

    /// Most input bytes of one model_warmup sample (all inputs, whole batch); a config asking for
    /// more fails to load.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_WARMUP_BYTES, value_name = "BYTES")]
    pub max_warmup_bytes: usize,

    /// Largest `max_length` (tokens) of a text model, from its config or tokenizer file; a model
    /// asking for more fails to load.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_TEXT_LENGTH, value_name = "TOKENS")]
    pub max_text_length: usize,

    /// Address the metrics server binds.
    #[arg(long, default_value = "0.0.0.0", value_name = "ADDR")]
    pub metrics_address: IpAddr,

    /// How often the machine-wide CPU and memory metrics are refreshed, in milliseconds.
    #[arg(long, default_value_t = 2000.0, value_name = "MS")]
    pub metrics_interval_ms: f64,

    /// Window of nereid_load_ratio, the autoscaling signal, in seconds. The ratio is (busy
    /// instances + queued requests / max(1, max_batch_size)) / healthy instances, per model
    /// and summed over the server (no model label); it is reported as an exponentially
    /// weighted moving average with this time constant, so one burst shorter than the window
    /// does not scale a deployment out. 0 reports each sample unsmoothed.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub load_ratio_window_secs: u64,

    /// Metrics settings `<key>=<value>`: `counter_latencies=<bool>` (the nv_*_duration_us counters). Repeatable.
    #[arg(long, value_name = "SETTING")]
    pub metrics_config: Vec<String>,

    /// Expose nv_cpu_utilization and nv_cpu_memory_{total,used}_bytes.
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "true", value_name = "BOOL")]
    pub allow_cpu_metrics: bool,

    /// Accepted for compatibility; this release exports no GPU metrics.
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "true", value_name = "BOOL")]
    pub allow_gpu_metrics: bool,

    /// Trace settings `[<mode>,]<key>=<value>`: `level=OFF|TIMESTAMPS|TENSORS`, `rate=N`, `count=N`, `mode=triton|opentelemetry`, `opentelemetry,url=http://HOST:4317` (OTLP/gRPC collector), `opentelemetry,resource=K=V`, `opentelemetry,bsp_max_queue_size=N`, `opentelemetry,bsp_schedule_delay=MS`, `opentelemetry,bsp_max_export_batch_size=N`, `triton,file=PATH`, `triton,log-frequency=N`. Repeatable.
    #[arg(long, value_name = "SETTING")]
    pub trace_config: Vec<String>,

    /// Backend settings: `onnxruntime,default-max-batch-size=N` (or the global `default-max-batch-size=N`); `onnxruntime,enable-global-threadpool=1` with `onnxruntime,intra_op_thread_count=N` and `onnxruntime,inter_op_thread_count=N` (one ONNX Runtime thread pool for every session; 0 = one thread per core). Repeatable.
    #[arg(long, value_name = "SETTING")]
    pub backend_config: Vec<String>,

    /// The ONNX Runtime shared library (default: $ORT_DYLIB_PATH, else .ort/libonnxruntime.so.1.31.1).
    #[arg(long, env = "ORT_DYLIB_PATH", value_name = "FILE")]
    pub onnxruntime_library: Option<PathBuf>,

    /// Verbose logging level (0 = off).
    #[arg(long, value_parser = parse_verbose, default_value = "0", value_name = "LEVEL")]
    pub log_verbose: u32,

    /// Log info messages.
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "true", value_name = "BOOL")]
    pub log_info: bool,

    /// Log warnings.
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "true", value_name = "BOOL")]
    pub log_warning: bool,

    /// Log errors.
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "true", value_name = "BOOL")]
    pub log_error: bool,

    /// Log line format: `default` (= `text`), `ISO8601` or `json` (one JSON object per line).
    #[arg(long, value_enum, default_value_t = LogFormatArg::Default, value_name = "FORMAT")]
    pub log_format: LogFormatArg,

    /// Write the log to this file (appending) instead of standard error.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Connection limits, keepalive and TLS of the listeners (`cli/connections.rs`).
    #[command(flatten)]
    pub connections: connections::ConnectionArgs,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub manager: ManagerOptions,
    pub load: LoadOptions,
    pub server_id: String,
    /// None when gRPC is turned off.
    pub grpc_addr: Option<SocketAddr>,
    pub grpc_max_message_bytes: usize,
    /// `--grpc-infer-response-compression-level`.
    pub grpc_response_compression: ResponseCompression,
    /// None when HTTP/REST is turned off.
    pub http_addr: Option<SocketAddr>,
    /// `--http-max-input-size`: the largest request body, compressed or not.
    pub http_max_input_size: usize,
    /// Answer load rejections over HTTP with 429 instead of 503.
    pub http_overload_429: bool,
    /// `--grpc-restricted-protocol` and `--http-restricted-api`.
    pub grpc_restrictions: Restrictions,
    pub http_restrictions: Restrictions,
    pub exit_on_error: bool,
    pub exit_timeout: Duration,
    pub shutdown_delay: Duration,
    /// Server-wide admission caps (requests, request bytes in flight).
    pub inflight: crate::core::InflightLimits,
    pub onnxruntime_library: Option<PathBuf>,
    /// `--backend-config=onnxruntime,enable-global-threadpool=1`: ONNX Runtime's environment
    /// gets this global thread pool and sessions own no threads.
    pub ort_global_pool: Option<GlobalThreadPool>,
    /// None when metrics are turned off.
    pub metrics_addr: Option<SocketAddr>,
    pub metrics_interval: Duration,
    /// `--load-ratio-window-secs`: the EWMA time constant of `nereid_load_ratio`.
    pub load_ratio_window: Duration,
    pub metrics: MetricsOptions,
    pub trace: TraceConfig,
    /// The live log settings; `main` swaps in the handle of the installed subscriber.
    pub log: LogControl,
    /// Flags accepted for compatibility but not acted on, to be logged at startup.
    pub ignored: Vec<String>,
    /// Connection limits, keepalive and TLS of the listeners.
    pub connections: ConnectionOptions,
    /// `--allow-client-shm`.
    pub allow_client_shm: bool,
}

impl ServerConfig {
    /// The defaults of a server over `repos`, for tests and embedding.
    pub fn new(repos: Vec<PathBuf>) -> Self {
        Cli::parse_from(
            std::iter::once("nereid".to_string()).chain(
                repos
                    .iter()
                    .map(|r| format!("--model-repository={}", r.display())),
            ),
        )
        .into_config()
        .expect("default flags are valid")
    }
}

impl Cli {
    pub fn into_config(self) -> Result<ServerConfig, String> {
        let control_mode = ControlMode::from(self.model_control_mode);
        if !self.load_model.is_empty() && control_mode != ControlMode::Explicit {
            return Err("--load-model requires --model-control-mode=explicit".into());
        }
        if self.load_model.iter().any(|m| m == "*") && self.load_model.len() > 1 {
            return Err("--load-model=* must be the only --load-model".into());
        }
        if control_mode == ControlMode::Poll && self.repository_poll_secs == 0 {
            return Err("--repository-poll-secs must be at least 1 in poll mode".into());
        }
        if let Some(name) = &self.model_config_name
            && (name.is_empty() || name.contains(char::is_whitespace))
        {
            return Err(format!(
                "--model-config-name must be a non-empty name without spaces, got '{name}'"
            ));
        }
        if self.model_load_thread_count == 0 {
            return Err("--model-load-thread-count must be at least 1".into());
        }
        let mut gpu_limits = Vec::new();
        for l in &self.model_load_gpu_limit {
            let parsed = l
                .split_once(':')
                .and_then(|(d, f)| Some((d.parse::<i32>().ok()?, f.parse::<f64>().ok()?)))
                .filter(|(d, f)| *d >= 0 && *f > 0.0 && *f <= 1.0);
            match parsed {
                Some(p) => gpu_limits.push(p),
                None => {
                    return Err(format!(
                        "--model-load-gpu-limit '{l}': expected <device>:<fraction> with a fraction in (0, 1]"
                    ));
                }
            }
        }
        if self.model_load_gpu_safety_factor.is_nan() || self.model_load_gpu_safety_factor <= 0.0 {
            return Err("--model-load-gpu-safety-factor must be positive".into());
        }
        if self.max_queue_size_per_model == 0
            || self.max_inflight_requests == 0
            || self.max_inflight_bytes == 0
        {
            return Err("--max-queue-size-per-model, --max-inflight-requests and --max-inflight-bytes must be at least 1".into());
        }
        if self.max_instances_per_model == 0
            || self.max_model_threads == 0
            || self.max_tokenizer_threads == 0
            || self.max_text_length < 2
        {
            return Err("--max-instances-per-model, --max-model-threads and --max-tokenizer-threads must be at least 1, --max-text-length at least 2".into());
        }
        if !(0.0..=90.0).contains(&self.priority_reserve_percent) {
            return Err("--priority-reserve-percent must be between 0 and 90".into());
        }
        let backend::BackendSettings {
            default_max_batch_size,
            global_pool,
            mut ignored,
        } = backend::parse(&self.backend_config, self.max_model_threads)?;
        let (repositories, remotes) =
            repos::split(self.model_repository.clone(), &self.repos.model_cache_dir)?;
        if self.http_max_input_size == 0 {
            return Err("--http-max-input-size must be at least 1".into());
        }
        let mut metrics = MetricsOptions {
            counter_latencies: true,
            cpu_metrics: self.allow_cpu_metrics,
        };
        for setting in &self.metrics_config {
            match setting.split_once('=') {
                Some(("counter_latencies", v)) => {
                    metrics.counter_latencies =
                        parse_bool(v).map_err(|e| format!("--metrics-config '{setting}': {e}"))?
                }
                Some(("histogram_latencies" | "summary_latencies" | "summary_quantiles", _)) => {
                    ignored.push(format!("--metrics-config={setting}"))
                }
                _ => {
                    return Err(format!(
                        "--metrics-config '{setting}': expected counter_latencies=<bool>"
                    ));
                }
            }
        }
        if !(self.metrics_interval_ms.is_finite() && self.metrics_interval_ms > 0.0) {
            return Err(format!(
                "--metrics-interval-ms must be a positive number, got {}",
                self.metrics_interval_ms
            ));
        }
        let trace = TraceConfig::parse(&self.trace_config)?;
        let grpc_restrictions = Restrictions::parse(Api::Grpc, &self.grpc_restricted_protocol)?;
        let http_restrictions = Restrictions::parse(Api::Http, &self.http_restricted_api)?;
        let log = LogControl::detached(self.log_settings()?);
        Ok(ServerConfig {
            manager: ManagerOptions {
                repositories,
                remotes,
                control_mode,
                startup_models: self.load_model,
                poll_interval: Duration::from_secs(self.repository_poll_secs),
                load_threads: self.model_load_thread_count,
                strict_readiness: self.strict_readiness,
                sequence_drain_timeout: Duration::from_secs(self.sequence_drain_timeout_secs),
            },
            load: LoadOptions {
                auto_complete: !(self.disable_auto_complete_config || self.strict_model_config),
                default_max_batch_size,
                config_name: self.model_config_name,
                queue_limits: QueueLimits {
                    capacity: self.max_queue_size_per_model,
                    priority_reserve: self.priority_reserve_percent / 100.0,
                    sequence_queue: self.sequence_max_queue_size.max(1),
                    sequence_backlog: self.sequence_max_backlog,
                },
                gpus: Vec::new(),
                gpu_limits,
                gpu_safety_factor: self.model_load_gpu_safety_factor,
                limits: ConfigLimits {
                    instances_per_model: self.max_instances_per_model,
                    model_threads: self.max_model_threads,
                    tokenizer_threads: self.max_tokenizer_threads,
                    warmup_bytes: self.max_warmup_bytes,
                    text_length: self.max_text_length,
                    session_threads: global_pool.is_none(),
                },
            },
            server_id: self.id,
            grpc_addr: self
                .allow_grpc
                .then_some(SocketAddr::new(self.grpc_address, self.grpc_port)),
            grpc_max_message_bytes: crate::frontend::grpc::MAX_MESSAGE_BYTES,
            grpc_response_compression: self.grpc_infer_response_compression_level.into(),
            http_addr: self
                .allow_http
                .then_some(SocketAddr::new(self.http_address, self.http_port)),
            http_max_input_size: self.http_max_input_size,
            http_overload_429: self.http_overload_status == OverloadStatus::TooManyRequests,
            grpc_restrictions,
            http_restrictions,
            exit_on_error: self.exit_on_error,
            exit_timeout: Duration::from_secs(self.exit_timeout_secs),
            shutdown_delay: Duration::from_secs(self.shutdown_delay_secs),
            inflight: crate::core::InflightLimits {
                requests: self.max_inflight_requests,
                bytes: self.max_inflight_bytes,
            },
            onnxruntime_library: self.onnxruntime_library,
            ort_global_pool: global_pool,
            metrics_addr: self
                .allow_metrics
                .then_some(SocketAddr::new(self.metrics_address, self.metrics_port)),
            metrics_interval: Duration::from_secs_f64(self.metrics_interval_ms / 1000.0),
            load_ratio_window: Duration::from_secs(self.load_ratio_window_secs),
            metrics,
            trace,
            log,
            ignored,
            connections: self.connections.into_options()?,
            allow_client_shm: self.allow_client_shm,
        })
    }

    /// The log settings the logging flags ask for.
    pub fn log_settings(&self) -> Result<LogSettings, String> {
        Ok(LogSettings {
            file: self
                .log_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            info: self.log_info,
            warning: self.log_warning,
            error: self.log_error,
            verbose_level: self.log_verbose,
            format: self.log_format.into(),
        })
    }

    /// The tracing filter the logging flags ask for.
    pub fn log_filter(&self) -> String {
        self.log_settings().unwrap_or_default().directive()
    }
}

#[cfg(test)]
mod tests;
