//! Dynamic batching and queue policies against the real server and ONNX Runtime, and on the
//! fake backend where a test must hold the instance busy (the batcher's timing rules are
//! covered with a fake backend in `src/scheduler/tests/`).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use nereid::pb::inference::infer_parameter::ParameterChoice;
use nereid::pb::inference::{InferParameter, ModelInferRequest, ModelStatisticsRequest};
use tonic::Code;

use crate::common::*;

/// A copy of `simple` named `name` with one instance and `dynamic_batching { <db> }`.
fn batching_repo(name: &str, db: &str) -> tempfile::TempDir {
    let repo = repo_with(&[(name, "simple"), ("simple", "simple")]);
    let text = read_config(repo.path(), name);
    write_config(
        repo.path(),
        name,
        &format!(
            "{text}\ninstance_group [ {{ count: 1 kind: KIND_CPU }} ]\ndynamic_batching {{ {db} }}\n"
        ),
    );
    repo
}

fn with_params(
    mut req: ModelInferRequest,
    params: &[(&str, ParameterChoice)],
) -> ModelInferRequest {
    req.parameters = params
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                InferParameter {
                    parameter_choice: Some(v.clone()),
                },
            )
        })
        .collect::<HashMap<_, _>>();
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_executions_and_get_their_own_rows() {
    // The delay (an hour) outlasts any test run, so batches leave only when full (8 rows):
    // the 16 requests share executions however fast they arrive.
    let repo = batching_repo("dyn", "max_queue_delay_microseconds: 3600000000");
    let s = TestServer::start(repo.path()).await.owning(repo);
    let n = 16;
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut c = s.client.clone();
        tasks.push(tokio::spawn(async move {
            let (a, b) = simple_operands(1, i);
            let resp = c
                .model_infer(simple_request("dyn", 1, &a, &b))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b), "request {i}");
            assert_eq!(output_i32(&resp, "OUTPUT1"), sub(&a, &b), "request {i}");
            assert_eq!(resp.outputs[0].shape, vec![1, 16]);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut c = s.client.clone();
    let st = c
        .model_statistics(ModelStatisticsRequest {
            name: "dyn".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .model_stats
        .remove(0);
    assert_eq!(st.inference_count, n as u64);
    assert!(
        st.execution_count < n as u64,
        "16 requests ran in {} executions",
        st.execution_count
    );
    let rows: u64 = st
        .batch_stats
        .iter()
        .map(|b| b.batch_size * b.compute_infer.unwrap().count)
        .sum();
    assert_eq!(rows, n as u64);
    assert!(
        st.batch_stats.iter().any(|b| b.batch_size > 1),
        "{:?}",
        st.batch_stats
    );
    let inf = st.inference_stats.unwrap();
    assert_eq!(inf.success.unwrap().count, n as u64);
    assert_eq!(inf.queue.unwrap().count, n as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_rejects_at_once_and_accepted_requests_complete() {
    // The level takes two; the one instance is held busy (the fake backend's gate, which
    // computes `simple`'s sums) so they stay queued.
    let s =
        crate::overload::fake_server("default_queue_policy { max_queue_size: 2 }", |_| {}).await;
    let busy = crate::overload::occupy(&s, 0).await;
    let finished = s.fake_log().activity().finished;
    let mut accepted = Vec::new();
    for i in 0..2 {
        let mut c = s.client.clone();
        accepted.push(tokio::spawn(async move {
            let (a, b) = simple_operands(1, i);
            c.model_infer(simple_request("dyn", 1, &a, &b))
                .await
                .map(|r| output_i32(&r.into_inner(), "OUTPUT0") == add(&a, &b))
        }));
    }
    s.wait_pending("dyn", 2).await;
    let (a, b) = simple_operands(1, 9);
    assert_status(
        s.infer(simple_request("dyn", 1, &a, &b)).await,
        Code::Unavailable,
        &["Exceeds maximum queue size"],
    );
    // At once: refused while every accepted request still waits, not once a place freed up.
    assert_eq!(
        s.fake_log().activity().finished,
        finished,
        "rejected before any execution ended"
    );
    s.gate().open();
    busy.await.unwrap().expect("the held request completes");
    for t in accepted {
        assert!(
            t.await.unwrap().unwrap(),
            "accepted requests complete correctly"
        );
    }
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_timeout_is_answered_when_it_expires() {
    // The delay (an hour) outlasts any test run: the request is answered only by its timeout.
    let repo = batching_repo(
        "dyn",
        "max_queue_delay_microseconds: 3600000000 default_queue_policy { default_timeout_microseconds: 100000 }",
    );
    let s = TestServer::start(repo.path()).await.owning(repo);
    let (a, b) = simple_operands(1, 1);
    let t = Instant::now();
    assert_status(
        s.infer(simple_request("dyn", 1, &a, &b)).await,
        Code::Unavailable,
        &["Request timeout expired"],
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(100),
        "answered after {waited:?}"
    );
    let mut c = s.client.clone();
    let st = c
        .model_statistics(ModelStatisticsRequest {
            name: "dyn".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .model_stats
        .remove(0);
    assert_eq!(
        st.inference_stats.unwrap().fail.unwrap().count,
        1,
        "a timed-out request counts as a failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_timeout_still_runs() {
    let repo = batching_repo(
        "dyn",
        "max_queue_delay_microseconds: 300000 default_queue_policy { default_timeout_microseconds: 50000 timeout_action: DELAY }",
    );
    let s = TestServer::start(repo.path()).await.owning(repo);
    let (a, b) = simple_operands(2, 3);
    let resp = s.infer(simple_request("dyn", 2, &a, &b)).await.unwrap();
    assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_and_timeout_parameters_are_checked() {
    let repo = batching_repo(
        "dyn",
        "priority_levels: 2 default_priority_level: 2 default_queue_policy { allow_timeout_override: false }",
    );
    let s = TestServer::start(repo.path()).await.owning(repo);
    let (a, b) = simple_operands(1, 1);
    let req = || simple_request("dyn", 1, &a, &b);
    // tritonclient sends priority as uint64_param.
    let ok = s
        .infer(with_params(
            req(),
            &[("priority", ParameterChoice::Uint64Param(1))],
        ))
        .await
        .unwrap();
    assert_eq!(output_i32(&ok, "OUTPUT0"), add(&a, &b));
    assert_status(
        s.infer(with_params(
            req(),
            &[("priority", ParameterChoice::Uint64Param(3))],
        ))
        .await,
        Code::InvalidArgument,
        &["priority 3 is out of range for model 'dyn'", "1..=2"],
    );
    assert_status(
        s.infer(with_params(
            req(),
            &[("timeout", ParameterChoice::Int64Param(1000))],
        ))
        .await,
        Code::InvalidArgument,
        &["timeout override is not allowed for model 'dyn'"],
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_instance_fails_to_load_without_gpus() {
    let repo = repo_with(&[("gpu", "simple"), ("simple", "simple")]);
    let text = read_config(repo.path(), "gpu");
    write_config(
        repo.path(),
        "gpu",
        &format!("{text}\ninstance_group [ {{ kind: KIND_GPU }} ]\n"),
    );
    let err = TestServer::try_start_with(repo.path(), |_| {})
        .await
        .err()
        .expect("startup fails with exit_on_error");
    assert!(
        err.message.contains("KIND_GPU but no GPUs are available"),
        "{}",
        err.message
    );
    let s = TestServer::start_with(repo.path(), |c| c.exit_on_error = false)
        .await
        .owning(repo);
    let index = s.index(false).await;
    let gpu = rows(&index, "gpu");
    assert_eq!(gpu.len(), 1);
    assert_eq!(gpu[0].state, "UNAVAILABLE");
    assert!(
        gpu[0].reason.contains(
            "instance group gpu_0 of model gpu has kind KIND_GPU but no GPUs are available"
        ),
        "{}",
        gpu[0].reason
    );
    s.assert_still_serving().await;
}
