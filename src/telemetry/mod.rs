//! Telemetry: per-version statistics (`stats`). Metrics and tracing export come with later issues.

pub mod stats;
