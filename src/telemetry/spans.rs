//! The spans of one request, and the W3C `traceparent` a client may send with it.
//!
//! A traced request has a `request` span opened when its front-end receives it, a `receive` child around
//! decoding the wire message, a `queue` child from enqueue until its execution starts, a `send`
//! child around writing the response;
//! the execution is a `batch` span (child of the batch's first traced request, linked with
//! `follows_from` to every other one) with a `compute` child around the model run. A request
//! that is not sampled carries `Span::none()` and every helper here then returns `Span::none()`
//! too, so untraced requests cost no span at all.
//!
//! All these spans use the target `TARGET`, which the OTLP layer selects.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::request::TraceContext;

pub(crate) const TARGET: &str = "nereid::trace";

/// A valid W3C trace context received with a request (gRPC metadata or HTTP headers).
#[derive(Debug, Clone)]
pub(crate) struct RemoteParent(opentelemetry::Context);

impl RemoteParent {
    /// The 32-hex-digit trace id.
    #[cfg(test)]
    pub(crate) fn trace_id(&self) -> String {
        self.0.span().span_context().trace_id().to_string()
    }
}

struct Headers<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The client's context when `trace` holds a valid W3C `traceparent` (and its `tracestate`).
pub(crate) fn parent(trace: &TraceContext) -> Option<RemoteParent> {
    let headers = Headers {
        traceparent: trace.traceparent.as_deref()?,
        tracestate: trace.tracestate.as_deref(),
    };
    let cx = TraceContextPropagator::new().extract(&headers);
    cx.span()
        .span_context()
        .is_valid()
        .then_some(RemoteParent(cx))
}

/// The request span of a sampled request (`Core::open_request`). `protocol` is `grpc` or
/// `http`. Attribute names follow Triton's OpenTelemetry spans.
pub(crate) fn request(
    protocol: &'static str,
    model: &str,
    version: &str,
    parent: Option<&RemoteParent>,
) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        protocol,
        model_name = model,
        model_version = version,
        request_id = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    if let Some(p) = parent {
        // Only fails when no OpenTelemetry layer is installed; then there is nothing to link.
        let _ = span.set_parent(p.0.clone());
    }
    span
}

/// Records the request id on a request span.
pub(crate) fn record_id(span: &Span, id: &str) {
    if !id.is_empty() {
        span.record("request_id", id);
    }
}

/// Marks a request span failed.
pub(crate) fn record_error(span: &Span, message: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("error", message);
}

fn child(parent: &Span, make: impl FnOnce() -> Span) -> Span {
    if parent.is_disabled() {
        Span::none()
    } else {
        make()
    }
}

/// Around decoding the wire message into the server's request (the receive side).
pub(crate) fn receive(request: &Span) -> Span {
    child(
        request,
        || tracing::info_span!(target: TARGET, parent: request, "receive"),
    )
}

/// From enqueue until the request's execution starts (or it is answered from the queue).
pub(crate) fn queue(request: &Span) -> Span {
    child(
        request,
        || tracing::info_span!(target: TARGET, parent: request, "queue"),
    )
}

/// Around writing one response.
pub(crate) fn send(request: &Span) -> Span {
    child(
        request,
        || tracing::info_span!(target: TARGET, parent: request, "send"),
    )
}

/// One execution of `rows` rows for the given requests' spans; none if no request is traced.
pub(crate) fn batch<'a>(requests: impl IntoIterator<Item = &'a Span>, rows: usize) -> Span {
    let mut traced = requests.into_iter().filter(|s| !s.is_disabled());
    let Some(first) = traced.next() else {
        return Span::none();
    };
    let span = tracing::info_span!(target: TARGET, parent: first, "batch", batch_size = rows);
    for other in traced {
        span.follows_from(other);
    }
    span
}

/// Around the model run of one batch.
pub(crate) fn compute(batch: &Span) -> Span {
    child(
        batch,
        || tracing::info_span!(target: TARGET, parent: batch, "compute"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent_from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Option<RemoteParent> {
        parent(&TraceContext::from_headers(headers))
    }

    #[test]
    fn traceparent_from_pairs() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = parent_from_headers([("content-type", "application/grpc"), ("TraceParent", tp)])
            .expect("valid context");
        assert_eq!(p.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(parent_from_headers([("traceparent", "garbage")]).is_none());
        assert!(parent_from_headers([("x", "y")]).is_none());
        let zero = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert!(parent_from_headers([("traceparent", zero)]).is_none());
    }

    #[test]
    fn untraced_requests_get_no_spans() {
        let none = Span::none();
        assert!(receive(&none).is_disabled());
        assert!(queue(&none).is_disabled());
        assert!(send(&none).is_disabled());
        assert!(batch([&none, &none], 2).is_disabled());
        assert!(compute(&none).is_disabled());
    }
}
