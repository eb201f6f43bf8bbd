//! Ownership instead of polling (issue 16): the drain ends when the last in-flight request's
//! guard drops, an unloaded version's instance threads are joined once the last request that
//! held it goes, and the repository index lists folders never loaded, read when asked.
//!
//! Requests are held in flight by a dynamic batcher that waits an hour for a batch to fill;
//! a client that goes away (its call aborted) is what ends them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use nereid::ControlMode;
use nereid::pb::inference::{ModelInferResponse, RepositoryModelUnloadRequest};
use serde_json::json;
use tempfile::TempDir;
use tokio::task::JoinHandle;

use crate::common::*;

/// `simple` as `name`: one instance, and a batcher that waits an hour for a batch to fill, so
/// a request stays queued until its client goes away.
fn held_repo(name: &str) -> TempDir {
    let repo = repo_with(&[(name, "simple")]);
    let cfg = read_config(repo.path(), name);
    write_config(
        repo.path(),
        name,
        &format!(
            "{cfg}\ninstance_group [ {{ count: 1 kind: KIND_CPU }} ]\ndynamic_batching {{ max_queue_delay_microseconds: 3600000000 }}\n"
        ),
    );
    repo
}

/// One request of one row to `model` on a connection of its own; aborting the task is the
/// client going away.
fn held_call(
    addr: SocketAddr,
    model: &str,
) -> JoinHandle<Result<ModelInferResponse, tonic::Status>> {
    let model = model.to_string();
    tokio::spawn(async move {
        let mut c = connect(addr).await;
        let (a, b) = simple_operands(1, 1);
        c.model_infer(simple_request(&model, 1, &a, &b))
            .await
            .map(|r| r.into_inner())
    })
}

/// Waits until `cond` holds; `RPC_TIMEOUT` only tells a hang from progress.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < RPC_TIMEOUT, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task lists this process's threads")
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim_end().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_ends_when_the_last_request_goes() {
    let s = start_direct(held_repo("held"), |_| {}).await;
    let core = s.running.core.clone();
    let first = held_call(s.addr, "held");
    let second = held_call(s.addr, "held");
    until("both requests are queued", || core.inflight() == 2).await;

    let _ = s.stop.send(());
    crate::fake::wait_for("the listener stops accepting", || async {
        tokio::net::TcpStream::connect(s.addr).await.is_err()
    })
    .await;
    first.abort();
    until("the first request is gone", || core.inflight() == 1).await;
    // One request is still in flight, so the drain goes on, with no new connection taken.
    assert!(tokio::net::TcpStream::connect(s.addr).await.is_err());

    second.abort();
    tokio::time::timeout(RPC_TIMEOUT, s.running.wait())
        .await
        .expect("the server stops once its last request is gone, not at the exit timeout")
        .expect("the server stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unloaded_version_is_torn_down_when_its_last_request_goes() {
    let s = start_direct(held_repo("reaped"), |c| {
        c.manager.control_mode = ControlMode::Explicit;
        c.manager.startup_models = vec!["reaped".into()];
    })
    .await;
    let core = s.running.core.clone();
    // Instance 0 of group `reaped_0`, version 1.
    let instance = "reaped_0:1:0";
    // A thread names itself once it runs.
    let running = || thread_names().iter().any(|n| n == instance);
    until("the instance thread runs", running).await;
    let call = held_call(s.addr, "reaped");
    until("the request is queued", || core.inflight() == 1).await;

    let mut c = connect(s.addr).await;
    c.repository_model_unload(RepositoryModelUnloadRequest {
        repository_name: String::new(),
        model_name: "reaped".into(),
        parameters: HashMap::new(),
    })
    .await
    .expect("unload succeeds");
    // The queued request holds the version: it drains, and its instance thread runs on.
    let state = || async {
        let index = core.repository_index(false).await.unwrap();
        let rows: Vec<_> = index
            .into_iter()
            .filter(|r| r.name == "reaped")
            .map(|r| (r.version, r.state.map(|s| s.as_str()), r.reason))
            .collect();
        assert_eq!(rows.len(), 1, "{rows:?}");
        rows.into_iter().next().unwrap()
    };
    assert_eq!(state().await, (Some(1), Some("UNLOADING"), String::new()));
    assert!(running());

    // The client goes away: its request drops the last reference, and the reaper joins the
    // instance thread before the version turns UNAVAILABLE "unloaded".
    call.abort();
    let start = Instant::now();
    loop {
        let now = state().await;
        if now.1 != Some("UNLOADING") {
            assert_eq!(now, (Some(1), Some("UNAVAILABLE"), "unloaded".to_string()));
            break;
        }
        assert!(start.elapsed() < RPC_TIMEOUT, "never torn down");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(core.inflight(), 0);
    // Joined before the version turned UNAVAILABLE; the kernel lists an exited thread until
    // it has released it.
    until("the instance thread is gone", || !running()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_never_loaded_are_listed_by_name_when_the_index_is_read() {
    let repo = repo_with(&[("simple", "simple"), ("idle", "simple")]);
    let path = repo.path().to_path_buf();
    let s = TestServer::start_with(&path, |c| {
        c.manager.control_mode = ControlMode::Explicit;
        c.manager.startup_models = vec!["simple".into()];
    })
    .await
    .owning(repo);
    // A folder added after startup is there too: the repositories are read at each call.
    copy_model(&path, "late", "simple");

    let index = s.index(false).await;
    for name in ["idle", "late"] {
        let r = rows(&index, name);
        assert_eq!(r.len(), 1, "{index:?}");
        assert_eq!(
            (
                r[0].version.as_str(),
                r[0].state.as_str(),
                r[0].reason.as_str()
            ),
            ("", "", ""),
            "never loaded: name only"
        );
    }
    assert_eq!(rows(&index, "simple")[0].state, "READY");
    let ready = s.index(true).await;
    assert_eq!(
        ready.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        vec!["simple"]
    );

    // Over HTTP a never-loaded model carries its name alone (http-protocol.md §9.3).
    let body: serde_json::Value = s
        .http
        .post(s.url("/v2/repository/index"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&serde_json::Value> = body
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter(|r| r["name"] == "idle" || r["name"] == "late")
        .collect();
    assert_eq!(
        names,
        vec![&json!({"name": "idle"}), &json!({"name": "late"})]
    );
}
