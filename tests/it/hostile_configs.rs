//! Configs written as an attacker would (issue 14): each one once crashed the process or
//! corrupted its heap. Each is loaded in explicit mode through the repository API; the load
//! fails with a message that names what was wrong (or, for a longer warmup file, succeeds), and
//! the server goes on serving `simple`.

use nereid::ControlMode;
use tonic::Code;

use crate::common::*;

async fn explicit(repo: &std::path::Path) -> TestServer {
    TestServer::start_with(repo, |c| {
        c.manager.control_mode = ControlMode::Explicit;
        c.manager.startup_models = vec!["simple".into()];
    })
    .await
}

/// `simple`'s config renamed to `name`, with `extra` appended.
fn simple_config(name: &str, extra: &str) -> String {
    let base = read_config(bundled_repo().as_path(), "simple")
        .replace("name: \"simple\"", &format!("name: \"{name}\""));
    format!("{base}\n{extra}\n")
}

/// Loads `model` from `repo` (which also holds `simple`), expects INVALID_ARGUMENT naming every
/// one of `parts`, and checks that the server still serves.
async fn refused(repo: &tempfile::TempDir, model: &str, parts: &[&str]) -> TestServer {
    let s = explicit(repo.path()).await;
    assert_status(load_model(&s, model).await, Code::InvalidArgument, parts);
    let idx = s.index(false).await;
    assert!(
        rows(&idx, model).iter().all(|r| r.state != "READY"),
        "{idx:?}"
    );
    s.assert_still_serving().await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshape_with_fewer_elements_than_dims_is_refused_at_load() {
    // The graph takes INT32 [batch, -1]. dims [-1, 4] with reshape [-1] passed the old check
    // (one variable dim on each side), and a request [1, N, 4] became a tensor [1, N] a quarter
    // of its data's size: the copy ran past the end of the heap block.
    let repo = repo_with(&[("simple", "simple"), ("reshaped", "identity_int32")]);
    write_config(
        repo.path(),
        "reshaped",
        "name: \"reshaped\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: 8\n\
         input [ { name: \"INPUT0\" data_type: TYPE_INT32 dims: [ -1, 4 ] reshape: { shape: [ -1 ] } } ]\n\
         output [ { name: \"OUTPUT0\" data_type: TYPE_INT32 dims: [ -1 ] } ]\n",
    );
    let s = refused(
        &repo,
        "reshaped",
        &["model 'reshaped' input 'INPUT0' has different size for dims and reshape"],
    )
    .await;
    // A request of a few thousand rows (the one that used to abort) finds nothing to run.
    let n = 4096;
    let req = raw_request(
        "reshaped",
        vec![(
            input("INPUT0", "INT32", &[1, n, 4]),
            i32_bytes(&vec![7; n as usize * 4]),
        )],
    );
    assert_status(s.infer(req).await, Code::NotFound, &["reshaped"]);
}

/// A `simple` copy named `warm` whose sample reads INPUT0 (INT32 [16] = 64 bytes per item) from
/// `warmup/in0` holding `len` bytes.
fn warm_repo(len: usize) -> tempfile::TempDir {
    let repo = repo_with(&[("simple", "simple"), ("warm", "simple")]);
    write_config(
        repo.path(),
        "warm",
        &simple_config(
            "warm",
            "model_warmup [ { name: \"w\" batch_size: 2 inputs { key: \"INPUT0\" value: { data_type: TYPE_INT32 dims: [ 16 ] input_data_file: \"in0\" } } inputs { key: \"INPUT1\" value: { data_type: TYPE_INT32 dims: [ 16 ] zero_data: true } } } ]",
        ),
    );
    std::fs::create_dir_all(repo.path().join("warm/warmup")).unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i % 7) as u8).collect();
    std::fs::write(repo.path().join("warm/warmup/in0"), data).unwrap();
    repo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_file_shorter_than_the_sample_fails_as_in_triton() {
    let repo = warm_repo(10);
    refused(
        &repo,
        "warm",
        &["warmup setting expects 64 bytes, but the data provided from in0only has 10 bytes"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_file_longer_than_the_sample_uses_the_sample_bytes() {
    // 64 bytes are the sample; the rest used to be copied past the ORT tensor's end.
    let repo = warm_repo(64 * 1024 + 3);
    let s = explicit(repo.path()).await;
    load_model(&s, "warm")
        .await
        .expect("a longer warmup file loads");
    let (a, b) = simple_operands(2, 3);
    let resp = s.infer(simple_request("warm", 2, &a, &b)).await.unwrap();
    assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_sample_larger_than_the_limit_is_refused() {
    let repo = repo_with(&[("simple", "simple"), ("huge", "simple")]);
    write_config(
        repo.path(),
        "huge",
        &simple_config(
            "huge",
            "model_warmup [ { name: \"big\" batch_size: 1 inputs { key: \"INPUT0\" value: { data_type: TYPE_INT32 dims: [ 1099511627776 ] zero_data: true } } inputs { key: \"INPUT1\" value: { data_type: TYPE_INT32 dims: [ 16 ] zero_data: true } } } ]",
        ),
    );
    refused(
        &repo,
        "huge",
        &[
            "model 'huge': model_warmup 'big' needs 4398046511104 bytes of input data, more than --max-warmup-bytes 268435456",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_count_past_the_limit_is_refused() {
    let repo = repo_with(&[("simple", "simple"), ("crowd", "simple")]);
    write_config(
        repo.path(),
        "crowd",
        &simple_config(
            "crowd",
            "instance_group [ { count: 100000 kind: KIND_CPU } ]",
        ),
    );
    refused(
        &repo,
        "crowd",
        &["model 'crowd': instance_group asks for 100000 instances, more than --max-instances-per-model 64"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_past_the_limit_are_refused() {
    let repo = repo_with(&[("simple", "simple"), ("threads", "simple")]);
    write_config(
        repo.path(),
        "threads",
        &simple_config(
            "threads",
            "instance_group [ { count: 8 kind: KIND_CPU } ]\nparameters { key: \"intra_op_thread_count\" value: { string_value: \"64\" } }",
        ),
    );
    refused(
        &repo,
        "threads",
        &["model 'threads': 8 instances × 64 threads (intra_op_thread_count 64 + inter_op_thread_count 0) = 512 threads, more than --max-model-threads 256"],
    )
    .await;
}

/// `minilm`'s config (renamed `text`) with each `(from, to)` replaced once, in a scratch
/// repository whose version folder holds no graph: the limits are checked before the graph or
/// the tokenizer file is opened.
fn text_repo_with(edits: &[(&str, &str)]) -> tempfile::TempDir {
    let repo = repo_with(&[("simple", "simple")]);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cfg = std::fs::read_to_string(root.join("text_repository/minilm/config.pbtxt"))
        .unwrap()
        .replace("name: \"minilm\"", "name: \"text\"");
    for (from, to) in edits {
        assert_eq!(cfg.matches(from).count(), 1, "{from} occurs once");
        cfg = cfg.replacen(from, to, 1);
    }
    std::fs::create_dir_all(repo.path().join("text/1")).unwrap();
    write_config(repo.path(), "text", &cfg);
    repo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_max_length_past_the_limit_is_refused() {
    let repo = text_repo_with(&[
        ("string_value: \"longest\"", "string_value: \"max_length\""),
        ("string_value: \"256\"", "string_value: \"1099511627776\""),
    ]);
    refused(
        &repo,
        "text",
        &["model 'text': max_length 1099511627776 is more than --max-text-length 8192"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenizer_threads_past_the_limit_are_refused() {
    let repo = text_repo_with(&[(
        "# Text:",
        "parameters { key: \"tokenizer_threads\" value: { string_value: \"100000\" } }\n# Text:",
    )]);
    refused(
        &repo,
        "text",
        &["model 'text': tokenizer_threads 100000 is more than --max-tokenizer-threads 16"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_reshape_still_round_trips() {
    // The contrast to the refused reshape: dims [2, 2] seen by the graph as [4], both ways.
    let repo = repo_with(&[("simple", "simple"), ("reshaped", "identity_int32")]);
    write_config(
        repo.path(),
        "reshaped",
        "name: \"reshaped\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: 8\n\
         input [ { name: \"INPUT0\" data_type: TYPE_INT32 dims: [ 2, 2 ] reshape: { shape: [ 4 ] } } ]\n\
         output [ { name: \"OUTPUT0\" data_type: TYPE_INT32 dims: [ 2, 2 ] reshape: { shape: [ 4 ] } } ]\n",
    );
    let s = explicit(repo.path()).await;
    load_model(&s, "reshaped")
        .await
        .expect("a consistent reshape loads");
    let values: Vec<i32> = (0..12).collect();
    let req = raw_request(
        "reshaped",
        vec![(input("INPUT0", "INT32", &[3, 2, 2]), i32_bytes(&values))],
    );
    let resp = s.infer(req).await.unwrap();
    assert_eq!(resp.outputs[0].shape, vec![3, 2, 2]);
    assert_eq!(output_i32(&resp, "OUTPUT0"), values);
}
