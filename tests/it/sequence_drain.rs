//! Sequences across reloads and unloads (`lifecycle/drains.rs`), through ONNX Runtime on the
//! accumulator `simple_string_dyna_sequence` (its state shows which version served a request:
//! a version that does not run the sequence would answer E28). A reload sends new sequences to
//! the new version while continuations stay on the old one with their state; an unload serves
//! continuations the same way; when the drain timeout passes, the old version's sequences end
//! with `sequence <id> of model '<m>' ended by a reload`. Waits watch the index, never the clock.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use nereid::ControlMode;
use nereid::pb::inference::RepositoryModelUnloadRequest;

use crate::common::*;
use crate::sequence::{Id, seq_request};

const ACC: &str = "simple_string_dyna_sequence";

fn acc_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("client_examples_repository")
        .join(ACC);
    let to = dir.path().join(ACC);
    std::fs::create_dir_all(to.join("1")).unwrap();
    for f in ["config.pbtxt", "1/model.onnx"] {
        std::fs::copy(src.join(f), to.join(f)).unwrap();
    }
    dir
}

/// A second version of the model (the same graph): a reload then serves version 2.
fn add_version_2(repo: &Path) {
    let m = repo.join(ACC);
    std::fs::create_dir_all(m.join("2")).unwrap();
    std::fs::copy(m.join("1/model.onnx"), m.join("2/model.onnx")).unwrap();
}

async fn explicit(repo: &Path, drain: Duration) -> TestServer {
    TestServer::start_with(repo, |c| {
        c.manager.control_mode = ControlMode::Explicit;
        c.manager.startup_models = vec![ACC.into()];
        c.manager.sequence_drain_timeout = drain;
    })
    .await
}

/// (OUTPUT, the version that answered) or the error.
async fn step(
    s: &TestServer,
    value: i32,
    id: &'static str,
    start: bool,
    end: bool,
) -> Result<(i32, String), tonic::Status> {
    let mut c = s.client.clone();
    c.model_infer(seq_request(ACC, value, Id::Str(id), start, end))
        .await
        .map(|r| {
            let r = r.into_inner();
            (output_i32(&r, "OUTPUT")[0], r.model_version)
        })
}

async fn version_state(s: &TestServer, version: &str) -> String {
    let idx = s.index(false).await;
    rows(&idx, ACC)
        .into_iter()
        .find(|r| r.version == version)
        .map(|r| r.state.clone())
        .unwrap_or_default()
}

async fn unload(s: &TestServer) {
    let mut c = s.client.clone();
    c.repository_model_unload(RepositoryModelUnloadRequest {
        repository_name: String::new(),
        model_name: ACC.into(),
        parameters: HashMap::new(),
    })
    .await
    .expect("unload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_running_sequences_on_the_old_version_until_they_end() {
    let repo = acc_repo();
    let s = explicit(repo.path(), Duration::from_secs(3600)).await;
    assert_eq!(
        step(&s, 5, "1", true, false).await.unwrap(),
        (5, "1".into())
    );
    add_version_2(repo.path());
    load_model(&s, ACC).await.expect("reload");
    // New sequences go to the new version; the running one stays on the old, with its state.
    assert_eq!(
        step(&s, 10, "2", true, false).await.unwrap(),
        (10, "2".into())
    );
    assert_eq!(
        step(&s, 3, "1", false, false).await.unwrap(),
        (8, "1".into())
    );
    assert_eq!(
        step(&s, 1, "2", false, false).await.unwrap(),
        (11, "2".into())
    );
    assert_eq!(
        step(&s, 1, "1", false, true).await.unwrap(),
        (9 + 1, "1".into())
    );
    // With its last sequence over, the old version is let go of.
    wait_for("version 1 is unloaded", || async {
        version_state(&s, "1").await == "UNAVAILABLE"
    })
    .await;
    // The id is free again: a continuation now is E28, from the new version.
    let e = step(&s, 1, "1", false, false).await.unwrap_err();
    assert!(e.message().contains("must specify the START flag"), "{e:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_drain_timeout_continuations_are_ended_by_the_reload() {
    let repo = acc_repo();
    // No drain time at all: the old version's sequences end as soon as it is replaced.
    let s = explicit(repo.path(), Duration::ZERO).await;
    assert_eq!(step(&s, 5, "7", true, false).await.unwrap().0, 5);
    add_version_2(repo.path());
    load_model(&s, ACC).await.expect("reload");
    wait_for("version 1 is unloaded", || async {
        version_state(&s, "1").await == "UNAVAILABLE"
    })
    .await;
    let e = step(&s, 1, "7", false, false).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert_eq!(
        e.message(),
        format!("sequence 7 of model '{ACC}' ended by a reload")
    );
    // A new START reuses the id on the new version.
    assert_eq!(
        step(&s, 4, "7", true, false).await.unwrap(),
        (4, "2".into())
    );
    assert_eq!(
        step(&s, 1, "7", false, true).await.unwrap(),
        (5 + 7, "2".into())
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unload_serves_running_sequences_until_they_end() {
    let repo = acc_repo();
    let s = explicit(repo.path(), Duration::from_secs(3600)).await;
    assert_eq!(step(&s, 5, "3", true, false).await.unwrap().0, 5);
    unload(&s).await;
    // New sequences are refused (nothing serves the model) ...
    step(&s, 1, "4", true, false)
        .await
        .expect_err("nothing serves new sequences");
    // ... while the running one goes on to its END.
    assert_eq!(
        step(&s, 2, "3", false, false).await.unwrap(),
        (7, "1".into())
    );
    assert_eq!(
        step(&s, 1, "3", false, true).await.unwrap(),
        (8 + 3, "1".into())
    );
    wait_for("version 1 is unloaded", || async {
        version_state(&s, "1").await == "UNAVAILABLE"
    })
    .await;
    s.stop().await;
}
