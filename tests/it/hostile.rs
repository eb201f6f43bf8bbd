//! Requests an attacker would send, against the real server: each is answered with a clear
//! error (or served correctly), and the server goes on serving others.

use bytes::Bytes;
use prost::Message;
use tonic::Code;

use crate::common::*;
use crate::overload::rejected_metric;

/// Opens a gRPC call to `method` on its own HTTP/2 connection, sends `body` and ends the
/// request stream; returns the response once its headers arrive.
async fn raw_grpc(s: &TestServer, method: &str, body: Vec<u8>) -> h2::client::ResponseFuture {
    let (response, mut send) = raw_grpc_call(s, method).await;
    send.send_data(Bytes::from(body), true).unwrap();
    response
}

/// A 16-byte `ModelInfer` body whose `model_name` declares 2^64 − 11 bytes: summed unchecked,
/// the field's end wraps back to its start and the early-refusal scan never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_whose_length_wraps_is_answered_and_the_server_goes_on() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let mut body = vec![0, 0, 0, 0, 11, 0x0a];
    prost::encoding::encode_varint(u64::MAX - 10, &mut body);
    assert_eq!(body.len(), 16);
    // Several at once: each would have held a runtime worker forever.
    let calls: Vec<_> =
        futures_util::future::join_all((0..4).map(|_| raw_grpc(&s, "ModelInfer", body.clone())))
            .await;
    for call in calls {
        let resp = tokio::time::timeout(RPC_TIMEOUT, call)
            .await
            .expect("the call is answered")
            .unwrap();
        let (_, status) = read_raw_reply(resp).await;
        assert_ne!(status, "0", "a message that does not decode is an error");
    }
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_named_twice_is_refused_on_both_protocols() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = simple_operands(1, 3);
    let mut req = simple_request("simple", 1, &a, &b);
    req.outputs = vec![requested("OUTPUT0"); 200];
    assert_status(
        s.infer(req).await,
        Code::InvalidArgument,
        &["output 'OUTPUT0' already exists in request"],
    );
    let body = serde_json::json!({
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": a},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": b}],
        "outputs": [{"name": "OUTPUT1"}, {"name": "OUTPUT0"}, {"name": "OUTPUT1"}]});
    let resp = s
        .http
        .post(s.url("/v2/models/simple/infer"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("output 'OUTPUT1' already exists in request"),
        "{text}"
    );
    // Each output named once is still served.
    let mut req = simple_request("simple", 1, &a, &b);
    req.outputs = vec![requested("OUTPUT1"), requested("OUTPUT0")];
    let resp = s.infer(req).await.unwrap();
    assert_eq!(resp.outputs.len(), 2);
    assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
}

/// A stream whose second message does not decode: the first is answered, then the stream ends
/// with an error status (not OK, as if the client had half-closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_stream_message_ends_the_stream_with_an_error() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = simple_operands(1, 5);
    let mut first = simple_request("simple", 1, &a, &b);
    first.id = "first".into();
    let mut body = grpc_framed(&first.encode_to_vec());
    // Field 1 (model_name) declaring 100 bytes in a 3-byte message.
    body.extend(grpc_framed(&[0x0a, 100, b'x']));
    let mut after = first.clone();
    after.id = "after".into();
    body.extend(grpc_framed(&after.encode_to_vec()));
    let call = raw_grpc(&s, "ModelStreamInfer", body).await;
    let resp = tokio::time::timeout(RPC_TIMEOUT, call)
        .await
        .expect("the stream is answered")
        .unwrap();
    let (data, status) = tokio::time::timeout(RPC_TIMEOUT, read_raw_reply(resp))
        .await
        .expect("the stream ends");
    assert_eq!(status, "13", "INTERNAL, the decode error's status");
    // Exactly the first request's response came before the error.
    let len = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
    assert_eq!(data.len(), 5 + len, "one response");
    let r = nereid::pb::inference::ModelStreamInferResponse::decode(&data[5..]).unwrap();
    assert_eq!(r.error_message, "");
    let r = r.infer_response.unwrap();
    assert_eq!(r.id, "first");
    assert_eq!(output_i32(&r, "OUTPUT0"), add(&a, &b));
}

/// A request larger than `--max-inflight-bytes` can never be admitted: refused at once as
/// invalid, naming both sizes, with no retry hint, and counted as `too_large`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_can_never_fit_is_invalid_not_busy() {
    let repo = repo_with(&[("simple", "simple")]);
    // `simple` takes two [1,16] INT32 inputs: 128 bytes.
    let s = TestServer::start_with(repo.path(), |c| c.inflight.bytes = 100)
        .await
        .owning(repo);
    let (a, b) = simple_operands(1, 2);
    let status = assert_status(
        s.infer(simple_request("simple", 1, &a, &b)).await,
        Code::InvalidArgument,
        &["128 bytes", "100 bytes", "--max-inflight-bytes"],
    );
    assert!(status.metadata().get("grpc-retry-pushback-ms").is_none());
    let body = serde_json::json!({
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": a},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": b}]});
    let resp = s
        .http
        .post(s.url("/v2/models/simple/infer"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.headers().get("retry-after").is_none());
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("128 bytes") && text.contains("100 bytes"),
        "{text}"
    );
    assert_eq!(rejected_metric(&s, "simple", "too_large").await, 2);
    assert_eq!(rejected_metric(&s, "simple", "server_busy").await, 0);
}

/// A model whose name holds a newline and a forged log line, loaded on request, reaches the
/// log (in its load error) as one escaped line: nothing in the log starts with the forged text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_name_with_a_newline_cannot_forge_a_log_line() {
    use std::process::{Command, Stdio};
    let forged = "E1205 12:00:00.000000 1 server.cc:1] forged";
    let repo = tempfile::tempdir().unwrap();
    // A folder whose name holds the forged line, with a config that does not parse.
    let model = repo.path().join(format!("evil\n{forged}"));
    std::fs::create_dir_all(model.join("1")).unwrap();
    std::fs::write(model.join("config.pbtxt"), "max_batch_size: [").unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nereid"))
        .args(["--model-repository", repo.path().to_str().unwrap()])
        .args(["--model-control-mode", "explicit", "--log-file"])
        .arg(&log)
        .args([
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--allow-metrics",
            "false",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the nereid binary starts");
    // The log is written by a background thread: read it until `done` holds (WAIT_LIMIT only
    // turns a hang into a failure).
    let read_until = |done: &dyn Fn(&str) -> bool| {
        let start = tokio::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if done(&text) {
                return text;
            }
            assert!(start.elapsed() < WAIT_LIMIT, "log so far:\n{text}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let text = read_until(&|t| t.contains("Started HTTPService at "));
    let addr = text
        .split("Started HTTPService at ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .replace("0.0.0.0", "127.0.0.1");
    let resp = reqwest::Client::new()
        .post(format!(
            "http://{addr}/v2/repository/models/evil%0A{}/load",
            forged.replace(' ', "%20").replace(']', "%5D")
        ))
        .timeout(RPC_TIMEOUT)
        .send()
        .await
        .unwrap();
    assert!(!resp.status().is_success());
    let text = read_until(&|t| t.contains("forged"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !text.lines().any(|l| l.starts_with("E1205")),
        "a forged line:\n{text}"
    );
    assert!(text.contains("evil\\nE1205"), "escaped:\n{text}");
}
