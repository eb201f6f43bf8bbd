//! Overload refusals from a `ModelInfer` request's head, before its tensors have arrived.
//!
//! A `ModelInferRequest` is encoded in field order: `model_name` (1), `model_version` (2),
//! `id` (3) and `parameters` (4) come before `inputs` (5), `outputs` (6) and
//! `raw_input_contents` (7). So the first DATA frame of a call already says which model,
//! priority and timeout it wants, while a 600 KB image may take many more frames (and, on a
//! saturated machine, many scheduling delays) to arrive. [`EarlyRefusal`] wraps the gRPC service:
//! for unary `ModelInfer` calls it reads just enough of the body for those four fields and asks
//! [`Core::refuse_early`]. A request the server would refuse for overload is answered at once,
//! with the same status, message, retry hint and metric as a refusal after the whole body; the
//! rest of the body is dropped unread (HTTP/2 resets the stream, the client stops sending).
//! Every other request goes on, its buffered frames first, and is decided again in full by the
//! handler, which takes this layer's [`Origin`] from the request's extensions ([`HeadOrigin`]):
//! its arrival is the head's, so the time to a refusal and the client's deadline count the wait
//! for the rest of the body, as over HTTP. Heads that do not parse, and fields out of order,
//! pass through. A compressed request is read whole and expanded here under the message limit
//! and the in-flight byte cap (`compression.rs`), then scanned like an uncompressed one; its
//! response is compressed as `--grpc-infer-response-compression-level` says. A compressed
//! `ModelStreamInfer` body is expanded message by message under the same bounds
//! (`inflating.rs`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame};
use prost::Message;
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use super::compression::{self, Encoding, InflateError, PREFIX, ResponseCompression};
use super::head::{Head, find_head};
use super::inflating::{InflatingBody, count_cap_refusal};
use super::params;
use crate::core::Core;
use crate::error::Error;
use crate::pb::inference as pb;
use crate::request::{Origin, RequestHead};

/// The unary inference method's path.
const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
/// The streaming inference method's path.
const MODEL_STREAM_INFER: &str = "/inference.GRPCInferenceService/ModelStreamInfer";
/// The request and response header naming a message encoding.
const GRPC_ENCODING: &str = "grpc-encoding";
/// The gRPC service, wrapped so that overload refusals need only the request's head.
#[derive(Clone)]
pub(crate) struct EarlyRefusal<S> {
    inner: S,
    core: Arc<Core>,
    /// The largest request message, expanded (tonic's `max_decoding_message_size`).
    max_message_bytes: usize,
    /// How `ModelInfer` responses are compressed.
    response: ResponseCompression,
}

impl<S> EarlyRefusal<S> {
    pub(crate) fn new(
        inner: S,
        core: Arc<Core>,
        max_message_bytes: usize,
        response: ResponseCompression,
    ) -> Self {
        EarlyRefusal {
            inner,
            core,
            max_message_bytes,
            response,
        }
    }
}

impl<S: NamedService> NamedService for EarlyRefusal<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for EarlyRefusal<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's rule for moving a service
        // into a future); the fresh clone stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let core = self.core.clone();
        let limit = self.max_message_bytes;
        if req.uri().path() == MODEL_STREAM_INFER {
            return Box::pin(inner.call(inflate_stream(req, core, limit)));
        }
        if req.uri().path() != MODEL_INFER {
            return Box::pin(inner.call(req));
        }
        let respond_with = self.response.choose(req.headers());
        Box::pin(async move {
            let origin = super::call_origin(req.headers());
            let encoding = request_encoding(req.headers());
            let (mut parts, mut body) = req.into_parts();
            let read = match encoding {
                None => read_head(&mut body).await,
                Some(encoding) => {
                    // The expanded message replaces the compressed one: tonic sees no encoding.
                    parts.headers.remove(GRPC_ENCODING);
                    match read_compressed(&core, body, encoding, limit, origin.arrival).await {
                        Ok(read) => {
                            body = Body::empty();
                            read
                        }
                        Err(status) => return Ok(status.into_http()),
                    }
                }
            };
            if let Some(head) = &read.head
                && let Err(e) = decide(&core, &origin, head)
            {
                return Ok(Status::from(e).into_http());
            }
            let body = Body::new(Prefixed {
                frames: read.frames,
                error: read.error,
                rest: Some(body),
            });
            parts.extensions.insert(HeadOrigin(origin));
            let resp = inner.call(http::Request::from_parts(parts, body)).await?;
            Ok(match respond_with {
                Some(encoding) => compress_response(resp, encoding).await,
                None => resp,
            })
        })
    }
}

/// The [`Origin`] of a unary `ModelInfer` call, taken when its headers arrived, before any of
/// its body: the handler opens the request with it rather than with a later clock reading.
#[derive(Clone)]
pub(crate) struct HeadOrigin(pub(crate) Origin);

/// A `ModelStreamInfer` call whose messages are gzip or deflate: its body is expanded message by
/// message under the limit and the in-flight byte cap (`inflating.rs`), and tonic sees an
/// uncompressed stream. Other calls pass as they are.
fn inflate_stream(req: http::Request<Body>, core: Arc<Core>, limit: usize) -> http::Request<Body> {
    let Some(encoding) = request_encoding(req.headers()) else {
        return req;
    };
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(GRPC_ENCODING);
    let body = Body::new(InflatingBody::new(body, core, encoding, limit));
    http::Request::from_parts(parts, body)
}

/// The encoding a request's messages are compressed with, when this server expands them
/// itself (gzip, deflate); `None` for none, identity, or one tonic answers.
fn request_encoding(headers: &http::HeaderMap) -> Option<Encoding> {
    headers
        .get(GRPC_ENCODING)
        .and_then(|v| v.to_str().ok())
        .and_then(Encoding::parse)
}

/// What `read_head` took from the body.
struct HeadRead {
    /// The frames read, to be replayed to the handler.
    frames: VecDeque<Frame<Bytes>>,
    /// The head's message bytes (fields 1–4), when found.
    head: Option<Bytes>,
    /// The body's error, if reading it failed.
    error: Option<Status>,
}

/// Reads DATA frames until the head is complete (or cannot be found early).
async fn read_head(body: &mut Body) -> HeadRead {
    let mut read = HeadRead {
        frames: VecDeque::new(),
        head: None,
        error: None,
    };
    let mut data = BytesMut::new();
    loop {
        match poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            None => return read,
            Some(Err(e)) => {
                read.error = Some(e);
                return read;
            }
            Some(Ok(frame)) => {
                let Some(chunk) = frame.data_ref() else {
                    // Request trailers: nothing more will come before them.
                    read.frames.push_back(frame);
                    return read;
                };
                data.extend_from_slice(chunk);
                read.frames.push_back(frame);
            }
        }
        match find_head(&data) {
            Head::NeedMore => {}
            Head::Ready(range) => {
                read.head = Some(data.freeze().slice(range));
                return read;
            }
            Head::Skip => return read,
        }
    }
}

/// Reads a whole compressed unary request and expands it under the message limit and the
/// in-flight byte cap (`compression::inflate_body`, on a blocking thread: expanding is CPU
/// work). The expanded message is replayed to tonic as one uncompressed frame, its head found
/// as for an uncompressed request. The bytes counted while expanding are released once the
/// message is handed on: `submit` counts the request's tensors again. A refusal by the cap is
/// counted against the model the head names (`count_cap_refusal`).
async fn read_compressed(
    core: &Arc<Core>,
    mut body: Body,
    encoding: Encoding,
    limit: usize,
    arrival: Instant,
) -> Result<HeadRead, Status> {
    let mut packed = BytesMut::new();
    let mut frames = VecDeque::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame?;
        match frame.data_ref() {
            Some(chunk) => {
                // One message, compressed: never more than the limit plus its prefix.
                if packed.len().saturating_add(chunk.len()) > limit.saturating_add(PREFIX) {
                    return Err(compression::too_large(&format!("more than {limit}"), limit));
                }
                packed.extend_from_slice(chunk);
            }
            None => frames.push_back(frame),
        }
    }
    let mut charge = core.inflight_bytes();
    let (packed, expanded) = tokio::task::spawn_blocking(move || {
        let expanded = compression::inflate_body(&packed, encoding, limit, &mut charge);
        drop(charge);
        (packed, expanded)
    })
    .await
    .map_err(|e| Status::internal(format!("Error decompressing: {e}")))?;
    let expanded = expanded.map_err(|e| {
        if let InflateError::Cap(refusal) = &e {
            count_cap_refusal(core, &packed, encoding, arrival, refusal);
        }
        Status::from(e)
    })?;
    let data = Bytes::from(expanded);
    let head = match find_head(&data) {
        Head::Ready(range) => Some(data.slice(range)),
        Head::NeedMore | Head::Skip => None,
    };
    frames.push_front(Frame::data(data));
    Ok(HeadRead {
        frames,
        head,
        error: None,
    })
}

/// Compresses a unary response's message with `encoding` and says so in `grpc-encoding`. A
/// response without a message (an error in the headers) or whose body fails is left as it is.
async fn compress_response(resp: http::Response<Body>, encoding: Encoding) -> http::Response<Body> {
    let (mut parts, mut body) = resp.into_parts();
    let mut data = BytesMut::new();
    let mut frames = VecDeque::new();
    let mut error = None;
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        match frame {
            Ok(frame) => match frame.data_ref() {
                Some(chunk) => data.extend_from_slice(chunk),
                None => frames.push_back(frame),
            },
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let packed = (error.is_none() && !data.is_empty())
        .then(|| compression::deflate_body(&data, encoding))
        .flatten();
    let data = match packed {
        Some(packed) => {
            parts.headers.insert(
                GRPC_ENCODING,
                http::HeaderValue::from_static(encoding.name()),
            );
            Bytes::from(packed)
        }
        None => data.freeze(),
    };
    if !data.is_empty() {
        frames.push_front(Frame::data(data));
    }
    let body = Body::new(Prefixed {
        frames,
        error,
        rest: None,
    });
    http::Response::from_parts(parts, body)
}

/// Decodes the head and asks the core whether to refuse now. Errors other than an overload
/// refusal never come from here: a head that does not decode is left for the handler to report
/// with the whole request.
fn decide(core: &Core, origin: &Origin, head: &[u8]) -> Result<(), Error> {
    let Ok(req) = pb::ModelInferRequest::decode(head) else {
        return Ok(());
    };
    let Ok(params) = params::request_params(&req.parameters) else {
        return Ok(());
    };
    core.refuse_early(
        &RequestHead {
            model_name: &req.model_name,
            model_version: &req.model_version,
            id: &req.id,
            params,
        },
        origin,
    )
}

/// A request body whose first frames were already read: those, then the rest.
struct Prefixed {
    frames: VecDeque<Frame<Bytes>>,
    error: Option<Status>,
    rest: Option<Body>,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(f) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        if let Some(e) = self.error.take() {
            self.rest = None;
            return Poll::Ready(Some(Err(e)));
        }
        match self.rest.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(|b| b.is_end_stream())
    }
}
