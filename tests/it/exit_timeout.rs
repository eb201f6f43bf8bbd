//! SIGTERM while an inference runs past `--exit-timeout-secs` (a `Loop` that never ends by
//! itself): the real binary exits 0 within the exit timeout plus teardown, without waiting for
//! the instance thread that is still running it.

use std::time::Duration;

use crate::common::*;
use crate::load_cancel::spin_repo;
use crate::process::ServerProcess;

/// A bound on a hang only: (exit timeout 1 s + 2 s) × 10, and a bound on the startup steps.
const BOUND: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_inference_that_never_ends_exits_0() {
    let repo = spin_repo(false);
    let mut server = ServerProcess::grpc_and_metrics(
        repo.path(),
        &["--exit-timeout-secs", "1", "--shutdown-delay-secs", "0"],
    );
    let grpc = server.logged_addr(BOUND, "Started GRPCInferenceService");
    let metrics = server.logged_addr(BOUND, "Started Metrics Service");

    // One inference of `spin`: it never finishes by itself.
    let mut client = Client::connect(format!("http://{grpc}")).await.unwrap();
    let request = raw_request("spin", vec![(input("x", "FP32", &[1]), f32_bytes(&[1.0]))]);
    let _call = tokio::spawn(async move { client.model_infer(request).await });

    // Observable state, not a sleep: the instance is executing it.
    let http = reqwest::Client::new();
    wait_for("spin becomes busy", || async {
        let text = http
            .get(format!("http://{metrics}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines().any(|l| {
            l.starts_with("nereid_model_instances_busy{")
                && l.contains("model=\"spin\"")
                && l.ends_with(" 1")
        })
    })
    .await;

    let status = server.sigterm_and_wait(BOUND).await;
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        server.log_text()
    );
    assert!(
        server
            .log
            .iter()
            .any(|l| l.contains("exit timeout reached with requests still in flight")),
        "the server says it left a request behind; log:\n{}",
        server.log_text()
    );
}
