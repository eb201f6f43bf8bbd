//! Every tensor datatype round-trips bit-exactly; BYTES tensors in and out.

use crate::common::*;

/// (model suffix, wire datatype, element size in bytes)
const TYPES: &[(&str, &str, usize)] = &[
    ("bool", "BOOL", 1),
    ("uint8", "UINT8", 1),
    ("uint16", "UINT16", 2),
    ("uint32", "UINT32", 4),
    ("uint64", "UINT64", 8),
    ("int8", "INT8", 1),
    ("int16", "INT16", 2),
    ("int32", "INT32", 4),
    ("int64", "INT64", 8),
    ("fp16", "FP16", 2),
    ("bf16", "BF16", 2),
    ("fp32", "FP32", 4),
    ("fp64", "FP64", 8),
];

/// Deterministic pseudo-random bytes (xorshift), so any bit pattern (NaN payloads, denormals,
/// extremes) must pass through unchanged.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_models_round_trip_every_datatype() {
    let s = TestServer::bundled_subset(&[
        "identity_bf16",
        "identity_bool",
        "identity_fp16",
        "identity_fp32",
        "identity_fp64",
        "identity_int16",
        "identity_int32",
        "identity_int64",
        "identity_int8",
        "identity_uint16",
        "identity_uint32",
        "identity_uint64",
        "identity_uint8",
    ])
    .await;
    for (i, &(suffix, datatype, size)) in TYPES.iter().enumerate() {
        let model = format!("identity_{suffix}");
        let mut data = noise(6 * size, i as u64 + 1);
        if datatype == "BOOL" {
            data = data.iter().map(|b| b & 1).collect();
            assert!(
                data.contains(&0) && data.contains(&1),
                "sample covers both values"
            );
        }
        let req = raw_request(
            &model,
            vec![(input("INPUT0", datatype, &[2, 3]), data.clone().into())],
        );
        let resp = s
            .infer(req)
            .await
            .unwrap_or_else(|e| panic!("{model}: {e:?}"));
        assert_eq!(resp.model_name, model);
        let (o, raw) = output(&resp, "OUTPUT0");
        assert_eq!(o.datatype, datatype, "{model}");
        assert_eq!(o.shape, vec![2, 3], "{model}");
        assert_eq!(
            raw.as_ref(),
            data.as_slice(),
            "{model} returns its input bit for bit"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_models_take_variable_lengths() {
    let s = TestServer::bundled_subset(&["identity_fp32"]).await;
    for (rows, cols) in [(1i64, 1i64), (8, 5), (3, 0)] {
        let data = noise((rows * cols * 4) as usize, 99);
        let req = raw_request(
            "identity_fp32",
            vec![(input("INPUT0", "FP32", &[rows, cols]), data.clone().into())],
        );
        let resp = s
            .infer(req)
            .await
            .unwrap_or_else(|e| panic!("[{rows},{cols}]: {e:?}"));
        let (o, raw) = output(&resp, "OUTPUT0");
        assert_eq!(o.shape, vec![rows, cols]);
        assert_eq!(raw.as_ref(), data.as_slice());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_string_adds_decimal_strings() {
    let s = TestServer::bundled_subset(&["simple_string"]).await;
    let a: Vec<i32> = (0..32).map(|i| i * 11 - 50).collect();
    let b: Vec<i32> = (0..32).map(|i| 7 - i).collect();
    let text = |v: &[i32]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let req = raw_request(
        "simple_string",
        vec![
            (input("INPUT0", "BYTES", &[2, 16]), bytes_tensor(&text(&a))),
            (input("INPUT1", "BYTES", &[2, 16]), bytes_tensor(&text(&b))),
        ],
    );
    let resp = s.infer(req).await.unwrap();
    assert_eq!(output(&resp, "OUTPUT0").0.shape, vec![2, 16]);
    assert_eq!(output_strings(&resp, "OUTPUT0"), text(&add(&a, &b)));
    assert_eq!(output_strings(&resp, "OUTPUT1"), text(&sub(&a, &b)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_string_with_typed_bytes_contents() {
    let s = TestServer::bundled_subset(&["simple_string"]).await;
    let a: Vec<i32> = (0..16).collect();
    let b: Vec<i32> = (0..16).map(|i| 100 * i).collect();
    let contents = |v: &[i32]| nereid::pb::inference::InferTensorContents {
        bytes_contents: v
            .iter()
            .map(|x| bytes::Bytes::from(x.to_string()))
            .collect(),
        ..Default::default()
    };
    let req = nereid::pb::inference::ModelInferRequest {
        model_name: "simple_string".into(),
        inputs: vec![
            typed_input("INPUT0", "BYTES", &[1, 16], contents(&a)),
            typed_input("INPUT1", "BYTES", &[1, 16], contents(&b)),
        ],
        ..Default::default()
    };
    let resp = s.infer(req).await.unwrap();
    let want: Vec<String> = add(&a, &b).iter().map(|x| x.to_string()).collect();
    assert_eq!(output_strings(&resp, "OUTPUT0"), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_identity_round_trips_bytes_of_varied_lengths() {
    let s = TestServer::bundled_subset(&["simple_identity"]).await;
    let long = vec![b'x'; 300];
    let elements: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"a".to_vec(),
        b"hello world".to_vec(),
        "naïve".as_bytes().to_vec(),
        b"".to_vec(),
        long,
        "日本語 ✓\t\n".as_bytes().to_vec(),
        b"".to_vec(),
    ];
    let req = raw_request(
        "simple_identity",
        vec![(input("INPUT0", "BYTES", &[2, 4]), bytes_tensor(&elements))],
    );
    let resp = s.infer(req).await.unwrap();
    let (o, raw) = output(&resp, "OUTPUT0");
    assert_eq!(o.shape, vec![2, 4]);
    assert_eq!(
        raw.as_ref(),
        bytes_tensor(&elements).as_ref(),
        "exact length-prefixed layout"
    );
    assert_eq!(output_bytes(&resp, "OUTPUT0"), elements);

    // All elements empty.
    let empties: Vec<&[u8]> = vec![b""; 3];
    let req = raw_request(
        "simple_identity",
        vec![(input("INPUT0", "BYTES", &[1, 3]), bytes_tensor(&empties))],
    );
    let resp = s.infer(req).await.unwrap();
    assert_eq!(output_bytes(&resp, "OUTPUT0"), vec![Vec::<u8>::new(); 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_with_nul_and_invalid_utf8_pass_through_unchanged() {
    // ONNX Runtime string tensors are filled and read with explicit lengths: NUL bytes and
    // invalid UTF-8 are carried byte for byte (issue 17).
    let s = TestServer::bundled_subset(&["simple", "simple_identity"]).await;
    let elements: [&[u8]; 3] = [b"ok", b"a\0b", b"\xff\x00\xc3"];
    let req = raw_request(
        "simple_identity",
        vec![(input("INPUT0", "BYTES", &[1, 3]), bytes_tensor(&elements))],
    );
    let resp = s.infer(req).await.unwrap();
    assert_eq!(output_bytes(&resp, "OUTPUT0"), elements.map(<[u8]>::to_vec));
    s.assert_still_serving().await;
}
