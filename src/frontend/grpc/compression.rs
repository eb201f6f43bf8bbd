//! gRPC message compression for `ModelInfer`: requests expanded under a bound, responses
//! compressed as `--grpc-infer-response-compression-level` says.
//!
//! tonic inflates a compressed message into a buffer bounded only by the message limit (INT32_MAX
//! by default, as Triton), and the in-flight byte cap would see it only after decoding. So a
//! unary `ModelInfer` call with `grpc-encoding: gzip|deflate` is expanded here instead, in
//! 64 KiB steps, each counted against the message limit and against `--max-inflight-bytes`
//! before it is written: a small message that would expand to gigabytes is refused after at most
//! the limit's worth of work and memory. tonic then receives an uncompressed message.
//! `ModelStreamInfer` messages are expanded the same way, one message at a time as each arrives
//! (`inflating.rs`). Other methods keep tonic's own inflation (`accept_compressed`), bounded by
//! the message limit: their messages are small and go to no model.
//!
//! Responses: gRPC core, which Triton uses, maps a compression *level* to an *algorithm* among
//! those the client accepts (`grpc-accept-encoding`), ranked gzip then deflate: low takes the
//! first, medium the middle one, high the last; zlib's level is its default (6) for all three.
//! The same rule and the same zlib level are applied here (tonic has no per-level setting).

use std::io::Read;

use flate2::Compression;
use flate2::read::{GzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};
use tonic::Status;
use tonic::codegen::http::HeaderMap;

use crate::core::InflightBytes;
use crate::error::Error;

/// The gRPC message prefix: a compression flag and a 4-byte big-endian length.
pub(crate) const PREFIX: usize = 5;
/// Bytes expanded (and counted) per step.
const STEP: usize = 64 << 10;

/// A message encoding this server reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Deflate,
}

impl Encoding {
    /// The encoding named by a `grpc-encoding` value; `None` for `identity` and for names this
    /// server does not expand itself (tonic answers those).
    pub fn parse(name: &str) -> Option<Encoding> {
        match name.trim() {
            "gzip" => Some(Encoding::Gzip),
            "deflate" => Some(Encoding::Deflate),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
        }
    }
}

/// `--grpc-infer-response-compression-level`, as Triton.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseCompression {
    #[default]
    None,
    Low,
    Medium,
    High,
}

impl ResponseCompression {
    /// The algorithm for this level among those in the request's `grpc-accept-encoding` (gRPC
    /// core's `CompressionAlgorithmForLevel`); `None` for level none or when the client accepts
    /// neither.
    pub fn choose(self, headers: &HeaderMap) -> Option<Encoding> {
        if self == ResponseCompression::None {
            return None;
        }
        let accepted: Vec<Encoding> = headers
            .get_all("grpc-accept-encoding")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(Encoding::parse)
            .collect();
        let ranked: Vec<Encoding> = [Encoding::Gzip, Encoding::Deflate]
            .into_iter()
            .filter(|e| accepted.contains(e))
            .collect();
        match self {
            ResponseCompression::None => None,
            ResponseCompression::Low => ranked.first().copied(),
            ResponseCompression::Medium => ranked.get(ranked.len() / 2).copied(),
            ResponseCompression::High => ranked.last().copied(),
        }
    }
}

/// Why a message could not be expanded.
#[derive(Debug)]
pub(crate) enum InflateError {
    /// The message itself: malformed, or over the message limit (answered as gRPC core does).
    Wire(Status),
    /// The in-flight byte cap refused it: a refusal the model's metrics count.
    Cap(Error),
}

impl From<InflateError> for Status {
    fn from(e: InflateError) -> Status {
        match e {
            InflateError::Wire(s) => s,
            InflateError::Cap(e) => Status::from(e),
        }
    }
}

impl From<Status> for InflateError {
    fn from(s: Status) -> InflateError {
        InflateError::Wire(s)
    }
}

/// The refusal of a message over the limit, in gRPC core's words (what Triton answers).
pub(crate) fn too_large(found: &str, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "Received message larger than max ({found} vs. {limit})"
    ))
}

/// Expands every compressed message of a gRPC-framed body into uncompressed frames. Each
/// message's expanded size is bounded by `limit` and counted in `charge` before it is written;
/// the first refusal ends the work. `body` is the client's bytes: lengths and flags are checked.
pub(crate) fn inflate_body(
    body: &[u8],
    encoding: Encoding,
    limit: usize,
    charge: &mut InflightBytes,
) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let Some((prefix, after)) = rest.split_first_chunk::<PREFIX>() else {
            return Err(Status::internal("a gRPC message prefix was cut short").into());
        };
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > limit {
            return Err(too_large(&len.to_string(), limit).into());
        }
        let Some((msg, next)) = after.split_at_checked(len) else {
            return Err(Status::internal("a gRPC message was cut short").into());
        };
        let start = out.len();
        out.extend_from_slice(&[0; PREFIX]);
        match prefix[0] {
            0 => {
                charge.grow(len).map_err(InflateError::Cap)?;
                out.extend_from_slice(msg);
            }
            1 => match encoding {
                Encoding::Gzip => expand(GzDecoder::new(msg), limit, charge, &mut out)?,
                Encoding::Deflate => expand(ZlibDecoder::new(msg), limit, charge, &mut out)?,
            },
            f => {
                return Err(Status::internal(format!(
                    "protocol error: received message with invalid compression flag: {f}"
                ))
                .into());
            }
        }
        let expanded = out.len() - start - PREFIX;
        let Ok(expanded) = u32::try_from(expanded) else {
            return Err(too_large(&format!("more than {}", u32::MAX), limit).into());
        };
        out[start + 1..start + PREFIX].copy_from_slice(&expanded.to_be_bytes());
        rest = next;
    }
    Ok(out)
}

/// Reads `decoder` to its end into `out`, one step at a time: each step is checked against
/// `limit` and counted before the buffer grows for it.
fn expand(
    mut decoder: impl Read,
    limit: usize,
    charge: &mut InflightBytes,
    out: &mut Vec<u8>,
) -> Result<(), InflateError> {
    let mut step = vec![0u8; STEP];
    let mut total = 0usize;
    loop {
        let n = decoder
            .read(&mut step)
            .map_err(|e| Status::internal(format!("Error decompressing: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        total = match total.checked_add(n).filter(|&t| t <= limit) {
            Some(t) => t,
            None => return Err(too_large(&format!("more than {limit}"), limit).into()),
        };
        charge.grow(n).map_err(InflateError::Cap)?;
        out.extend_from_slice(&step[..n]);
    }
}

/// The first `max` expanded bytes of the first message of a gRPC-framed body, framed again as a
/// message of that many bytes (or of its whole length, when it is shorter): enough for
/// `early::find_head` to name the model of a request whose expansion was refused. Counted
/// against nothing (at most `max` bytes); `None` when the body does not expand.
pub(crate) fn peek_first(body: &[u8], encoding: Encoding, max: usize) -> Option<Vec<u8>> {
    let (prefix, after) = body.split_first_chunk::<PREFIX>()?;
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    let msg = after.get(..len).unwrap_or(after);
    let mut head = Vec::new();
    let read = match (prefix[0], encoding) {
        (0, _) => {
            head.extend_from_slice(&msg[..msg.len().min(max)]);
            Ok(head.len())
        }
        (1, Encoding::Gzip) => GzDecoder::new(msg).take(max as u64).read_to_end(&mut head),
        (1, Encoding::Deflate) => ZlibDecoder::new(msg)
            .take(max as u64)
            .read_to_end(&mut head),
        _ => return None,
    };
    read.ok()?;
    let n = u32::try_from(head.len()).ok()?;
    let mut framed = Vec::with_capacity(PREFIX + head.len());
    framed.push(0);
    framed.extend_from_slice(&n.to_be_bytes());
    framed.extend_from_slice(&head);
    Some(framed)
}

/// Compresses every message of a gRPC-framed body (tonic's encoding of a response) with
/// `encoding` at zlib's default level. `None` if the body is not whole frames (left as it is).
pub(crate) fn deflate_body(body: &[u8], encoding: Encoding) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut out = Vec::with_capacity(body.len() / 2);
    let mut rest = body;
    while !rest.is_empty() {
        let (prefix, after) = rest.split_first_chunk::<PREFIX>()?;
        if prefix[0] != 0 {
            return None;
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        let (msg, next) = after.split_at_checked(len)?;
        let packed = match encoding {
            Encoding::Gzip => {
                let mut e = GzEncoder::new(Vec::new(), Compression::default());
                e.write_all(msg).ok()?;
                e.finish().ok()?
            }
            Encoding::Deflate => {
                let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
                e.write_all(msg).ok()?;
                e.finish().ok()?
            }
        };
        out.push(1);
        out.extend_from_slice(&u32::try_from(packed.len()).ok()?.to_be_bytes());
        out.extend_from_slice(&packed);
        rest = next;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::http::HeaderValue;

    fn accepting(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-accept-encoding", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn levels_pick_algorithms_as_grpc_core() {
        use Encoding::*;
        use ResponseCompression as L;
        let both = accepting("identity,deflate,gzip");
        assert_eq!(L::None.choose(&both), None);
        assert_eq!(L::Low.choose(&both), Some(Gzip));
        assert_eq!(L::Medium.choose(&both), Some(Deflate));
        assert_eq!(L::High.choose(&both), Some(Deflate));
        let gzip = accepting("gzip");
        for l in [L::Low, L::Medium, L::High] {
            assert_eq!(l.choose(&gzip), Some(Gzip));
            assert_eq!(l.choose(&accepting("deflate")), Some(Deflate));
            assert_eq!(l.choose(&accepting("identity")), None);
            assert_eq!(l.choose(&HeaderMap::new()), None);
        }
    }

    #[test]
    fn a_compressed_body_round_trips() {
        let mut framed = vec![0, 0, 0, 0, 11];
        framed.extend_from_slice(b"hello world");
        let limits = crate::core::InflightLimits {
            requests: 1,
            bytes: 1 << 20,
        };
        let core = || InflightBytes::alone(&limits);
        for enc in [Encoding::Gzip, Encoding::Deflate] {
            let packed = deflate_body(&framed, enc).unwrap();
            assert_eq!(packed[0], 1);
            let mut charge = core();
            assert_eq!(
                inflate_body(&packed, enc, 1 << 20, &mut charge).unwrap(),
                framed
            );
            let mut charge = core();
            let e = Status::from(inflate_body(&packed, enc, 10, &mut charge).unwrap_err());
            assert_eq!(e.code(), tonic::Code::ResourceExhausted);
            let peeked = peek_first(&packed, enc, 5).unwrap();
            assert_eq!(peeked, b"\0\0\0\0\x05hello");
        }
    }
}
