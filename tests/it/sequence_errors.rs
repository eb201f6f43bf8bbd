//! Bad sequence requests and bad sequence models (sequence-batching.md §1–§4): Triton's
//! statuses and texts over both protocols, each refusal counted, every other sequence still
//! served; control inputs checked against the graph at load.

use std::collections::HashMap;

use nereid::pb::inference::InferParameter;
use nereid::pb::inference::infer_parameter::ParameterChoice as P;
use serde_json::json;
use tonic::Code;

use crate::common::*;
use crate::sequence::*;

const E27: &str =
    "inference request to model 'seq' must specify a non-zero or non-empty correlation ID";
const E29: &str = "inference request to model 'seq' must specify batch-size 1 due to requirements of sequence batcher";

async fn http_infer(
    s: &TestServer,
    model: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = s
        .http
        .post(s.url(&format!("/v2/models/{model}/infer")))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn http_body(params: serde_json::Value, rows: usize) -> serde_json::Value {
    json!({
        "parameters": params,
        "inputs": [{"name": "INPUT", "datatype": "INT32", "shape": [rows, 1], "data": vec![1; rows]}],
        "outputs": [{"name": "OUTPUT"}]
    })
}

fn with_param(
    mut req: nereid::pb::inference::ModelInferRequest,
    key: &str,
    p: P,
) -> nereid::pb::inference::ModelInferRequest {
    req.parameters.insert(
        key.to_string(),
        InferParameter {
            parameter_choice: Some(p),
        },
    );
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sequence_requests_get_tritons_answers_over_both_protocols() {
    let repo = seq_repo();
    write_seq_model(repo.path(), "seq", 4, 1, "", &[START, END, READY, CORRID]);
    let s = TestServer::start_fake(repo.path()).await.owning(repo);
    // A sequence that runs across every refusal below.
    s.infer(seq_request("seq", 1, Id::Int(77), true, false))
        .await
        .unwrap();

    // gRPC, in Triton's order of checks: (request, status, exact message).
    let mut batch2 = seq_request("seq", 1, Id::Int(9), true, false);
    batch2.inputs[0].shape = vec![2, 1];
    batch2.raw_input_contents[0] = i32_bytes(&[1, 2]);
    let mut control = seq_request("seq", 1, Id::Int(9), true, false);
    control.inputs.push(input("START", "INT32", &[1, 1]));
    control.raw_input_contents.push(i32_bytes(&[1]));
    let param = |id, key, p| with_param(seq_request("seq", 1, id, true, false), key, p);
    let long: &'static str = Box::leak("x".repeat(129).into_boxed_str());
    let not_started = "inference request for sequence 31337 to model 'seq' must specify the START flag on the first request of the sequence";
    let id_kind =
        "invalid value type for 'sequence_id' parameter, expected int64_param or string_param.";
    let cases = [
        (
            seq_request("seq", 1, Id::None, false, false),
            Code::InvalidArgument,
            E27,
        ),
        (
            seq_request("seq", 1, Id::Int(0), true, false),
            Code::InvalidArgument,
            E27,
        ),
        (
            seq_request("seq", 1, Id::Int(31337), false, false),
            Code::InvalidArgument,
            not_started,
        ),
        (batch2, Code::InvalidArgument, E29),
        (
            control,
            Code::InvalidArgument,
            "[request id: seq-1] unexpected inference input 'START' for model 'seq'",
        ),
        (
            seq_request("seq", 1, Id::Str("abc"), true, false),
            Code::InvalidArgument,
            "[request id: seq-1] sequence batching control 'CORRID' data-type is 'BYTES', but model 'seq' expects 'UINT64'",
        ),
        (
            param(Id::None, "sequence_id", P::BoolParam(true)),
            Code::InvalidArgument,
            id_kind,
        ),
        (
            param(Id::None, "sequence_id", P::Uint64Param(5)),
            Code::InvalidArgument,
            id_kind,
        ),
        (
            param(Id::Int(9), "sequence_start", P::Int64Param(1)),
            Code::InvalidArgument,
            "invalid value type for 'sequence_start' parameter, expected bool_param.",
        ),
        (
            seq_request("seq", 1, Id::Str(long), true, false),
            Code::Unimplemented,
            "string correlation ID cannot be longer than 128 characters",
        ),
    ];
    for (req, code, text) in cases {
        let st = assert_status(s.infer(req).await, code, &[]);
        assert_eq!(st.message(), text);
    }

    // HTTP: the same refusals, as 400 (501 for the long id) with Triton's texts.
    let cases = [
        (json!({}), 1, 400, E27.to_string()),
        (json!({"sequence_id": 31338}), 1, 400, "inference request for sequence 31338 to model 'seq' must specify the START flag on the first request of the sequence".to_string()),
        (json!({"sequence_id": 9, "sequence_start": true}), 2, 400, E29.to_string()),
        (json!({"sequence_id": -3}), 1, 400, "Unable to parse 'sequence_id': attempt to access JSON non-string as string".to_string()),
        (json!({"sequence_id": 9, "sequence_end": "yes"}), 1, 400, "Unable to parse 'sequence_end': attempt to access JSON non-boolean as boolean".to_string()),
        (json!({"sequence_id": "x".repeat(129)}), 1, 501, "string correlation ID cannot be longer than 128 characters".to_string()),
    ];
    for (params, rows, code, text) in cases {
        let (status, body) = http_infer(&s, "seq", http_body(params.clone(), rows)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (code, Some(text.as_str())),
            "{params}"
        );
    }
    let counted = sample(
        &s.metrics().await,
        "nereid_inference_request_rejected_total",
        "model=\"seq\",reason=\"invalid\",version=\"1\"",
    );
    assert!(
        counted.unwrap_or(0.0) >= 8.0,
        "refusals are counted: {counted:?}"
    );

    // Sequence 77 was never disturbed, over either protocol.
    let (status, body) = http_infer(&s, "seq", http_body(json!({"sequence_id": 77}), 1)).await;
    assert_eq!(status, 200, "{body}");
    let end = s
        .infer(seq_request("seq", 5, Id::Int(77), false, true))
        .await
        .unwrap();
    assert_eq!(output_i32(&end, "O_END"), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_sequence_batching_ignores_sequence_parameters() {
    let repo = fake_repo(&["simple"]);
    let s = TestServer::start_fake(repo.path()).await.owning(repo);
    let (a, b) = simple_operands(1, 1);
    let mut req = simple_request("simple", 1, &a, &b);
    req.parameters = HashMap::from([
        (
            "sequence_id".to_string(),
            InferParameter {
                parameter_choice: Some(P::Int64Param(0)),
            },
        ),
        (
            "sequence_end".to_string(),
            InferParameter {
                parameter_choice: Some(P::BoolParam(true)),
            },
        ),
    ]);
    let r = s.infer(req).await.unwrap();
    assert_eq!(output_i32(&r, "OUTPUT0"), add(&a, &b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_inputs_are_checked_against_the_graph_at_load() {
    let repo = seq_repo();
    write_seq_model(repo.path(), "good", 4, 1, "", &[START]);
    write_seq_model(repo.path(), "lacks", 4, 1, "", &[START, CORRID]);
    // The graph of "lacks" has no CORRID input.
    let mut model = nereid::testing::FakeModel::default();
    let t = nereid::internals::DataType::Int32;
    model.inputs = vec![
        ("INPUT".into(), t, vec![-1, 1]),
        ("START".into(), t, vec![-1, 1]),
    ];
    model.outputs = vec![("OUTPUT".into(), t, vec![-1, 1])];
    write_fake_model(repo.path(), "lacks", 1, &model);
    let text = std::fs::read_to_string(repo.path().join("lacks/config.pbtxt")).unwrap();
    let text = text.replace(", { name: \"O_START\" data_type: TYPE_INT32 dims: [ 1 ] }, { name: \"O_CORRID\" data_type: TYPE_UINT64 dims: [ 1 ] }", "");
    std::fs::write(repo.path().join("lacks/config.pbtxt"), text).unwrap();
    write_seq_model(
        repo.path(),
        "twice",
        4,
        1,
        "",
        &[(
            "START",
            "kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] fp32_false_true: [ 0, 1 ]",
            "INT32",
        )],
    );
    let s = TestServer::start_fake_with(repo.path(), |c| c.exit_on_error = false)
        .await
        .owning(repo);
    let idx = s.index(false).await;
    let reason = |m: &str| rows(&idx, m)[0].reason.clone();
    assert_eq!(rows(&idx, "good")[0].state, "READY");
    assert!(
        reason("lacks").contains("sequence batching control input 'CORRID' (CONTROL_SEQUENCE_CORRID) is not an input of the model"),
        "{}",
        reason("lacks")
    );
    assert!(
        reason("twice").contains("sequence batching specifies more than one from 'int32_false_true', 'fp32_false_true' and 'bool_false_true' for CONTROL_SEQUENCE_START for twice"),
        "{}",
        reason("twice")
    );
}
