//! HTTP/REST routes with reqwest: every route of http-protocol.md §2 that the server
//! implements, with Triton's JSON shapes, status codes and empty/`{"error"}` bodies.

use serde_json::json;

use crate::common::*;
use crate::rest::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_server_metadata() {
    let s = TestServer::bundled_subset(&[]).await;
    for path in ["/v2/health/live", "/v2/health/ready"] {
        let r = s.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.body.is_empty(), "{path} has an empty body");
    }
    let r = s.get("/v2").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let m = r.json();
    assert_eq!(m["name"], "triton");
    assert!(m["version"].as_str().is_some_and(|v| !v.is_empty()));
    let ext: Vec<&str> = m["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for want in ["binary_tensor_data", "statistics", "model_configuration"] {
        assert!(ext.contains(&want), "{ext:?} lacks {want}");
    }
    assert!(ext.contains(&"system_shared_memory"), "{ext:?}");
    assert!(ext.contains(&"sequence"), "{ext:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_metadata_and_ready() {
    let s = TestServer::bundled_subset(&[
        "simple",
        "simple_nobatch",
        "simple_string",
        "simple_versions",
    ])
    .await;
    for path in ["/v2/models/simple", "/v2/models/simple/versions/1"] {
        let r = s.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.json(),
            json!({
                "name": "simple", "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": [
                    {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
                    {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]}],
                "outputs": [
                    {"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, 16]},
                    {"name": "OUTPUT1", "datatype": "INT32", "shape": [-1, 16]}]
            })
        );
    }
    let m = s.get("/v2/models/simple_nobatch").await.json();
    assert_eq!(m["inputs"][0]["shape"], json!([16]));
    let m = s.get("/v2/models/simple_versions").await.json();
    assert_eq!(m["versions"], json!(["2", "3"]));
    let m = s.get("/v2/models/simple_string").await.json();
    assert_eq!(m["inputs"][0]["datatype"], "BYTES");

    for path in [
        "/v2/models/simple/ready",
        "/v2/models/simple_versions/versions/2/ready",
    ] {
        let r = s.get(path).await;
        assert_eq!((r.status, r.body.len()), (200, 0), "{path}");
    }
    // Lookup errors (behaviour.md E1, E3) as JSON errors with Triton's statuses.
    let r = s.get("/v2/models/nope").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error(), "Request for unknown model: 'nope' is not found");
    // Readiness of an unknown model or version is "not ready", not a lookup error.
    for path in [
        "/v2/models/nope/ready",
        "/v2/models/simple_versions/versions/1/ready",
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.error(), "Model version not ready");
    }
    // A version segment that is not digits is not a route.
    let r = s.get("/v2/models/simple/versions/latest").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error(), "Not Found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_config_is_triton_json() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    for path in [
        "/v2/models/simple/config",
        "/v2/models/simple/versions/1/config",
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let c = r.json();
        assert_eq!(c["name"], "simple");
        assert_eq!(c["platform"], "onnxruntime_onnx");
        assert_eq!(c["max_batch_size"], 8);
        assert_eq!(c["input"][0]["name"], "INPUT0");
        assert_eq!(c["input"][0]["data_type"], "TYPE_INT32");
        assert_eq!(c["input"][0]["dims"], json!([16]));
        assert_eq!(c["input"][0]["is_shape_tensor"], false);
        assert_eq!(c["input"][0]["optional"], false);
        assert_eq!(c["output"][1]["name"], "OUTPUT1");
        assert!(c["instance_group"][0]["kind"] == "KIND_CPU", "{c}");
        assert!(c.get("sequence_batching").is_none());
    }
    let r = s.get("/v2/models/simple/versions/7/config").await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_json_in_json_out() {
    let s = TestServer::bundled_subset(&["simple", "simple_string"]).await;
    let (a, b) = simple_operands(2, 3);
    let mut body = simple_json(2, &a, &b);
    body["id"] = json!("req-7");
    let r = s.post_json("/v2/models/simple/infer", &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("inference-header-content-length").is_none());
    let j = r.json();
    assert_eq!(j["id"], "req-7");
    assert_eq!(j["model_name"], "simple");
    assert_eq!(j["model_version"], "1");
    assert_eq!(j["outputs"][0]["shape"], json!([2, 16]));
    assert_eq!(json_i32(&j, "OUTPUT0"), add(&a, &b));
    assert_eq!(json_i32(&j, "OUTPUT1"), sub(&a, &b));

    // Nested `data`, an explicit version, requested outputs (in request order), no id.
    let nested: Vec<Vec<i32>> = a.chunks(16).map(<[i32]>::to_vec).collect();
    let body = json!({
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [2, 16], "data": nested},
            {"name": "INPUT1", "datatype": "INT32", "shape": [2, 16], "data": b},
        ],
        "outputs": [{"name": "OUTPUT1"}],
    });
    let r = s
        .post_json("/v2/models/simple/versions/1/infer", &body)
        .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert!(j.get("id").is_none());
    assert_eq!(j["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(json_i32(&j, "OUTPUT1"), sub(&a, &b));

    // BYTES as JSON strings.
    let strs = |v: &[i32]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let body = json!({"inputs": [
        {"name": "INPUT0", "datatype": "BYTES", "shape": [1, 16], "data": strs(&a[..16])},
        {"name": "INPUT1", "datatype": "BYTES", "shape": [1, 16], "data": strs(&b[..16])},
    ]});
    let r = s.post_json("/v2/models/simple_string/infer", &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let j = r.json();
    assert_eq!(j["outputs"][0]["datatype"], "BYTES");
    assert_eq!(
        j["outputs"][0]["data"],
        json!(strs(&add(&a[..16], &b[..16])))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_binary_both_ways() {
    let s = TestServer::bundled_subset(&["identity_fp16", "simple"]).await;
    let (a, b) = simple_operands(1, 4);
    let header = json!({
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": 64}},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": 64}},
        ],
        "outputs": [
            {"name": "OUTPUT0", "parameters": {"binary_data": true}},
            {"name": "OUTPUT1", "parameters": {"binary_data": false}},
        ],
    });
    let (body, n) = binary_body(&header, &[&i32_bytes(&a), &i32_bytes(&b)]);
    let req = s
        .http
        .post(s.url("/v2/models/simple/infer"))
        .header("Inference-Header-Content-Length", n)
        .header("Content-Type", "application/octet-stream")
        .body(body);
    let r = s.send(req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let j = r.infer_header();
    assert_eq!(
        j["outputs"][0]["parameters"],
        json!({"binary_data_size": 64})
    );
    assert!(j["outputs"][0].get("data").is_none());
    assert_eq!(json_i32(&j, "OUTPUT1"), sub(&a, &b));
    let bin = r.binary_outputs();
    assert_eq!(le_i32(&bin["OUTPUT0"]), add(&a, &b));

    // JSON inputs, `binary_data_output` for every output (what tritonclient sends).
    let mut body = simple_json(1, &a, &b);
    body["parameters"] = json!({"binary_data_output": true});
    let r = s.post_json("/v2/models/simple/infer", &body).await;
    assert_eq!(r.status, 200);
    let bin = r.binary_outputs();
    assert_eq!(le_i32(&bin["OUTPUT0"]), add(&a, &b));
    assert_eq!(le_i32(&bin["OUTPUT1"]), sub(&a, &b));

    // FP16 has no JSON form, but goes through binary unchanged.
    let half: Vec<u8> = [1.5f32, -2.0, 65504.0]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let header = json!({
        "inputs": [{"name": "INPUT0", "datatype": "FP16", "shape": [1, 3],
                    "parameters": {"binary_data_size": half.len()}}],
        "parameters": {"binary_data_output": true},
    });
    let (body, n) = binary_body(&header, &[&half]);
    let req = s
        .http
        .post(s.url("/v2/models/identity_fp16/infer"))
        .header("Inference-Header-Content-Length", n)
        .body(body);
    let r = s.send(req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(&r.binary_outputs()["OUTPUT0"][..], &half[..]);
    let json_in =
        json!({"inputs": [{"name": "INPUT0", "datatype": "FP16", "shape": [1, 1], "data": [1.0]}]});
    let r = s
        .post_json("/v2/models/identity_fp16/infer", &json_in)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error(),
        "receiving FP16 data via JSON is not supported. Please use the binary data format for input INPUT0"
    );
    let (body, n) = binary_body(&header, &[&half]);
    let mut json_out: serde_json::Value = serde_json::from_slice(&body[..n]).unwrap();
    json_out["parameters"] = json!({});
    let (body, n) = binary_body(&json_out, &[&half]);
    let req = s
        .http
        .post(s.url("/v2/models/identity_fp16/infer"))
        .header("Inference-Header-Content-Length", n)
        .body(body);
    let r = s.send(req).await;
    assert_eq!(r.status, 400);
    assert!(
        r.error()
            .starts_with("sending FP16 data via JSON is not supported")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_raw_binary_body() {
    let s = TestServer::bundled_subset(&["identity_fp32", "simple"]).await;
    let x: Vec<u8> = [1.0f32, 2.5, -3.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let req = s
        .http
        .post(s.url("/v2/models/identity_fp32/infer"))
        .header("Inference-Header-Content-Length", 0)
        .body(x.clone());
    let r = s.send(req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let j = r.infer_header();
    assert_eq!(j["outputs"][0]["shape"], json!([1, 3]));
    assert_eq!(&r.binary_outputs()["OUTPUT0"][..], &x[..]);
    // A model with two inputs cannot take a raw body.
    let req = s
        .http
        .post(s.url("/v2/models/simple/infer"))
        .header("Inference-Header-Content-Length", 0)
        .body(vec![0u8; 64]);
    let r = s.send(req).await;
    assert_eq!(r.status, 400);
    assert!(r.error().starts_with("Raw request must only have 1 input"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_classification() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let a: Vec<i32> = (0..16).collect();
    let b = vec![1; 16];
    let mut body = simple_json(1, &a, &b);
    body["outputs"] = json!([{"name": "OUTPUT0", "parameters": {"classification": 2}}]);
    let r = s.post_json("/v2/models/simple/infer", &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let o = &r.json()["outputs"][0];
    assert_eq!(o["datatype"], "BYTES");
    assert_eq!(o["shape"], json!([1, 2]));
    assert_eq!(o["data"], json!(["16:15", "15:14"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_shapes() {
    let s = TestServer::bundled_subset(&["simple", "simple_versions"]).await;
    s.assert_http_still_serving().await;
    let r = s.get("/v2/models/simple/stats").await;
    assert_eq!(r.status, 200);
    let j = r.json();
    let stats = j["model_stats"].as_array().unwrap();
    assert_eq!(stats.len(), 1);
    let m = &stats[0];
    assert_eq!(m["name"], "simple");
    assert_eq!(m["version"], "1");
    assert!(m["last_inference"].as_u64().unwrap() > 0);
    assert_eq!(m["inference_count"], 1);
    assert_eq!(m["execution_count"], 1);
    for k in [
        "success",
        "fail",
        "queue",
        "compute_input",
        "compute_infer",
        "compute_output",
        "cache_hit",
        "cache_miss",
    ] {
        let d = &m["inference_stats"][k];
        assert!(d["count"].is_u64() && d["ns"].is_u64(), "{k}: {d}");
    }
    assert_eq!(m["inference_stats"]["success"]["count"], 1);
    assert_eq!(m["response_stats"], json!({}));
    assert_eq!(m["memory_usage"], json!([]));
    assert_eq!(m["batch_stats"][0]["batch_size"], 1);
    assert_eq!(m["batch_stats"][0]["compute_infer"]["count"], 1);

    let all = s.get("/v2/models/stats").await.json();
    let names: Vec<&str> = all["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"simple") && names.contains(&"simple_versions"));
    let v = s
        .get("/v2/models/simple_versions/versions/3/stats")
        .await
        .json();
    assert_eq!(v["model_stats"][0]["version"], "3");

    let r = s.get("/v2/models/nope/stats").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error(), "requested model 'nope' is not available");
    let r = s.get("/v2/models/simple_versions/versions/1/stats").await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_index_load_unload() {
    let s = TestServer::bundled().await;
    for body in ["", "{}", r#"{"ready": false}"#, r#"{"ready": true}"#] {
        let r = s.post("/v2/repository/index", body).await;
        assert_eq!(r.status, 200, "{body}");
        let rows = r.json();
        let rows = rows.as_array().expect("the index is a JSON array");
        assert_eq!(rows.len(), BUNDLED_MODELS + 1, "{body}"); // simple_versions has 2 rows
        let simple = rows.iter().find(|r| r["name"] == "simple").unwrap();
        assert_eq!(
            *simple,
            json!({"name": "simple", "version": "1", "state": "READY"})
        );
    }
    let r = s.post("/v2/repository/index", r#"{"ready": 1}"#).await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("Unable to parse 'ready'"));

    // Model control mode `none` (behaviour.md E30).
    let e30 = "explicit model load / unload is not allowed if polling is enabled";
    for (path, body) in [
        ("/v2/repository/models/simple/load", ""),
        (
            "/v2/repository/models/simple/load",
            r#"{"parameters": {"config": "{}"}}"#,
        ),
        ("/v2/repository/models/simple/unload", ""),
        (
            "/v2/repository/models/simple/unload",
            r#"{"parameters": {"unload_dependents": false}}"#,
        ),
    ] {
        let r = s.post(path, body).await;
        assert_eq!(r.status, 503, "{path} {body}");
        assert_eq!(r.error(), e30);
    }
    let r = s
        .post(
            "/v2/repository/models/simple/load",
            r#"{"parameters": {"config": 5}}"#,
        )
        .await;
    assert_eq!(r.status, 400);
    for path in [
        "/v2/repository/repo/index",
        "/v2/repository/repo/models/simple/load",
        "/v2/repository/repo/models/simple/unload",
    ] {
        let r = s.post(path, "").await;
        assert_eq!(r.status, 501, "{path}");
        assert_eq!(
            r.error(),
            "'repository_name' specification is not supported"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_extensions_and_routing() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    // Client shared memory is off by default: register and unregister refused, status answers.
    for path in [
        "/v2/systemsharedmemory/region/r/register",
        "/v2/cudasharedmemory/unregister",
    ] {
        let r = s.post(path, "{}").await;
        assert_eq!(r.status, 501, "{path}");
        assert!(r.error().starts_with("Client shared memory is disabled"));
    }
    let r = s.get("/v2/systemsharedmemory/status").await;
    assert_eq!((r.status, r.body.as_ref()), (200, &b"[]"[..]));
    let r = s.get("/v2/cudasharedmemory/region/r/status").await;
    assert_eq!(r.status, 404);
    for path in [
        "/v2/trace/setting",
        "/v2/logging",
        "/v2/models/simple/trace/setting",
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    // Trace settings have no per-version route (http-protocol.md §2).
    let r = s.get("/v2/models/simple/versions/1/trace/setting").await;
    assert_eq!(r.status, 404);
    for path in [
        "/",
        "/v2/nope",
        "/v2/models/simple/infer/extra",
        "/v1/models/simple",
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.error(), "Not Found");
    }
    for (method, path) in [
        (reqwest::Method::POST, "/v2/health/live"),
        (reqwest::Method::GET, "/v2/models/simple/infer"),
        (reqwest::Method::DELETE, "/v2/models/simple"),
        (reqwest::Method::GET, "/v2/repository/index"),
    ] {
        let r = s.send(s.http.request(method.clone(), s.url(path))).await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.error(), "Method Not Allowed");
    }
    s.assert_http_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_closes_the_http_port() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let addr = s.http_addr;
    s.assert_http_still_serving().await;
    s.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
