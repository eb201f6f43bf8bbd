//! ModelInfer on the INT32/FP32 models: batches, typed contents, output selection,
//! classification, ids and versions.

use nereid::pb::inference::{InferTensorContents, ModelInferRequest};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_batch_of_one() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = simple_operands(1, 3);
    let resp = s.infer(simple_request("simple", 1, &a, &b)).await.unwrap();
    assert_eq!(resp.model_name, "simple");
    assert_eq!(resp.model_version, "1");
    assert_eq!(resp.id, "");
    let names: Vec<&str> = resp.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, vec!["OUTPUT0", "OUTPUT1"]);
    assert_eq!(resp.raw_output_contents.len(), 2);
    for o in &resp.outputs {
        assert_eq!(o.shape, vec![1, 16]);
        assert_eq!(o.datatype, "INT32");
        assert!(o.contents.is_none(), "outputs are returned raw only");
    }
    assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
    assert_eq!(output_i32(&resp, "OUTPUT1"), sub(&a, &b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_batch_of_several_rows() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    for rows in [2usize, 5, 8] {
        let (a, b) = simple_operands(rows, rows as i32);
        let resp = s
            .infer(simple_request("simple", rows as i64, &a, &b))
            .await
            .unwrap();
        assert_eq!(output(&resp, "OUTPUT0").0.shape, vec![rows as i64, 16]);
        assert_eq!(output(&resp, "OUTPUT1").0.shape, vec![rows as i64, 16]);
        assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b), "rows={rows}");
        assert_eq!(output_i32(&resp, "OUTPUT1"), sub(&a, &b), "rows={rows}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_int_contents_instead_of_raw() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = simple_operands(2, 4);
    let req = ModelInferRequest {
        model_name: "simple".into(),
        inputs: vec![
            typed_input(
                "INPUT0",
                "INT32",
                &[2, 16],
                InferTensorContents {
                    int_contents: a.clone(),
                    ..Default::default()
                },
            ),
            typed_input(
                "INPUT1",
                "INT32",
                &[2, 16],
                InferTensorContents {
                    int_contents: b.clone(),
                    ..Default::default()
                },
            ),
        ],
        ..Default::default()
    };
    let resp = s.infer(req).await.unwrap();
    // Output stays raw even when the input was typed (grpc-protocol.md §3.3).
    assert_eq!(resp.raw_output_contents.len(), 2);
    assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
    assert_eq!(output_i32(&resp, "OUTPUT1"), sub(&a, &b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_contents_narrow_to_small_integer_types() {
    let s = TestServer::bundled_subset(&[
        "identity_bool",
        "identity_fp64",
        "identity_int8",
        "identity_uint16",
    ])
    .await;
    // INT8 from int_contents: low-order byte, as Triton narrows.
    let req = ModelInferRequest {
        model_name: "identity_int8".into(),
        inputs: vec![typed_input(
            "INPUT0",
            "INT8",
            &[1, 6],
            InferTensorContents {
                int_contents: vec![-1, 127, -128, 5, 0, 300],
                ..Default::default()
            },
        )],
        ..Default::default()
    };
    let resp = s.infer(req).await.unwrap();
    let (o, raw) = output(&resp, "OUTPUT0");
    assert_eq!(o.shape, vec![1, 6]);
    assert_eq!(raw.as_ref(), &[0xff, 0x7f, 0x80, 5, 0, 44]);

    // UINT16 from uint_contents.
    let req = ModelInferRequest {
        model_name: "identity_uint16".into(),
        inputs: vec![typed_input(
            "INPUT0",
            "UINT16",
            &[1, 3],
            InferTensorContents {
                uint_contents: vec![1, 65535, 65537],
                ..Default::default()
            },
        )],
        ..Default::default()
    };
    let resp = s.infer(req).await.unwrap();
    assert_eq!(
        output(&resp, "OUTPUT0").1.as_ref(),
        &[1, 0, 0xff, 0xff, 1, 0]
    );

    // BOOL and FP64 through their own repeated fields.
    let req = ModelInferRequest {
        model_name: "identity_bool".into(),
        inputs: vec![typed_input(
            "INPUT0",
            "BOOL",
            &[1, 3],
            InferTensorContents {
                bool_contents: vec![true, false, true],
                ..Default::default()
            },
        )],
        ..Default::default()
    };
    assert_eq!(
        output(&s.infer(req).await.unwrap(), "OUTPUT0").1.as_ref(),
        &[1, 0, 1]
    );
    let req = ModelInferRequest {
        model_name: "identity_fp64".into(),
        inputs: vec![typed_input(
            "INPUT0",
            "FP64",
            &[1, 2],
            InferTensorContents {
                fp64_contents: vec![1.5, -2.25],
                ..Default::default()
            },
        )],
        ..Default::default()
    };
    let raw: Vec<u8> = [1.5f64, -2.25]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(
        output(&s.infer(req).await.unwrap(), "OUTPUT0").1.as_ref(),
        raw.as_slice()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_output_subset() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = simple_operands(3, 2);
    let mut req = simple_request("simple", 3, &a, &b);
    req.outputs = vec![requested("OUTPUT1")];
    let resp = s.infer(req).await.unwrap();
    assert_eq!(resp.outputs.len(), 1);
    assert_eq!(resp.raw_output_contents.len(), 1);
    assert_eq!(resp.outputs[0].name, "OUTPUT1");
    assert_eq!(resp.outputs[0].shape, vec![3, 16]);
    assert_eq!(output_i32(&resp, "OUTPUT1"), sub(&a, &b));

    // Requested order is the response order.
    let mut req = simple_request("simple", 3, &a, &b);
    req.outputs = vec![requested("OUTPUT1"), requested("OUTPUT0")];
    let resp = s.infer(req).await.unwrap();
    let names: Vec<&str> = resp.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, vec!["OUTPUT1", "OUTPUT0"]);
    assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classification_top_k() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    // Row 0: sums 1..=16 ascending (top at index 15); row 1: descending (top at index 0).
    let a: Vec<i32> = (0..16).chain((0..16).rev()).collect();
    let b = vec![1; 32];
    let mut req = simple_request("simple", 2, &a, &b);
    req.outputs = vec![classification("OUTPUT0", 2), requested("OUTPUT1")];
    let resp = s.infer(req).await.unwrap();
    let (o, _) = output(&resp, "OUTPUT0");
    assert_eq!(o.datatype, "BYTES");
    assert_eq!(o.shape, vec![2, 2]);
    assert_eq!(
        output_strings(&resp, "OUTPUT0"),
        vec!["16:15", "15:14", "16:0", "15:1"]
    );
    // The other output is unaffected.
    assert_eq!(output_i32(&resp, "OUTPUT1"), sub(&a, &b));

    // k larger than the row: clipped to 16 elements per row.
    let (a, b) = simple_operands(1, 1);
    let mut req = simple_request("simple", 1, &a, &b);
    req.outputs = vec![classification("OUTPUT0", 100)];
    let resp = s.infer(req).await.unwrap();
    assert_eq!(output(&resp, "OUTPUT0").0.shape, vec![1, 16]);
    let top = output_strings(&resp, "OUTPUT0");
    let mut sums = add(&a, &b);
    sums.sort_unstable_by(|x, y| y.cmp(x));
    let values: Vec<i32> = top
        .iter()
        .map(|t| t.split(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(values, sums);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_echoed_and_version_reported() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = simple_operands(1, 9);
    let mut req = simple_request("simple", 1, &a, &b);
    req.id = "req-42".into();
    req.model_version = String::new();
    let resp = s.infer(req).await.unwrap();
    assert_eq!(resp.id, "req-42");
    assert_eq!(resp.model_name, "simple");
    assert_eq!(resp.model_version, "1");

    let mut req = simple_request("simple", 1, &a, &b);
    req.model_version = "1".into();
    assert_eq!(s.infer(req).await.unwrap().model_version, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_nobatch_takes_unbatched_shape() {
    let s = TestServer::bundled_subset(&["simple", "simple_nobatch"]).await;
    let (a, b) = simple_operands(1, 5);
    let resp = s
        .infer(simple_request("simple_nobatch", 0, &a, &b))
        .await
        .unwrap();
    assert_eq!(output(&resp, "OUTPUT0").0.shape, vec![16]);
    assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
    assert_eq!(output_i32(&resp, "OUTPUT1"), sub(&a, &b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_sub_autocomplete_fp32() {
    let s = TestServer::bundled_subset(&["add_sub_autocomplete"]).await;
    let x: Vec<f32> = (0..12).map(|i| i as f32 / 4.0).collect();
    let y: Vec<f32> = (0..12).map(|i| 0.5 - i as f32 * 1.25).collect();
    let req = raw_request(
        "add_sub_autocomplete",
        vec![
            (input("x", "FP32", &[3, 4]), f32_bytes(&x)),
            (input("y", "FP32", &[3, 4]), f32_bytes(&y)),
        ],
    );
    let resp = s.infer(req).await.unwrap();
    assert_eq!(output(&resp, "sum").0.shape, vec![3, 4]);
    let sum: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    let diff: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
    assert_eq!(output_f32(&resp, "sum"), sum);
    assert_eq!(output_f32(&resp, "diff"), diff);
}
