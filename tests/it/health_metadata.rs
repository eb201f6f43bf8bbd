//! Health, readiness, server/model metadata and model configuration RPCs on the bundled repository.

use nereid::pb::health::{HealthCheckRequest, health_check_response::ServingStatus};
use nereid::pb::inference::model_config::SchedulingChoice;
use nereid::pb::inference::model_instance_group::Kind;
use nereid::pb::inference::model_metadata_response::TensorMetadata;
use nereid::pb::inference::model_version_policy::PolicyChoice;
use nereid::pb::inference::{
    DataType, ModelConfigRequest, ModelMetadataRequest, ModelReadyRequest, ServerLiveRequest,
    ServerMetadataRequest, ServerReadyRequest,
};
use tonic::Code;

use crate::common::*;

fn tensor(name: &str, datatype: &str, shape: &[i64]) -> TensorMetadata {
    TensorMetadata {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_live_and_ready() {
    let s = TestServer::bundled_subset(&[]).await;
    let mut c = s.client.clone();
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_check_is_serving() {
    let s = TestServer::bundled_subset(&[]).await;
    let mut h = s.health().await;
    let resp = h
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status, ServingStatus::Serving as i32);
    // The service name is ignored, as in Triton.
    let resp = h
        .check(HealthCheckRequest {
            service: "inference.GRPCInferenceService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status, ServingStatus::Serving as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_ready() {
    let s = TestServer::bundled_subset(&["add_sub_autocomplete", "simple"]).await;
    let mut c = s.client.clone();
    let ready = |name: &str, version: &str| ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        c.model_ready(ready("simple", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        c.model_ready(ready("simple", "1"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        c.model_ready(ready("add_sub_autocomplete", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    // An unknown model or version is not ready, not an error (Triton's ModelIsReady; the
    // official clients' is_model_ready() returns False only for an OK status).
    for (name, version) in [("nope", ""), ("simple", "2")] {
        let r = c.model_ready(ready(name, version)).await.unwrap();
        assert!(!r.into_inner().ready, "{name} {version}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_metadata_defaults() {
    let s = TestServer::bundled_subset(&[]).await;
    let mut c = s.client.clone();
    let m = c
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.name, "triton");
    assert!(!m.version.is_empty());
    for ext in [
        "statistics",
        "model_configuration",
        "trace",
        "logging",
        "sequence",
    ] {
        assert!(
            m.extensions.iter().any(|e| e == ext),
            "extensions {:?} lack {ext}",
            m.extensions
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_metadata_uses_server_id() {
    let s = TestServer::bundled_subset_with(&[], |c| c.server_id = "nereid-it".into()).await;
    let mut c = s.client.clone();
    assert_eq!(
        c.server_metadata(ServerMetadataRequest {})
            .await
            .unwrap()
            .into_inner()
            .name,
        "nereid-it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_metadata_of_batching_and_non_batching_models() {
    let s =
        TestServer::bundled_subset(&["identity_bf16", "simple", "simple_nobatch", "simple_string"])
            .await;
    let mut c = s.client.clone();
    let meta = |name: &str, version: &str| ModelMetadataRequest {
        name: name.into(),
        version: version.into(),
    };

    let m = c
        .model_metadata(meta("simple", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.name, "simple");
    assert_eq!(m.platform, "onnxruntime_onnx");
    assert_eq!(m.versions, vec!["1"]);
    assert_eq!(
        m.inputs,
        vec![
            tensor("INPUT0", "INT32", &[-1, 16]),
            tensor("INPUT1", "INT32", &[-1, 16])
        ]
    );
    assert_eq!(
        m.outputs,
        vec![
            tensor("OUTPUT0", "INT32", &[-1, 16]),
            tensor("OUTPUT1", "INT32", &[-1, 16])
        ]
    );

    let m = c
        .model_metadata(meta("simple_nobatch", "1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.versions, vec!["1"]);
    assert_eq!(
        m.inputs,
        vec![
            tensor("INPUT0", "INT32", &[16]),
            tensor("INPUT1", "INT32", &[16])
        ]
    );
    assert_eq!(
        m.outputs,
        vec![
            tensor("OUTPUT0", "INT32", &[16]),
            tensor("OUTPUT1", "INT32", &[16])
        ]
    );

    let m = c
        .model_metadata(meta("simple_string", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.inputs[0], tensor("INPUT0", "BYTES", &[-1, 16]));

    let m = c
        .model_metadata(meta("identity_bf16", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.inputs, vec![tensor("INPUT0", "BF16", &[-1, -1])]);

    let st = assert_status(
        c.model_metadata(meta("nope", "")).await,
        Code::InvalidArgument,
        &[],
    );
    assert_eq!(
        st.message(),
        "Request for unknown model: 'nope' is not found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_config_of_simple_is_normalized() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let mut c = s.client.clone();
    let cfg = c
        .model_config(ModelConfigRequest {
            name: "simple".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .expect("config present");
    assert_eq!(cfg.name, "simple");
    assert_eq!(cfg.platform, "onnxruntime_onnx");
    assert_eq!(cfg.backend, "onnxruntime");
    assert_eq!(cfg.default_model_filename, "model.onnx");
    assert_eq!(cfg.max_batch_size, 8);
    let inputs: Vec<(&str, i32, &[i64])> = cfg
        .input
        .iter()
        .map(|i| (i.name.as_str(), i.data_type, i.dims.as_slice()))
        .collect();
    let int32 = DataType::TypeInt32 as i32;
    assert_eq!(
        inputs,
        vec![("INPUT0", int32, &[16][..]), ("INPUT1", int32, &[16][..])]
    );
    let outputs: Vec<(&str, i32, &[i64])> = cfg
        .output
        .iter()
        .map(|o| (o.name.as_str(), o.data_type, o.dims.as_slice()))
        .collect();
    assert_eq!(
        outputs,
        vec![("OUTPUT0", int32, &[16][..]), ("OUTPUT1", int32, &[16][..])]
    );
    assert_eq!(cfg.instance_group.len(), 1, "{:?}", cfg.instance_group);
    let g = &cfg.instance_group[0];
    assert_eq!(g.name, "simple");
    assert_eq!(g.count, 2);
    assert_eq!(g.kind, Kind::Cpu as i32);
    // Default version policy is filled in: latest 1.
    match cfg.version_policy.and_then(|p| p.policy_choice) {
        Some(PolicyChoice::Latest(l)) => assert_eq!(l.num_versions, 1),
        other => panic!("version policy {other:?}"),
    }
    // simple has no scheduler configured and auto-complete is skipped (inputs and outputs given).
    assert!(
        cfg.scheduling_choice.is_none(),
        "{:?}",
        cfg.scheduling_choice
    );

    let st = assert_status(
        c.model_config(ModelConfigRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await,
        Code::InvalidArgument,
        &[],
    );
    assert_eq!(
        st.message(),
        "Request for unknown model: 'nope' is not found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_config_of_non_batching_model() {
    let s = TestServer::bundled_subset(&["simple_nobatch"]).await;
    let mut c = s.client.clone();
    let cfg = c
        .model_config(ModelConfigRequest {
            name: "simple_nobatch".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(cfg.max_batch_size, 0);
    assert!(!matches!(
        cfg.scheduling_choice,
        Some(SchedulingChoice::DynamicBatching(_))
    ));
}
