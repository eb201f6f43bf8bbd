//! Bad requests get the status code and message of behaviour.md §2, and the server keeps serving.

use bytes::Bytes;
use nereid::pb::inference::{InferTensorContents, ModelInferRequest};
use tonic::Code;

use crate::common::*;

const NO_ID: &str = "[request id: <id_unknown>] ";

fn good_pair(rows: i64) -> (Vec<i32>, Vec<i32>) {
    simple_operands(rows as usize, 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_e1() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = good_pair(1);
    let st = assert_status(
        s.infer(simple_request("nope", 1, &a, &b)).await,
        Code::InvalidArgument,
        &[],
    );
    assert_eq!(
        st.message(),
        "Request for unknown model: 'nope' is not found"
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_datatype_e7() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = good_pair(1);
    let mut req = simple_request("simple", 1, &a, &b);
    req.inputs[0].datatype = "FP32".into();
    let st = assert_status(s.infer(req).await, Code::InvalidArgument, &[]);
    assert_eq!(
        st.message(),
        format!(
            "{NO_ID}inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'"
        )
    );
    // The request id is named when given.
    let mut req = simple_request("simple", 1, &a, &b);
    req.inputs[1].datatype = "INT64".into();
    req.id = "bad-7".into();
    assert_status(
        s.infer(req).await,
        Code::InvalidArgument,
        &[
            "[request id: bad-7] inference input 'INPUT1' data-type is 'INT64', but model 'simple' expects 'INT32'",
        ],
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_shape_e8() {
    let s = TestServer::bundled_subset(&["simple", "simple_nobatch"]).await;
    let a: Vec<i32> = (0..30).collect();
    let req = raw_request(
        "simple",
        vec![
            (input("INPUT0", "INT32", &[2, 15]), i32_bytes(&a)),
            (input("INPUT1", "INT32", &[2, 15]), i32_bytes(&a)),
        ],
    );
    let st = assert_status(s.infer(req).await, Code::InvalidArgument, &[]);
    assert!(
        st.message().starts_with(&format!(
            "{NO_ID}unexpected shape for input 'INPUT0' for model 'simple'. Expected [-1,16], got [2,15]."
        )),
        "{}",
        st.message()
    );
    assert!(
        st.message().contains("max_batch_size"),
        "batching models get the note: {}",
        st.message()
    );

    // A non-batching model given a batch dimension.
    let (a, b) = good_pair(1);
    let st = assert_status(
        s.infer(simple_request("simple_nobatch", 1, &a, &b)).await,
        Code::InvalidArgument,
        &[],
    );
    assert_eq!(
        st.message(),
        format!(
            "{NO_ID}unexpected shape for input 'INPUT0' for model 'simple_nobatch'. Expected [16], got [1,16]."
        )
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_over_max_batch_size_e10() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = good_pair(9);
    let st = assert_status(
        s.infer(simple_request("simple", 9, &a, &b)).await,
        Code::InvalidArgument,
        &[],
    );
    assert_eq!(
        st.message(),
        format!("{NO_ID}inference request batch-size must be <= 8 for 'simple'")
    );
    // Exactly max_batch_size is fine.
    let (a, b) = good_pair(8);
    let resp = s.infer(simple_request("simple", 8, &a, &b)).await.unwrap();
    assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_input_e12() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, _) = good_pair(1);
    let req = raw_request(
        "simple",
        vec![(input("INPUT0", "INT32", &[1, 16]), i32_bytes(&a))],
    );
    let st = assert_status(s.infer(req).await, Code::InvalidArgument, &[]);
    assert_eq!(
        st.message(),
        format!(
            "{NO_ID}expected 2 inputs but got 1 inputs for model 'simple'. Got input(s) ['INPUT0'], but missing required input(s) ['INPUT1']. Please provide all required input(s)."
        )
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_input_e13() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = good_pair(1);
    let mut req = simple_request("simple", 1, &a, &b);
    req.inputs.push(input("EXTRA", "INT32", &[1, 16]));
    req.raw_input_contents.push(i32_bytes(&a));
    assert_status(
        s.infer(req).await,
        Code::InvalidArgument,
        &["unexpected inference input 'EXTRA' for model 'simple'"],
    );
    // Misnamed instead of extra.
    let mut req = simple_request("simple", 1, &a, &b);
    req.inputs[1].name = "INPUT9".into();
    assert_status(
        s.infer(req).await,
        Code::InvalidArgument,
        &["unexpected inference input 'INPUT9' for model 'simple'"],
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_requested_output_e14() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = good_pair(1);
    let mut req = simple_request("simple", 1, &a, &b);
    req.outputs = vec![requested("OUTPUT0"), requested("OUTPUT7")];
    assert_status(
        s.infer(req).await,
        Code::InvalidArgument,
        &["unexpected inference output 'OUTPUT7' for model 'simple'"],
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_byte_size_mismatch_e15() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = good_pair(1);
    let mut req = simple_request("simple", 1, &a, &b);
    req.raw_input_contents[1] = i32_bytes(&b[..15]);
    let st = assert_status(s.infer(req).await, Code::InvalidArgument, &[]);
    assert_eq!(
        st.message(),
        format!(
            "{NO_ID}input byte size mismatch for input 'INPUT1' for model 'simple'. Expected 64, got 60"
        )
    );

    // Typed contents with the wrong element count are a byte-size mismatch too.
    let req = ModelInferRequest {
        model_name: "simple".into(),
        inputs: vec![
            typed_input(
                "INPUT0",
                "INT32",
                &[1, 16],
                InferTensorContents {
                    int_contents: a.clone(),
                    ..Default::default()
                },
            ),
            typed_input(
                "INPUT1",
                "INT32",
                &[1, 16],
                InferTensorContents {
                    int_contents: vec![1, 2, 3],
                    ..Default::default()
                },
            ),
        ],
        ..Default::default()
    };
    assert_status(
        s.infer(req).await,
        Code::InvalidArgument,
        &["input byte size mismatch for input 'INPUT1' for model 'simple'. Expected 64, got 12"],
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bytes_tensor_e16() {
    let s = TestServer::bundled_subset(&["simple", "simple_identity"]).await;
    // A truncated length prefix after one good element.
    let mut raw = bytes_tensor(&[b"abc"]).to_vec();
    raw.extend_from_slice(&[2, 0]);
    let req = raw_request(
        "simple_identity",
        vec![(input("INPUT0", "BYTES", &[1, 2]), raw.into())],
    );
    assert_status(
        s.infer(req).await,
        Code::InvalidArgument,
        &[
            "incomplete string length indicator",
            "'INPUT0'",
            "simple_identity",
        ],
    );

    // A length prefix pointing past the end.
    let mut raw = 100u32.to_le_bytes().to_vec();
    raw.extend_from_slice(b"short");
    let req = raw_request(
        "simple_identity",
        vec![(input("INPUT0", "BYTES", &[1, 1]), raw.into())],
    );
    assert_status(
        s.infer(req).await,
        Code::InvalidArgument,
        &["'INPUT0'", "simple_identity"],
    );

    // Well-formed records, but fewer than the shape says.
    let req = raw_request(
        "simple_identity",
        vec![(
            input("INPUT0", "BYTES", &[1, 3]),
            bytes_tensor(&[b"a", b"b"]),
        )],
    );
    assert_status(
        s.infer(req).await,
        Code::InvalidArgument,
        &["expected 3 string elements", "'INPUT0'"],
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_input_e17() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = good_pair(1);
    let mut req = simple_request("simple", 1, &a, &b);
    req.inputs[1].name = "INPUT0".into();
    assert_status(
        s.infer(req).await,
        Code::InvalidArgument,
        &["input 'INPUT0' already exists in request"],
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_without_data_e18() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, _) = good_pair(1);
    // Raw form with one entry short.
    let req = ModelInferRequest {
        model_name: "simple".into(),
        inputs: vec![
            input("INPUT0", "INT32", &[1, 16]),
            input("INPUT1", "INT32", &[1, 16]),
        ],
        raw_input_contents: vec![i32_bytes(&a)],
        ..Default::default()
    };
    let st = assert_status(s.infer(req).await, Code::InvalidArgument, &[]);
    assert_eq!(
        st.message(),
        "unable to find data for input tensor 'INPUT1' for model 'simple' in request."
    );
    // No data at all.
    let req = ModelInferRequest {
        model_name: "simple".into(),
        inputs: vec![
            input("INPUT0", "INT32", &[1, 16]),
            input("INPUT1", "INT32", &[1, 16]),
        ],
        ..Default::default()
    };
    let st = assert_status(s.infer(req).await, Code::InvalidArgument, &[]);
    assert_eq!(
        st.message(),
        "unable to find data for input tensor 'INPUT0' for model 'simple' in request."
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contents_and_raw_together_e19() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = good_pair(1);
    let mut req = simple_request("simple", 1, &a, &b);
    req.inputs[0].contents = Some(InferTensorContents {
        int_contents: a.clone(),
        ..Default::default()
    });
    let st = assert_status(s.infer(req).await, Code::InvalidArgument, &[]);
    assert_eq!(
        st.message(),
        "contents field must not be specified when using raw_input_contents for 'INPUT0' for model 'simple'"
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_contents_of_the_wrong_kind() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let req = ModelInferRequest {
        model_name: "simple".into(),
        inputs: vec![
            typed_input(
                "INPUT0",
                "INT32",
                &[1, 16],
                InferTensorContents {
                    fp32_contents: vec![0.0; 16],
                    ..Default::default()
                },
            ),
            typed_input(
                "INPUT1",
                "INT32",
                &[1, 16],
                InferTensorContents {
                    int_contents: vec![0; 16],
                    ..Default::default()
                },
            ),
        ],
        ..Default::default()
    };
    assert_status(
        s.infer(req).await,
        Code::InvalidArgument,
        &["unexpected explicit tensor data for input tensor 'INPUT0'"],
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_string_not_an_integer_e5() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = good_pair(1);
    let mut req = simple_request("simple", 1, &a, &b);
    req.model_version = "abc".into();
    assert_status(
        s.infer(req).await,
        Code::InvalidArgument,
        &[
            "failed to get model version from specified version string 'abc'",
            "version should be an integral value > 0",
        ],
    );
    let mut req = simple_request("simple", 1, &a, &b);
    req.model_version = "-1".into();
    assert_status(
        s.infer(req).await,
        Code::InvalidArgument,
        &["invalid model version specified '-1'"],
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_the_grpc_limit() {
    let repo = bundled_repo();
    let s = TestServer::start_with(&repo, |c| c.grpc_max_message_bytes = 1 << 20).await;
    // The client's own limits are 64 MiB, so the server is the one refusing.
    let big = Bytes::from(vec![0u8; 2 << 20]);
    let req = raw_request(
        "simple",
        vec![
            (input("INPUT0", "INT32", &[1, 16]), big.clone()),
            (input("INPUT1", "INT32", &[1, 16]), big),
        ],
    );
    let st = s
        .infer(req)
        .await
        .expect_err("a 4 MiB request exceeds the 1 MiB limit");
    assert_eq!(st.code(), Code::OutOfRange, "{st:?}");
    assert!(st.message().contains("message length too large"), "{st:?}");
    // The connection and server survive.
    s.assert_still_serving().await;
}

fn param(
    choice: nereid::pb::inference::infer_parameter::ParameterChoice,
) -> nereid::pb::inference::InferParameter {
    nereid::pb::inference::InferParameter {
        parameter_choice: Some(choice),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_parameters() {
    use nereid::pb::inference::infer_parameter::ParameterChoice as P;
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = good_pair(1);

    // Well-typed reserved keys and custom keys are accepted (grpc-protocol.md §5.1).
    let mut req = simple_request("simple", 1, &a, &b);
    req.parameters
        .insert("priority".into(), param(P::Uint64Param(1)));
    req.parameters
        .insert("timeout".into(), param(P::Int64Param(5_000_000)));
    req.parameters
        .insert("my_flag".into(), param(P::BoolParam(true)));
    req.parameters
        .insert("my_text".into(), param(P::StringParam("x".into())));
    req.parameters
        .insert("my_ratio".into(), param(P::DoubleParam(0.5)));
    let resp = s.infer(req).await.unwrap();
    assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));

    // E38: a reserved key with the wrong type.
    let mut req = simple_request("simple", 1, &a, &b);
    req.parameters
        .insert("sequence_id".into(), param(P::BoolParam(true)));
    let st = assert_status(s.infer(req).await, Code::InvalidArgument, &[]);
    assert_eq!(
        st.message(),
        "invalid value type for 'sequence_id' parameter, expected int64_param or string_param."
    );

    // Keys starting with triton_ are reserved.
    let mut req = simple_request("simple", 1, &a, &b);
    req.parameters
        .insert("triton_whatever".into(), param(P::BoolParam(true)));
    assert_status(
        s.infer(req).await,
        Code::InvalidArgument,
        &["triton_whatever"],
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_memory_input_is_unknown_region_e34() {
    use nereid::pb::inference::infer_parameter::ParameterChoice as P;
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = good_pair(1);
    let mut req = simple_request("simple", 1, &a, &b);
    req.inputs[0].parameters.insert(
        "shared_memory_region".into(),
        param(P::StringParam("region0".into())),
    );
    req.inputs[0]
        .parameters
        .insert("shared_memory_byte_size".into(), param(P::Int64Param(64)));
    req.raw_input_contents.truncate(1);
    let st = assert_status(s.infer(req).await, Code::NotFound, &[]);
    assert_eq!(
        st.message(),
        "Unable to find shared memory region: 'region0'"
    );
    s.assert_still_serving().await;
}
