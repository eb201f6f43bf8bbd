//! The sequence batcher (sequence-batching.md) on the fake backend: each fake sequence model
//! copies its request input and every control input it receives to outputs, so a response
//! shows exactly what the model was fed; the fake log shows each execution's rows. Scheduling
//! is held with the fake gate and observed through metrics and statistics, never the clock.

use std::collections::HashMap;

use nereid::pb::inference::infer_parameter::ParameterChoice as P;
use nereid::pb::inference::{
    InferParameter, ModelInferRequest, ModelInferResponse, ModelStatistics, ModelStatisticsRequest,
};
use nereid::testing::FakeModel;
use tempfile::TempDir;
use tokio::task::JoinHandle;

use crate::common::*;

/// A sequence id as a request carries it.
#[derive(Clone, Debug)]
pub(crate) enum Id {
    Int(i64),
    Str(&'static str),
    None,
}

/// One control input of a fake sequence model: (tensor name, config `control` entry body,
/// datatype as the model sees it).
pub(crate) type ControlDef = (&'static str, &'static str, &'static str);

pub(crate) const START: ControlDef = (
    "START",
    "kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ]",
    "INT32",
);
pub(crate) const END: ControlDef = (
    "END",
    "kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ]",
    "INT32",
);
pub(crate) const READY: ControlDef = (
    "READY",
    "kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ]",
    "INT32",
);
pub(crate) const CORRID: ControlDef = (
    "CORRID",
    "kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64",
    "UINT64",
);

fn config_type(datatype: &str) -> String {
    match datatype {
        "BYTES" => "TYPE_STRING".into(),
        "FP32" => "TYPE_FP32".into(),
        t => format!("TYPE_{t}"),
    }
}

/// Writes fake sequence model `name`: input INPUT (INT32 `[1]`), the controls as graph inputs
/// only, and outputs OUTPUT (a copy of INPUT) and `O_<control>` (a copy of each control).
/// `batching` is `max_batch_size`; `strategy` goes inside `sequence_batching { }`.
pub(crate) fn write_seq_model(
    repo: &std::path::Path,
    name: &str,
    max_batch_size: u32,
    instances: u32,
    strategy: &str,
    controls: &[ControlDef],
) {
    let dims = |t: &str| {
        let dtype = nereid::internals::DataType::from_wire(t).expect("a datatype");
        if max_batch_size > 0 {
            (dtype, vec![-1, 1])
        } else {
            (dtype, vec![1])
        }
    };
    let mut model = FakeModel::default();
    let (t, d) = dims("INT32");
    model.inputs.push(("INPUT".into(), t, d.clone()));
    model.outputs.push(("OUTPUT".into(), t, d));
    let mut outputs = String::from("{ name: \"OUTPUT\" data_type: TYPE_INT32 dims: [ 1 ] }");
    let mut control_inputs = Vec::new();
    for (cname, body, datatype) in controls {
        let (t, d) = dims(datatype);
        model.inputs.push((cname.to_string(), t, d.clone()));
        model.outputs.push((format!("O_{cname}"), t, d));
        outputs.push_str(&format!(
            ", {{ name: \"O_{cname}\" data_type: {} dims: [ 1 ] }}",
            config_type(datatype)
        ));
        control_inputs.push(format!("{{ name: \"{cname}\" control [ {{ {body} }} ] }}"));
    }
    let config = format!(
        "name: \"{name}\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: {max_batch_size}\n\
         input [ {{ name: \"INPUT\" data_type: TYPE_INT32 dims: [ 1 ] }} ]\n\
         output [ {outputs} ]\n\
         instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n\
         sequence_batching {{ {strategy} control_input [ {} ] }}\n",
        control_inputs.join(", ")
    );
    std::fs::create_dir_all(repo.join(name)).unwrap();
    std::fs::write(repo.join(name).join("config.pbtxt"), config).unwrap();
    write_fake_model(repo, name, 1, &model);
}

pub(crate) fn seq_repo() -> TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A request of `value` to `model` with the sequence parameters as tritonclient sends them
/// (start and end always, when there is an id).
pub(crate) fn seq_request(
    model: &str,
    value: i32,
    id: Id,
    start: bool,
    end: bool,
) -> ModelInferRequest {
    let mut req = raw_request(
        model,
        vec![(input("INPUT", "INT32", &[1, 1]), i32_bytes(&[value]))],
    );
    let p = |c| InferParameter {
        parameter_choice: Some(c),
    };
    let id = match id {
        Id::Int(n) => Some(P::Int64Param(n)),
        Id::Str(s) => Some(P::StringParam(s.into())),
        Id::None => None,
    };
    if let Some(id) = id {
        req.parameters = HashMap::from([
            ("sequence_id".to_string(), p(id)),
            ("sequence_start".to_string(), p(P::BoolParam(start))),
            ("sequence_end".to_string(), p(P::BoolParam(end))),
        ]);
    }
    req.id = format!("{model}-{value}");
    req
}

pub(crate) fn spawn_infer(
    s: &TestServer,
    req: ModelInferRequest,
) -> JoinHandle<Result<ModelInferResponse, tonic::Status>> {
    let mut c = s.client.clone();
    tokio::spawn(async move { c.model_infer(req).await.map(|r| r.into_inner()) })
}

pub(crate) async fn statistics(s: &TestServer, model: &str) -> ModelStatistics {
    let mut c = s.client.clone();
    c.model_statistics(ModelStatisticsRequest {
        name: model.into(),
        version: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .model_stats
    .remove(0)
}

pub(crate) async fn seq_metric(s: &TestServer, name: &str, model: &str) -> f64 {
    sample(
        &s.metrics().await,
        name,
        &format!("model=\"{model}\",version=\"1\""),
    )
    .unwrap_or_else(|| panic!("no {name} for {model}"))
}

/// Holds the gate closed and sends `req`; returns once its execution has begun (and waits).
async fn hold(
    s: &TestServer,
    req: ModelInferRequest,
) -> JoinHandle<Result<ModelInferResponse, tonic::Status>> {
    s.gate().close();
    let before = s.fake_log().activity().started;
    let h = spawn_infer(s, req);
    s.wait_fake("the instance holds a request", |a| a.started > before)
        .await;
    h
}

fn ok(
    r: Result<Result<ModelInferResponse, tonic::Status>, tokio::task::JoinError>,
) -> ModelInferResponse {
    r.expect("task").expect("request succeeds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_pads_empty_slots_and_counts_them_in_batch_stats() {
    let repo = seq_repo();
    write_seq_model(repo.path(), "seq", 4, 1, "", &[START, END, READY, CORRID]);
    let s = TestServer::start_fake(repo.path()).await.owning(repo);
    // Sequence 1 takes slot 0 and holds the instance.
    let a = hold(&s, seq_request("seq", 10, Id::Int(1), true, false)).await;
    // Sequence 2 takes slot 1 and waits.
    let b = spawn_infer(&s, seq_request("seq", 20, Id::Int(2), true, false));
    s.wait_pending("seq", 1).await;
    s.gate().open();
    let a = ok(a.await);
    assert_eq!(output_i32(&a, "OUTPUT"), vec![10]);
    // Slot 0 has nothing queued: row 0 is padding, row 1 is sequence 2.
    let b = ok(b.await);
    assert_eq!(output_i32(&b, "OUTPUT"), vec![20]);
    assert_eq!(output_i32(&b, "O_START"), vec![1]);
    assert_eq!(output_i32(&b, "O_READY"), vec![1]);
    assert_eq!(output_i32(&b, "O_END"), vec![0]);
    assert_eq!(output(&b, "O_CORRID").1.as_ref(), 2u64.to_le_bytes());
    assert_eq!(s.fake_log().batches(), vec![1, 2]);
    let st = statistics(&s, "seq").await;
    assert_eq!(st.inference_count, 2, "padding rows are not inferences");
    assert_eq!(st.execution_count, 2);
    let sizes: Vec<u64> = st.batch_stats.iter().map(|b| b.batch_size).collect();
    assert_eq!(sizes, vec![1, 2], "batch_stats count the padding row");
    assert_eq!(seq_metric(&s, "nereid_sequence_active", "seq").await, 2.0);
    // The END of sequence 1 frees slot 0; a continuation after it is refused.
    let end = s
        .infer(seq_request("seq", 11, Id::Int(1), false, true))
        .await
        .unwrap();
    assert_eq!(output_i32(&end, "O_END"), vec![1]);
    assert_eq!(output_i32(&end, "O_START"), vec![0]);
    assert_status(
        s.infer(seq_request("seq", 12, Id::Int(1), false, false))
            .await,
        tonic::Code::InvalidArgument,
        &[
            "inference request for sequence 1 to model 'seq' must specify the START flag on the first request of the sequence",
        ],
    );
    assert_eq!(seq_metric(&s, "nereid_sequence_active", "seq").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oldest_takes_one_request_per_sequence_per_batch_in_order() {
    let repo = seq_repo();
    write_seq_model(
        repo.path(),
        "dyna",
        4,
        1,
        "oldest { max_candidate_sequences: 4 }",
        &[START, END, READY, CORRID],
    );
    let s = TestServer::start_fake(repo.path()).await.owning(repo);
    let a1 = hold(&s, seq_request("dyna", 1, Id::Int(7), true, false)).await;
    let a2 = spawn_infer(&s, seq_request("dyna", 2, Id::Int(7), false, false));
    s.wait_pending("dyna", 1).await;
    let a3 = spawn_infer(&s, seq_request("dyna", 3, Id::Int(7), false, true));
    s.wait_pending("dyna", 2).await;
    let b1 = spawn_infer(&s, seq_request("dyna", 100, Id::Int(8), true, true));
    s.wait_pending("dyna", 3).await;
    s.gate().open();
    for (h, v, end) in [(a1, 1, 0), (a2, 2, 0), (a3, 3, 1), (b1, 100, 1)] {
        let r = ok(h.await);
        assert_eq!(output_i32(&r, "OUTPUT"), vec![v]);
        assert_eq!(output_i32(&r, "O_END"), vec![end]);
        assert_eq!(output_i32(&r, "O_READY"), vec![1]);
    }
    // [a1], then [a2, b1] (one per sequence, oldest first, no padding), then [a3].
    assert_eq!(s.fake_log().batches(), vec![1, 2, 1]);
    assert_eq!(*s.fake_log().leaders.lock(), vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_control_form_reaches_the_model() {
    let repo = seq_repo();
    let start = (
        "S",
        "kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0.5, 2.5 ]",
        "FP32",
    );
    let end = (
        "E",
        "kind: CONTROL_SEQUENCE_END bool_false_true: [ false, true ]",
        "BOOL",
    );
    let ready = (
        "R",
        "kind: CONTROL_SEQUENCE_READY int32_false_true: [ 7, 9 ]",
        "INT32",
    );
    let corrids = [
        ("c_u64", "UINT64", 8usize),
        ("c_i64", "INT64", 8),
        ("c_u32", "UINT32", 4),
        ("c_i32", "INT32", 4),
    ];
    for (name, t, _) in corrids {
        let body: &'static str = Box::leak(
            format!("kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_{t}").into_boxed_str(),
        );
        write_seq_model(
            repo.path(),
            name,
            2,
            1,
            "",
            &[start, end, ready, ("C", body, t)],
        );
    }
    let string = (
        "C",
        "kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING",
        "BYTES",
    );
    write_seq_model(repo.path(), "c_str", 0, 1, "", &[string]);
    let s = TestServer::start_fake(repo.path()).await.owning(repo);
    let id: u64 = 0x1_0000_0005;
    for (name, _, width) in corrids {
        let r = s
            .infer(seq_request(name, 3, Id::Int(id as i64), true, false))
            .await
            .unwrap();
        assert_eq!(output_f32(&r, "O_S"), vec![2.5], "{name}");
        assert_eq!(output(&r, "O_E").1.as_ref(), [0u8], "{name}");
        assert_eq!(output_i32(&r, "O_R"), vec![9], "{name}");
        assert_eq!(
            output(&r, "O_C").1.as_ref(),
            &id.to_le_bytes()[..width],
            "{name}"
        );
        let r = s
            .infer(seq_request(name, 4, Id::Int(id as i64), false, true))
            .await
            .unwrap();
        assert_eq!(output_f32(&r, "O_S"), vec![0.5], "{name}");
        assert_eq!(output(&r, "O_E").1.as_ref(), [1u8], "{name}");
    }
    // c_str does not batch: INPUT is [1] and each control one element [1].
    let nobatch = |id| {
        let mut r = seq_request("c_str", 3, id, true, true);
        r.inputs[0].shape = vec![1];
        r
    };
    let r = s.infer(nobatch(Id::Str("seq-a"))).await.unwrap();
    assert_eq!(output_strings(&r, "O_C"), vec!["seq-a".to_string()]);
    assert_eq!(output(&r, "O_C").0.shape, vec![1]);
    // An integer id (or none) does not fit a string CORRID: the type error comes first.
    for id in [Id::Int(5), Id::None] {
        assert_status(
            s.infer(nobatch(id)).await,
            tonic::Code::InvalidArgument,
            &[
                "[request id: c_str-3] sequence batching control 'C' data-type is 'UINT64', but model 'c_str' expects 'BYTES'",
            ],
        );
    }
    assert_status(
        s.infer(seq_request("c_u32", 3, Id::Str("x"), true, true))
            .await,
        tonic::Code::InvalidArgument,
        &["sequence batching control 'C' data-type is 'BYTES', but model 'c_u32' expects 'UINT32'"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sequence_loses_its_slot() {
    let repo = seq_repo();
    write_seq_model(
        repo.path(),
        "seq",
        1,
        1,
        "max_sequence_idle_microseconds: 20000",
        &[START, READY],
    );
    let s = TestServer::start_fake(repo.path()).await.owning(repo);
    s.infer(seq_request("seq", 1, Id::Int(5), true, false))
        .await
        .unwrap();
    wait_for("the idle sequence is released", || async {
        seq_metric(&s, "nereid_sequence_idle_released_total", "seq").await == 1.0
    })
    .await;
    assert_eq!(seq_metric(&s, "nereid_sequence_active", "seq").await, 0.0);
    assert_status(
        s.infer(seq_request("seq", 2, Id::Int(5), false, false))
            .await,
        tonic::Code::InvalidArgument,
        &["must specify the START flag on the first request of the sequence"],
    );
    // The freed slot serves a new sequence, whose first request sees START.
    let r = s
        .infer(seq_request("seq", 3, Id::Int(6), true, true))
        .await
        .unwrap();
    assert_eq!(output_i32(&r, "O_START"), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sequences_wait_in_the_backlog_until_a_slot_frees() {
    let repo = seq_repo();
    // max_batch_size 1, one instance: one slot.
    write_seq_model(repo.path(), "seq", 1, 1, "", &[START, END, READY, CORRID]);
    let s = TestServer::start_fake_with(repo.path(), |c| {
        c.load.queue_limits.sequence_backlog = 1;
    })
    .await
    .owning(repo);
    s.infer(seq_request("seq", 1, Id::Int(1), true, false))
        .await
        .unwrap();
    // Sequence 2 waits for the slot; a third new sequence finds the backlog full.
    let b = spawn_infer(&s, seq_request("seq", 2, Id::Int(2), true, true));
    wait_for("sequence 2 is backlogged", || async {
        seq_metric(&s, "nereid_sequence_backlog", "seq").await == 1.0
    })
    .await;
    let refused = s
        .infer(seq_request("seq", 3, Id::Int(3), true, false))
        .await;
    let status = assert_status(
        refused,
        tonic::Code::Unavailable,
        &["Exceeds maximum queue size"],
    );
    assert!(
        status.metadata().get("grpc-retry-pushback-ms").is_some(),
        "an overload refusal carries a retry hint"
    );
    // Sequence 1 continues meanwhile (never shed), then ends: sequence 2 gets the slot.
    let mid = s
        .infer(seq_request("seq", 4, Id::Int(1), false, false))
        .await
        .unwrap();
    assert_eq!(output_i32(&mid, "OUTPUT"), vec![4]);
    assert!(!b.is_finished(), "sequence 2 has no slot yet");
    s.infer(seq_request("seq", 5, Id::Int(1), false, true))
        .await
        .unwrap();
    let b = ok(b.await);
    assert_eq!(output_i32(&b, "O_START"), vec![1]);
    assert_eq!(output(&b, "O_CORRID").1.as_ref(), 2u64.to_le_bytes());
    assert_eq!(seq_metric(&s, "nereid_sequence_backlog", "seq").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_keeps_its_order_across_connections_and_protocols() {
    let repo = seq_repo();
    write_seq_model(repo.path(), "seq", 4, 1, "", &[START, END, READY]);
    let s = TestServer::start_fake(repo.path()).await.owning(repo);
    let first = hold(&s, seq_request("seq", 1, Id::Str("conv"), true, false)).await;
    // The second request on another gRPC connection, the third over HTTP: queued in order.
    let mut other = s.new_client().await;
    let second = tokio::spawn(async move {
        other
            .model_infer(seq_request("seq", 2, Id::Str("conv"), false, false))
            .await
            .map(|r| r.into_inner())
    });
    s.wait_pending("seq", 1).await;
    let http = s.http.clone();
    let url = s.url("/v2/models/seq/infer");
    let third = tokio::spawn(async move {
        http.post(url)
            .json(&serde_json::json!({
                "parameters": {"sequence_id": "conv", "sequence_start": false, "sequence_end": true},
                "inputs": [{"name": "INPUT", "datatype": "INT32", "shape": [1, 1], "data": [3]}],
                "outputs": [{"name": "OUTPUT"}, {"name": "O_END"}]
            }))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    });
    s.wait_pending("seq", 2).await;
    s.gate().open();
    assert_eq!(output_i32(&ok(first.await), "OUTPUT"), vec![1]);
    assert_eq!(output_i32(&ok(second.await), "OUTPUT"), vec![2]);
    let third = third.await.unwrap();
    assert_eq!(
        third["outputs"][0]["data"],
        serde_json::json!([3]),
        "{third}"
    );
    assert_eq!(
        third["outputs"][1]["data"],
        serde_json::json!([1]),
        "{third}"
    );
    assert_eq!(*s.fake_log().leaders.lock(), vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlogged_sequence_times_out_by_its_timeout_parameter() {
    let repo = seq_repo();
    write_seq_model(repo.path(), "seq", 1, 1, "", &[START, READY]);
    let s = TestServer::start_fake(repo.path()).await.owning(repo);
    s.infer(seq_request("seq", 1, Id::Int(1), true, false))
        .await
        .unwrap();
    let mut waiting = seq_request("seq", 2, Id::Int(2), true, false);
    waiting.parameters.insert(
        "timeout".to_string(),
        InferParameter {
            parameter_choice: Some(P::Int64Param(20_000)),
        },
    );
    let st = assert_status(s.infer(waiting).await, tonic::Code::Unavailable, &[]);
    assert_eq!(
        st.message(),
        "[request id: seq-2] timeout of the corresponding sequence has been expired"
    );
    let failed = sample(
        &s.metrics().await,
        "nv_inference_request_failure",
        "model=\"seq\",reason=\"REJECTED\",version=\"1\"",
    );
    assert_eq!(failed, Some(1.0));
    // The running sequence never timed out.
    let r = s
        .infer(seq_request("seq", 3, Id::Int(1), false, true))
        .await
        .unwrap();
    assert_eq!(output_i32(&r, "OUTPUT"), vec![3]);
}
