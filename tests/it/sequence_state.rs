//! Implicit state (sequence-batching.md §7) through ONNX Runtime on the generated models
//! (`client_examples_repository/`, scripts/gen_sequence_models.py): the accumulator
//! `simple_string_dyna_sequence` (acc = INPUT on START, + INPUT after, + the id on END) and
//! `simple_initial_state` (acc starts at 100 from `initial_state/offset.bin`). State is carried
//! across requests and reset by START, the initial-state file seeds every sequence, bad states
//! fail the load naming the state, a failed reload keeps the old version and its sequences, and
//! on SIGTERM running sequences go on while new ones are refused.

use std::path::Path;

use nereid::ControlMode;

use crate::common::*;
use crate::sequence::{Id, seq_request};

const ACC: &str = "simple_string_dyna_sequence";
const SEEDED: &str = "simple_initial_state";

/// Copies generated model `model` (every file of its folder) into `repo`.
fn copy_example(repo: &Path, model: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("client_examples_repository")
        .join(model);
    for sub in ["", "1", "initial_state"] {
        let from = src.join(sub);
        if !from.is_dir() {
            continue;
        }
        let to = repo.join(model).join(sub);
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&from).unwrap() {
            let f = f.unwrap();
            if f.file_type().unwrap().is_file() {
                std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
            }
        }
    }
}

fn examples(models: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for m in models {
        copy_example(dir.path(), m);
    }
    dir
}

async fn step(s: &TestServer, model: &str, value: i32, id: Id, start: bool, end: bool) -> i32 {
    let resp = s
        .infer(seq_request(model, value, id, start, end))
        .await
        .unwrap_or_else(|e| panic!("{model} {value}: {e:?}"));
    output_i32(&resp, "OUTPUT")[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_carried_across_requests_and_reset_by_start() {
    let repo = examples(&[ACC]);
    let s = TestServer::start(repo.path()).await.owning(repo);
    let a = || Id::Str("7");
    let b = || Id::Str("40");
    // Two sequences interleaved: each keeps its own accumulator.
    assert_eq!(step(&s, ACC, 5, a(), true, false).await, 5);
    assert_eq!(step(&s, ACC, 100, b(), true, false).await, 100);
    assert_eq!(step(&s, ACC, 3, a(), false, false).await, 8);
    assert_eq!(step(&s, ACC, -1, b(), false, false).await, 99);
    assert_eq!(step(&s, ACC, 2, a(), false, false).await, 10);
    // A second START for a running id restarts its state (Triton's "conflict": no error).
    assert_eq!(step(&s, ACC, 20, a(), true, false).await, 20);
    assert_eq!(step(&s, ACC, 1, a(), false, false).await, 21);
    // END adds the id; the state is freed with the sequence.
    assert_eq!(step(&s, ACC, 1, a(), false, true).await, 22 + 7);
    assert_eq!(step(&s, ACC, 1, b(), false, true).await, 100 + 40);
    // A new sequence on the same id starts from its own START.
    assert_eq!(step(&s, ACC, 4, a(), true, true).await, 4 + 7);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initial_state_file_seeds_every_sequence() {
    let repo = examples(&[SEEDED]);
    let s = TestServer::start(repo.path()).await.owning(repo);
    assert_eq!(step(&s, SEEDED, 1, Id::Int(3), true, false).await, 101);
    assert_eq!(step(&s, SEEDED, 2, Id::Int(4), true, false).await, 102);
    assert_eq!(step(&s, SEEDED, 5, Id::Int(3), false, false).await, 106);
    assert_eq!(step(&s, SEEDED, 1, Id::Int(3), false, true).await, 107);
    // START resets to the file's value, not to zero.
    assert_eq!(step(&s, SEEDED, 1, Id::Int(4), true, false).await, 101);
    assert_eq!(step(&s, SEEDED, 0, Id::Int(4), false, true).await, 101);
    s.stop().await;
}

/// The error of a load of `model` as its folder now is.
async fn load_error(s: &TestServer, model: &str) -> String {
    load_model(s, model)
        .await
        .expect_err("the load fails")
        .message()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_states_fail_the_load_naming_the_state() {
    let repo = examples(&[SEEDED]);
    let path = repo.path().to_path_buf();
    let s = TestServer::start_with(&path, |c| {
        c.manager.control_mode = ControlMode::Explicit;
        c.manager.startup_models = vec![];
    })
    .await
    .owning(repo);
    let good = read_config(&path, SEEDED);
    let with = |from: &str, to: &str| {
        assert!(good.contains(from), "{from}");
        write_config(&path, SEEDED, &good.replacen(from, to, 1));
    };
    let cases: [(&str, &str, &str); 6] = [
        // The state's dims do not fit the graph's [-1,1].
        (
            "dims: [ 1 ]\n      initial_state",
            "dims: [ 2 ]\n      initial_state",
            "'initial_state' dim for input name 'ACC' doesn't match 'state' dim description. 1 != 2",
        ),
        // Nor its type.
        (
            "      data_type: TYPE_INT32\n      dims: [ 1 ]\n      initial_state",
            "      data_type: TYPE_FP32\n      dims: [ 1 ]\n      initial_state",
            "The data type used for 'initial_state' field of state 'ACC' does not match the state data type.",
        ),
        (
            "        }\n      ]\n",
            "        },\n        { data_type: TYPE_INT32 dims: [ 1 ] name: \"z\" zero_data: true }\n      ]\n",
            "initial_state field for state input 'ACC' must contain exactly one or zero element. Found '2' elements.",
        ),
        (
            "data_file: \"offset.bin\"",
            "data_file: \"../config.pbtxt\"",
            "initial_state data_file of state input 'ACC' '../config.pbtxt' must stay inside the model folder",
        ),
        (
            "data_file: \"offset.bin\"",
            "data_file: \"missing.bin\"",
            "cannot read initial_state data_file of state input 'ACC' 'missing.bin'",
        ),
        (
            "output_name: \"ACC_OUT\"",
            "output_name: \"OUTPUT_X\"",
            "sequence batching state output 'OUTPUT_X' (state 'ACC') is not an output of the model",
        ),
    ];
    for (from, to, want) in cases {
        with(from, to);
        let e = load_error(&s, SEEDED).await;
        assert!(e.contains(want), "{to}: {e}");
    }
    // Dims checked against the graph, with a matching initial state (and file).
    let file = path.join(SEEDED).join("initial_state").join("offset.bin");
    std::fs::write(&file, [0u8; 8]).unwrap();
    write_config(
        &path,
        SEEDED,
        &good
            .replace(
                "dims: [ 1 ]\n      initial_state",
                "dims: [ 2 ]\n      initial_state",
            )
            .replace("          dims: [ 1 ]", "          dims: [ 2 ]"),
    );
    let e = load_error(&s, SEEDED).await;
    assert!(
        e.contains("sequence batching state input 'ACC' (state 'ACC'): model shape [-1,1] does not match the state shape [-1,2]"),
        "{e}"
    );
    std::fs::write(&file, 100i32.to_le_bytes()).unwrap();
    // The type checked against the graph, with a matching initial state.
    write_config(
        &path,
        SEEDED,
        &good
            .replace(
                "TYPE_INT32\n      dims: [ 1 ]\n      initial_state",
                "TYPE_FP32\n      dims: [ 1 ]\n      initial_state",
            )
            .replace(
                "          data_type: TYPE_INT32",
                "          data_type: TYPE_FP32",
            ),
    );
    let e = load_error(&s, SEEDED).await;
    assert!(
        e.contains("sequence batching state input 'ACC' (state 'ACC') is TYPE_FP32, model provides TYPE_INT32"),
        "{e}"
    );
    // A data file of the wrong size.
    write_config(&path, SEEDED, &good);
    std::fs::write(&file, [1u8, 0]).unwrap();
    let e = load_error(&s, SEEDED).await;
    assert!(
        e.contains("initial_state setting expects 4 bytes, but the data provided from offset.binonly has 2 bytes. (state input 'ACC'"),
        "{e}"
    );
    std::fs::write(&file, [0u8; 8]).unwrap();
    let e = load_error(&s, SEEDED).await;
    assert!(e.contains("expects 4 bytes") && e.contains("'ACC'"), "{e}");
    // A symbolic link that leads out of the folder.
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), 7i32.to_le_bytes()).unwrap();
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(outside.path(), &file).unwrap();
    let e = load_error(&s, SEEDED).await;
    assert!(e.contains("must stay inside the model folder"), "{e}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_keeps_the_old_version_and_its_sequences() {
    let repo = examples(&[SEEDED]);
    let path = repo.path().to_path_buf();
    let s = TestServer::start_with(&path, |c| {
        c.manager.control_mode = ControlMode::Explicit;
        c.manager.startup_models = vec![SEEDED.into()];
    })
    .await
    .owning(repo);
    assert_eq!(step(&s, SEEDED, 1, Id::Int(9), true, false).await, 101);
    let file = path.join(SEEDED).join("initial_state").join("offset.bin");
    std::fs::write(&file, [0u8; 3]).unwrap();
    let e = load_error(&s, SEEDED).await;
    assert!(e.contains("'ACC'"), "{e}");
    // The old version still serves, and the running sequence kept its state.
    assert_eq!(step(&s, SEEDED, 1, Id::Int(9), false, true).await, 102);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_running_sequences_go_on_and_new_ones_are_refused() {
    let DirectServer {
        running,
        addr,
        stop,
        ..
    } = start_direct(examples(&[ACC]), |_| {}).await;
    let core = running.core.clone();
    let c = connect(addr).await;
    let infer = |req| {
        let mut c = c.clone();
        async move {
            c.model_infer(req)
                .await
                .map(|r| output_i32(&r.into_inner(), "OUTPUT")[0])
        }
    };
    assert_eq!(
        infer(seq_request(ACC, 5, Id::Str("1"), true, false))
            .await
            .unwrap(),
        5
    );

    let _ = stop.send(());
    wait_for("readiness turns false", || async {
        !core.ready().unwrap_or(false)
    })
    .await;
    // A new sequence is refused with Triton's text (row S).
    let e = infer(seq_request(ACC, 1, Id::Str("2"), true, false))
        .await
        .expect_err("a new sequence is refused");
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(
        e.message().contains(
            "Server is stopping, scheduler for model has stopped accepting new inference requests"
        ),
        "{}",
        e.message()
    );
    // The running one goes on, over the same connection, with its state.
    assert_eq!(
        infer(seq_request(ACC, 3, Id::Str("1"), false, false))
            .await
            .unwrap(),
        8
    );
    assert_eq!(
        infer(seq_request(ACC, 1, Id::Str("1"), false, true))
            .await
            .unwrap(),
        9 + 1
    );
    // With its END the last sequence is over, and the server stops.
    drop(c);
    tokio::time::timeout(WAIT_LIMIT, running.wait())
        .await
        .expect("the server stops once its sequences ended")
        .expect("the server stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_model_warms_up_with_its_controls_and_states() {
    let repo = examples(&[ACC]);
    // A required warmup sample: it runs only if the batcher's controls (a string CORRID
    // included) and the initial state are fed beside the sample's INPUT.
    let cfg = read_config(repo.path(), ACC);
    write_config(
        repo.path(),
        ACC,
        &format!(
            "{cfg}model_warmup [ {{ name: \"w\" batch_size: 2 inputs {{ key: \"INPUT\" value: {{ data_type: TYPE_INT32 dims: [ 1 ] zero_data: true }} }} }} ]\n"
        ),
    );
    let s = TestServer::start(repo.path()).await.owning(repo);
    assert_eq!(step(&s, ACC, 2, Id::Str("5"), true, true).await, 2 + 5);
    s.stop().await;
}
