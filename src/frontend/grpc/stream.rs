//! `ModelStreamInfer` (grpc-protocol.md §7): every request read from the stream is an
//! independent inference, run concurrently with the others, and answered on the same stream
//! in arrival order with exactly one response.
//!
//! One task per stream owns both directions. It reads requests while fewer than
//! `MAX_IN_FLIGHT` are unanswered, keeps their futures in arrival order, and writes the head
//! as soon as it is done; responses go through a bounded channel, so a client that stops
//! reading stops the reading of its requests too. An error is written in-band
//! (`error_message`, `infer_response` holding only the id) and the stream goes on, unless the
//! client opened it with the metadata `triton_grpc_error: true`, in which case the first error
//! ends the stream with its status. After the client half-closes, the pending responses are
//! written and the stream ends with OK; a message that does not decode stops the reading, the
//! requests read before it are answered, and the stream ends with the decode error's status
//! (what follows it is not read: its framing can no longer be trusted). If the client goes away, the task ends and dropping
//! the pending futures cancels requests that have not started.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::{Instrument, Span};

use super::convert;
use crate::core::Core;
use crate::error::Result;
use crate::pb::inference::{self as pb, infer_parameter::ParameterChoice};
use crate::request::{InferResponse, Origin, Protocol, TraceContext};
use crate::telemetry::spans;

/// Requests read from one stream and not yet answered; reading waits beyond this.
pub(crate) const MAX_IN_FLIGHT: usize = 256;

pub(crate) type ResponseStream =
    ReceiverStream<std::result::Result<pb::ModelStreamInferResponse, Status>>;

/// The outcome of one request, ready to be written.
struct Done {
    id: String,
    result: Result<InferResponse>,
    /// The request reached the model: its response carries `triton_final_response`
    /// (grpc-protocol.md §5.4), errors included.
    executed: bool,
    span: Span,
}

/// Starts the task serving one stream and returns the responses it writes.
pub(crate) fn serve(
    core: Arc<Core>,
    inbound: Streaming<pb::ModelInferRequest>,
    trace: TraceContext,
    hard_errors: bool,
) -> ResponseStream {
    let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
    tokio::spawn(run(core, inbound, tx, trace, hard_errors));
    ReceiverStream::new(rx)
}

async fn run(
    core: Arc<Core>,
    mut inbound: Streaming<pb::ModelInferRequest>,
    tx: mpsc::Sender<std::result::Result<pb::ModelStreamInferResponse, Status>>,
    trace: TraceContext,
    hard_errors: bool,
) {
    let mut pending: FuturesOrdered<BoxFuture<'static, Done>> = FuturesOrdered::new();
    let mut reading = true;
    // Why reading stopped early (a message that does not decode, a broken body): the requests
    // already read are answered, then the stream ends with this status, never with OK.
    let mut failure: Option<Status> = None;
    loop {
        if !reading && pending.is_empty() {
            if let Some(status) = failure {
                let _ = tx.send(Err(status)).await;
            }
            break;
        }
        tokio::select! {
            biased;
            Some(done) = pending.next(), if !pending.is_empty() => {
                if !write(&tx, done, hard_errors).await {
                    return;
                }
            }
            msg = inbound.message(), if reading && pending.len() < MAX_IN_FLIGHT => match msg {
                Ok(Some(req)) => pending.push_back(start(&core, req, &trace)),
                Ok(None) => reading = false,
                Err(status) => {
                    tracing::debug!("ModelStreamInfer: the client's stream failed: {status}");
                    reading = false;
                    failure = Some(status);
                }
            },
            _ = tx.closed() => return,
        }
    }
}

/// Validates and queues one request; the returned future yields its outcome. Every request
/// of the stream is a child of the stream's trace context.
fn start(
    core: &Arc<Core>,
    req: pb::ModelInferRequest,
    trace: &TraceContext,
) -> BoxFuture<'static, Done> {
    let origin = Origin {
        trace: trace.clone(),
        ..Origin::now(Protocol::Grpc)
    };
    let id = req.id.clone();
    let ctx = core.open_request(origin, &req.model_name, &req.model_version);
    let span = ctx.span().clone();
    // Outputs placed in shared memory are written there; a stream's reply still carries
    // their bytes as well.
    let submitted = core
        .receive(&ctx, || super::shm::decode(core, req))
        .and_then(|(r, placement)| Ok((core.submit(r, ctx)?, placement)));
    match submitted {
        Ok((pending, placement)) => async move {
            Done {
                id,
                result: pending
                    .await
                    .and_then(|r| placement.write_outputs(&r).map(|()| r)),
                executed: true,
                span,
            }
        }
        .boxed(),
        Err(e) => futures_util::future::ready(Done {
            id,
            result: Err(e),
            executed: false,
            span,
        })
        .boxed(),
    }
}

fn mark_final(resp: &mut pb::ModelInferResponse) {
    resp.parameters.insert(
        "triton_final_response".to_string(),
        pb::InferParameter {
            parameter_choice: Some(ParameterChoice::BoolParam(true)),
        },
    );
}

/// Writes one outcome; false when the stream must end (client gone, or a hard error).
async fn write(
    tx: &mpsc::Sender<std::result::Result<pb::ModelStreamInferResponse, Status>>,
    done: Done,
    hard_errors: bool,
) -> bool {
    let send_span = spans::send(&done.span);
    let msg = match done.result {
        Ok(resp) => {
            let mut r = convert::infer_response(resp);
            mark_final(&mut r);
            pb::ModelStreamInferResponse {
                error_message: String::new(),
                infer_response: Some(r),
            }
        }
        Err(e) if hard_errors => {
            let _ = tx.send(Err(Status::from(e))).instrument(send_span).await;
            return false;
        }
        Err(e) => {
            let mut r = pb::ModelInferResponse {
                id: done.id,
                ..Default::default()
            };
            if done.executed {
                mark_final(&mut r);
            }
            pb::ModelStreamInferResponse {
                error_message: e.message,
                infer_response: Some(r),
            }
        }
    };
    tx.send(Ok(msg)).instrument(send_span).await.is_ok()
}
