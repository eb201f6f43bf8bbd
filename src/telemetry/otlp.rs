//! OTLP/gRPC export of the request spans (`--trace-config mode=opentelemetry`).
//!
//! Spans end in a bounded queue (`bsp_max_queue_size`) that a batch processor thread exports
//! every `bsp_schedule_delay` or when `bsp_max_export_batch_size` spans are waiting; when the
//! queue is full, spans are dropped, never waited for. The tonic channel connects lazily and is
//! driven by the tokio runtime that is current when `start` runs.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::Registry;

use super::trace::OtelConfig;

pub(crate) struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    pub(crate) fn start(cfg: &OtelConfig) -> Result<Exporter, String> {
        let url = if cfg.url.contains("://") {
            cfg.url.clone()
        } else {
            format!("http://{}", cfg.url)
        };
        if url.ends_with("/v1/traces") {
            tracing::warn!(
                url,
                "this server exports OTLP over gRPC; '/v1/traces' is an OTLP/HTTP path, point opentelemetry,url at the collector's gRPC port (usually 4317)"
            );
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(url.clone())
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot create the OTLP exporter for '{url}': {e}"))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(cfg.bsp_max_queue_size)
            .with_max_export_batch_size(cfg.bsp_max_export_batch_size)
            .with_scheduled_delay(cfg.bsp_schedule_delay)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let resource = Resource::builder()
            .with_service_name("nereid")
            .with_attributes(
                cfg.resource
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        Ok(Exporter { provider })
    }

    /// The tracing layer that turns spans into OpenTelemetry spans for this exporter.
    pub(crate) fn layer(
        &self,
    ) -> tracing_opentelemetry::OpenTelemetryLayer<Registry, opentelemetry_sdk::trace::Tracer> {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("nereid"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
    }

    /// Exports what is still queued, then stops the processor thread.
    pub(crate) fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("OTLP exporter shutdown: {e}");
        }
    }
}
