//! Shared fixtures: an in-process server on an ephemeral port (on ONNX Runtime or on the fake
//! backend), scratch model repositories built from the committed `model_repository/`, waits on
//! observable state, request builders and output decoders.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use nereid::ServerConfig;
use nereid::pb::health::health_client::HealthClient;
use nereid::pb::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use nereid::pb::inference::infer_parameter::ParameterChoice;
use nereid::pb::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use nereid::pb::inference::model_repository_parameter::ParameterChoice as LoadParameter;
use nereid::pb::inference::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
    ModelRepositoryParameter, RepositoryIndexRequest, RepositoryModelLoadRequest,
    repository_index_response::ModelIndex,
};
use nereid::testing::FakeBackend;
use nereid::{Listeners, RunningServer, bind};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub use crate::fake::*;

pub type Client = GrpcInferenceServiceClient<Channel>;

/// A generous per-call bound: every RPC in this suite answers in milliseconds, so hitting it
/// means the server hung.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(20);

/// The overall bound of a wait on observable state (`wait_for`, `FakeLog::wait_until`): a
/// safety net that turns a hang into a failure, never what a test measures. Generous, so a
/// slow or loaded machine never trips it.
pub const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// The committed repository every test may read (never write).
pub fn bundled_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository")
}

/// Number of models in the committed repository.
pub const BUNDLED_MODELS: usize = 19;

/// Opt-in server logs: `NEREID_TEST_LOG=debug cargo test --test it -- --nocapture`.
fn init_logging() {
    if let Ok(filter) = std::env::var("NEREID_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// A real server on 127.0.0.1:<ephemeral> (gRPC and HTTP), stopped when dropped.
pub struct TestServer {
    /// The gRPC address.
    pub addr: SocketAddr,
    /// The metrics listener (`/metrics`), also on an ephemeral loopback port.
    pub metrics_addr: SocketAddr,
    pub client: Client,
    pub http_addr: SocketAddr,
    /// An HTTP/1.1 client without compression or TLS; every call is bounded by `RPC_TIMEOUT`.
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: Option<RunningServer>,
    /// The fake backend the server runs its models on (`start_fake*`); `None` = ONNX Runtime.
    pub(crate) fake: Option<FakeBackend>,
    /// Keeps a scratch repository alive as long as the server.
    _repo: Option<TempDir>,
}

impl TestServer {
    /// Serves `repo` with tritonserver's defaults.
    pub async fn start(repo: &Path) -> TestServer {
        Self::start_with(repo, |_| {}).await
    }

    /// Serves the committed repository with the defaults.
    pub async fn bundled() -> TestServer {
        Self::start(&bundled_repo()).await
    }

    /// Serves `repo` after `edit` adjusted the default configuration; panics if startup fails.
    pub async fn start_with(repo: &Path, edit: impl FnOnce(&mut ServerConfig)) -> TestServer {
        match Self::try_start_with(repo, edit).await {
            Ok(s) => s,
            Err(e) => panic!("server failed to start: {e}"),
        }
    }

    /// Like `start_with`, but returns startup errors (e.g. "failed to load all models").
    pub async fn try_start_with(
        repo: &Path,
        edit: impl FnOnce(&mut ServerConfig),
    ) -> Result<TestServer, nereid::Error> {
        Self::try_start_on(repo, edit, None).await
    }

    /// Serves only `models` of the committed repository (copies in a scratch repository owned
    /// by the server), so a test loads just what it uses.
    pub async fn bundled_subset(models: &[&str]) -> TestServer {
        Self::bundled_subset_with(models, |_| {}).await
    }

    /// `bundled_subset` after `edit` adjusted the default configuration.
    pub async fn bundled_subset_with(
        models: &[&str],
        edit: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let pairs: Vec<(&str, &str)> = models.iter().map(|m| (*m, *m)).collect();
        let repo = repo_with(&pairs);
        Self::start_with(repo.path(), edit).await.owning(repo)
    }

    pub(crate) async fn try_start_on(
        repo: &Path,
        edit: impl FnOnce(&mut ServerConfig),
        fake: Option<FakeBackend>,
    ) -> Result<TestServer, nereid::Error> {
        init_logging();
        let mut config = ServerConfig::new(vec![repo.to_path_buf()]);
        edit(&mut config);
        let listeners = Listeners {
            grpc: Some(bind("127.0.0.1:0".parse().unwrap()).await?),
            http: Some(bind("127.0.0.1:0".parse().unwrap()).await?),
            metrics: Some(bind("127.0.0.1:0".parse().unwrap()).await?),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = rx.await;
        };
        let server = match &fake {
            Some(backend) => {
                let backend = std::sync::Arc::new(backend.clone());
                RunningServer::start_with_backend(config, listeners, backend, shutdown).await?
            }
            None => RunningServer::start(config, listeners, shutdown).await?,
        };
        let addr = server.grpc_addr.expect("gRPC is enabled by default");
        let http_addr = server.http_addr.expect("HTTP is bound");
        let metrics_addr = server.metrics_addr.expect("metrics are enabled");
        let client = connect(addr).await;
        let http = reqwest::Client::builder()
            .timeout(RPC_TIMEOUT)
            .build()
            .expect("HTTP client builds");
        Ok(TestServer {
            addr,
            metrics_addr,
            client,
            http_addr,
            http,
            stop: Some(tx),
            server: Some(server),
            fake,
            _repo: None,
        })
    }

    /// The server's core, for state that only the process sees (requests in flight).
    pub fn core(&self) -> &std::sync::Arc<nereid::Core> {
        &self.server.as_ref().expect("running").core
    }

    /// `http://<http addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// Ties a scratch repository's lifetime to this server.
    pub fn owning(mut self, repo: TempDir) -> TestServer {
        self._repo = Some(repo);
        self
    }

    /// A fresh client (its own connection) to this server.
    pub async fn new_client(&self) -> Client {
        connect(self.addr).await
    }

    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::connect(format!("http://{}", self.addr))
            .await
            .expect("health client connects")
    }

    /// Signals shutdown and waits for the front-end to stop.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(RPC_TIMEOUT, server.wait())
                .await
                .expect("server stops promptly")
                .expect("server stops cleanly");
        }
    }

    /// Runs one inference, panicking on a transport hang.
    pub async fn infer(&self, req: ModelInferRequest) -> Result<ModelInferResponse, tonic::Status> {
        let mut c = self.client.clone();
        tokio::time::timeout(RPC_TIMEOUT, c.model_infer(req))
            .await
            .expect("ModelInfer answers")
            .map(|r| r.into_inner())
    }

    pub async fn index(&self, ready: bool) -> Vec<ModelIndex> {
        let mut c = self.client.clone();
        c.repository_index(RepositoryIndexRequest {
            repository_name: String::new(),
            ready,
        })
        .await
        .expect("RepositoryIndex succeeds")
        .into_inner()
        .models
    }

    pub async fn server_ready(&self) -> bool {
        let mut c = self.client.clone();
        c.server_ready(nereid::pb::inference::ServerReadyRequest {})
            .await
            .expect("ServerReady answers")
            .into_inner()
            .ready
    }

    /// The metrics exposition (`GET /metrics`), asserting a 200.
    pub async fn metrics(&self) -> String {
        let (status, body) = http_get(self.metrics_addr, "GET", "/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// Proves the server still serves: one `simple` inference with exact results.
    pub async fn assert_still_serving(&self) {
        let (a, b) = simple_operands(1, 7);
        let resp = self
            .infer(simple_request("simple", 1, &a, &b))
            .await
            .expect("a good request still succeeds");
        assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
        assert_eq!(output_i32(&resp, "OUTPUT1"), sub(&a, &b));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A failing test must not leave executions waiting at the fake backend's gate.
        if let Some(fake) = &self.fake {
            fake.gate.open();
        }
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A server run directly (not through `TestServer`), so the test can see its `Core`.
pub struct DirectServer {
    pub running: RunningServer,
    pub addr: SocketAddr,
    /// Sending (or dropping) it is the shutdown signal.
    pub stop: oneshot::Sender<()>,
    _repo: TempDir,
}

/// Serves `repo` with no shutdown delay and an exit timeout no test waits for: a drain that
/// ends did so because its last request went.
pub async fn start_direct(repo: TempDir, edit: impl FnOnce(&mut ServerConfig)) -> DirectServer {
    let mut config = ServerConfig::new(vec![repo.path().to_path_buf()]);
    config.shutdown_delay = Duration::ZERO;
    config.exit_timeout = Duration::from_secs(3600);
    edit(&mut config);
    let listeners = Listeners {
        grpc: Some(bind("127.0.0.1:0".parse().unwrap()).await.unwrap()),
        http: None,
        metrics: None,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let running = RunningServer::start(config, listeners, async {
        let _ = stopped.await;
    })
    .await
    .expect("the server starts");
    let addr = running.grpc_addr.expect("gRPC is bound");
    DirectServer {
        running,
        addr,
        stop,
        _repo: repo,
    }
}

pub async fn connect(addr: SocketAddr) -> Client {
    GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("client connects")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

// ---------------------------------------------------------------------------------------------
// Scratch repositories

/// A temporary repository holding copies of committed models: `(name, source)` copies
/// `model_repository/<source>` to `<tmp>/<name>`, renaming the model in its config.pbtxt.
pub fn repo_with(models: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, src) in models {
        copy_model(dir.path(), name, src);
    }
    dir
}

pub fn copy_model(repo: &Path, name: &str, src: &str) {
    let from = bundled_repo().join(src);
    assert!(from.is_dir(), "no committed model '{src}'");
    let to = repo.join(name);
    copy_dir(&from, &to);
    let cfg = to.join("config.pbtxt");
    if name != src && cfg.is_file() {
        let text = std::fs::read_to_string(&cfg).unwrap();
        let renamed = text.replacen(&format!("name: \"{src}\""), &format!("name: \"{name}\""), 1);
        assert_ne!(text, renamed, "config of '{src}' names the model");
        std::fs::write(&cfg, renamed).unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

pub fn config_path(repo: &Path, model: &str) -> PathBuf {
    repo.join(model).join("config.pbtxt")
}

pub fn read_config(repo: &Path, model: &str) -> String {
    std::fs::read_to_string(config_path(repo, model)).unwrap()
}

pub fn write_config(repo: &Path, model: &str, text: &str) {
    std::fs::write(config_path(repo, model), text).unwrap();
}

/// Replaces exactly one occurrence of `from` in a model's config.pbtxt.
pub fn edit_config(repo: &Path, model: &str, from: &str, to: &str) {
    let text = read_config(repo, model);
    assert_eq!(
        text.matches(from).count(),
        1,
        "'{from}' occurs once in {model}/config.pbtxt"
    );
    write_config(repo, model, &text.replacen(from, to, 1));
}

/// Index rows of one model.
pub fn rows<'a>(index: &'a [ModelIndex], model: &str) -> Vec<&'a ModelIndex> {
    index.iter().filter(|r| r.name == model).collect()
}

// ---------------------------------------------------------------------------------------------
// Requests

pub fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        ..Default::default()
    }
}

pub fn typed_input(
    name: &str,
    datatype: &str,
    shape: &[i64],
    contents: InferTensorContents,
) -> InferInputTensor {
    InferInputTensor {
        contents: Some(contents),
        ..input(name, datatype, shape)
    }
}

pub fn requested(name: &str) -> InferRequestedOutputTensor {
    InferRequestedOutputTensor {
        name: name.into(),
        parameters: HashMap::new(),
    }
}

pub fn classification(name: &str, k: i64) -> InferRequestedOutputTensor {
    let mut parameters = HashMap::new();
    parameters.insert(
        "classification".to_string(),
        InferParameter {
            parameter_choice: Some(ParameterChoice::Int64Param(k)),
        },
    );
    InferRequestedOutputTensor {
        name: name.into(),
        parameters,
    }
}

/// A request whose inputs carry their data in `raw_input_contents`, in order.
pub fn raw_request(model: &str, inputs: Vec<(InferInputTensor, Bytes)>) -> ModelInferRequest {
    let (inputs, raw): (Vec<_>, Vec<_>) = inputs.into_iter().unzip();
    ModelInferRequest {
        model_name: model.into(),
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    }
}

/// `simple`-shaped request: INPUT0/INPUT1 INT32 `[rows,16]` (or `[16]` when `rows` is 0).
pub fn simple_request(model: &str, rows: i64, a: &[i32], b: &[i32]) -> ModelInferRequest {
    let shape: Vec<i64> = if rows == 0 { vec![16] } else { vec![rows, 16] };
    raw_request(
        model,
        vec![
            (input("INPUT0", "INT32", &shape), i32_bytes(a)),
            (input("INPUT1", "INT32", &shape), i32_bytes(b)),
        ],
    )
}

/// Distinct, sign-varied operands for `rows` rows of 16 (at least one row).
pub fn simple_operands(rows: usize, seed: i32) -> (Vec<i32>, Vec<i32>) {
    let n = rows.max(1) * 16;
    let a = (0..n as i32).map(|i| i * 3 + seed * 100).collect();
    let b = (0..n as i32).map(|i| (i % 5) - 7 * seed).collect();
    (a, b)
}

pub fn add(a: &[i32], b: &[i32]) -> Vec<i32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

pub fn sub(a: &[i32], b: &[i32]) -> Vec<i32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

pub fn i32_bytes(v: &[i32]) -> Bytes {
    v.iter()
        .flat_map(|x| x.to_le_bytes())
        .collect::<Vec<u8>>()
        .into()
}

pub fn f32_bytes(v: &[f32]) -> Bytes {
    v.iter()
        .flat_map(|x| x.to_le_bytes())
        .collect::<Vec<u8>>()
        .into()
}

/// Triton's BYTES layout: 4-byte little-endian length, then the payload, per element.
pub fn bytes_tensor<T: AsRef<[u8]>>(elements: &[T]) -> Bytes {
    let mut out = Vec::new();
    for e in elements {
        let e = e.as_ref();
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out.into()
}

// ---------------------------------------------------------------------------------------------
// Responses

/// The output named `name` and its raw entry (same index, grpc-protocol.md §3.1).
pub fn output<'a>(
    resp: &'a ModelInferResponse,
    name: &str,
) -> (
    &'a nereid::pb::inference::model_infer_response::InferOutputTensor,
    &'a Bytes,
) {
    assert_eq!(
        resp.outputs.len(),
        resp.raw_output_contents.len(),
        "one raw entry per output"
    );
    let i = resp
        .outputs
        .iter()
        .position(|o| o.name == name)
        .unwrap_or_else(|| panic!("no output '{name}' in {resp:?}"));
    (&resp.outputs[i], &resp.raw_output_contents[i])
}

pub fn output_i32(resp: &ModelInferResponse, name: &str) -> Vec<i32> {
    let (o, raw) = output(resp, name);
    assert_eq!(o.datatype, "INT32");
    assert_eq!(raw.len() % 4, 0);
    raw.chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn output_f32(resp: &ModelInferResponse, name: &str) -> Vec<f32> {
    let (o, raw) = output(resp, name);
    assert_eq!(o.datatype, "FP32");
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn output_bytes(resp: &ModelInferResponse, name: &str) -> Vec<Vec<u8>> {
    let (o, raw) = output(resp, name);
    assert_eq!(o.datatype, "BYTES");
    decode_bytes(raw)
}

pub fn output_strings(resp: &ModelInferResponse, name: &str) -> Vec<String> {
    output_bytes(resp, name)
        .into_iter()
        .map(|b| String::from_utf8(b).expect("UTF-8 output"))
        .collect()
}

pub fn decode_bytes(raw: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        let len = u32::from_le_bytes(raw[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 4;
        out.push(raw[pos..pos + len].to_vec());
        pos += len;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Status assertions

/// Asserts an error status with `code` whose message contains every one of `parts`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    parts: &[&str],
) -> tonic::Status {
    let status = match result {
        Ok(v) => panic!("expected {code:?} containing {parts:?}, got success: {v:?}"),
        Err(s) => s,
    };
    assert_eq!(
        status.code(),
        code,
        "status code; message: {:?}",
        status.message()
    );
    for p in parts {
        assert!(
            status.message().contains(p),
            "message {:?} lacks {p:?}",
            status.message()
        );
    }
    status
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// One HTTP/1.1 request over a fresh connection: (status code, body).
pub async fn http_get(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await.unwrap();
        String::from_utf8(raw).expect("UTF-8 response")
    };
    let text = tokio::time::timeout(RPC_TIMEOUT, exchange)
        .await
        .expect("metrics listener answers");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name{labels}` in an exposition; `labels` as rendered, e.g.
/// `model="simple",version="1"`.
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().expect("numeric sample"))
}

/// RepositoryModelLoad of `name` with load parameters (a `config` override, `file:` contents).
pub async fn load_model_with(
    s: &TestServer,
    name: &str,
    params: Vec<(&str, LoadParameter)>,
) -> Result<(), tonic::Status> {
    let parameters: HashMap<String, ModelRepositoryParameter> = params
        .into_iter()
        .map(|(k, v)| {
            let choice = ModelRepositoryParameter {
                parameter_choice: Some(v),
            };
            (k.to_string(), choice)
        })
        .collect();
    let mut c = s.client.clone();
    c.repository_model_load(RepositoryModelLoadRequest {
        repository_name: String::new(),
        model_name: name.into(),
        parameters,
    })
    .await
    .map(|_| ())
}

/// RepositoryModelLoad of `name` as its repository folder has it.
pub async fn load_model(s: &TestServer, name: &str) -> Result<(), tonic::Status> {
    load_model_with(s, name, vec![]).await
}

/// Opens a gRPC call to `method` on a raw HTTP/2 connection of its own, for bodies the generated
/// client cannot send (stalled half-way, malformed); returns the response and the request body.
pub async fn raw_grpc_call(
    s: &TestServer,
    method: &str,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let head = http::Request::post(format!(
        "http://{}/inference.GRPCInferenceService/{method}",
        s.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    client.send_request(head, false).unwrap()
}

/// The response's data frames and its `grpc-status` (from the trailers, or from the headers of
/// a trailers-only answer).
pub async fn read_raw_reply(resp: http::Response<h2::RecvStream>) -> (Vec<u8>, String) {
    if let Some(s) = resp.headers().get("grpc-status") {
        return (Vec::new(), s.to_str().unwrap().to_string());
    }
    let mut body = resp.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    let status = trailers["grpc-status"].to_str().unwrap().to_string();
    (data, status)
}

/// One message in gRPC framing (uncompressed).
pub fn grpc_framed(msg: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}
