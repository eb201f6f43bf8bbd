//! What Triton's client examples and tests assert beside shared memory: BYTES byte for byte
//! through an ONNX string model over every encoding, ModelReady's "not ready" for models that
//! are not serving, the load-failure texts, and the extensions list.

use nereid::ControlMode;
use nereid::pb::inference::model_repository_parameter::ParameterChoice as L;
use nereid::pb::inference::{
    ModelReadyRequest, RepositoryModelUnloadRequest, ServerMetadataRequest,
};
use serde_json::{Value, json};
use tonic::Code;

use crate::common::*;

/// NUL bytes, invalid UTF-8, every byte value: none is text ONNX Runtime's C-string calls carry.
fn awkward() -> Vec<Vec<u8>> {
    vec![
        b"a\0b\0".to_vec(),
        vec![0xff, 0xfe, 0x80, 0x00],
        Vec::new(),
        (0..=255u8).collect(),
        b"plain".to_vec(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_pass_through_an_onnx_string_model_unchanged() {
    let s = TestServer::bundled_subset(&["simple_identity"]).await;
    let elements = awkward();
    let n = elements.len() as i64;

    // gRPC raw.
    let req = raw_request(
        "simple_identity",
        vec![(input("INPUT0", "BYTES", &[1, n]), bytes_tensor(&elements))],
    );
    let resp = s.infer(req).await.unwrap();
    assert_eq!(output_bytes(&resp, "OUTPUT0"), elements);

    // HTTP binary tensor extension, both ways.
    let payload = bytes_tensor(&elements);
    let header = json!({
        "inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, n],
                    "parameters": {"binary_data_size": payload.len()}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": true}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&payload);
    let r = s
        .http
        .post(s.url("/v2/models/simple_identity/infer"))
        .header("Inference-Header-Content-Length", header.len())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let split: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    assert_eq!(decode_bytes(&bytes[split..]), elements);

    // HTTP JSON carries text only: NUL characters and non-ASCII text pass unchanged.
    let texts = ["a\u{0}b", "", "naïve \u{1F600}", "x"];
    let r = s
        .http
        .post(s.url("/v2/models/simple_identity/infer"))
        .json(
            &json!({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 4],
                                  "data": texts}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["outputs"][0]["data"], json!(texts));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_ready_is_false_for_models_that_do_not_serve() {
    let repo = repo_with(&[
        ("simple", "simple"),
        ("other", "simple"),
        ("broken", "simple"),
    ]);
    write_config(
        repo.path(),
        "broken",
        "name: \"broken\"\nthis is not pbtxt\n",
    );
    let s = TestServer::start_with(repo.path(), |c| {
        c.manager.control_mode = ControlMode::Explicit;
        c.manager.startup_models = vec!["simple".into(), "other".into()];
    })
    .await
    .owning(repo);
    let _ = load_model(&s, "broken").await;
    s.client
        .clone()
        .repository_model_unload(RepositoryModelUnloadRequest {
            model_name: "other".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let unloaded = |s: &TestServer| {
        let mut c = s.client.clone();
        async move {
            let r = c
                .model_ready(ModelReadyRequest {
                    name: "other".into(),
                    version: String::new(),
                })
                .await
                .unwrap();
            !r.into_inner().ready
        }
    };
    wait_for("other is unloaded", || unloaded(&s)).await;

    for (name, version) in [
        ("simple", "7"),
        ("other", ""),
        ("broken", ""),
        ("no_such_model", ""),
        ("no_such_model", "1"),
    ] {
        let r = s
            .client
            .clone()
            .model_ready(ModelReadyRequest {
                name: name.into(),
                version: version.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{name} v{version:?}: {e:?}"));
        assert!(!r.into_inner().ready, "{name} v{version:?}");
        let path = if version.is_empty() {
            format!("/v2/models/{name}/ready")
        } else {
            format!("/v2/models/{name}/versions/{version}/ready")
        };
        let r = s.http.get(s.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"error": "Model version not ready"})
        );
    }
    let r = s
        .http
        .get(s.url("/v2/models/simple/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_that_cannot_be_polled_say_so() {
    let repo = repo_with(&[
        ("simple", "simple"),
        ("broken", "simple"),
        ("bad_type", "simple"),
    ]);
    write_config(
        repo.path(),
        "broken",
        "name: \"broken\"\nthis is not pbtxt\n",
    );
    // INPUT0 as INT64 does not match the graph: a failure while initialising, not polling.
    let bad = read_config(repo.path(), "bad_type").replacen("TYPE_INT32", "TYPE_INT64", 1);
    write_config(repo.path(), "bad_type", &bad);
    let s = TestServer::start_with(repo.path(), |c| {
        c.manager.control_mode = ControlMode::Explicit;
        c.manager.startup_models = vec!["simple".into()];
    })
    .await
    .owning(repo);
    let poll = |m: &str| format!("failed to load '{m}', failed to poll from model repository");
    let cfg = |text: &str| vec![("config", L::StringParam(text.into()))];
    for (model, params) in [
        ("no_such_model", vec![]),
        ("broken", vec![]),
        (
            "simple",
            cfg(r#""parameters": {"config": {{"max_batch_size": "16"}}}"#),
        ),
        ("simple", {
            let mut p = cfg("{}");
            p.push((
                Box::leak(format!("file:{}", "A".repeat(256)).into_boxed_str()),
                L::BytesParam(b"a".to_vec()),
            ));
            p
        }),
    ] {
        let st = assert_status(
            load_model_with(&s, model, params).await,
            Code::Internal,
            &[],
        );
        assert_eq!(st.message(), poll(model));
    }
    // A failure while initialising keeps Triton's other text.
    assert_status(
        load_model(&s, "bad_type").await,
        Code::InvalidArgument,
        &["load failed for model 'bad_type'"],
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_metadata_lists_the_extensions_implemented() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let m = s
        .client
        .clone()
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    let want = [
        "classification",
        "sequence",
        "model_repository",
        "model_repository(unload_dependents)",
        "schedule_policy",
        "model_configuration",
        "system_shared_memory",
        "cuda_shared_memory",
        "binary_tensor_data",
        "parameters",
        "statistics",
        "trace",
        "logging",
    ];
    assert_eq!(m.extensions, want);
    let http: Value = s
        .http
        .get(s.url("/v2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(http["extensions"], json!(want));
}
