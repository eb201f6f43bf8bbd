//! Logging: the settings Triton exposes (flags and the LogSettings API), and the process-wide
//! `tracing` subscriber that applies them.
//!
//! Logging never blocks a request: records go through `tracing-appender`'s non-blocking writer,
//! a bounded queue drained by one thread, which drops lines when full (lossy) rather than wait.
//! Two formatting layers share that writer, text and JSON; `log_format` picks which one is on,
//! and the per-severity switches are atomics read by both, so a LogSettings update applies at
//! once. The verbosity cap lives in a reloadable `EnvFilter` so that disabled levels stay cheap
//! (tracing's global max-level fast path).

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, FilterExt, FilterFn, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry, reload};

use super::log_escape::Escaping;
use super::otlp;
use super::spans::TARGET;
use super::trace::{TraceConfig, TraceMode};
use crate::error::{Error, Result};

/// Lines held for the writer thread before new ones are dropped.
const LOG_BUFFER_LINES: usize = 16_384;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Text lines (Triton's `default`).
    Default,
    /// Text lines; timestamps are ISO 8601 in both text forms.
    Iso8601,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Triton's `default` and `ISO8601`, plus `text` (= default) and `json`.
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "default" | "text" => Some(LogFormat::Default),
            "ISO8601" => Some(LogFormat::Iso8601),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Default => "default",
            LogFormat::Iso8601 => "ISO8601",
            LogFormat::Json => "json",
        }
    }
}

/// Triton's log settings (grpc-protocol.md §4.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Empty = standard error.
    pub file: String,
    pub info: bool,
    pub warning: bool,
    pub error: bool,
    pub verbose_level: u32,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            file: String::new(),
            info: true,
            warning: true,
            error: true,
            verbose_level: 0,
            format: LogFormat::Default,
        }
    }
}

impl LogSettings {
    /// The `EnvFilter` directive for these settings: the most verbose enabled severity, with
    /// ONNX Runtime's chatty info lines kept at warn unless verbose ≥ 2 (toolchain.md P7).
    pub fn directive(&self) -> String {
        let level = if self.verbose_level > 0 {
            "debug"
        } else if self.info {
            "info"
        } else if self.warning {
            "warn"
        } else if self.error {
            "error"
        } else {
            "off"
        };
        if self.verbose_level > 1 {
            level.to_string()
        } else {
            format!("{level},ort=warn")
        }
    }
}

/// A LogSettings request after the wire's value-kind checks; `None` = leave as is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogUpdate {
    /// Any value here is refused (`UNSUPPORTED`), as in Triton.
    pub file: Option<String>,
    pub info: Option<bool>,
    pub warning: Option<bool>,
    pub error: Option<bool>,
    pub verbose_level: Option<u32>,
    pub format: Option<String>,
}

/// The switches the formatting layers read on every record.
#[derive(Debug)]
struct Switches {
    info: AtomicBool,
    warning: AtomicBool,
    error: AtomicBool,
    json: AtomicBool,
}

impl Switches {
    fn set(&self, s: &LogSettings) {
        self.info.store(s.info, Ordering::Relaxed);
        self.warning.store(s.warning, Ordering::Relaxed);
        self.error.store(s.error, Ordering::Relaxed);
        self.json
            .store(s.format == LogFormat::Json, Ordering::Relaxed);
    }

    fn allows(&self, level: &Level) -> bool {
        match *level {
            Level::ERROR => self.error.load(Ordering::Relaxed),
            Level::WARN => self.warning.load(Ordering::Relaxed),
            Level::INFO => self.info.load(Ordering::Relaxed),
            // DEBUG and TRACE are capped by the EnvFilter (verbose level).
            _ => true,
        }
    }
}

type Reloader = Box<dyn Fn(&str) -> std::result::Result<(), String> + Send + Sync>;

/// The live log settings; cloned handles share them. A detached control (tests, embedding)
/// only stores the settings; the one `init` returns also applies them to the subscriber.
#[derive(Clone)]
pub struct LogControl {
    inner: Arc<LogInner>,
}

struct LogInner {
    settings: Mutex<LogSettings>,
    switches: Arc<Switches>,
    verbose: AtomicU32,
    reload: Option<Reloader>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("settings", &self.settings())
            .field("attached", &self.inner.reload.is_some())
            .finish()
    }
}

impl Default for LogControl {
    fn default() -> Self {
        LogControl::detached(LogSettings::default())
    }
}

impl LogControl {
    pub fn detached(settings: LogSettings) -> Self {
        Self::with_reloader(settings, None)
    }

    fn with_reloader(settings: LogSettings, reload: Option<Reloader>) -> Self {
        let switches = Arc::new(Switches {
            info: AtomicBool::new(true),
            warning: AtomicBool::new(true),
            error: AtomicBool::new(true),
            json: AtomicBool::new(false),
        });
        switches.set(&settings);
        LogControl {
            inner: Arc::new(LogInner {
                verbose: AtomicU32::new(settings.verbose_level),
                settings: Mutex::new(settings),
                switches,
                reload,
            }),
        }
    }

    pub fn settings(&self) -> LogSettings {
        self.inner.settings.lock().clone()
    }

    /// Validates the whole update, then applies it (all or nothing).
    pub fn update(&self, u: &LogUpdate) -> Result<LogSettings> {
        if u.file.is_some() {
            return Err(Error::unsupported(
                "log file location can not be updated through network protocol",
            ));
        }
        let format = match &u.format {
            None => None,
            Some(f) => Some(LogFormat::parse(f).ok_or_else(|| {
                Error::invalid_arg(format!("invalid argument for log_format, got: {f}"))
            })?),
        };
        let mut s = self.inner.settings.lock();
        let before = s.directive();
        if let Some(v) = u.info {
            s.info = v;
        }
        if let Some(v) = u.warning {
            s.warning = v;
        }
        if let Some(v) = u.error {
            s.error = v;
        }
        if let Some(v) = u.verbose_level {
            s.verbose_level = v;
        }
        if let Some(f) = format {
            s.format = f;
        }
        self.inner.switches.set(&s);
        self.inner.verbose.store(s.verbose_level, Ordering::Relaxed);
        let after = s.directive();
        if after != before
            && let Some(reload) = &self.inner.reload
            && let Err(e) = reload(&after)
        {
            return Err(Error::internal(format!(
                "failed to apply log settings: {e}"
            )));
        }
        Ok(s.clone())
    }
}

/// Keeps the log writer thread (and the OTLP exporter, when on) alive; `shutdown` flushes.
pub struct LogGuard {
    _writer: tracing_appender::non_blocking::WorkerGuard,
    otlp: Option<otlp::Exporter>,
}

impl LogGuard {
    /// Exports the spans still buffered and flushes the log. Call inside the tokio runtime.
    pub fn shutdown(self) {
        if let Some(otlp) = self.otlp {
            otlp.shutdown();
        }
    }
}

/// The most verbose `log` level `filter` can let through: `log` records have no per-callsite
/// cache, so without this cap each one is built and offered to the filter.
fn cap_of(filter: &EnvFilter) -> log::LevelFilter {
    use tracing::level_filters::LevelFilter as T;
    match tracing_subscriber::layer::Filter::<Registry>::max_level_hint(filter) {
        None | Some(T::TRACE) => log::LevelFilter::Trace,
        Some(T::DEBUG) => log::LevelFilter::Debug,
        Some(T::INFO) => log::LevelFilter::Info,
        Some(T::WARN) => log::LevelFilter::Warn,
        Some(T::ERROR) => log::LevelFilter::Error,
        Some(_) => log::LevelFilter::Off,
    }
}

/// Installs the process-wide subscriber. `rust_log`, when given, replaces the directive the
/// settings imply until the first LogSettings update. In opentelemetry trace mode this also
/// starts the OTLP exporter, which needs a tokio runtime context.
pub fn init(
    settings: &LogSettings,
    rust_log: Option<&str>,
    trace: &TraceConfig,
) -> std::result::Result<(LogControl, LogGuard), String> {
    let (writer, guard) = {
        let builder = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(LOG_BUFFER_LINES)
            .thread_name("nereid-log");
        if settings.file.is_empty() {
            builder.finish(std::io::stderr())
        } else {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&settings.file)
                .map_err(|e| format!("cannot open --log-file '{}': {e}", settings.file))?;
            builder.finish(f)
        }
    };
    let ansi = settings.file.is_empty() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let directive = rust_log.map_or_else(|| settings.directive(), str::to_string);
    let env = || {
        EnvFilter::try_new(&directive).map_err(|e| format!("invalid log filter '{directive}': {e}"))
    };
    let text_filter = env()?;
    let log_cap = cap_of(&text_filter);
    let (text_env, text_handle) = reload::Layer::new(text_filter);
    let (json_env, json_handle) = reload::Layer::new(env()?);

    let control = LogControl::with_reloader(
        settings.clone(),
        Some(Box::new(move |d: &str| {
            let f = || EnvFilter::try_new(d).map_err(|e| e.to_string());
            let text = f()?;
            let cap = cap_of(&text);
            text_handle.reload(text).map_err(|e| e.to_string())?;
            json_handle.reload(f()?).map_err(|e| e.to_string())?;
            log::set_max_level(cap);
            Ok(())
        })),
    );
    let sw = control.inner.switches.clone();
    let text_on = {
        let sw = sw.clone();
        FilterFn::new(move |m| !sw.json.load(Ordering::Relaxed) && sw.allows(m.level()))
    };
    let json_on = FilterFn::new(move |m| sw.json.load(Ordering::Relaxed) && sw.allows(m.level()));

    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![
        tracing_subscriber::fmt::layer()
            .with_writer(Escaping::new(writer.clone(), ansi))
            .with_ansi(ansi)
            .with_filter(text_env.and(text_on))
            .boxed(),
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(Escaping::new(writer, false))
            .with_filter(json_env.and(json_on))
            .boxed(),
    ];
    let mut exporter = None;
    if trace.mode() == TraceMode::OpenTelemetry {
        let e = otlp::Exporter::start(&trace.otel)?;
        // Only the request spans (all INFO) go to the collector, whatever the console shows
        // (toolchain.md P8); INFO keeps tracing's global max level from rising to TRACE.
        layers.push(
            e.layer()
                .with_filter(Targets::new().with_target(TARGET, Level::INFO))
                .boxed(),
        );
        exporter = Some(e);
    }
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| format!("failed to install the log subscriber: {e}"))?;
    // Installing the subscriber let every `log` record through (TRACE); crates that log through
    // `log` (tokenizers, per text) would pay the filter's check on every record.
    log::set_max_level(log_cap);
    Ok((
        control,
        LogGuard {
            _writer: guard,
            otlp: exporter,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_validate_then_apply() {
        let c = LogControl::default();
        let e = c
            .update(&LogUpdate {
                file: Some("x".into()),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(e.code, crate::error::Code::Unsupported);
        let e = c
            .update(&LogUpdate {
                info: Some(false),
                format: Some("xml".into()),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(e.message, "invalid argument for log_format, got: xml");
        assert!(c.settings().info, "a failed update changes nothing");
        let s = c
            .update(&LogUpdate {
                info: Some(false),
                verbose_level: Some(1),
                format: Some("ISO8601".into()),
                ..Default::default()
            })
            .unwrap();
        assert!(!s.info && s.warning && s.error);
        assert_eq!((s.verbose_level, s.format), (1, LogFormat::Iso8601));
        assert_eq!(c.settings(), s);
    }

    #[test]
    fn directives() {
        let mut s = LogSettings::default();
        assert_eq!(s.directive(), "info,ort=warn");
        s.info = false;
        assert_eq!(s.directive(), "warn,ort=warn");
        s.verbose_level = 2;
        assert_eq!(s.directive(), "debug");
    }

    #[test]
    fn log_records_are_capped_at_the_filters_most_verbose_level() {
        let cap = |d: &str| cap_of(&EnvFilter::try_new(d).unwrap());
        assert_eq!(
            cap(&LogSettings::default().directive()),
            log::LevelFilter::Info
        );
        assert_eq!(cap("warn,ort=warn"), log::LevelFilter::Warn);
        assert_eq!(cap("debug"), log::LevelFilter::Debug);
        assert_eq!(cap("warn,tokenizers=trace"), log::LevelFilter::Trace);
        assert_eq!(cap("off"), log::LevelFilter::Off);
    }
}
