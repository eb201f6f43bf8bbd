//! Front-ends: wire ↔ core conversion. Each maps the one error vocabulary to its own statuses.
//! `reports` is the one encoder of model metadata and statistics both use; `restrict` gates the
//! restricted API groups of both.

pub(crate) mod grpc;
pub(crate) mod http;
pub(crate) mod listen;
pub(crate) mod reports;
pub(crate) mod restrict;
pub(crate) mod tls;

use tonic::codegen::http::HeaderMap;

use crate::request::TraceContext;

/// The client's W3C trace context from a request's headers: HTTP headers, or gRPC metadata,
/// which tonic keeps as the same header map.
pub(crate) fn trace_context(headers: &HeaderMap) -> TraceContext {
    TraceContext::from_headers(
        headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
    )
}
