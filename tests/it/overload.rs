//! Overload control over the wire: each rejection reason with Triton's status and message, a
//! retry hint (gRPC RetryInfo + grpc-retry-pushback-ms, HTTP Retry-After), deadlines, and a
//! graceful SIGTERM of the real binary under load.
//!
//! The queue tests run on the fake backend: its gate holds the one instance busy, so requests
//! stay queued for as long as the test needs, whatever the machine's speed.

use std::time::Duration;

use tokio::time::Instant;

use tokio::task::JoinHandle;

use nereid::ControlMode;
use nereid::QueueLimits;
use nereid::pb::inference::infer_parameter::ParameterChoice;
use nereid::pb::inference::{InferParameter, ModelStatisticsRequest, RepositoryModelUnloadRequest};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::*;
use crate::process::ServerProcess;

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

/// A fake-backend server with `simple` and `dyn` (a copy of `simple` with one instance and
/// `dynamic_batching { <db> }`), after `edit` adjusted the configuration.
pub(crate) async fn fake_server(
    db: &str,
    edit: impl FnOnce(&mut nereid::ServerConfig),
) -> TestServer {
    let repo = fake_repo(&["simple", "dyn"]);
    let text = read_config(repo.path(), "dyn");
    write_config(
        repo.path(),
        "dyn",
        &format!(
            "{text}\ninstance_group [ {{ count: 1 kind: KIND_CPU }} ]\ndynamic_batching {{ {db} }}\n"
        ),
    );
    TestServer::start_fake_with(repo.path(), edit)
        .await
        .owning(repo)
}

/// Closes the fake backend's gate and sends one request of `priority` to `dyn`, which its one
/// instance takes and holds until the gate opens: returns once it is executing.
pub(crate) async fn occupy(s: &TestServer, priority: u64) -> JoinHandle<Result<(), tonic::Status>> {
    s.gate().close();
    let before = s.fake_log().activity().started;
    let mut c = s.client.clone();
    let busy = tokio::spawn(async move { c.model_infer(request(priority)).await.map(|_| ()) });
    s.wait_fake("the instance holds a request", |a| {
        a.started > before && a.running == 1
    })
    .await;
    busy
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

/// Sends `n` requests that will sit in the queue (a busy instance or the model's delay holds
/// them) and returns their tasks.
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
    let s = fake_server("default_queue_policy { max_queue_size: 2 }", |_| {}).await;
    let busy = occupy(&s, 0).await;
    let finished = s.fake_log().activity().finished;
    let queued = queue_up(&s, 2, 0);
    s.wait_pending("dyn", 2).await;
    assert_rejected(s.infer(request(0)).await, &["Exceeds maximum queue size"]);
    // At once: refused while the instance still holds its request, not once a place freed up.
    assert_eq!(
        s.fake_log().activity().finished,
        finished,
        "refused before any execution ended"
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
    s.gate().open();
    busy.await.unwrap().expect("the held request completes");
    for q in queued {
        q.await.unwrap().expect("accepted requests complete");
    }
}

/// A fake-backend `dyn` with two priority levels (2 the default) and queues of 4 of which half
/// is kept for priority 1: priority 2 is shed once 2 requests wait. `occupy` holds its instance.
pub(crate) async fn shed_server() -> TestServer {
    fake_server("priority_levels: 2 default_priority_level: 2", |c| {
        c.load.queue_limits = QueueLimits {
            capacity: 4,
            priority_reserve: 0.5,
            ..Default::default()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_priority_is_shed_first_and_the_highest_keeps_its_share() {
    let s = shed_server().await;
    let busy = occupy(&s, 2).await;
    let low = queue_up(&s, 2, 2);
    s.wait_pending("dyn", 2).await;
    assert_rejected(
        s.infer(request(2)).await,
        &[
            "Exceeds maximum queue size",
            "high-water mark for priority level 2",
        ],
    );
    let high = queue_up(&s, 2, 1);
    s.wait_pending("dyn", 4).await;
    assert_rejected(s.infer(request(1)).await, &["Exceeds maximum queue size"]);
    assert_eq!(rejected_metric(&s, "dyn", "shed_priority").await, 1);
    assert_eq!(rejected_metric(&s, "dyn", "queue_full").await, 1);
    s.gate().open();
    busy.await.unwrap().expect("the held request completes");
    for q in low.into_iter().chain(high) {
        q.await.unwrap().expect("accepted requests complete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_wide_cap_refuses_with_server_busy() {
    let s = fake_server("", |c| c.inflight.requests = 2).await;
    // Two accepted requests: one executing (held), one queued behind it.
    let busy = occupy(&s, 0).await;
    let queued = queue_up(&s, 1, 0);
    s.wait_pending("dyn", 1).await;
    assert_rejected(
        s.infer(request(0)).await,
        &["Server is busy", "--max-inflight-requests"],
    );
    s.gate().open();
    busy.await.unwrap().unwrap();
    for q in queued {
        q.await.unwrap().unwrap();
    }
    s.assert_still_serving().await;
}

/// `dyn`'s model statistics.
async fn dyn_stats(s: &TestServer) -> nereid::pb::inference::ModelStatistics {
    let mut c = s.client.clone();
    c.model_statistics(ModelStatisticsRequest {
        name: "dyn".into(),
        version: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .model_stats
    .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_expires_in_the_queue_is_answered_on_time_and_never_runs() {
    // The delay (an hour) outlasts any test run: a single request is answered only by its
    // deadline, so an answer at all shows that it came at the deadline, not at the delay's end.
    let repo = repo("max_queue_delay_microseconds: 3600000000");
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
        waited >= Duration::from_millis(150),
        "answered after {waited:?}"
    );
    // gRPC: the client's own deadline (grpc-timeout) travels with the request.
    let mut req = tonic::Request::new(request(0));
    req.set_timeout(Duration::from_millis(150));
    let mut c = s.client.clone();
    let err = c.model_infer(req).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
        ),
        "{err:?}"
    );
    // The server counts the gRPC call once its deadline passes there too.
    wait_for("both expired requests counted as failures", || async {
        dyn_stats(&s)
            .await
            .inference_stats
            .unwrap()
            .fail
            .unwrap()
            .count
            == 2
    })
    .await;
    let st = dyn_stats(&s).await;
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
/// delay → GOAWAY, listener closed → every accepted request answered → exit status 0. Each step waits
/// on what the server shows (its pending count, its health, its answers), not on the clock;
/// only the shutdown delay itself is wall-clock time, as the feature is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_accepted_request_and_exits_0() {
    // The queue delay (2.5 s) outlasts the shutdown delay (1 s): requests are still in flight
    // when new ones start being refused.
    let repo = repo("max_queue_delay_microseconds: 2500000");
    let mut server = ServerProcess::grpc_and_metrics(
        repo.path(),
        &["--shutdown-delay-secs", "1", "--exit-timeout-secs", "10"],
    );
    let addr = server.logged_addr(WAIT_LIMIT, "Started GRPCInferenceService");
    let metrics = server.logged_addr(WAIT_LIMIT, "Started Metrics Service");
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
    let metrics = metrics.parse().unwrap();
    wait_for("the four requests are queued", || async {
        let (_, text) = http_get(metrics, "GET", "/metrics").await;
        sample(
            &text,
            "nv_inference_pending_request_count",
            r#"model="dyn",version="1""#,
        ) == Some(4.0)
    })
    .await;
    server.sigterm();
    // During the shutdown delay: NOT_SERVING, yet requests are still served.
    let not_serving = nereid::pb::health::health_check_response::ServingStatus::NotServing as i32;
    wait_for("health turns NOT_SERVING", || {
        let mut health = health.clone();
        async move {
            let h = health
                .check(nereid::pb::health::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            h.status == not_serving
        }
    })
    .await;
    let h = health
        .check(nereid::pb::health::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.status, not_serving);
    let mut c = client.clone();
    let (a, b) = simple_operands(1, 3);
    let served = c
        .model_infer(simple_request("simple", 1, &a, &b))
        .await
        .expect("served during the delay")
        .into_inner();
    assert_eq!(output_i32(&served, "OUTPUT0"), add(&a, &b));
    // After the delay: the connection got GOAWAY and the listener closed, so new calls fail
    // to reach the server (which clients and proxies retry elsewhere) instead of being
    // answered "Server exiting" on the open connection.
    wait_for("new requests no longer reach the server", || async {
        let mut c = client.clone();
        match c.model_infer(simple_request("simple", 1, &a, &b)).await {
            Ok(_) => false,
            Err(status) => {
                // Refused at connect (UNAVAILABLE), or queued by the client on the
                // connection as it closed (CANCELLED): never sent, never answered.
                assert!(
                    matches!(status.code(), Code::Unavailable | Code::Cancelled),
                    "{status:?}"
                );
                assert!(!status.message().contains("Server exiting"), "{status:?}");
                true
            }
        }
    })
    .await;
    for t in inflight {
        let r = t
            .await
            .unwrap()
            .expect("every accepted request is answered");
        assert_eq!(r.model_name, "dyn");
    }
    let status = server.wait_exit(WAIT_LIMIT).await;
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        server.log_text()
    );
}
