//! The floor's HTTP/REST side: what perf_analyzer `-i http` calls for `simple`, answered by axum
//! with no queue and no ONNX Runtime. perf_analyzer 2.51 asks, in this order: `GET
//! /v2/models/simple` (metadata), `GET /v2/models/simple/config`, `GET /v2` and `GET
//! /v2/models/simple/stats` (around each window), then `POST /v2/models/simple/infer` with both
//! inputs in the binary-data extension (`Inference-Header-Content-Length`, `binary_data_size`)
//! and both outputs asked for with `binary_data: true`. The infer handler also takes JSON `data`
//! inputs and answers each output in the form it was asked for (Triton's rules: a per-output
//! `binary_data`, else the request's `binary_data_output`, else JSON).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::{Floor, MODEL, WIDTH};

const HEADER_LENGTH: &str = "inference-header-content-length";

/// The router: health, server metadata, `simple`'s metadata, config, readiness, statistics and
/// infer (with and without `/versions/1`). Anything else is a 404 with a JSON error.
pub(crate) fn router(floor: Arc<Floor>) -> Router {
    let mut r = Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(|| async { StatusCode::OK }))
        .route("/v2", get(server_metadata));
    for base in ["/v2/models/simple", "/v2/models/simple/versions/1"] {
        r = r
            .route(base, get(model_metadata))
            .route(&format!("{base}/ready"), get(|| async { StatusCode::OK }))
            .route(&format!("{base}/config"), get(model_config))
            .route(&format!("{base}/stats"), get(statistics))
            .route(&format!("{base}/infer"), post(infer));
    }
    r.fallback(|| async { error(StatusCode::NOT_FOUND, "not part of the protocol floor") })
        .with_state(floor)
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

fn tensor(name: &str, rows: i64) -> Value {
    json!({ "name": name, "datatype": "INT32", "shape": [rows, WIDTH] })
}

async fn server_metadata() -> Response {
    json_response(
        StatusCode::OK,
        &json!({ "name": "floor", "version": "0", "extensions": ["binary_tensor_data", "statistics"] }),
    )
}

async fn model_metadata() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "name": MODEL,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [tensor("INPUT0", -1), tensor("INPUT1", -1)],
            "outputs": [tensor("OUTPUT0", -1), tensor("OUTPUT1", -1)],
        }),
    )
}

async fn model_config() -> Response {
    let io = |name: &str| json!({ "name": name, "data_type": "TYPE_INT32", "dims": [WIDTH] });
    json_response(
        StatusCode::OK,
        &json!({
            "name": MODEL,
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "max_batch_size": 8,
            "input": [io("INPUT0"), io("INPUT1")],
            "output": [io("OUTPUT0"), io("OUTPUT1")],
            "instance_group": [{ "name": MODEL, "kind": "KIND_CPU", "count": 1 }],
        }),
    )
}

/// The successes are the answered inferences (the bench divides the server's CPU time by them).
/// Each also counts as queued for 0 ns: perf_analyzer over HTTP stops with "failed to find the
/// requested model version" when the queue count stays 0.
async fn statistics(State(floor): State<Arc<Floor>>) -> Response {
    let answered = floor.answered.load(Ordering::Relaxed);
    let zero = json!({ "count": 0, "ns": 0 });
    let each = json!({ "count": answered, "ns": 0 });
    json_response(
        StatusCode::OK,
        &json!({ "model_stats": [{
            "name": MODEL,
            "version": "1",
            "last_inference": 0,
            "inference_count": answered,
            "execution_count": answered,
            "inference_stats": {
                "success": each, "queue": each,
                "fail": zero, "compute_input": zero, "compute_infer": zero,
                "compute_output": zero, "cache_hit": zero, "cache_miss": zero,
            },
            "batch_stats": [],
            "memory_usage": [],
            "response_stats": {},
        }]}),
    )
}

/// One input's INT32 values as little-endian bytes: from the binary section when the input has
/// `binary_data_size` (taken in the order the inputs appear), else from its JSON `data`.
fn input_bytes(input: &Value, binary: &mut Bytes) -> Result<Bytes, String> {
    let name = input["name"].as_str().unwrap_or("?");
    if let Some(n) = input["parameters"]["binary_data_size"].as_u64() {
        let n = usize::try_from(n).map_err(|_| format!("{name}: binary_data_size too large"))?;
        if n > binary.len() {
            return Err(format!("{name}: binary_data_size {n} beyond the body"));
        }
        return Ok(binary.split_to(n));
    }
    let mut flat = Vec::new();
    let mut stack = vec![&input["data"]];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items.iter().rev()),
            Value::Number(x) => {
                let x = x
                    .as_i64()
                    .and_then(|x| i32::try_from(x).ok())
                    .ok_or_else(|| format!("{name}: {x} is not an INT32"))?;
                flat.extend_from_slice(&x.to_le_bytes());
            }
            _ => return Err(format!("{name}: expects INT32 data or binary_data_size")),
        }
    }
    Ok(flat.into())
}

async fn infer(State(floor): State<Arc<Floor>>, headers: HeaderMap, body: Bytes) -> Response {
    match answer(&headers, body) {
        Ok(r) => {
            floor.answered.fetch_add(1, Ordering::Relaxed);
            r
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

fn answer(headers: &HeaderMap, mut body: Bytes) -> Result<Response, String> {
    let header_len = match headers.get(HEADER_LENGTH) {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n <= body.len())
            .ok_or("bad Inference-Header-Content-Length")?,
        None => body.len(),
    };
    let header_bytes = body.split_to(header_len);
    let mut binary = body;
    let req: Value = serde_json::from_slice(&header_bytes).map_err(|e| e.to_string())?;
    let mut a = None;
    let mut b = None;
    for input in req["inputs"].as_array().ok_or("no inputs")? {
        let bytes = input_bytes(input, &mut binary)?;
        match input["name"].as_str() {
            Some("INPUT0") => a = Some(bytes),
            Some("INPUT1") => b = Some(bytes),
            _ => return Err("unknown input".into()),
        }
    }
    let (Some(a), Some(b)) = (a, b) else {
        return Err("expects INPUT0 and INPUT1".into());
    };
    if a.len() != b.len() || a.is_empty() || a.len() % (4 * WIDTH) != 0 {
        return Err("INPUT0 and INPUT1 must be [rows, 16] INT32".into());
    }
    let rows = (a.len() / (4 * WIDTH)) as i64;
    let (sum, diff) = crate::compute(&a, &b);

    let binary_default = req["parameters"]["binary_data_output"]
        .as_bool()
        .unwrap_or(false);
    let asked: Vec<(String, bool)> = match req["outputs"].as_array() {
        Some(outs) if !outs.is_empty() => outs
            .iter()
            .map(|o| {
                let name = o["name"].as_str().unwrap_or_default().to_string();
                let bin = o["parameters"]["binary_data"]
                    .as_bool()
                    .unwrap_or(binary_default);
                (name, bin)
            })
            .collect(),
        _ => vec![
            ("OUTPUT0".into(), binary_default),
            ("OUTPUT1".into(), binary_default),
        ],
    };
    let mut outputs = Vec::new();
    let mut tail: Vec<&[u8]> = Vec::new();
    for (name, bin) in &asked {
        let data = match name.as_str() {
            "OUTPUT0" => &sum,
            "OUTPUT1" => &diff,
            _ => return Err(format!("unknown output {name}")),
        };
        let mut t = tensor(name, rows);
        if *bin {
            t["parameters"] = json!({ "binary_data_size": data.len() });
            tail.push(data);
        } else {
            let ints: Vec<i32> = crate::ints(data).collect();
            t["data"] = json!(ints);
        }
        outputs.push(t);
    }
    let mut head = json!({ "model_name": MODEL, "model_version": "1", "outputs": outputs });
    if let Some(id) = req["id"].as_str().filter(|id| !id.is_empty()) {
        head["id"] = json!(id);
    }
    let head = head.to_string();
    if tail.is_empty() {
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            head,
        )
            .into_response());
    }
    let mut out = Vec::with_capacity(head.len() + tail.iter().map(|t| t.len()).sum::<usize>());
    out.extend_from_slice(head.as_bytes());
    for t in tail {
        out.extend_from_slice(t);
    }
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        out,
    )
        .into_response();
    r.headers_mut()
        .insert(HEADER_LENGTH, HeaderValue::from(head.len()));
    Ok(r)
}
