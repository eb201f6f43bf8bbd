//! Models that fail to load: with exit_on_error the server refuses to start; without it the
//! server starts, serves the rest, reports the failure in the index and is not ready.

use nereid::pb::health::{HealthCheckRequest, health_check_response::ServingStatus};
use nereid::pb::inference::ServerLiveRequest;
use tonic::Code;

use crate::common::*;

/// Starts `repo` twice: once with exit_on_error (must fail naming `model`), once without
/// (must start). Returns the running server and `model`'s index rows, all UNAVAILABLE.
async fn start_despite_failure(
    repo: &tempfile::TempDir,
    model: &str,
) -> (
    TestServer,
    Vec<nereid::pb::inference::repository_index_response::ModelIndex>,
) {
    let err = TestServer::try_start_with(repo.path(), |_| {})
        .await
        .err()
        .expect("exit_on_error=true: start fails");
    let text = err.to_string();
    assert!(text.contains("failed to load all models"), "{text}");
    assert!(text.contains(model), "{text}");

    let s = TestServer::start_with(repo.path(), |c| c.exit_on_error = false).await;
    let idx = s.index(false).await;
    let bad: Vec<_> = rows(&idx, model).into_iter().cloned().collect();
    assert!(!bad.is_empty(), "{model} is listed: {idx:?}");
    for r in &bad {
        assert_eq!(r.state, "UNAVAILABLE", "{r:?}");
        assert!(!r.reason.is_empty(), "{r:?}");
    }
    // Live, but not ready (strict readiness), and gRPC health agrees.
    let mut c = s.client.clone();
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(!s.server_ready().await);
    let mut h = s.health().await;
    assert_eq!(
        h.check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status,
        ServingStatus::NotServing as i32
    );
    // Everything else still loads and serves.
    for r in &idx {
        if r.name != model {
            assert_eq!(r.state, "READY", "{r:?}");
        }
    }
    assert!(
        !s.index(true).await.iter().any(|r| r.name == model),
        "ready filter drops the failed model"
    );
    s.assert_still_serving().await;
    // Requests to the failed model: E2 (known, nothing ready).
    let (a, b) = simple_operands(1, 1);
    let st = assert_status(
        s.infer(simple_request(model, 1, &a, &b)).await,
        Code::NotFound,
        &[],
    );
    assert_eq!(
        st.message(),
        format!("Request for unknown model: '{model}' has no available versions")
    );
    (s, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_model_file() {
    let repo = repo_with(&[
        ("simple", "simple"),
        ("broken", "simple"),
        ("simple_string", "simple_string"),
    ]);
    std::fs::write(
        repo.path().join("broken/1/model.onnx"),
        b"this is not an ONNX protobuf \x00\xff\x13",
    )
    .unwrap();
    let (s, bad) = start_despite_failure(&repo, "broken").await;
    assert!(
        bad.iter().any(|r| r.reason.contains("model.onnx")),
        "reason names the file: {bad:?}"
    );
    // The good string model serves too.
    let req = raw_request(
        "simple_string",
        vec![
            (
                input("INPUT0", "BYTES", &[1, 16]),
                bytes_tensor(&vec!["2"; 16]),
            ),
            (
                input("INPUT1", "BYTES", &[1, 16]),
                bytes_tensor(&vec!["3"; 16]),
            ),
        ],
    );
    assert_eq!(
        output_strings(&s.infer(req).await.unwrap(), "OUTPUT0"),
        vec!["5"; 16]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_model_file_without_auto_complete() {
    // With auto-complete off the graph is first opened when creating instances.
    let repo = repo_with(&[("simple", "simple"), ("broken", "simple")]);
    std::fs::write(repo.path().join("broken/1/model.onnx"), b"garbage").unwrap();
    let s = TestServer::start_with(repo.path(), |c| {
        c.exit_on_error = false;
        c.load.auto_complete = false;
    })
    .await;
    let idx = s.index(false).await;
    let bad = rows(&idx, "broken");
    assert!(
        !bad.is_empty() && bad.iter().all(|r| r.state == "UNAVAILABLE"),
        "{bad:?}"
    );
    assert!(
        bad.iter().any(|r| r.reason.contains("model.onnx")),
        "{bad:?}"
    );
    assert!(!s.server_ready().await);
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_model_file() {
    let repo = repo_with(&[("simple", "simple"), ("hollow", "simple")]);
    std::fs::remove_file(repo.path().join("hollow/1/model.onnx")).unwrap();
    let (_s, bad) = start_despite_failure(&repo, "hollow").await;
    assert!(
        bad.iter().any(|r| r.reason.contains("model.onnx")),
        "{bad:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_with_unknown_field() {
    let repo = repo_with(&[("simple", "simple"), ("badcfg", "simple")]);
    // Line 4 names a field ModelConfig does not have.
    edit_config(
        repo.path(),
        "badcfg",
        "max_batch_size: 8\n",
        "max_batch_size: 8\nbogus_field: 3\n",
    );
    let cfg = read_config(repo.path(), "badcfg");
    assert_eq!(
        cfg.lines().position(|l| l.starts_with("bogus_field")),
        Some(3),
        "fixture: field on line 4"
    );
    let (_s, bad) = start_despite_failure(&repo, "badcfg").await;
    let reason = &bad[0].reason;
    assert!(reason.contains("config.pbtxt"), "{reason}");
    assert!(reason.contains("line 4"), "{reason}");
    assert!(reason.contains("bogus_field"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_with_syntax_error() {
    let repo = repo_with(&[("simple", "simple"), ("badsyntax", "simple")]);
    // An unclosed message on line 2.
    write_config(
        repo.path(),
        "badsyntax",
        "name: \"badsyntax\"\nversion_policy: { latest: { num_versions: 1 }\nmax_batch_size: 8\n",
    );
    let (_s, bad) = start_despite_failure(&repo, "badsyntax").await;
    let reason = &bad[0].reason;
    assert!(reason.contains("config.pbtxt"), "{reason}");
    assert!(reason.contains("line "), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_with_wrong_value_type() {
    let repo = repo_with(&[("simple", "simple"), ("badvalue", "simple")]);
    edit_config(
        repo.path(),
        "badvalue",
        "max_batch_size: 8",
        "max_batch_size: \"eight\"",
    );
    let (_s, bad) = start_despite_failure(&repo, "badvalue").await;
    let reason = &bad[0].reason;
    assert!(
        reason.contains("config.pbtxt") && reason.contains("line 3"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensorrt_platform_is_refused() {
    let repo = repo_with(&[("simple", "simple"), ("trt", "simple")]);
    edit_config(
        repo.path(),
        "trt",
        "platform: \"onnxruntime_onnx\"",
        "platform: \"tensorrt_plan\"",
    );
    let (_s, bad) = start_despite_failure(&repo, "trt").await;
    let reason = &bad[0].reason;
    assert!(reason.contains("tensorrt_plan"), "{reason}");
    assert!(
        reason.contains("onnxruntime_onnx"),
        "names what is supported: {reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_that_disagrees_with_the_model() {
    let repo = repo_with(&[("simple", "simple"), ("mistyped", "simple")]);
    let cfg = read_config(repo.path(), "mistyped").replacen("TYPE_INT32", "TYPE_FP32", 1);
    write_config(repo.path(), "mistyped", &cfg);
    let (_s, bad) = start_despite_failure(&repo, "mistyped").await;
    let reason = &bad[0].reason;
    assert!(
        reason.contains("TYPE_FP32") && reason.contains("INPUT0"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_and_config_name_differ() {
    let repo = repo_with(&[("simple", "simple")]);
    copy_model(repo.path(), "other", "simple");
    // copy_model renamed the config; restore the original name so it mismatches the folder.
    edit_config(repo.path(), "other", "name: \"other\"", "name: \"simple\"");
    let (_s, bad) = start_despite_failure(&repo, "other").await;
    assert!(bad[0].reason.contains("other"), "{bad:?}");
}
