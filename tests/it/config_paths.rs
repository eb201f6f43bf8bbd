//! File names from a config stay inside the model (issue 14): label files, the model file,
//! warmup data and a text model's tokenizer. A leading `/` is stripped as Triton joins paths; a
//! `..` component or a control character fails the load with the name as written. Errors sent
//! to clients carry names relative to the model, never the server's folders. ONNX Runtime itself
//! refuses external data that escapes the model folder.

use std::path::Path;

use nereid::ControlMode;
use nereid::pb::inference::model_repository_parameter::ParameterChoice as P;
use tonic::Code;

use crate::common::*;

async fn explicit(repo: &Path) -> TestServer {
    TestServer::start_with(repo, |c| {
        c.manager.control_mode = ControlMode::Explicit;
        c.manager.startup_models = vec![];
    })
    .await
}

/// Asserts that loading `model` fails with exactly Triton's INVALID_ARG wrapping of `message`,
/// and that the index shows the same reason.
async fn assert_refused(s: &TestServer, model: &str, message: &str) {
    let err = load_model(s, model).await.expect_err("the load fails");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains(message), "{}", err.message());
    let idx = s.index(false).await;
    let row = rows(&idx, model);
    assert!(
        row.iter().any(|r| r.reason.contains(message)),
        "index reason names the field: {row:?}"
    );
}

/// `simple` with OUTPUT0 labelled from `label_filename`.
fn labelled(repo: &Path, label_filename: &str) {
    copy_model(repo, "simple", "simple");
    edit_config(
        repo,
        "simple",
        "name: \"OUTPUT0\"",
        &format!("name: \"OUTPUT0\"\n    label_filename: \"{label_filename}\""),
    );
}

fn classify_request() -> nereid::pb::inference::ModelInferRequest {
    let (a, b) = simple_operands(1, 1);
    let mut req = simple_request("simple", 1, &a, &b);
    req.outputs = vec![classification("OUTPUT0", 16)];
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_label_file_is_read_inside_the_model_folder() {
    let repo = tempfile::tempdir().unwrap();
    labelled(repo.path(), "/etc/passwd");
    let inside = repo.path().join("simple/etc");
    std::fs::create_dir_all(&inside).unwrap();
    let lines: Vec<String> = (0..16).map(|i| format!("inside{i}")).collect();
    std::fs::write(inside.join("passwd"), lines.join("\n")).unwrap();
    let s = explicit(repo.path()).await;
    load_model(&s, "simple")
        .await
        .expect("labels resolve inside the model");
    let resp = s.infer(classify_request()).await.unwrap();
    let got = output_strings(&resp, "OUTPUT0");
    assert_eq!(got.len(), 16);
    for entry in &got {
        let label = entry.splitn(3, ':').nth(2).unwrap_or_default();
        assert!(label.starts_with("inside"), "foreign label: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_file_outside_the_model_fails_the_load() {
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("x"), "SECRET\n".repeat(16)).unwrap();
    labelled(repo.path(), "../x");
    let s = explicit(repo.path()).await;
    assert_refused(
        &s,
        "simple",
        "model 'simple': label_filename '../x' must stay inside the model folder",
    )
    .await;
    assert_status(
        s.infer(classify_request()).await,
        Code::NotFound,
        &["'simple' has no available versions"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_self_environ_as_labels_is_not_the_servers_environment() {
    let repo = tempfile::tempdir().unwrap();
    labelled(repo.path(), "/proc/self/environ");
    let s = explicit(repo.path()).await;
    let err = load_model(&s, "simple")
        .await
        .expect_err("no such file in the model");
    assert!(
        err.message()
            .contains("cannot read label file '/proc/self/environ'"),
        "{}",
        err.message()
    );
    assert_no_server_path(err.message(), repo.path());
    assert!(s.infer(classify_request()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_file_warmup_data_and_tokenizer_cannot_leave_the_model() {
    let repo = tempfile::tempdir().unwrap();
    // A valid model file and data beside the model folders: reachable only by climbing out.
    std::fs::copy(
        bundled_repo().join("simple/1/model.onnx"),
        repo.path().join("outside.onnx"),
    )
    .unwrap();
    std::fs::write(repo.path().join("outside.bin"), vec![0u8; 64]).unwrap();
    std::fs::write(repo.path().join("tokenizer.json"), "{}").unwrap();

    copy_model(repo.path(), "file", "simple");
    edit_config(
        repo.path(),
        "file",
        "max_batch_size: 8",
        "max_batch_size: 8\ndefault_model_filename: \"../../outside.onnx\"",
    );
    copy_model(repo.path(), "warm", "simple");
    let text = read_config(repo.path(), "warm");
    write_config(
        repo.path(),
        "warm",
        &format!(
            "{text}\nmodel_warmup [ {{ name: \"w\" batch_size: 1 inputs {{ key: \"INPUT0\" value: {{ data_type: TYPE_INT32 dims: [ 16 ] input_data_file: \"../../outside.bin\" }} }} inputs {{ key: \"INPUT1\" value: {{ data_type: TYPE_INT32 dims: [ 16 ] zero_data: true }} }} }} ]"
        ),
    );
    copy_model(repo.path(), "tok", "simple");
    let text = read_config(repo.path(), "tok");
    write_config(
        repo.path(),
        "tok",
        &format!(
            "{text}\nparameters {{ key: \"tokenizer\" value: {{ string_value: \"../tokenizer.json\" }} }}"
        ),
    );
    let s = explicit(repo.path()).await;
    assert_refused(
        &s,
        "file",
        "model 'file': default_model_filename '../../outside.onnx' must stay inside the model folder",
    )
    .await;
    assert_refused(
        &s,
        "warm",
        "model 'warm': input_data_file '../../outside.bin' must stay inside the model folder",
    )
    .await;
    assert_refused(
        &s,
        "tok",
        "model 'tok': tokenizer '../tokenizer.json' must stay inside the model folder",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_character_in_a_name_fails_the_load() {
    let repo = tempfile::tempdir().unwrap();
    labelled(repo.path(), "labels\\n.txt");
    std::fs::write(repo.path().join("simple/labels\n.txt"), "a\n").unwrap();
    let s = explicit(repo.path()).await;
    assert_refused(
        &s,
        "simple",
        "model 'simple': label_filename 'labels\\n.txt' must stay inside the model folder",
    )
    .await;
}

/// `message` names nothing of the server's own folders.
fn assert_no_server_path(message: &str, repo: &Path) {
    let repo = repo.to_str().unwrap();
    let tmp = std::env::temp_dir();
    let tmp = tmp.to_str().unwrap().trim_end_matches('/');
    assert!(!message.contains(repo), "repository path leaked: {message}");
    assert!(!message.contains(tmp), "temp path leaked: {message}");
    assert!(
        !message.contains("nereid-load-"),
        "upload folder leaked: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_errors_name_files_relative_to_the_model() {
    let repo = tempfile::tempdir().unwrap();
    copy_model(repo.path(), "broken", "simple");
    std::fs::write(repo.path().join("broken/1/model.onnx"), b"not a model").unwrap();
    copy_model(repo.path(), "nofile", "simple");
    std::fs::remove_file(repo.path().join("nofile/1/model.onnx")).unwrap();
    copy_model(repo.path(), "badcfg", "simple");
    write_config(repo.path(), "badcfg", "name: \"badcfg\" max_batch_size: {");
    let s = explicit(repo.path()).await;

    // A config that does not parse is a load that cannot be polled: Triton's text for the
    // client, the file named (relative to the model) in the index's reason.
    let err = load_model(&s, "badcfg")
        .await
        .expect_err("config does not parse");
    assert_eq!(
        err.message(),
        "failed to load 'badcfg', failed to poll from model repository"
    );
    let reason = rows(&s.index(false).await, "badcfg")[0].reason.clone();
    assert!(reason.contains("'config.pbtxt'"), "{reason}");
    assert_no_server_path(&reason, repo.path());

    let err = load_model(&s, "broken")
        .await
        .expect_err("garbage model file");
    assert!(err.message().contains("1/model.onnx"), "{}", err.message());
    assert_no_server_path(err.message(), repo.path());
    let err = load_model(&s, "nofile").await.expect_err("no model file");
    assert!(
        err.message().contains("'1/model.onnx'"),
        "{}",
        err.message()
    );
    assert_no_server_path(err.message(), repo.path());
    let err = load_model(&s, "nope").await.expect_err("no such model");
    assert_no_server_path(err.message(), repo.path());
    for row in s.index(false).await {
        assert_no_server_path(&row.reason, repo.path());
    }

    // A `file:` upload lands in a temporary folder; its path stays out of the answer too.
    let config = r#"{"name": "up", "backend": "onnxruntime", "max_batch_size": 0, "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16]}, {"name": "INPUT1", "data_type": "TYPE_INT32", "dims": [16]}], "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16]}]}"#;
    let err = load_model_with(
        &s,
        "up",
        vec![
            ("config", P::StringParam(config.into())),
            ("file:1/model.onnx", P::BytesParam(b"garbage".to_vec())),
        ],
    )
    .await
    .expect_err("garbage upload");
    assert!(err.message().contains("1/model.onnx"), "{}", err.message());
    assert_no_server_path(err.message(), repo.path());

    // The HTTP load answers with the same text.
    let resp = s
        .http
        .post(s.url("/v2/repository/models/broken/load"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body = resp.text().await.unwrap();
    assert!(body.contains("1/model.onnx"), "{body}");
    assert_no_server_path(&body, repo.path());
}
