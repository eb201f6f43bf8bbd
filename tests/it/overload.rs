//! Overload control over the wire: each rejection reason with Triton's status and message, a
//! retry hint (gRPC RetryInfo + grpc-retry-pushback-ms, HTTP Retry-After), deadlines, and a
//! graceful SIGTERM of the real binary under load.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nereid::lifecycle::manager::ControlMode;
use nereid::pb::inference::infer_parameter::ParameterChoice;
use nereid::pb::inference::{InferParameter, ModelStatisticsRequest, RepositoryModelUnloadRequest};
use nereid::scheduler::QueueLimits;
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::*;

/// `simple` copied as `dyn`, one instance, `dynamic_batching { <db> }`.
pub(crate) fn repo(db: &str) -> tempfile::TempDir {
    let repo = repo_with(&[("simple", "simple"), ("dyn", "simple")]);
    let text = read_config(repo.path(), "dyn");
    write_config(
        repo.path(),
        "dyn",
        &format!(
            "{text}\ninstance_group [ {{ count: 1 kind: KIND_CPU }} ]\ndynamic_batching {{ {db} }}\n"
        ),
    );
    repo
}

pub(crate) fn request(priority: u64) -> nereid::pb::inference::ModelInferRequest {
    let (a, b) = simple_operands(1, 1);
    let mut r = simple_request("dyn", 1, &a, &b);
    if priority > 0 {
        r.parameters.insert(
            "priority".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::Uint64Param(priority)),
            },
        );
    }
    r
}

/// Sends `n` requests that will sit in the queue (the model's delay holds them) and returns their tasks.
pub(crate) fn queue_up(
    s: &TestServer,
    n: usize,
    priority: u64,
) -> Vec<tokio::task::JoinHandle<Result<(), tonic::Status>>> {
    (0..n)
        .map(|_| {
            let mut c = s.client.clone();
            tokio::spawn(async move { c.model_infer(request(priority)).await.map(|_| ()) })
        })
        .collect()
}

/// The value of `nereid_inference_request_rejected_total` for `model` and `reason`.
pub(crate) async fn rejected_metric(s: &TestServer, model: &str, reason: &str) -> u64 {
    let text = s.metrics().await;
    let series = format!(
        "nereid_inference_request_rejected_total{{model=\"{model}\",reason=\"{reason}\",version=\"1\"}} "
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(&series))
        .unwrap_or_else(|| panic!("no series {series}"));
    line[series.len()..].trim().parse().unwrap()
}

/// Asserts a gRPC overload rejection: UNAVAILABLE, the message, and a retry hint in both forms.
fn assert_rejected(r: Result<impl std::fmt::Debug, tonic::Status>, parts: &[&str]) {
    let status = assert_status(r, Code::Unavailable, parts);
    let retry = status
        .get_details_retry_info()
        .expect("google.rpc.RetryInfo detail")
        .retry_delay
        .expect("a delay");
    let pushback: u128 = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("pushback trailer")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(pushback, retry.as_millis());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_is_refused_at_once_with_a_retry_hint_over_grpc_and_http() {
    let repo =
        repo("max_queue_delay_microseconds: 500000 default_queue_policy { max_queue_size: 2 }");
    let s = TestServer::start(repo.path()).await.owning(repo);
    let queued = queue_up(&s, 2, 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    assert_rejected(s.infer(request(0)).await, &["Exceeds maximum queue size"]);
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "refused after {:?}",
        t.elapsed()
    );
    let (a, b) = simple_operands(1, 1);
    let body = serde_json::json!({"inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": a},
        {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": b}]});
    let resp = s
        .http
        .post(s.url("/v2/models/dyn/infer"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("Exceeds maximum queue size")
    );
    for q in queued {
        q.await.unwrap().expect("accepted requests complete");
    }
}

/// `dyn` with two priority levels (2 the default), batches held 500 ms, and queues of 4 of which
/// half is kept for priority 1: priority 2 is shed once 2 requests wait.
pub(crate) async fn shed_server() -> TestServer {
    let repo =
        repo("max_queue_delay_microseconds: 500000 priority_levels: 2 default_priority_level: 2");
    TestServer::start_with(repo.path(), |c| {
        c.load.queue_limits = QueueLimits {
            capacity: 4,
            priority_reserve: 0.5,
        }
    })
    .await
    .owning(repo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_priority_is_shed_first_and_the_highest_keeps_its_share() {
    let s = shed_server().await;
    let low = queue_up(&s, 2, 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_rejected(
        s.infer(request(2)).await,
        &[
            "Exceeds maximum queue size",
            "high-water mark for priority level 2",
        ],
    );
    let high = queue_up(&s, 2, 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_rejected(s.infer(request(1)).await, &["Exceeds maximum queue size"]);
    assert_eq!(rejected_metric(&s, "dyn", "shed_priority").await, 1);
    assert_eq!(rejected_metric(&s, "dyn", "queue_full").await, 1);
    for q in low.into_iter().chain(high) {
        q.await.unwrap().expect("accepted requests complete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_wide_cap_refuses_with_server_busy() {
    let repo = repo("max_queue_delay_microseconds: 500000");
    let s = TestServer::start_with(repo.path(), |c| c.inflight.requests = 2)
        .await
        .owning(repo);
    let queued = queue_up(&s, 2, 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_rejected(
        s.infer(request(0)).await,
        &["Server is busy", "--max-inflight-requests"],
    );
    for q in queued {
        q.await.unwrap().unwrap();
    }
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_expires_in_the_queue_is_answered_on_time_and_never_runs() {
    let repo = repo("max_queue_delay_microseconds: 3000000");
    let s = TestServer::start(repo.path()).await.owning(repo);
    // HTTP: the deadline header bounds the wait; the reply comes at the deadline.
    let (a, b) = simple_operands(1, 1);
    let body = serde_json::json!({"inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": a},
        {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": b}]});
    let t = Instant::now();
    let resp = s
        .http
        .post(s.url("/v2/models/dyn/infer"))
        .header("Request-Timeout-Ms", "150")
        .json(&body)
        .send()
        .await
        .unwrap();
    let waited = t.elapsed();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("Request timeout expired")
    );
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_millis(1500),
        "answered after {waited:?}"
    );
    // gRPC: the client's own deadline (grpc-timeout) travels with the request.
    let mut req = tonic::Request::new(request(0));
    req.set_timeout(Duration::from_millis(150));
    let mut c = s.client.clone();
    let t = Instant::now();
    let err = c.model_infer(req).await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "answered after {:?}",
        t.elapsed()
    );
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
        ),
        "{err:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
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
        st.execution_count, 0,
        "expired requests never reach ONNX Runtime"
    );
    assert_eq!(st.inference_stats.unwrap().fail.unwrap().count, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_is_not_ready_is_refused_with_a_retry_hint() {
    let repo = repo_with(&[("simple", "simple")]);
    let s = TestServer::start_with(repo.path(), |c| {
        c.manager.control_mode = ControlMode::Explicit;
        c.manager.startup_models = vec!["simple".into()];
    })
    .await
    .owning(repo);
    let mut c = s.client.clone();
    c.repository_model_unload(RepositoryModelUnloadRequest {
        repository_name: String::new(),
        model_name: "simple".into(),
        parameters: Default::default(),
    })
    .await
    .unwrap();
    let (a, b) = simple_operands(1, 1);
    let mut r = simple_request("simple", 1, &a, &b);
    r.model_version = "1".into();
    assert_rejected(
        s.infer(r).await,
        &["Request for unknown model: 'simple' version 1 is not at ready state"],
    );
}

/// The real binary under load: SIGTERM → NOT_SERVING while still serving for the shutdown
/// delay → new work refused → every accepted request answered → exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_accepted_request_and_exits_0() {
    // The queue delay (2.5 s) outlasts the shutdown delay (1 s): requests are still in flight
    // when new ones start being refused.
    let repo = repo("max_queue_delay_microseconds: 2500000");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nereid"))
        .args([
            "--model-repository",
            repo.path().to_str().unwrap(),
            "--grpc-port",
            "0",
            "--allow-http",
            "false",
        ])
        .args([
            "--allow-metrics",
            "false",
            "--shutdown-delay-secs",
            "1",
            "--exit-timeout-secs",
            "10",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("the nereid binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server log").unwrap();
        if let Some(rest) = line.split("Started GRPCInferenceService at ").nth(1) {
            break rest.trim().replace("0.0.0.0", "127.0.0.1");
        }
    };
    std::thread::spawn(move || for _ in lines {}); // keep draining the log
    let client = connect(addr.parse().unwrap()).await;
    let mut health =
        nereid::pb::health::health_client::HealthClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
    // Four single-row requests: below the preferred batch size (8), so they wait out the delay.
    let mut inflight = Vec::new();
    for _ in 0..4 {
        let mut c = client.clone();
        inflight.push(tokio::spawn(async move {
            c.model_infer(request(0)).await.map(|r| r.into_inner())
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // During the shutdown delay: NOT_SERVING, yet requests are still served.
    let h = health
        .check(nereid::pb::health::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        nereid::pb::health::health_check_response::ServingStatus::NotServing as i32
    );
    let mut c = client.clone();
    let (a, b) = simple_operands(1, 3);
    let served = c
        .model_infer(simple_request("simple", 1, &a, &b))
        .await
        .expect("served during the delay")
        .into_inner();
    assert_eq!(output_i32(&served, "OUTPUT0"), add(&a, &b));
    // After the delay: refused with Triton's message and a retry hint.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut c = client.clone();
    assert_rejected(
        c.model_infer(simple_request("simple", 1, &a, &b)).await,
        &["Server exiting"],
    );
    for t in inflight {
        let r = t
            .await
            .unwrap()
            .expect("every accepted request is answered");
        assert_eq!(r.model_name, "dyn");
    }
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}
