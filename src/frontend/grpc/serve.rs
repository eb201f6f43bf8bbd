//! The gRPC listener: `inference.GRPCInferenceService` behind the early overload refusal, and
//! `grpc.health.v1.Health`, on one HTTP/2 server with this server's flow-control settings.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use tonic::codec::CompressionEncoding;

use super::compression::ResponseCompression;
use super::early::EarlyRefusal;
use super::{GrpcService, HealthService};
use crate::core::Core;
use crate::frontend::listen::Listener;
use crate::frontend::restrict::{Restricted, Restrictions};
use crate::pb::health::health_server::HealthServer;
use crate::pb::inference::grpc_inference_service_server::GrpcInferenceServiceServer;

/// HTTP/2 receive window per gRPC stream (bytes).
const STREAM_WINDOW: u32 = 256 << 10;
/// HTTP/2 receive window per gRPC connection (bytes).
const CONNECTION_WINDOW: u32 = 32 << 20;
/// Requests one gRPC connection may have open at once.
const MAX_STREAMS: u32 = 1024;

/// The HTTP/2 settings of the gRPC listener (Triton's keepalive flags and this server's caps).
#[derive(Debug, Clone, Copy)]
pub struct Http2Options {
    /// `--grpc-keepalive-time`: PING an idle connection this often.
    pub keepalive_time: Duration,
    /// `--grpc-keepalive-timeout`: close it when the PING is not answered in this time.
    pub keepalive_timeout: Duration,
    /// `--grpc-max-connection-age`: GOAWAY a connection this old (None: never).
    pub max_connection_age: Option<Duration>,
    /// `--grpc-max-connection-age-grace`: then close it after this long (None: wait forever).
    pub max_connection_age_grace: Option<Duration>,
    /// `--grpc-max-header-list-size`: largest header block of one request, in bytes.
    pub max_header_list_size: u32,
    /// `--grpc-max-pending-reset-streams`: streams the client opened and reset before they
    /// were served, kept at once; more is a flood and the connection is closed.
    pub max_pending_accept_reset_streams: usize,
    /// `--grpc-max-local-reset-streams`: streams the server itself had to reset for the
    /// client's protocol errors; more is a flood and the connection is closed.
    pub max_local_error_reset_streams: usize,
}

/// Serves both services on `listener` until `stop` turns true, then stops accepting (the
/// socket closes) and sends HTTP/2 GOAWAY on every connection: calls already opened finish,
/// later streams are refused at the HTTP/2 level (safe for a client or proxy to retry
/// elsewhere), and the result resolves once the last connection has closed (the caller
/// bounds that wait with the exit timeout). `max_message_bytes` bounds a
/// decoded request and an encoded response; `restrictions` gate their groups' calls before
/// anything else sees them. The error is the transport's, as text.
pub(crate) async fn serve(
    listener: Listener,
    core: Arc<Core>,
    max_message_bytes: usize,
    response_compression: ResponseCompression,
    restrictions: Restrictions,
    http2: Http2Options,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let svc = GrpcInferenceServiceServer::new(GrpcService::new(core.clone()))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate);
    // Overload refusals from the request's head, before its tensors arrive; `ModelInfer`'s
    // compression (compression.rs).
    let svc = EarlyRefusal::new(svc, core.clone(), max_message_bytes, response_compression);
    let health = HealthServer::new(HealthService::new(core));
    let restrictions = Arc::new(restrictions);
    let (svc, health) = (
        Restricted::new(svc, restrictions.clone()),
        Restricted::new(health, restrictions),
    );
    let mut stopped = stop.clone();
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let incoming = listener.incoming(stop);
    let mut server = tonic::transport::Server::builder();
    if let Some(age) = http2.max_connection_age {
        server = server.max_connection_age(age);
    }
    if let Some(grace) = http2.max_connection_age_grace {
        server = server.max_connection_age_grace(grace);
    }
    server
        // HTTP/2 flow control. An overload refusal needs only the first DATA frame
        // (early.rs), so the stream window is what a refused call still pushes through
        // the connection before its reset, ahead of other calls' heads: 256 KiB rather
        // than a whole 600 KB image (AlexNet at 4x: refusal p50 1.3 -> 0.9 ms against a
        // 4 MiB window), while an admitted image still arrives in three windows rather
        // than the ten of HTTP/2's 64 KiB default. The connection window is large, so
        // concurrent calls do not wait on each other. The windows bound what one stream
        // and one connection may have buffered and unread; streams bound the requests a
        // single connection keeps open at once (more wait in the client, not in server
        // memory).
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .max_concurrent_streams(Some(MAX_STREAMS))
        .http2_keepalive_interval(Some(http2.keepalive_time))
        .http2_keepalive_timeout(Some(http2.keepalive_timeout))
        .http2_max_header_list_size(http2.max_header_list_size)
        .http2_max_pending_accept_reset_streams(Some(http2.max_pending_accept_reset_streams))
        .http2_max_local_error_reset_streams(Some(http2.max_local_error_reset_streams))
        .add_service(svc)
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| e.to_string())
}
