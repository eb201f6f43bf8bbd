//! Trace settings with Triton's semantics: the `--trace-config` flag, the TraceSetting API
//! (global and per-model overrides) and the sampling decision taken once per request.
//!
//! Front-ends only translate the wire: a gRPC `TraceSettingRequest` or an HTTP JSON body becomes
//! `(key, Option<values>)` pairs for `TraceUpdate::parse` (None = clear, as an empty gRPC list
//! or a JSON `null`), and `TraceControl::settings` gives back `(key, values)` pairs to encode
//! (`trace_level` is a list; every other key has exactly one value).

mod control;

use std::time::Duration;

pub(crate) use control::TraceControl;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceMode {
    Triton,
    OpenTelemetry,
}

impl TraceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TraceMode::Triton => "triton",
            TraceMode::OpenTelemetry => "opentelemetry",
        }
    }
}

/// Trace detail. Both false = OFF.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceLevel {
    pub timestamps: bool,
    pub tensors: bool,
}

impl TraceLevel {
    pub const OFF: TraceLevel = TraceLevel {
        timestamps: false,
        tensors: false,
    };

    pub fn is_off(self) -> bool {
        self == Self::OFF
    }

    pub fn names(self) -> Vec<String> {
        let mut v = Vec::new();
        if self.timestamps {
            v.push("TIMESTAMPS".to_string());
        }
        if self.tensors {
            v.push("TENSORS".to_string());
        }
        if v.is_empty() {
            v.push("OFF".to_string());
        }
        v
    }

    /// Triton's level list: OFF alone, or any of TIMESTAMPS / TENSORS.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<TraceLevel> {
        let mut level = TraceLevel::OFF;
        for v in values {
            match v.as_ref() {
                "OFF" if values.len() == 1 => {}
                "OFF" => {
                    return Err(Error::invalid_arg(
                        "Expect only one trace level 'OFF' is specified",
                    ));
                }
                "TIMESTAMPS" => level.timestamps = true,
                "TENSORS" => level.tensors = true,
                other => {
                    return Err(Error::invalid_arg(format!(
                        "Unexpected value for 'trace_level', expected OFF, TIMESTAMPS or TENSORS, got: {other}"
                    )));
                }
            }
        }
        Ok(level)
    }
}

/// OTLP export settings (`--trace-config opentelemetry,<key>=<value>`). Fixed at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelConfig {
    /// The collector's OTLP/gRPC endpoint.
    pub url: String,
    /// Resource attributes; `service.name` defaults to `nereid`.
    pub resource: Vec<(String, String)>,
    pub bsp_max_queue_size: usize,
    pub bsp_schedule_delay: Duration,
    pub bsp_max_export_batch_size: usize,
}

impl Default for OtelConfig {
    fn default() -> Self {
        OtelConfig {
            url: "http://localhost:4317".into(),
            resource: Vec::new(),
            bsp_max_queue_size: 2048,
            bsp_schedule_delay: Duration::from_millis(5000),
            bsp_max_export_batch_size: 512,
        }
    }
}

/// The runtime-adjustable settings of one scope (global or a model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub level: TraceLevel,
    /// Trace every `rate`-th request; 0 = none (only propagated contexts in opentelemetry mode).
    pub rate: u32,
    /// Traces left to collect; -1 = unlimited.
    pub count: i32,
    pub log_frequency: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            level: TraceLevel::OFF,
            rate: 1000,
            count: -1,
            log_frequency: 0,
        }
    }
}

/// Startup configuration from `--trace-config` (behaviour.md §9).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceConfig {
    pub settings: Settings,
    pub mode: Option<TraceMode>,
    /// `triton,file=`: accepted and reported; this server writes no trace file.
    pub file: String,
    pub otel: OtelConfig,
}

impl TraceConfig {
    pub fn mode(&self) -> TraceMode {
        self.mode.unwrap_or(TraceMode::Triton)
    }

    /// Parses the `--trace-config` values, `[<mode>,]<key>=<value>` each, in order.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> std::result::Result<TraceConfig, String> {
        let mut c = TraceConfig::default();
        let mut levels: Vec<String> = Vec::new();
        for arg in args {
            let arg = arg.as_ref();
            let bad = |why: &str| format!("--trace-config '{arg}': {why}");
            let (scope, kv) = match arg.split_once(',') {
                Some((m, kv)) if !m.contains('=') => (Some(m), kv),
                _ => (None, arg),
            };
            let (key, value) = kv
                .split_once('=')
                .ok_or_else(|| bad("expected [<mode>,]<key>=<value>"))?;
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| bad("expected a non-negative integer"))
            };
            match (scope, key) {
                (None, "level") => levels.push(value.to_string()),
                (None, "rate") => {
                    c.settings.rate = value
                        .parse()
                        .map_err(|_| bad("expected a rate in 0..=4294967295"))?
                }
                (None, "count") => {
                    c.settings.count = value
                        .parse()
                        .ok()
                        .filter(|n| *n >= -1)
                        .ok_or_else(|| bad("expected a count >= -1"))?
                }
                (None, "mode") => {
                    c.mode = Some(match value {
                        "triton" => TraceMode::Triton,
                        "opentelemetry" => TraceMode::OpenTelemetry,
                        _ => return Err(bad("mode must be 'triton' or 'opentelemetry'")),
                    })
                }
                (Some("triton"), "file") => c.file = value.to_string(),
                (Some("triton"), "log-frequency") => {
                    c.settings.log_frequency = value
                        .parse()
                        .map_err(|_| bad("expected a non-negative integer"))?
                }
                (Some("opentelemetry"), "url") => c.otel.url = value.to_string(),
                (Some("opentelemetry"), "resource") => {
                    let (k, v) = value
                        .split_once('=')
                        .ok_or_else(|| bad("expected resource=<key>=<value>"))?;
                    c.otel.resource.push((k.to_string(), v.to_string()));
                }
                (Some("opentelemetry"), "bsp_max_queue_size") => {
                    c.otel.bsp_max_queue_size = num(value)? as usize
                }
                (Some("opentelemetry"), "bsp_schedule_delay") => {
                    c.otel.bsp_schedule_delay = Duration::from_millis(num(value)?)
                }
                (Some("opentelemetry"), "bsp_max_export_batch_size") => {
                    c.otel.bsp_max_export_batch_size = num(value)? as usize
                }
                _ => return Err(bad("unknown trace setting")),
            }
        }
        if !levels.is_empty() {
            c.settings.level =
                TraceLevel::parse(&levels).map_err(|e| format!("--trace-config level: {e}"))?;
        }
        if c.otel.bsp_max_export_batch_size > c.otel.bsp_max_queue_size {
            return Err("--trace-config opentelemetry,bsp_max_export_batch_size must not exceed bsp_max_queue_size".into());
        }
        Ok(c)
    }
}

/// A change to one key: leave it, clear it (model scope: back to the global value; global
/// scope: back to the startup value), or set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Change<T> {
    #[default]
    Keep,
    Clear,
    Set(T),
}

impl<T: Copy> Change<T> {
    fn apply(self, slot: &mut Option<T>) {
        match self {
            Change::Keep => {}
            Change::Clear => *slot = None,
            Change::Set(v) => *slot = Some(v),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TraceUpdate {
    pub level: Change<TraceLevel>,
    pub rate: Change<u32>,
    pub count: Change<i32>,
    pub log_frequency: Change<u32>,
}

fn one_value<'a, S: AsRef<str>>(key: &str, values: &'a [S]) -> Result<&'a str> {
    match values {
        [v] => Ok(v.as_ref()),
        _ => Err(Error::invalid_arg(format!(
            "expect only 1 value for '{key}'"
        ))),
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T> {
    v.trim()
        .parse()
        .map_err(|_| Error::invalid_arg(format!("Unable to parse '{key}', got: {v}")))
}

impl TraceUpdate {
    /// Validates a settings request: `(key, None)` clears the key, `(key, Some(values))` sets
    /// it. Keys Triton does not know are ignored, as Triton does.
    pub fn parse<'a, I, S>(pairs: I) -> Result<TraceUpdate>
    where
        I: IntoIterator<Item = (&'a str, Option<Vec<S>>)>,
        S: AsRef<str>,
    {
        let mut u = TraceUpdate::default();
        for (key, values) in pairs {
            match key {
                "trace_file" => {
                    return Err(Error::unsupported(
                        "trace file location can not be updated through network protocol",
                    ));
                }
                "trace_level" => {
                    u.level = match values {
                        None => Change::Clear,
                        Some(v) if v.is_empty() => Change::Clear,
                        Some(v) => Change::Set(TraceLevel::parse(&v)?),
                    }
                }
                "trace_rate" | "trace_count" | "log_frequency" => {
                    let Some(values) = values.filter(|v| !v.is_empty()) else {
                        match key {
                            "trace_rate" => u.rate = Change::Clear,
                            "trace_count" => u.count = Change::Clear,
                            _ => u.log_frequency = Change::Clear,
                        }
                        continue;
                    };
                    let v = one_value(key, &values)?;
                    match key {
                        "trace_rate" => u.rate = Change::Set(parse_num(key, v)?),
                        "trace_count" => {
                            let n: i32 = parse_num(key, v)?;
                            if n < -1 {
                                return Err(Error::invalid_arg(format!(
                                    "Unable to parse '{key}'. Expecting value >= -1, got: {v}"
                                )));
                            }
                            u.count = Change::Set(n);
                        }
                        _ => u.log_frequency = Change::Set(parse_num(key, v)?),
                    }
                }
                _ => {}
            }
        }
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trace_config_flags() {
        let c = TraceConfig::parse(&[
            "mode=opentelemetry",
            "opentelemetry,url=http://127.0.0.1:4317",
            "level=TIMESTAMPS",
            "rate=1",
            "count=5",
            "opentelemetry,resource=service.name=x",
            "opentelemetry,bsp_schedule_delay=100",
        ])
        .unwrap();
        assert_eq!(c.mode(), TraceMode::OpenTelemetry);
        assert_eq!(c.otel.url, "http://127.0.0.1:4317");
        assert!(c.settings.level.timestamps);
        assert_eq!((c.settings.rate, c.settings.count), (1, 5));
        assert_eq!(c.otel.resource, vec![("service.name".into(), "x".into())]);
        assert_eq!(c.otel.bsp_schedule_delay, Duration::from_millis(100));
        assert!(TraceConfig::parse(&["count=-2"]).is_err());
        assert!(TraceConfig::parse(&["bogus=1"]).is_err());
        assert!(TraceConfig::parse(&["level=OFF", "level=TENSORS"]).is_err());
        assert!(TraceConfig::parse(&["triton,file=/tmp/t.json"]).is_ok());
    }

    #[test]
    fn update_validation_matches_triton() {
        let p = |pairs: Vec<(&str, Option<Vec<&str>>)>| TraceUpdate::parse(pairs);
        let e = p(vec![("trace_file", Some(vec!["x"]))]).unwrap_err();
        assert_eq!(e.code, crate::error::Code::Unsupported);
        let e = p(vec![("trace_rate", Some(vec!["1", "2"]))]).unwrap_err();
        assert_eq!(e.message, "expect only 1 value for 'trace_rate'");
        assert!(p(vec![("trace_rate", Some(vec!["x"]))]).is_err());
        assert!(p(vec![("trace_count", Some(vec!["-2"]))]).is_err());
        assert!(p(vec![("trace_level", Some(vec!["OFF", "TIMESTAMPS"]))]).is_err());
        let u = p(vec![
            ("trace_level", Some(vec!["TIMESTAMPS", "TENSORS"])),
            ("trace_count", None),
            ("unknown", Some(vec![])),
        ])
        .unwrap();
        assert_eq!(
            u.level,
            Change::Set(TraceLevel {
                timestamps: true,
                tensors: true
            })
        );
        assert_eq!(u.count, Change::Clear);
    }
}
