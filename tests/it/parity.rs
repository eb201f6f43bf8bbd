//! One scenario table, run over gRPC and over HTTP (JSON and binary tensors): both front-ends
//! must agree on the outcome, on the error class (gRPC code ⇔ HTTP status, http-protocol.md
//! §1.1) and on the exact message, so the two cannot drift apart. Inferences, metadata,
//! statistics (in full), repository calls, trace and log settings; `settings` also checks that
//! both honour the client's W3C trace context alike.

mod settings;

use bytes::Bytes;
use nereid::pb::inference::{
    ModelConfigRequest, ModelMetadataRequest, ModelReadyRequest, ModelStatisticsRequest,
    RepositoryIndexRequest, RepositoryModelLoadRequest, RepositoryModelUnloadRequest,
};
use serde_json::{Value, json};
use tonic::Code;

use self::settings::{LogIn, TraceSet};
use crate::common::*;
use crate::rest::*;

#[derive(Clone)]
enum Data {
    I32(Vec<i32>),
    F32(Vec<f32>),
    Str(Vec<String>),
}

impl Data {
    fn raw(&self) -> Bytes {
        match self {
            Data::I32(v) => i32_bytes(v),
            Data::F32(v) => f32_bytes(v),
            Data::Str(v) => bytes_tensor(v),
        }
    }

    fn json(&self) -> Value {
        match self {
            Data::I32(v) => json!(v),
            Data::F32(v) => json!(v),
            Data::Str(v) => json!(v),
        }
    }
}

struct In {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<i64>,
    data: Data,
}

enum Call {
    Infer {
        model: &'static str,
        version: &'static str,
        inputs: Vec<In>,
        outputs: Vec<&'static str>,
    },
    Metadata(&'static str, &'static str),
    Config(&'static str, &'static str),
    Ready(&'static str, &'static str),
    Stats(&'static str, &'static str),
    Load(&'static str),
    Unload(&'static str),
    Index(&'static str),
    /// Trace settings of a model (global when empty), updated first when the list is not empty.
    Trace(&'static str, TraceSet),
    /// Log settings, updated first when the list is not empty.
    Log(Vec<(&'static str, LogIn)>),
}

/// What a call produced, in a form both front-ends can be compared on.
type Outcome = Result<Value, (Code, String)>;

fn simple_inputs(rows: i64) -> Vec<In> {
    let (a, b) = simple_operands(rows as usize, 11);
    vec![
        int_input("INPUT0", vec![rows, 16], a),
        int_input("INPUT1", vec![rows, 16], b),
    ]
}

fn int_input(name: &'static str, shape: Vec<i64>, v: Vec<i32>) -> In {
    In {
        name,
        datatype: "INT32",
        shape,
        data: Data::I32(v),
    }
}

fn cases() -> Vec<(&'static str, Call)> {
    let infer = |model, version, inputs, outputs| Call::Infer {
        model,
        version,
        inputs,
        outputs,
    };
    let mut wrong_type = simple_inputs(1);
    wrong_type[0] = In {
        name: "INPUT0",
        datatype: "FP32",
        shape: vec![1, 16],
        data: Data::F32((0..16).map(|x| x as f32).collect()),
    };
    let mut wrong_shape = simple_inputs(1);
    wrong_shape[1] = int_input("INPUT1", vec![1, 15], vec![1; 15]);
    let mut unknown_input = simple_inputs(1);
    unknown_input.push(int_input("INPUT9", vec![1, 16], vec![0; 16]));
    let strings: Vec<String> = (0..16).map(|i| i.to_string()).collect();
    let string_inputs = vec![
        In {
            name: "INPUT0",
            datatype: "BYTES",
            shape: vec![1, 16],
            data: Data::Str(strings.clone()),
        },
        In {
            name: "INPUT1",
            datatype: "BYTES",
            shape: vec![1, 16],
            data: Data::Str(strings),
        },
    ];
    [
        ("good infer", infer("simple", "", simple_inputs(2), vec![])),
        (
            "good infer, one output, explicit version",
            infer("simple_versions", "2", simple_inputs(1), vec!["OUTPUT1"]),
        ),
        (
            "good BYTES infer",
            infer("simple_string", "", string_inputs, vec![]),
        ),
        ("unknown model", infer("nope", "", simple_inputs(1), vec![])),
        ("wrong datatype", infer("simple", "", wrong_type, vec![])),
        ("wrong shape", infer("simple", "", wrong_shape, vec![])),
        (
            "batch too big",
            infer("simple", "", simple_inputs(9), vec![]),
        ),
        (
            "missing input",
            infer(
                "simple",
                "",
                simple_inputs(1).into_iter().take(1).collect(),
                vec![],
            ),
        ),
        ("unknown input", infer("simple", "", unknown_input, vec![])),
        (
            "unknown output",
            infer("simple", "", simple_inputs(1), vec!["OUTPUT9"]),
        ),
        (
            "unloaded version",
            infer("simple_versions", "1", simple_inputs(1), vec![]),
        ),
        (
            "unknown version",
            infer("simple", "7", simple_inputs(1), vec![]),
        ),
        ("metadata", Call::Metadata("simple_versions", "")),
        (
            "metadata of a version",
            Call::Metadata("simple_versions", "3"),
        ),
        ("metadata of an unknown model", Call::Metadata("nope", "")),
        (
            "metadata of an unknown version",
            Call::Metadata("simple", "2"),
        ),
        ("config", Call::Config("simple", "")),
        ("config of an unknown model", Call::Config("nope", "1")),
        ("ready", Call::Ready("simple_versions", "3")),
        (
            "ready of an unknown version",
            Call::Ready("simple_versions", "1"),
        ),
        ("ready of an unknown model", Call::Ready("nope", "")),
        ("stats", Call::Stats("simple_versions", "")),
        ("stats after inferences", Call::Stats("simple", "")),
        ("stats of one version", Call::Stats("simple_versions", "3")),
        ("stats of all models", Call::Stats("", "")),
        ("stats of an unknown model", Call::Stats("nope", "")),
        ("stats of an unknown version", Call::Stats("simple", "4")),
        ("load", Call::Load("simple")),
        ("unload", Call::Unload("simple")),
        ("index of a named repository", Call::Index("elsewhere")),
    ]
    .into_iter()
    .chain(settings::cases())
    .collect()
}

/// Rows whose error each protocol words in its own wire's terms (a gRPC `oneof` member, a
/// JSON type): they must agree on the error class, and both messages name the key.
const WORDED_PER_PROTOCOL: &[(&str, &str)] = &[("log setting of the wrong kind", "log_error")];

/// gRPC status ⇔ HTTP status (http-protocol.md §1.1 with grpc-protocol.md §8).
fn http_status_of(code: Code) -> u16 {
    match code {
        Code::InvalidArgument | Code::Unknown | Code::AlreadyExists | Code::Cancelled => 400,
        Code::NotFound => 404,
        Code::Unavailable => 503,
        Code::Unimplemented => 501,
        Code::Internal => 500,
        other => panic!("no HTTP status for {other:?}"),
    }
}

fn grpc_err(s: tonic::Status) -> (Code, String) {
    (s.code(), s.message().to_string())
}

/// Output name → (datatype, shape, raw bytes), the comparable part of an infer reply.
fn outputs_value(outputs: Vec<(String, String, Vec<i64>, Bytes)>) -> Value {
    Value::Array(
        outputs
            .into_iter()
            .map(|(n, d, s, b)| json!([n, d, s, b.to_vec()]))
            .collect(),
    )
}

async fn over_grpc(s: &TestServer, call: &Call) -> Outcome {
    let mut c = s.client.clone();
    let name = |m: &str, v: &str| (m.to_string(), v.to_string());
    match call {
        Call::Infer {
            model,
            version,
            inputs,
            outputs,
        } => {
            let mut req = raw_request(
                model,
                inputs
                    .iter()
                    .map(|i| (input(i.name, i.datatype, &i.shape), i.data.raw()))
                    .collect(),
            );
            req.model_version = version.to_string();
            req.id = "parity".into();
            req.outputs = outputs.iter().map(|o| requested(o)).collect();
            let resp = s.infer(req).await.map_err(grpc_err)?;
            Ok(outputs_value(
                resp.outputs
                    .iter()
                    .zip(resp.raw_output_contents.iter())
                    .map(|(o, raw)| {
                        (
                            o.name.clone(),
                            o.datatype.clone(),
                            o.shape.clone(),
                            raw.clone(),
                        )
                    })
                    .collect(),
            ))
        }
        Call::Metadata(m, v) => {
            let (m, v) = name(m, v);
            let r = c
                .model_metadata(ModelMetadataRequest {
                    name: m,
                    version: v,
                })
                .await
                .map_err(grpc_err)?
                .into_inner();
            let tensors =
                |ts: &[nereid::pb::inference::model_metadata_response::TensorMetadata]| {
                    ts.iter()
                        .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
                        .collect::<Vec<_>>()
                };
            Ok(json!({
                "name": r.name, "versions": r.versions, "platform": r.platform,
                "inputs": tensors(&r.inputs), "outputs": tensors(&r.outputs),
            }))
        }
        Call::Config(m, v) => {
            let (m, v) = name(m, v);
            let r = c
                .model_config(ModelConfigRequest {
                    name: m,
                    version: v,
                })
                .await
                .map_err(grpc_err)?
                .into_inner();
            Ok(nereid::internals::to_json(&r.config.unwrap()))
        }
        Call::Ready(m, v) => {
            let (m, v) = name(m, v);
            let r = c
                .model_ready(ModelReadyRequest {
                    name: m,
                    version: v,
                })
                .await
                .map_err(grpc_err)?
                .into_inner();
            Ok(json!(r.ready))
        }
        Call::Stats(m, v) => {
            let (m, v) = name(m, v);
            let r = c
                .model_statistics(ModelStatisticsRequest {
                    name: m,
                    version: v,
                })
                .await
                .map_err(grpc_err)?
                .into_inner();
            Ok(settings::stats_json(&r))
        }
        Call::Load(m) => {
            c.repository_model_load(RepositoryModelLoadRequest {
                model_name: m.to_string(),
                ..Default::default()
            })
            .await
            .map_err(grpc_err)?;
            Ok(Value::Null)
        }
        Call::Unload(m) => {
            c.repository_model_unload(RepositoryModelUnloadRequest {
                model_name: m.to_string(),
                ..Default::default()
            })
            .await
            .map_err(grpc_err)?;
            Ok(Value::Null)
        }
        Call::Index(repo) => {
            let r = c
                .repository_index(RepositoryIndexRequest {
                    repository_name: repo.to_string(),
                    ready: false,
                })
                .await
                .map_err(grpc_err)?
                .into_inner();
            Ok(json!(r.models.len()))
        }
        Call::Trace(m, set) => settings::trace_over_grpc(s, m, set).await,
        Call::Log(set) => settings::log_over_grpc(s, set).await,
    }
}

fn model_path(m: &str, v: &str) -> String {
    if v.is_empty() {
        format!("/v2/models/{m}")
    } else {
        format!("/v2/models/{m}/versions/{v}")
    }
}

/// The HTTP outcome, checked against the gRPC one's error class; `binary` sends the inputs
/// in the binary extension instead of JSON.
async fn over_http(s: &TestServer, call: &Call, binary: bool) -> Result<Value, (u16, String)> {
    let r = match call {
        Call::Infer {
            model,
            version,
            inputs,
            outputs,
        } => {
            let mut sections = Vec::new();
            let ins: Vec<Value> = inputs
                .iter()
                .map(|i| {
                    let mut o = json!({"name": i.name, "datatype": i.datatype, "shape": i.shape});
                    if binary {
                        let raw = i.data.raw();
                        o["parameters"] = json!({"binary_data_size": raw.len()});
                        sections.push(raw);
                    } else {
                        o["data"] = i.data.json();
                    }
                    o
                })
                .collect();
            let mut header = json!({"id": "parity", "inputs": ins,
                "parameters": {"binary_data_output": true}});
            if !outputs.is_empty() {
                header["outputs"] = outputs
                    .iter()
                    .map(|o| json!({"name": o, "parameters": {"binary_data": true}}))
                    .collect();
            }
            let refs: Vec<&[u8]> = sections.iter().map(|b| &b[..]).collect();
            let (body, n) = binary_body(&header, &refs);
            let mut req = s
                .http
                .post(s.url(&format!("{}/infer", model_path(model, version))))
                .body(body);
            if binary {
                req = req.header("Inference-Header-Content-Length", n);
            }
            let r = s.send(req).await;
            if r.status != 200 {
                return Err((r.status, r.error()));
            }
            let header = r.infer_header();
            let bin = r.binary_outputs();
            assert_eq!(header["id"], "parity");
            return Ok(outputs_value(
                header["outputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| {
                        let name = o["name"].as_str().unwrap().to_string();
                        let shape = o["shape"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|d| d.as_i64().unwrap())
                            .collect();
                        let data = bin[&name].clone();
                        (
                            name,
                            o["datatype"].as_str().unwrap().to_string(),
                            shape,
                            data,
                        )
                    })
                    .collect(),
            ));
        }
        Call::Metadata(m, v) => s.get(&model_path(m, v)).await,
        Call::Config(m, v) => s.get(&format!("{}/config", model_path(m, v))).await,
        Call::Ready(m, v) => {
            let r = s.get(&format!("{}/ready", model_path(m, v))).await;
            if r.status == 200 {
                assert!(r.body.is_empty());
                return Ok(json!(true));
            }
            // HTTP's "not ready" (gRPC: OK with ready=false).
            if r.status == 400 && r.error() == "Model version not ready" {
                return Ok(json!(false));
            }
            r
        }
        Call::Stats("", _) => s.get("/v2/models/stats").await,
        Call::Stats(m, v) => s.get(&format!("{}/stats", model_path(m, v))).await,
        Call::Load(m) => s.post(&format!("/v2/repository/models/{m}/load"), "").await,
        Call::Unload(m) => {
            s.post(&format!("/v2/repository/models/{m}/unload"), "")
                .await
        }
        Call::Index(repo) => {
            let path = if repo.is_empty() {
                "/v2/repository/index".to_string()
            } else {
                format!("/v2/repository/{repo}/index")
            };
            let r = s.post(&path, "").await;
            if r.status == 200 {
                return Ok(json!(r.json().as_array().unwrap().len()));
            }
            r
        }
        Call::Trace(m, set) => {
            let r = settings::trace_over_http(s, m, set).await;
            if r.status == 200 {
                return Ok(settings::trace_values(r.json()));
            }
            r
        }
        Call::Log(set) => settings::log_over_http(s, set).await,
    };
    if r.status != 200 {
        return Err((r.status, r.error()));
    }
    Ok(if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_agree() {
    let s = TestServer::bundled().await;
    let mut failures = Vec::new();
    for (name, call) in cases() {
        let grpc = over_grpc(&s, &call).await;
        let flavors: &[bool] = if matches!(call, Call::Infer { .. }) {
            &[false, true]
        } else {
            &[false]
        };
        for &binary in flavors {
            let http = over_http(&s, &call, binary).await;
            let agree = match (&grpc, &http) {
                (Ok(g), Ok(h)) => g == h,
                (Err((code, gm)), Err((status, hm))) => {
                    let same_words = match WORDED_PER_PROTOCOL.iter().find(|(n, _)| *n == name) {
                        Some((_, key)) => gm.contains(key) && hm.contains(key),
                        None => gm == hm,
                    };
                    http_status_of(*code) == *status && same_words
                }
                _ => false,
            };
            if !agree {
                failures.push(format!(
                    "{name} (HTTP {}): gRPC {grpc:?} vs HTTP {http:?}",
                    if binary { "binary" } else { "JSON" }
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "front-ends disagree:\n{}",
        failures.join("\n")
    );
    // Expected classes, so that a table of two identical wrong answers cannot pass.
    let expect = [
        ("unknown model", Code::InvalidArgument),
        ("wrong datatype", Code::InvalidArgument),
        ("unloaded version", Code::NotFound),
        ("load", Code::Unavailable),
        ("index of a named repository", Code::Unimplemented),
        ("stats of an unknown model", Code::InvalidArgument),
        ("trace file is read-only", Code::Unimplemented),
        (
            "two faults: the trace file is named first",
            Code::Unimplemented,
        ),
        ("trace rate not a number", Code::InvalidArgument),
        ("trace settings of an unknown model", Code::InvalidArgument),
        ("log file is read-only", Code::Unimplemented),
        ("log format unknown", Code::InvalidArgument),
        ("log setting of the wrong kind", Code::InvalidArgument),
    ];
    let all = cases();
    for (name, code) in expect {
        let (_, call) = all.iter().find(|(n, _)| *n == name).unwrap();
        let got = over_grpc(&s, call).await;
        assert_eq!(
            got.as_ref().err().map(|e| e.0),
            Some(code),
            "{name}: {got:?}"
        );
    }
    for name in [
        "good infer",
        "good BYTES infer",
        "metadata",
        "config",
        "ready",
        "stats after inferences",
        "trace settings",
        "log settings",
    ] {
        let (_, call) = all.iter().find(|(n, _)| *n == name).unwrap();
        assert!(over_grpc(&s, call).await.is_ok(), "{name}");
    }
    // The rows with replies show what they should, so that two identical empty answers
    // cannot pass.
    let stats = over_grpc(&s, &Call::Stats("simple", "")).await.unwrap();
    let simple = &stats["model_stats"][0];
    assert!(simple["inference_count"].as_u64().unwrap() > 0, "{simple}");
    assert!(
        !simple["batch_stats"].as_array().unwrap().is_empty(),
        "{simple}"
    );
    assert_eq!(simple["memory_usage"], json!([]), "no GPU here");
    let set = vec![("log_frequency", Some(vec!["3"]))];
    let trace = over_grpc(&s, &Call::Trace("simple", set)).await.unwrap();
    assert_eq!(trace["log_frequency"], json!(["3"]));
    assert_eq!(trace["trace_level"], json!(["OFF"]));
    let log = over_grpc(&s, &Call::Log(vec![])).await.unwrap();
    assert_eq!(log["log_format"], "default");
    assert_eq!(log.as_object().unwrap().len(), 6);
}
