//! The head of a gRPC-framed `ModelInferRequest`: fields 1–4 (`model_name`, `model_version`,
//! `id`, `parameters`) come before the tensors, so the first bytes of a body name the model,
//! priority and timeout. `find_head` finds them in whatever bytes have arrived (the client's:
//! every length is checked). Used to refuse early (`early.rs`) and to name the model of a
//! compressed request refused while it expanded (`inflating.rs`).

use super::compression::PREFIX;

/// Most body bytes read while looking for the head; a longer head is left to the handler.
pub(crate) const HEAD_LIMIT: usize = 64 << 10;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::grpc::params;
    use crate::pb::inference as pb;
    use proptest::prelude::*;
    use prost::Message;

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
