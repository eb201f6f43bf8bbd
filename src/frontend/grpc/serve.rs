//! The gRPC listener: `inference.GRPCInferenceService` behind the early overload refusal, and
//! `grpc.health.v1.Health`, on one HTTP/2 server with this server's flow-control settings.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::early::EarlyRefusal;
use super::{GrpcService, HealthService};
use crate::core::Core;
use crate::frontend::restrict::{Restricted, Restrictions};
use crate::pb::health::health_server::HealthServer;
use crate::pb::inference::grpc_inference_service_server::GrpcInferenceServiceServer;

/// HTTP/2 receive window per gRPC stream (bytes).
const STREAM_WINDOW: u32 = 256 << 10;
/// HTTP/2 receive window per gRPC connection (bytes).
const CONNECTION_WINDOW: u32 = 32 << 20;
/// Requests one gRPC connection may have open at once.
const MAX_STREAMS: u32 = 1024;

/// Serves both services on `listener` until `shutdown` resolves, then lets in-flight calls
/// finish (the caller bounds that wait with the exit timeout). `max_message_bytes` bounds a
/// decoded request and an encoded response; `restrictions` gate their groups' calls before
/// anything else sees them. The error is the transport's, as text.
pub async fn serve(
    listener: TcpListener,
    core: Arc<Core>,
    max_message_bytes: usize,
    restrictions: Restrictions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let svc = GrpcInferenceServiceServer::new(GrpcService::new(core.clone()))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    // Overload refusals from the request's head, before its tensors arrive.
    let svc = EarlyRefusal::new(svc, core.clone());
    let health = HealthServer::new(HealthService::new(core));
    let restrictions = Arc::new(restrictions);
    let (svc, health) = (
        Restricted::new(svc, restrictions.clone()),
        Restricted::new(health, restrictions),
    );
    // Small responses must not wait for Nagle's algorithm (40 ms stalls with delayed ACKs).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
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
        .add_service(svc)
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| e.to_string())
}
