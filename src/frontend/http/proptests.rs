//! Property tests of the HTTP front-end's parsers of untrusted bytes: the binary-header split
//! (`Inference-Header-Content-Length` and the `binary_data_size` slices after it), the JSON
//! tensor reader and decompression. Each returns an error rather than panicking, and what it
//! returns is bounded by its input (slices inside the body, no more bytes than the limit).

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::compress::{Encoding, compress, decompress};
use super::convert::{header_length, infer_request};
use super::tensor_json::decode_input;
use crate::tensor::DataType;

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec((".{0,4}", inner), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn dtype() -> impl Strategy<Value = DataType> {
    proptest::sample::select(DataType::ALL.to_vec())
}

/// Whether `part` is a slice of `whole`'s memory (no copy, nothing outside it).
fn inside(part: &Bytes, whole: &Bytes) -> bool {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    part.is_empty() || (p >= w && p + part.len() <= w + whole.len())
}

fn check_split(header: Option<&str>, body: Bytes) -> Result<(), TestCaseError> {
    let Ok(len) = header_length(header, body.len()) else {
        return Ok(());
    };
    prop_assert!(len.is_none_or(|n| n <= body.len()));
    if let Ok((req, _)) = infer_request("m", "", body.clone(), len) {
        let split = len.unwrap_or(body.len());
        let binary: usize = req
            .inputs
            .iter()
            .filter(|i| inside(&i.data, &body))
            .map(|i| i.data.len())
            .sum();
        prop_assert!(binary <= body.len() - split);
    }
    Ok(())
}

proptest! {
    /// Any header value and any body: the split is inside the body, or an error.
    #[test]
    fn any_header_and_body_split_inside_the_body(
        header in proptest::option::of(prop_oneof![".{0,12}", any::<i64>().prop_map(|n| n.to_string())]),
        body in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        check_split(header.as_deref(), Bytes::from(body))?;
    }

    /// A JSON header whose inputs claim any `binary_data_size`, then any binary bytes: each
    /// input's data is a slice of what follows the header, never past the body's end.
    #[test]
    fn binary_sizes_that_lie_are_errors(
        sizes in proptest::collection::vec(prop_oneof![0u64..64, any::<u64>()], 0..4),
        binary in proptest::collection::vec(any::<u8>(), 0..128),
        skew in -4i64..4,
    ) {
        let inputs: Vec<Value> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"name": format!("I{i}"), "datatype": "UINT8", "shape": [n],
                                 "parameters": {"binary_data_size": n}}))
            .collect();
        let header = serde_json::to_vec(&json!({"inputs": inputs})).unwrap();
        let claimed = (header.len() as i64 + skew).to_string();
        let mut body = header;
        body.extend_from_slice(&binary);
        check_split(Some(&claimed), Bytes::from(body))?;
    }

    /// Any JSON as an input's `data`, any datatype and element count: an error, or exactly
    /// `count` elements (fixed-size types) or no more than the JSON's own size plus the length
    /// prefixes (BYTES).
    #[test]
    fn any_json_data_decodes_to_count_elements_or_an_error(
        data in json_value(),
        dtype in dtype(),
        count in prop_oneof![0usize..16, any::<usize>()],
    ) {
        if let Ok(bytes) = decode_input("I", dtype, count, &data) {
            match dtype.byte_size() {
                Some(size) => prop_assert_eq!(Some(bytes.len()), count.checked_mul(size)),
                None => {
                    let text = serde_json::to_string(&data).unwrap().len();
                    prop_assert!(bytes.len() <= 4 * count + text);
                }
            }
        }
    }

    /// Any bytes as a compressed body: an error, or no more than `limit` bytes.
    #[test]
    fn any_compressed_body_stays_within_the_limit(
        data in proptest::collection::vec(any::<u8>(), 0..256),
        gzip in any::<bool>(),
        limit in 0usize..4096,
    ) {
        let encoding = if gzip { Encoding::Gzip } else { Encoding::Deflate };
        if let Ok(Some(out)) = decompress(encoding, &data, limit) {
            prop_assert!(out.len() <= limit);
        }
    }

    /// Highly compressible bodies (a few bytes expanding to many): refused past the limit,
    /// exact within it.
    #[test]
    fn bombs_are_cut_at_the_limit(
        len in 0usize..200_000,
        gzip in any::<bool>(),
        limit in 0usize..100_000,
    ) {
        let encoding = if gzip { Encoding::Gzip } else { Encoding::Deflate };
        let plain = vec![0u8; len];
        let packed = compress(encoding, &plain).unwrap();
        match decompress(encoding, &packed, limit).unwrap() {
            Some(out) => prop_assert!(len <= limit && out == plain),
            None => prop_assert!(len > limit),
        }
    }
}
