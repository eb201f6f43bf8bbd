//! Telemetry: the per-version stats recorder (`stats`) that feeds both ModelStatistics and the
//! Prometheus series (`metrics`, `system`); request spans and W3C context (`spans`), trace
//! settings and sampling (`trace`), OTLP export (`otlp`); logging and its settings (`logging`);
//! the smoothed load ratio, the autoscaling signal (`load_ratio`).

pub(crate) mod load_ratio;
pub(crate) mod log_escape;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod otlp;
pub(crate) mod sequence;
pub(crate) mod spans;
pub(crate) mod stats;
pub(crate) mod system;
pub(crate) mod trace;

use std::sync::Arc;

/// The server's telemetry state, held by `Core`: live trace and log settings, machine figures
/// for the metrics endpoint, and what the metrics endpoint exposes.
#[derive(Clone, Default)]
pub struct Telemetry {
    pub trace: Arc<trace::TraceControl>,
    pub log: logging::LogControl,
    pub system: Arc<system::SystemMetrics>,
    pub metrics: metrics::MetricsOptions,
    /// `nereid_load_ratio`, smoothed over `--load-ratio-window-secs`.
    pub load_ratio: Arc<load_ratio::LoadRatio>,
}
