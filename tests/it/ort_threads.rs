//! ONNX Runtime's global thread pool (`--backend-config=onnxruntime,enable-global-threadpool=1`)
//! on the real binary: ONNX Runtime allows one environment per process, and this test binary's
//! in-process servers already made theirs without a pool. The pool's threads are named
//! `ort-global` and a session's own `ort-session`, so /proc tells them apart from the rest.

use std::collections::HashMap;
use std::time::Duration;

use clap::Parser;
use nereid::pb::inference::ModelReadyRequest;
use nereid::{Cli, Code};

use crate::common::*;
use crate::process::ServerProcess;

/// A bound on a hang only.
const BOUND: Duration = Duration::from_secs(60);

const GLOBAL_POOL: [&str; 3] = [
    "--backend-config=onnxruntime,enable-global-threadpool=1",
    "--backend-config=onnxruntime,intra_op_thread_count=2",
    "--backend-config=onnxruntime,inter_op_thread_count=1",
];

/// Threads of process `pid` by name.
fn thread_names(pid: u32) -> HashMap<String, usize> {
    let mut names = HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        // A thread that ended between the listing and the read is not counted.
        if let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) {
            *names.entry(comm.trim_end().to_string()).or_default() += 1;
        }
    }
    names
}

/// `simple` with `instances` CPU instances that each ask for 2 intra-op threads.
fn simple_repo(instances: u32) -> tempfile::TempDir {
    let repo = repo_with(&[("simple", "simple")]);
    let config = read_config(repo.path(), "simple");
    write_config(
        repo.path(),
        "simple",
        &format!(
            "{config}\ninstance_group [ {{ count: {instances} kind: KIND_CPU }} ]\nparameters {{ key: \"intra_op_thread_count\" value: {{ string_value: \"2\" }} }}\n"
        ),
    );
    repo
}

/// Starts the binary on `simple` with `instances` instances, waits until it is ready, runs one
/// inference, and returns the process's ONNX Runtime threads (global, per session) and log.
async fn serve(instances: u32, flags: &[&str]) -> (usize, usize, ServerProcess) {
    let repo = simple_repo(instances);
    let mut server = ServerProcess::grpc_and_metrics(repo.path(), flags);
    let grpc = server.logged_addr(BOUND, "Started GRPCInferenceService");
    let mut c = connect(grpc.parse().unwrap()).await;
    wait_for("simple is ready", || {
        let mut c = c.clone();
        async move {
            c.model_ready(ModelReadyRequest {
                name: "simple".into(),
                version: String::new(),
            })
            .await
            .is_ok_and(|r| r.into_inner().ready)
        }
    })
    .await;
    let (a, b) = simple_operands(1, 7);
    let resp = c
        .model_infer(simple_request("simple", 1, &a, &b))
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", server.log_text()))
        .into_inner();
    assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
    assert_eq!(output_i32(&resp, "OUTPUT1"), sub(&a, &b));
    let names = thread_names(server.pid());
    let count = |n: &str| names.get(n).copied().unwrap_or(0);
    (count("ort-global"), count("ort-session"), server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_pool_serves_and_its_threads_do_not_grow_with_instances() {
    let (global_one, session_one, _one) = serve(1, &GLOBAL_POOL).await;
    let (global_four, session_four, mut four) = serve(4, &GLOBAL_POOL).await;
    assert_eq!(
        (session_one, session_four),
        (0, 0),
        "sessions own no threads"
    );
    assert!(global_one > 0, "the pool has threads of its own");
    assert_eq!(
        global_four, global_one,
        "the pool's threads do not grow with the instances"
    );
    let log = four.log_text();
    assert!(
        log.contains("ONNX Runtime loaded with a global thread pool")
            && log.contains("sessions run on ONNX Runtime's global thread pool"),
        "{log}"
    );
    // The model's own intra_op_thread_count is ignored, and the log says so.
    four.wait_for_line(BOUND, |l| {
        l.contains("intra_op_thread_count, inter_op_thread_count and session.*.allow_spinning parameters are ignored")
            .then_some(())
    });

    // Without the pool, each of the 4 sessions has an intra-op pool of 2: the caller and one
    // thread of its own.
    let (global, session, mut per_session) = serve(4, &[]).await;
    assert_eq!((global, session), (0, 4));
    per_session.wait_for_line(BOUND, |l| {
        (l.contains("intra-op spinning") && l.contains("model=simple") && l.contains("instances=4"))
            .then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_thread_count_refuses_to_start() {
    let repo = simple_repo(1);
    let mut server = ServerProcess::grpc_and_metrics(
        repo.path(),
        &[
            "--backend-config=onnxruntime,enable-global-threadpool=1",
            "--backend-config=onnxruntime,intra_op_thread_count=abc",
        ],
    );
    let status = server.wait_exit(BOUND).await;
    assert!(!status.success(), "{status:?}");
    assert!(
        server.log.iter().any(|l| l.contains(
            "--backend-config 'onnxruntime,intra_op_thread_count=abc': intra_op_thread_count must be an integer"
        )),
        "log:\n{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_a_global_pool_after_an_environment_without_one_is_refused() {
    // After this server, the process's environment exists without a pool (another test may
    // have made it already; none makes one with a pool in this process).
    let plain = TestServer::bundled_subset(&["simple"]).await;
    let repo = bundled_repo();
    let pooled = Cli::try_parse_from([
        "nereid",
        &format!("--model-repository={}", repo.display()),
        GLOBAL_POOL[0],
        GLOBAL_POOL[1],
    ])
    .unwrap()
    .into_config()
    .unwrap();
    let refused = TestServer::try_start_with(&repo, |c| c.ort_global_pool = pooled.ort_global_pool)
        .await
        .err()
        .expect("a server asking for another environment does not start");
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        refused.message.starts_with(
            "ONNX Runtime's environment already exists in this process with no global thread pool; this server asks for a global thread pool of 2 intra-op and 0 inter-op threads"
        ),
        "{}",
        refused.message
    );
    plain.assert_still_serving().await;
}
