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
//! handler. Heads that do not parse, and fields out of order pass through. A compressed request
//! is read whole and expanded here under the message limit and the in-flight byte cap
//! (`compression.rs`), then scanned like an uncompressed one; its response is compressed as
//! `--grpc-infer-response-compression-level` says.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame};
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use super::compression::{self, Encoding, PREFIX, ResponseCompression};
use super::params;
use crate::core::Core;
use crate::error::Error;
use crate::pb::inference as pb;
use crate::request::{Origin, RequestHead};

/// The unary inference method's path.
const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
/// Most body bytes read while looking for the head; a longer head is left to the handler.
const HEAD_LIMIT: usize = 64 << 10;
/// The request and response header naming a message encoding.
const GRPC_ENCODING: &str = "grpc-encoding";
/// The first field after the head (`inputs`).
const FIRST_TENSOR_FIELD: u64 = 5;

/// What the first bytes of a body say.
#[derive(Debug, PartialEq)]
pub enum Head {
    /// The head may continue past what has arrived.
    NeedMore,
    /// The message bytes of fields 1–4, complete: always a range inside the scanned buffer.
    Ready(std::ops::Range<usize>),
    /// Not something to decide early (compressed, malformed, or no head within the limit).
    Skip,
}

/// Finds the head fields in `buf`, the start of a gRPC-framed `ModelInferRequest`.
///
/// Any bytes may come here (they are the client's): the scan ends for every input, after at
/// most one step per field, and a `Ready` range lies inside `buf`. Lengths are the client's
/// numbers, up to 2^64 − 1, so every sum is checked; one that overflows is a malformed head.
pub fn find_head(buf: &[u8]) -> Head {
    let Some(prefix) = buf.first_chunk::<PREFIX>() else {
        return Head::NeedMore;
    };
    if prefix[0] != 0 {
        return Head::Skip;
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    let msg = &buf[PREFIX..buf.len().min(PREFIX.saturating_add(len))];
    // Invariant: pos <= msg.len() <= len, so `PREFIX + pos` is inside `buf`.
    let mut pos = 0usize;
    loop {
        if pos == len {
            // The whole message is the head (a request with no tensors).
            return Head::Ready(PREFIX..PREFIX + pos);
        }
        let mut rest = msg.get(pos..).unwrap_or_default();
        let before = rest.len();
        let Ok(key) = prost::encoding::decode_varint(&mut rest) else {
            return more_or_skip(msg.len() < len && before < 10, buf.len());
        };
        let (field, wire_type) = (key >> 3, key & 7);
        if field >= FIRST_TENSOR_FIELD || wire_type != 2 {
            return Head::Ready(PREFIX..PREFIX + pos);
        }
        let Ok(field_len) = prost::encoding::decode_varint(&mut rest) else {
            return more_or_skip(msg.len() < len && rest.len() < 10, buf.len());
        };
        // The key and length took at least two bytes, so `end > pos`: the scan moves forward.
        let end = usize::try_from(field_len)
            .ok()
            .and_then(|n| pos.checked_add(before - rest.len())?.checked_add(n));
        let Some(end) = end.filter(|&e| e <= len) else {
            return Head::Skip;
        };
        if end > msg.len() {
            return more_or_skip(true, buf.len());
        }
        pos = end;
    }
}

fn more_or_skip(truncated: bool, buffered: usize) -> Head {
    if truncated && buffered < HEAD_LIMIT {
        Head::NeedMore
    } else {
        Head::Skip
    }
}

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
        if req.uri().path() != MODEL_INFER {
            return Box::pin(inner.call(req));
        }
        let core = self.core.clone();
        let limit = self.max_message_bytes;
        let respond_with = self.response.choose(req.headers());
        Box::pin(async move {
            let origin = super::call_origin(req.headers());
            let encoding = req
                .headers()
                .get(GRPC_ENCODING)
                .and_then(|v| v.to_str().ok())
                .and_then(Encoding::parse);
            let (mut parts, mut body) = req.into_parts();
            let read = match encoding {
                None => read_head(&mut body).await,
                Some(encoding) => {
                    // The expanded message replaces the compressed one: tonic sees no encoding.
                    parts.headers.remove(GRPC_ENCODING);
                    match read_compressed(&core, body, encoding, limit).await {
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
            let resp = inner.call(http::Request::from_parts(parts, body)).await?;
            Ok(match respond_with {
                Some(encoding) => compress_response(resp, encoding).await,
                None => resp,
            })
        })
    }
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
/// message is handed on: `submit` counts the request's tensors again.
async fn read_compressed(
    core: &Arc<Core>,
    mut body: Body,
    encoding: Encoding,
    limit: usize,
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
    let expanded = tokio::task::spawn_blocking(move || {
        let expanded = compression::inflate_body(&packed, encoding, limit, &mut charge);
        drop(charge);
        expanded
    })
    .await
    .map_err(|e| Status::internal(format!("Error decompressing: {e}")))??;
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A 16-byte body: an 11-byte message whose `model_name` declares 2^64 − 11 bytes, so
    /// that key + length + field end, added unchecked, wrap to where the field began.
    fn wrapping_head() -> Vec<u8> {
        let mut buf = vec![0, 0, 0, 0, 11, 0x0a];
        prost::encoding::encode_varint(u64::MAX - 10, &mut buf);
        assert_eq!(buf.len(), 16);
        buf
    }

    #[test]
    fn a_length_near_2_pow_64_is_a_malformed_head() {
        assert_eq!(find_head(&wrapping_head()), Head::Skip);
        // Every length that would wrap the position back inside the message.
        for back in 0..16u64 {
            let mut buf = vec![0, 0, 0, 0, 11, 0x0a];
            prost::encoding::encode_varint(u64::MAX - back, &mut buf);
            assert_eq!(find_head(&buf), Head::Skip, "{back}");
        }
    }

    fn check_scan(buf: &[u8]) -> Result<(), TestCaseError> {
        match find_head(buf) {
            Head::Ready(r) => {
                prop_assert!(
                    r.start <= r.end && r.end <= buf.len(),
                    "{r:?} of {}",
                    buf.len()
                )
            }
            Head::NeedMore => prop_assert!(buf.len() < HEAD_LIMIT),
            Head::Skip => {}
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn any_bytes_scan_to_a_range_inside_them(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            check_scan(&buf)?;
        }

        /// Uncompressed frames of any declared length, made of fields with any keys and any
        /// (often huge) declared lengths: the shapes the scan walks.
        #[test]
        fn framed_fields_with_any_lengths_scan_to_a_range_inside_them(
            declared in any::<u32>(),
            fields in proptest::collection::vec((any::<u64>(), any::<u64>(), 0usize..8), 0..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut buf = vec![0];
            buf.extend_from_slice(&declared.to_be_bytes());
            for (key, len, body) in fields {
                prost::encoding::encode_varint(key, &mut buf);
                prost::encoding::encode_varint(len, &mut buf);
                buf.extend(std::iter::repeat_n(b'x', body));
            }
            check_scan(&buf)?;
            check_scan(&buf[..cut.index(buf.len() + 1)])?;
        }
    }

    /// A gRPC-framed request: the head fields, then `inputs` and `raw_input_contents`.
    fn framed(req: &pb::ModelInferRequest) -> Vec<u8> {
        let msg = req.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(&msg);
        out
    }

    fn request(raw: usize) -> pb::ModelInferRequest {
        let mut req = pb::ModelInferRequest {
            model_name: "alexnet".into(),
            model_version: "1".into(),
            id: "r-7".into(),
            ..Default::default()
        };
        req.parameters.insert(
            "priority".into(),
            pb::InferParameter {
                parameter_choice: Some(pb::infer_parameter::ParameterChoice::Uint64Param(2)),
            },
        );
        req.inputs.push(pb::model_infer_request::InferInputTensor {
            name: "data_0".into(),
            datatype: "FP32".into(),
            shape: vec![1, raw as i64 / 4],
            ..Default::default()
        });
        req.raw_input_contents.push(vec![7u8; raw].into());
        req
    }

    #[test]
    fn the_head_is_found_in_the_first_frame_of_a_large_request() {
        let buf = framed(&request(600_000));
        // What one 16 KiB HTTP/2 DATA frame carries.
        let Head::Ready(range) = find_head(&buf[..16_384]) else {
            panic!("head not found: {:?}", find_head(&buf[..16_384]));
        };
        let head = pb::ModelInferRequest::decode(&buf[range]).unwrap();
        assert_eq!(head.model_name, "alexnet");
        assert_eq!(head.model_version, "1");
        assert_eq!(head.id, "r-7");
        let params = params::request_params(&head.parameters).unwrap();
        assert_eq!(params.priority, 2);
        assert!(head.inputs.is_empty() && head.raw_input_contents.is_empty());
    }

    #[test]
    fn a_head_split_across_frames_needs_more_at_every_cut() {
        let buf = framed(&request(64));
        let Head::Ready(full) = find_head(&buf) else {
            panic!("no head")
        };
        // The head ends where the first tensor field starts: one byte of that key is needed to
        // know no more parameters follow.
        for cut in 0..=full.end {
            assert_eq!(find_head(&buf[..cut]), Head::NeedMore, "cut at {cut}");
        }
        assert_eq!(find_head(&buf[..full.end + 1]), Head::Ready(full));
    }

    #[test]
    fn a_request_without_tensors_is_all_head() {
        let req = pb::ModelInferRequest {
            model_name: "m".into(),
            ..Default::default()
        };
        let buf = framed(&req);
        assert_eq!(find_head(&buf), Head::Ready(PREFIX..buf.len()));
        let empty = framed(&pb::ModelInferRequest::default());
        assert_eq!(find_head(&empty), Head::Ready(PREFIX..PREFIX));
    }

    #[test]
    fn compressed_malformed_and_oversized_heads_are_skipped() {
        let mut buf = framed(&request(64));
        buf[0] = 1;
        assert_eq!(find_head(&buf), Head::Skip, "compressed");
        // A model_name longer than the whole message.
        let bad = [0, 0, 0, 0, 4, 0x0a, 0x7f, b'a', b'b'];
        assert_eq!(find_head(&bad), Head::Skip, "field past the message");
        // A head longer than the limit.
        let big = pb::ModelInferRequest {
            id: "x".repeat(HEAD_LIMIT),
            ..request(8)
        };
        let buf = framed(&big);
        assert_eq!(
            find_head(&buf[..HEAD_LIMIT]),
            Head::Skip,
            "head over the limit"
        );
    }
}
