//! Loads stop when they are no longer wanted (issue 14): a load made slow by a long warmup stops
//! at its next run when it is unloaded, superseded by a newer load of the same model, or the
//! server gets SIGTERM, and says how far it got.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use nereid::ControlMode;
use nereid::pb::inference::model_repository_parameter::ParameterChoice as P;
use nereid::pb::inference::{
    ModelRepositoryParameter, RepositoryModelLoadRequest, RepositoryModelUnloadRequest,
};
use tonic::Code;

use crate::common::*;
use crate::process::ServerProcess;

/// Warmup runs asked of the slow model: hours of work, so only a stopped load can end.
const RUNS: u64 = 100_000_000;
/// A generous bound on what must end promptly once the load is stopped.
const BOUND: Duration = Duration::from_secs(60);

/// `simple` as `slow`, warmed up `RUNS` times on one instance.
fn slow_repo() -> tempfile::TempDir {
    let repo = repo_with(&[("slow", "simple")]);
    let cfg = read_config(repo.path(), "slow");
    write_config(
        repo.path(),
        "slow",
        &format!(
            "{cfg}\ninstance_group [ {{ count: 1 kind: KIND_CPU }} ]\nmodel_warmup [ {{ name: \"long\" batch_size: 1 count: {RUNS} inputs {{ key: \"INPUT0\" value: {{ data_type: TYPE_INT32 dims: [ 16 ] zero_data: true }} }} inputs {{ key: \"INPUT1\" value: {{ data_type: TYPE_INT32 dims: [ 16 ] zero_data: true }} }} }} ]\n"
        ),
    );
    repo
}

async fn explicit(repo: &Path) -> TestServer {
    TestServer::start_with(repo, |c| {
        c.manager.control_mode = ControlMode::Explicit;
        c.manager.startup_models = vec![];
    })
    .await
}

fn load_request(name: &str, config: Option<&str>) -> RepositoryModelLoadRequest {
    let mut parameters = HashMap::new();
    if let Some(c) = config {
        parameters.insert(
            "config".to_string(),
            ModelRepositoryParameter {
                parameter_choice: Some(P::StringParam(c.into())),
            },
        );
    }
    RepositoryModelLoadRequest {
        repository_name: String::new(),
        model_name: name.into(),
        parameters,
    }
}

/// Starts loading `name` in the background and waits until the index shows it warming up.
async fn start_load_until_warming(
    s: &TestServer,
    name: &'static str,
) -> tokio::task::JoinHandle<Result<(), tonic::Status>> {
    let mut c = s.new_client().await;
    let load = tokio::spawn(async move {
        c.repository_model_load(load_request(name, None))
            .await
            .map(|_| ())
    });
    loop {
        let idx = s.index(false).await;
        if rows(&idx, name)
            .iter()
            .any(|r| r.state == "LOADING" && r.reason.contains("warming up"))
        {
            break;
        }
        assert!(!load.is_finished(), "the {name} load ended early: {idx:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    load
}

/// Starts loading `slow` in the background and waits until the index shows it warming up.
async fn start_slow_load(s: &TestServer) -> tokio::task::JoinHandle<Result<(), tonic::Status>> {
    start_load_until_warming(s, "slow").await
}

/// Waits for a load that was stopped: CANCELLED, with a message that contains `says`; returns
/// the message.
async fn stopped_load(
    load: tokio::task::JoinHandle<Result<(), tonic::Status>>,
    says: &str,
) -> String {
    let err = tokio::time::timeout(BOUND, load)
        .await
        .expect("the load stops")
        .unwrap()
        .expect_err("a stopped load is not a success");
    assert_eq!(err.code(), Code::Cancelled, "{err:?}");
    assert!(err.message().contains(says), "{}", err.message());
    err.message().to_string()
}

/// The runs the stopped load reported, from "... after <n> of <RUNS> runs of warmup sample".
fn runs_done(message: &str) -> u64 {
    let after = message
        .split(" after ")
        .nth(1)
        .unwrap_or_else(|| panic!("no progress in {message:?}"));
    let mut words = after.split(' ');
    let done: u64 = words.next().unwrap().parse().unwrap();
    assert_eq!(words.next(), Some("of"), "{message}");
    assert_eq!(words.next(), Some(RUNS.to_string().as_str()), "{message}");
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unload_stops_a_load_in_its_warmup() {
    let repo = slow_repo();
    let s = explicit(repo.path()).await;
    let load = start_slow_load(&s).await;
    let mut c = s.client.clone();
    tokio::time::timeout(
        BOUND,
        c.repository_model_unload(RepositoryModelUnloadRequest {
            repository_name: String::new(),
            model_name: "slow".into(),
            parameters: HashMap::new(),
        }),
    )
    .await
    .expect("the unload does not wait for the warmup to finish")
    .expect("unload succeeds");
    let message = stopped_load(load, "load of model 'slow' stopped (unloaded)").await;
    assert!(runs_done(&message) < RUNS);
    let idx = s.index(false).await;
    assert!(
        rows(&idx, "slow").iter().all(|r| r.state != "READY"),
        "{idx:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_load_supersedes_a_load_in_its_warmup() {
    let repo = slow_repo();
    let s = explicit(repo.path()).await;
    let load = start_slow_load(&s).await;
    // The newer load brings a config without the long warmup.
    let config = r#"{"name": "slow", "backend": "onnxruntime", "max_batch_size": 8, "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16]}, {"name": "INPUT1", "data_type": "TYPE_INT32", "dims": [16]}], "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16]}, {"name": "OUTPUT1", "data_type": "TYPE_INT32", "dims": [16]}]}"#;
    let mut c = s.client.clone();
    tokio::time::timeout(
        BOUND,
        c.repository_model_load(load_request("slow", Some(config))),
    )
    .await
    .expect("the newer load does not wait for the old warmup")
    .expect("the newer load succeeds");
    let message = stopped_load(
        load,
        "load of model 'slow' stopped (superseded by a newer load)",
    )
    .await;
    assert!(runs_done(&message) < RUNS);
    let (a, b) = simple_operands(1, 1);
    let resp = s.infer(simple_request("slow", 1, &a, &b)).await.unwrap();
    assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
}

/// The real binary: SIGTERM while a startup load is warming up → exit status 0 well within
/// `--exit-timeout-secs` + 2 s (bounded here at 10×), the load reporting where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_startup_load_exits_0() {
    let repo = slow_repo();
    let mut server = ServerProcess::start(&[
        "--model-repository",
        repo.path().to_str().unwrap(),
        "--grpc-port",
        "0",
        "--allow-http",
        "false",
        "--allow-metrics",
        "false",
        "--exit-timeout-secs",
        "1",
    ]);
    server.wait_for_line(BOUND, |l| {
        (l.contains("warming up") && l.contains("slow")).then_some(())
    });
    // (exit-timeout 1 s + 2 s) × 10.
    let status = server.sigterm_and_wait(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        server.log_text()
    );
    let stopped = server.wait_for_line(Duration::ZERO, |l| {
        l.contains("load of model 'slow' stopped (the server is shutting down)")
            .then(|| l.to_string())
    });
    assert!(runs_done(&stopped) < RUNS, "{stopped}");
}

/// `spin`: `y = Loop(M = 2^62, x)` whose body passes `x` through, so one run never ends by
/// itself; with `warmup`, its one warmup run can only stop through ONNX Runtime's terminate flag.
pub(crate) fn spin_repo(warmup: bool) -> tempfile::TempDir {
    use crate::external_data::{cat, int, msg, tensor_info, varint};
    let node = |op: &str, ins: &[&str], outs: &[&str], attrs: &[Vec<u8>]| {
        let mut n = Vec::new();
        for i in ins {
            n.extend(msg(1, i.as_bytes()));
        }
        for o in outs {
            n.extend(msg(2, o.as_bytes()));
        }
        n.extend(msg(4, op.as_bytes()));
        for a in attrs {
            n.extend(msg(5, a));
        }
        n
    };
    let body = cat(&[
        msg(1, &node("Identity", &["c_in"], &["c_out"], &[])),
        msg(1, &node("Identity", &["v_in"], &["v_out"], &[])),
        msg(2, b"body"),
        msg(11, &tensor_info("i", 7, &[])),
        msg(11, &tensor_info("c_in", 9, &[])),
        msg(11, &tensor_info("v_in", 1, &[1])),
        msg(12, &tensor_info("c_out", 9, &[])),
        msg(12, &tensor_info("v_out", 1, &[1])),
    ]);
    // AttributeProto { name: "body", g: body, type: GRAPH }
    let attr = cat(&[msg(1, b"body"), msg(6, &body), int(20, 5)]);
    // TensorProto { data_type: INT64, name: "M", int64_data: [2^62] } (a scalar: no dims).
    let mut m = Vec::new();
    varint(&mut m, 1 << 62);
    let trips = cat(&[int(2, 7), msg(8, b"M"), msg(7, &m)]);
    let cond = cat(&[int(2, 9), msg(8, b"cond"), msg(5, &[1])]);
    let graph = cat(&[
        msg(1, &node("Loop", &["M", "cond", "x"], &["y"], &[attr])),
        msg(2, b"spin"),
        msg(5, &trips),
        msg(5, &cond),
        msg(11, &tensor_info("x", 1, &[1])),
        msg(12, &tensor_info("y", 1, &[1])),
    ]);
    let opset = cat(&[msg(1, b""), int(2, 13)]);
    let model = cat(&[int(1, 8), msg(7, &graph), msg(8, &opset)]);
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path().join("spin");
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::write(dir.join("1/model.onnx"), model).unwrap();
    let mut config = String::from(
        "name: \"spin\"\nbackend: \"onnxruntime\"\nmax_batch_size: 0\ninput [ { name: \"x\" data_type: TYPE_FP32 dims: [ 1 ] } ]\noutput [ { name: \"y\" data_type: TYPE_FP32 dims: [ 1 ] } ]\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n",
    );
    if warmup {
        config.push_str("model_warmup [ { name: \"spin\" batch_size: 1 count: 1 inputs { key: \"x\" value: { data_type: TYPE_FP32 dims: [ 1 ] zero_data: true } } } ]\n");
    }
    std::fs::write(dir.join("config.pbtxt"), config).unwrap();
    repo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unload_terminates_a_warmup_run_in_progress() {
    let repo = spin_repo(true);
    let s = explicit(repo.path()).await;
    let load = start_load_until_warming(&s, "spin").await;
    let mut c = s.client.clone();
    c.repository_model_unload(RepositoryModelUnloadRequest {
        repository_name: String::new(),
        model_name: "spin".into(),
        parameters: HashMap::new(),
    })
    .await
    .expect("unload succeeds");
    // The build itself reported the stop (not abandoned): the run in progress was terminated.
    stopped_load(
        load,
        "load of model 'spin' stopped (unloaded) after 0 of 1 runs of warmup sample 'spin'",
    )
    .await;
}
