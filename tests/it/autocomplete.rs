//! ONNX Runtime auto-complete of a model without config.pbtxt (behaviour.md §10.1).

use nereid::pb::inference::model_config::SchedulingChoice;
use nereid::pb::inference::model_instance_group::Kind;
use nereid::pb::inference::{DataType, ModelConfig, ModelConfigRequest};
use tonic::Code;

use crate::common::*;

async fn config_of(s: &TestServer, model: &str) -> ModelConfig {
    let mut c = s.client.clone();
    c.model_config(ModelConfigRequest {
        name: model.into(),
        version: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .config
    .expect("config present")
}

fn preferred_batch_sizes(cfg: &ModelConfig) -> Vec<i32> {
    match &cfg.scheduling_choice {
        Some(SchedulingChoice::DynamicBatching(db)) => db.preferred_batch_size.clone(),
        other => panic!("expected dynamic_batching, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_completed_from_the_graph() {
    let s = TestServer::bundled_subset(&["add_sub_autocomplete"]).await;
    let cfg = config_of(&s, "add_sub_autocomplete").await;
    assert_eq!(cfg.name, "add_sub_autocomplete");
    assert_eq!(cfg.platform, "onnxruntime_onnx");
    assert_eq!(cfg.backend, "onnxruntime");
    assert_eq!(cfg.default_model_filename, "model.onnx");
    assert_eq!(cfg.max_batch_size, 4);
    assert_eq!(preferred_batch_sizes(&cfg), vec![4]);
    let fp32 = DataType::TypeFp32 as i32;
    let inputs: Vec<(&str, i32, &[i64])> = cfg
        .input
        .iter()
        .map(|i| (i.name.as_str(), i.data_type, i.dims.as_slice()))
        .collect();
    assert_eq!(inputs, vec![("x", fp32, &[4][..]), ("y", fp32, &[4][..])]);
    let outputs: Vec<(&str, i32, &[i64])> = cfg
        .output
        .iter()
        .map(|o| (o.name.as_str(), o.data_type, o.dims.as_slice()))
        .collect();
    assert_eq!(
        outputs,
        vec![("sum", fp32, &[4][..]), ("diff", fp32, &[4][..])]
    );
    assert_eq!(cfg.instance_group.len(), 1);
    assert_eq!(cfg.instance_group[0].name, "add_sub_autocomplete");
    assert_eq!(cfg.instance_group[0].kind, Kind::Cpu as i32);
    assert_eq!(cfg.instance_group[0].count, 2);

    // The completed max_batch_size is enforced.
    let x = vec![0f32; 20];
    let req = raw_request(
        "add_sub_autocomplete",
        vec![
            (input("x", "FP32", &[5, 4]), f32_bytes(&x)),
            (input("y", "FP32", &[5, 4]), f32_bytes(&x)),
        ],
    );
    assert_status(
        s.infer(req).await,
        Code::InvalidArgument,
        &["batch-size must be <= 4 for 'add_sub_autocomplete'"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_max_batch_size_is_configurable() {
    let repo = repo_with(&[("add_sub_autocomplete", "add_sub_autocomplete")]);
    let s = TestServer::start_with(repo.path(), |c| c.load.default_max_batch_size = 16).await;
    let cfg = config_of(&s, "add_sub_autocomplete").await;
    assert_eq!(cfg.max_batch_size, 16);
    assert_eq!(preferred_batch_sizes(&cfg), vec![16]);
    // A batch of 16 now runs.
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let y = vec![1f32; 64];
    let req = raw_request(
        "add_sub_autocomplete",
        vec![
            (input("x", "FP32", &[16, 4]), f32_bytes(&x)),
            (input("y", "FP32", &[16, 4]), f32_bytes(&y)),
        ],
    );
    let resp = s.infer(req).await.unwrap();
    assert_eq!(
        output_f32(&resp, "sum"),
        x.iter().map(|v| v + 1.0).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_config_is_completed() {
    // A config that sets only max_batch_size: inputs and outputs come from the graph, the
    // given max_batch_size is kept.
    let repo = repo_with(&[("add_sub_autocomplete", "add_sub_autocomplete")]);
    write_config(repo.path(), "add_sub_autocomplete", "max_batch_size: 2\n");
    let s = TestServer::start(repo.path()).await;
    let cfg = config_of(&s, "add_sub_autocomplete").await;
    assert_eq!(cfg.max_batch_size, 2);
    assert_eq!(preferred_batch_sizes(&cfg), vec![2]);
    assert_eq!(cfg.input.len(), 2);
    assert_eq!(cfg.output.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_auto_complete_fails_the_model() {
    let repo = repo_with(&[
        ("simple", "simple"),
        ("add_sub_autocomplete", "add_sub_autocomplete"),
    ]);
    let err = TestServer::try_start_with(repo.path(), |c| c.load.auto_complete = false)
        .await
        .err()
        .expect("exit_on_error=true: a model without config fails startup");
    assert!(
        err.to_string().contains("failed to load all models"),
        "{err}"
    );
    assert!(err.to_string().contains("add_sub_autocomplete"), "{err}");

    let s = TestServer::start_with(repo.path(), |c| {
        c.load.auto_complete = false;
        c.exit_on_error = false;
    })
    .await;
    let idx = s.index(false).await;
    let bad = rows(&idx, "add_sub_autocomplete");
    assert!(!bad.is_empty(), "{idx:?}");
    for r in &bad {
        assert_eq!(r.state, "UNAVAILABLE", "{r:?}");
        assert!(
            r.reason.contains("config.pbtxt"),
            "reason names the missing file: {r:?}"
        );
    }
    assert!(
        rows(&idx, "simple").iter().all(|r| r.state == "READY"),
        "{idx:?}"
    );
    assert!(!s.server_ready().await, "strict readiness");
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_auto_complete_keeps_full_configs_working() {
    let repo = repo_with(&[("simple", "simple"), ("simple_nobatch", "simple_nobatch")]);
    let s = TestServer::start_with(repo.path(), |c| c.load.auto_complete = false).await;
    assert!(s.server_ready().await);
    s.assert_still_serving().await;
}
