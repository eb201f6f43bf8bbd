//! Model control modes and the repository API: explicit load/unload, overrides, reloads that
//! keep serving, warmup before READY, draining unloads and poll-mode detection.

use std::collections::HashMap;
use std::time::Duration;

use nereid::ControlMode;
use nereid::pb::inference::model_repository_parameter::ParameterChoice as P;
use nereid::pb::inference::{ModelConfigRequest, RepositoryModelUnloadRequest};
use tonic::Code;

use crate::common::*;

async fn unload(s: &TestServer, name: &str) -> Result<(), tonic::Status> {
    let mut c = s.client.clone();
    c.repository_model_unload(RepositoryModelUnloadRequest {
        repository_name: String::new(),
        model_name: name.into(),
        parameters: HashMap::new(),
    })
    .await
    .map(|_| ())
}

async fn explicit(repo: &std::path::Path, startup: &[&str]) -> TestServer {
    let startup: Vec<String> = startup.iter().map(|s| s.to_string()).collect();
    TestServer::start_with(repo, |c| {
        c.manager.control_mode = ControlMode::Explicit;
        c.manager.startup_models = startup;
    })
    .await
}

async fn infer_simple(s: &TestServer, model: &str, rows: i64) -> Result<(), tonic::Status> {
    let (a, b) = simple_operands(rows as usize, 2);
    let resp = s.infer(simple_request(model, rows, &a, &b)).await?;
    assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
    Ok(())
}

/// Polls the index until `model` version `v` shows `state` (bounded by `WAIT_LIMIT` only).
async fn wait_state(s: &TestServer, model: &str, v: &str, state: &str) {
    wait_for(&format!("{model} v{v} reaches {state}"), || async {
        rows(&s.index(false).await, model)
            .iter()
            .any(|r| r.version == v && r.state == state)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_mode_loads_only_what_is_asked_and_unloads() {
    let repo = repo_with(&[("simple", "simple"), ("other", "simple")]);
    let s = explicit(repo.path(), &["simple"]).await;
    let index = s.index(false).await;
    assert_eq!(
        rows(&index, "other")[0].state,
        "",
        "never loaded: name only"
    );
    assert_status(
        infer_simple(&s, "other", 1).await,
        Code::InvalidArgument,
        &["Request for unknown model: 'other' is not found"],
    );
    load_model_with(&s, "other", vec![]).await.unwrap();
    infer_simple(&s, "other", 2).await.unwrap();
    assert!(s.server_ready().await);
    unload(&s, "other").await.unwrap();
    assert_status(
        infer_simple(&s, "other", 1).await,
        Code::NotFound,
        &["'other' has no available versions"],
    );
    wait_state(&s, "other", "1", "UNAVAILABLE").await;
    assert_eq!(rows(&s.index(false).await, "other")[0].reason, "unloaded");
    assert!(
        s.server_ready().await,
        "an unloaded model does not make the server unready"
    );
    unload(&s, "never-heard-of")
        .await
        .expect("unloading an unknown model succeeds");
    load_model_with(&s, "other", vec![])
        .await
        .expect("an unloaded model loads again");
    infer_simple(&s, "other", 1).await.unwrap();
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_and_unload_are_refused_outside_explicit_mode() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let msg = "explicit model load / unload is not allowed if polling is enabled";
    assert_status(
        load_model_with(&s, "simple", vec![]).await,
        Code::Unavailable,
        &[msg],
    );
    assert_status(unload(&s, "simple").await, Code::Unavailable, &[msg]);
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_loads_say_what_to_fix_and_nothing_stops_serving() {
    let repo = repo_with(&[("simple", "simple")]);
    std::fs::create_dir_all(repo.path().join("empty")).unwrap();
    let s = explicit(repo.path(), &["simple"]).await;
    assert_status(
        load_model_with(&s, "nope", vec![]).await,
        Code::Internal,
        &["failed to load 'nope', failed to poll from model repository"],
    );
    assert_status(
        load_model_with(&s, "empty", vec![]).await,
        Code::InvalidArgument,
        &["load failed for model 'empty'"],
    );
    let cfg = |json: &str| vec![("config", P::StringParam(json.into()))];
    // A config override that cannot be used is a load that cannot be polled: Triton's text,
    // the reason in the log.
    let poll = "failed to load 'simple', failed to poll from model repository";
    assert_status(
        load_model_with(&s, "simple", cfg("{not json")).await,
        Code::Internal,
        &[poll],
    );
    assert_status(
        load_model_with(
            &s,
            "simple",
            cfg(r#"{"max_batch_size": 4, "bogus_field": 1}"#),
        )
        .await,
        Code::Internal,
        &[poll],
    );
    assert_status(
        load_model_with(&s, "simple", vec![("config", P::BoolParam(true))]).await,
        Code::InvalidArgument,
        &["expected string_param"],
    );
    assert_status(
        load_model_with(&s, "simple", vec![("colour", P::StringParam("red".into()))]).await,
        Code::InvalidArgument,
        &["unrecognized load parameter 'colour'."],
    );
    let onnx = std::fs::read(bundled_repo().join("simple/1/model.onnx")).unwrap();
    assert_status(
        load_model_with(
            &s,
            "x",
            vec![
                ("config", P::StringParam("{}".into())),
                ("file:../../etc/evil", P::BytesParam(onnx.clone())),
            ],
        )
        .await,
        Code::InvalidArgument,
        &["must be a relative path inside the model folder"],
    );
    assert_status(
        load_model_with(&s, "x", vec![("file:1/model.onnx", P::BytesParam(onnx))]).await,
        Code::InvalidArgument,
        &["'config' parameter must be given"],
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_and_file_overrides() {
    let repo = repo_with(&[("simple", "simple")]);
    let s = explicit(repo.path(), &["simple"]).await;
    let json = read_config(repo.path(), "simple");
    assert!(json.contains("max_batch_size: 8"));
    // Config override: same model, max_batch_size 2.
    let cfg = r#"{"name":"simple","platform":"onnxruntime_onnx","max_batch_size":2,
        "input":[{"name":"INPUT0","data_type":"TYPE_INT32","dims":[16]},{"name":"INPUT1","data_type":"TYPE_INT32","dims":[16]}],
        "output":[{"name":"OUTPUT0","data_type":"TYPE_INT32","dims":[16]},{"name":"OUTPUT1","data_type":"TYPE_INT32","dims":[16]}]}"#;
    load_model_with(&s, "simple", vec![("config", P::StringParam(cfg.into()))])
        .await
        .unwrap();
    let mut c = s.client.clone();
    let got = c
        .model_config(ModelConfigRequest {
            name: "simple".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.config.unwrap().max_batch_size, 2);
    assert_status(
        infer_simple(&s, "simple", 3).await,
        Code::InvalidArgument,
        &["batch-size must be <= 2"],
    );
    // A plain load goes back to the files on disk.
    load_model_with(&s, "simple", vec![]).await.unwrap();
    infer_simple(&s, "simple", 3).await.unwrap();
    // File override: a model that exists in no repository.
    let onnx = std::fs::read(bundled_repo().join("simple/1/model.onnx")).unwrap();
    let cfg = cfg.replace("\"name\":\"simple\"", "\"name\":\"uploaded\"");
    load_model_with(
        &s,
        "uploaded",
        vec![
            ("config", P::StringParam(cfg)),
            ("file:1/model.onnx", P::BytesParam(onnx)),
        ],
    )
    .await
    .unwrap();
    infer_simple(&s, "uploaded", 2).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_keeps_the_old_version_serving() {
    let repo = repo_with(&[("simple", "simple")]);
    let s = explicit(repo.path(), &["simple"]).await;
    // INT64 does not match the graph's INT32 inputs: the new version cannot load.
    let bad = r#"{"name":"simple","backend":"onnxruntime","max_batch_size":8,
        "input":[{"name":"INPUT0","data_type":"TYPE_INT64","dims":[16]},{"name":"INPUT1","data_type":"TYPE_INT32","dims":[16]}],
        "output":[{"name":"OUTPUT0","data_type":"TYPE_INT32","dims":[16]}]}"#;
    assert_status(
        load_model_with(&s, "simple", vec![("config", P::StringParam(bad.into()))]).await,
        Code::InvalidArgument,
        &["load failed for model 'simple'", "TYPE_INT64"],
    );
    infer_simple(&s, "simple", 1)
        .await
        .expect("the old version still serves");
    let row = rows(&s.index(false).await, "simple")[0].clone();
    assert_eq!(row.state, "READY");
    assert!(
        row.reason.contains("the last reload failed") && row.reason.contains("TYPE_INT64"),
        "{}",
        row.reason
    );
    assert!(
        s.server_ready().await,
        "a model that serves keeps the server ready"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_runs_before_ready() {
    let repo = repo_with(&[("simple", "simple"), ("warm", "simple")]);
    let warmup = |file: &str| {
        format!(
            "{}\nmodel_warmup [ {{ name: \"w\" batch_size: 2 count: 3 inputs {{ key: \"INPUT0\" value: {{ data_type: TYPE_INT32 dims: [ 16 ] input_data_file: \"{file}\" }} }} inputs {{ key: \"INPUT1\" value: {{ data_type: TYPE_INT32 dims: [ 16 ] random_data: true }} }} }} ]\n",
            read_config(bundled_repo().as_path(), "simple")
                .replace("name: \"simple\"", "name: \"warm\"")
        )
    };
    std::fs::create_dir_all(repo.path().join("warm/warmup")).unwrap();
    std::fs::write(repo.path().join("warm/warmup/in0"), i32_bytes(&[1; 16])).unwrap();
    write_config(repo.path(), "warm", &warmup("missing"));
    let s = explicit(repo.path(), &["simple"]).await;
    assert_status(
        load_model_with(&s, "warm", vec![]).await,
        Code::InvalidArgument,
        &["warmup sample 'w'", "missing"],
    );
    assert_status(
        infer_simple(&s, "warm", 1).await,
        Code::NotFound,
        &["has no available versions"],
    );
    write_config(repo.path(), "warm", &warmup("in0"));
    load_model_with(&s, "warm", vec![]).await.unwrap();
    infer_simple(&s, "warm", 1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_drains_requests_in_flight() {
    // On the fake backend: its gate holds `dyn`'s one instance, so eight requests stay queued.
    let s = crate::overload::fake_server("", |c| {
        c.manager.control_mode = ControlMode::Explicit;
        c.manager.startup_models = vec!["simple".into(), "dyn".into()];
    })
    .await;
    let busy = crate::overload::occupy(&s, 0).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut c = s.new_client().await;
        tasks.push(tokio::spawn(async move {
            let (a, b) = simple_operands(1, i);
            let resp = c
                .model_infer(simple_request("dyn", 1, &a, &b))
                .await?
                .into_inner();
            assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
            Ok::<_, tonic::Status>(())
        }));
    }
    s.wait_pending("dyn", 8).await; // all eight are queued behind the held one
    // The unload retires the version at once; its queued requests drain afterwards.
    unload(&s, "dyn").await.unwrap();
    assert_status(
        infer_simple(&s, "dyn", 1).await,
        Code::NotFound,
        &["has no available versions"],
    );
    s.gate().open();
    busy.await
        .unwrap()
        .expect("the held request gets its answer");
    for t in tasks {
        t.await
            .unwrap()
            .expect("every accepted request gets its answer");
    }
    wait_state(&s, "dyn", "1", "UNAVAILABLE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_request() {
    let repo = repo_with(&[("simple", "simple")]);
    let s = explicit(repo.path(), &["simple"]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Answers so far, all clients together: each phase waits for more of them, not for time.
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut c = s.new_client().await;
        let stop = stop.clone();
        let answered = answered.clone();
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (a, b) = simple_operands(1, i);
                match c.model_infer(simple_request("simple", 1, &a, &b)).await {
                    Ok(r) if output_i32(r.get_ref(), "OUTPUT0") == add(&a, &b) => ok += 1,
                    Ok(_) => failed.push("wrong result".to_string()),
                    Err(e) => failed.push(e.message().to_string()),
                }
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (ok, failed)
        }));
    }
    let more_answers = |n: u32| {
        let answered = answered.clone();
        async move {
            let from = answered.load(std::sync::atomic::Ordering::Relaxed);
            wait_for(&format!("{n} more answers"), || {
                let answered = answered.clone();
                async move { answered.load(std::sync::atomic::Ordering::Relaxed) >= from + n }
            })
            .await;
        }
    };
    for i in 0..3 {
        more_answers(15).await;
        // Touch the folder so the load is a real reload, alternating instance counts.
        let text = read_config(repo.path(), "simple");
        write_config(repo.path(), "simple", &format!("{text}\n# reload {i}\n"));
        load_model_with(&s, "simple", vec![]).await.unwrap();
    }
    more_answers(15).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests failed during reloads: {failed:?}"
        );
        total += ok;
    }
    assert!(total > 50, "only {total} requests ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_picks_up_new_versions_and_survives_broken_drops() {
    let repo = repo_with(&[("simple", "simple"), ("versions", "simple_versions")]);
    let s = TestServer::start_with(repo.path(), |c| {
        c.manager.control_mode = ControlMode::Poll;
        c.manager.poll_interval = Duration::from_millis(300);
    })
    .await;
    assert_status(
        load_model_with(&s, "simple", vec![]).await,
        Code::Unavailable,
        &["not allowed"],
    );
    // A new version folder (policy: latest 2) → versions 3 and 4 serve.
    let v3 = repo.path().join("versions/3/model.onnx");
    std::fs::create_dir_all(repo.path().join("versions/4")).unwrap();
    std::fs::copy(&v3, repo.path().join("versions/4/model.onnx")).unwrap();
    wait_state(&s, "versions", "4", "READY").await;
    wait_state(&s, "versions", "2", "UNAVAILABLE").await;
    // A broken drop: the config no longer parses. What serves keeps serving.
    write_config(
        repo.path(),
        "simple",
        "name: \"simple\"\nthis is not a config\n",
    );
    wait_for("the broken drop is noticed", || async {
        let r = rows(&s.index(false).await, "simple")[0].clone();
        r.reason.contains("the last reload failed")
    })
    .await;
    let r = rows(&s.index(false).await, "simple")[0].clone();
    assert_eq!(r.state, "READY", "{r:?}");
    infer_simple(&s, "simple", 1)
        .await
        .expect("the serving version survives a broken drop");
    // A removed folder unloads.
    std::fs::remove_dir_all(repo.path().join("versions")).unwrap();
    wait_state(&s, "versions", "4", "UNAVAILABLE").await;
}
