//! The body of a compressed `ModelStreamInfer` call, expanded one message at a time under the
//! message limit and the in-flight byte cap, before tonic sees it.
//!
//! tonic would inflate each compressed stream message into a buffer bounded only by the
//! message limit (INT32_MAX by default, as Triton), counted against `--max-inflight-bytes` only
//! once decoded. [`InflatingBody`] instead gathers each whole message as it arrives (its
//! compressed size is checked against the limit as soon as its prefix is read), expands it on a
//! blocking thread in steps counted against the limit and the cap before each is written
//! (`compression::inflate_body`), and hands tonic the expanded message, uncompressed. The bytes
//! counted for a message are held until tonic asks for the next one: by then the handler has
//! read the message and `submit` counts its tensors again.
//!
//! A refusal ends the stream with its status after the requests read before it are answered
//! (what `stream.rs` does with any failure of the request body); a refusal by the cap is
//! counted against the model the message's head names. The trailers, if any, follow the last
//! message.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use prost::Message;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;

use super::compression::{self, Encoding, InflateError, PREFIX};
use super::head::{HEAD_LIMIT, Head, find_head};
use crate::core::{Core, InflightBytes};
use crate::error::Error;
use crate::pb::inference as pb;

/// What expanding one message gives: the expanded message, framed, and the bytes it holds
/// against the cap; or why it could not be expanded.
type Expanded = Result<(Bytes, InflightBytes), Status>;

/// A stream request body whose compressed messages are expanded here (see the module).
pub(crate) struct InflatingBody {
    inner: Body,
    core: Arc<Core>,
    encoding: Encoding,
    /// The largest message, compressed or expanded (tonic's `max_decoding_message_size`).
    limit: usize,
    /// Bytes received that do not yet make a whole message.
    buf: BytesMut,
    /// The message being expanded.
    expanding: Option<JoinHandle<Expanded>>,
    /// The cap's count for the message last handed on, released when the next is asked for.
    held: Option<InflightBytes>,
    /// The trailers, once the client sent them: they follow the last message.
    trailers: Option<Frame<Bytes>>,
    /// The client's body has ended (or failed: then nothing more is read).
    ended: bool,
}

impl InflatingBody {
    pub(crate) fn new(inner: Body, core: Arc<Core>, encoding: Encoding, limit: usize) -> Self {
        InflatingBody {
            inner,
            core,
            encoding,
            limit,
            buf: BytesMut::new(),
            expanding: None,
            held: None,
            trailers: None,
            ended: false,
        }
    }

    /// Takes the next whole message out of `buf`, if it has one: uncompressed ones are handed
    /// on as they are, compressed ones start expanding. An over-limit length is refused as soon
    /// as the prefix has arrived.
    fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        let Some(prefix) = self.buf.first_chunk::<PREFIX>() else {
            return Ok(None);
        };
        let flag = prefix[0];
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.limit {
            return Err(compression::too_large(&len.to_string(), self.limit));
        }
        // len <= limit <= usize::MAX - PREFIX is not given: the sum is checked.
        let Some(whole) = len.checked_add(PREFIX).filter(|&w| w <= self.buf.len()) else {
            return Ok(None);
        };
        let message = self.buf.split_to(whole).freeze();
        if flag == 0 {
            return Ok(Some(message));
        }
        let core = self.core.clone();
        let (encoding, limit) = (self.encoding, self.limit);
        let arrival = Instant::now();
        self.expanding = Some(tokio::task::spawn_blocking(move || {
            let mut charge = core.inflight_bytes();
            match compression::inflate_body(&message, encoding, limit, &mut charge) {
                Ok(expanded) => Ok((Bytes::from(expanded), charge)),
                Err(e) => {
                    if let InflateError::Cap(refusal) = &e {
                        count_cap_refusal(&core, &message, encoding, arrival, refusal);
                    }
                    Err(Status::from(e))
                }
            }
        }));
        Ok(None)
    }

    /// Ends the body with `status`: nothing more is read or handed on.
    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.ended = true;
        self.buf.clear();
        self.trailers = None;
        Poll::Ready(Some(Err(status)))
    }
}

impl http_body::Body for InflatingBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        // The message handed on last has been read by now.
        this.held = None;
        loop {
            if let Some(task) = this.expanding.as_mut() {
                let done = std::task::ready!(Pin::new(task).poll(cx));
                this.expanding = None;
                return match done {
                    Ok(Ok((message, charge))) => {
                        this.held = Some(charge);
                        Poll::Ready(Some(Ok(Frame::data(message))))
                    }
                    Ok(Err(status)) => this.fail(status),
                    Err(e) => this.fail(Status::internal(format!("Error decompressing: {e}"))),
                };
            }
            match this.next_message() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(Frame::data(message)))),
                Ok(None) if this.expanding.is_some() => continue,
                Ok(None) => {}
                Err(status) => return this.fail(status),
            }
            if this.ended {
                if !this.buf.is_empty() {
                    return this.fail(Status::internal("a gRPC message was cut short"));
                }
                return Poll::Ready(this.trailers.take().map(Ok));
            }
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => this.buf.extend_from_slice(&chunk),
                    Err(frame) => {
                        if frame.is_trailers() {
                            this.trailers = Some(frame);
                        }
                    }
                },
                Some(Err(status)) => return this.fail(status),
                None => this.ended = true,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.buf.is_empty() && self.expanding.is_none() && self.trailers.is_none()
    }
}

/// Counts a refusal of the in-flight byte cap, met while expanding the compressed gRPC-framed
/// `packed`, against the model its head names. The head is read from at most `HEAD_LIMIT`
/// expanded bytes; a head that cannot be read leaves the refusal uncounted (no model to count
/// it against).
pub(crate) fn count_cap_refusal(
    core: &Core,
    packed: &[u8],
    encoding: Encoding,
    arrival: Instant,
    refusal: &Error,
) {
    let Some(peek) = compression::peek_first(packed, encoding, HEAD_LIMIT) else {
        return;
    };
    let Head::Ready(range) = find_head(&peek) else {
        return;
    };
    if let Ok(req) = pb::ModelInferRequest::decode(&peek[range]) {
        core.count_unread_refusal(&req.model_name, &req.model_version, arrival, refusal);
    }
}
