//! The parity rows that are not inferences: statistics in full, trace and log settings, and the
//! client's W3C trace context, which both front-ends must honour alike.

use nereid::TraceConfig;
use nereid::pb::inference::log_settings_request::{self, setting_value::ParameterChoice as In};
use nereid::pb::inference::log_settings_response::setting_value::ParameterChoice as Out;
use nereid::pb::inference::{
    LogSettingsRequest, ModelStatisticsResponse, StatisticDuration, TraceSettingRequest,
    trace_setting_request,
};
use serde_json::{Map, Value, json};

use super::{Call, Outcome, grpc_err};
use crate::common::*;
use crate::rest::*;

/// A trace settings update: `None` clears the key (an empty gRPC list, a JSON `null`).
pub type TraceSet = Vec<(&'static str, Option<Vec<&'static str>>)>;

/// A log settings value, sent as gRPC's `oneof` member or its JSON kind.
#[derive(Clone, Copy, Debug)]
pub enum LogIn {
    Bool(bool),
    Uint(u32),
    Str(&'static str),
}

/// The trace and log settings rows, in order: each update is read back by the rows after it,
/// and the last rows restore the defaults.
pub fn cases() -> Vec<(&'static str, Call)> {
    vec![
        ("trace settings", Call::Trace("", vec![])),
        ("trace settings of a model", Call::Trace("simple", vec![])),
        (
            "trace settings update",
            Call::Trace(
                "",
                vec![
                    ("trace_rate", Some(vec!["6"])),
                    ("trace_level", Some(vec!["TIMESTAMPS", "TENSORS"])),
                ],
            ),
        ),
        (
            "a model's trace settings update",
            Call::Trace("simple", vec![("log_frequency", Some(vec!["2"]))]),
        ),
        (
            "a model's override cleared",
            Call::Trace("simple", vec![("log_frequency", None)]),
        ),
        (
            "trace file is read-only",
            Call::Trace("", vec![("trace_file", Some(vec!["x.json"]))]),
        ),
        (
            "trace rate not a number",
            Call::Trace("", vec![("trace_rate", Some(vec!["often"]))]),
        ),
        (
            "trace count below -1",
            Call::Trace("", vec![("trace_count", Some(vec!["-2"]))]),
        ),
        (
            "trace level OFF with another",
            Call::Trace("", vec![("trace_level", Some(vec!["OFF", "TIMESTAMPS"]))]),
        ),
        (
            "two faults: the trace file is named first",
            Call::Trace(
                "",
                vec![
                    ("trace_rate", Some(vec!["often"])),
                    ("trace_file", Some(vec!["x.json"])),
                ],
            ),
        ),
        (
            "trace settings of an unknown model",
            Call::Trace("nope", vec![]),
        ),
        (
            "trace settings reset",
            Call::Trace(
                "",
                vec![
                    ("trace_level", Some(vec!["OFF"])),
                    ("trace_rate", Some(vec!["1000"])),
                ],
            ),
        ),
        ("log settings", Call::Log(vec![])),
        (
            "log settings update",
            Call::Log(vec![
                ("log_info", LogIn::Bool(false)),
                ("log_verbose_level", LogIn::Uint(1)),
                ("log_format", LogIn::Str("ISO8601")),
            ]),
        ),
        (
            "log file is read-only",
            Call::Log(vec![("log_file", LogIn::Str("x.log"))]),
        ),
        (
            "log format unknown",
            Call::Log(vec![("log_format", LogIn::Str("xml"))]),
        ),
        (
            "log setting of the wrong kind",
            Call::Log(vec![("log_error", LogIn::Uint(1))]),
        ),
        (
            "log settings reset",
            Call::Log(vec![
                ("log_info", LogIn::Bool(true)),
                ("log_verbose_level", LogIn::Uint(0)),
                ("log_format", LogIn::Str("default")),
            ]),
        ),
    ]
}

/// Statistics as Triton's JSON, built from the gRPC reply field by field (independently of
/// the server's own printing).
pub fn stats_json(r: &ModelStatisticsResponse) -> Value {
    let d = |d: &Option<StatisticDuration>| {
        let d = d.unwrap_or_default();
        json!({"count": d.count, "ns": d.ns})
    };
    let models: Vec<Value> = r
        .model_stats
        .iter()
        .map(|m| {
            let i = m.inference_stats.unwrap_or_default();
            let responses: Map<String, Value> = m
                .response_stats
                .iter()
                .map(|(k, r)| {
                    let v = json!({
                        "compute_infer": d(&r.compute_infer), "compute_output": d(&r.compute_output),
                        "success": d(&r.success), "fail": d(&r.fail),
                        "empty_response": d(&r.empty_response), "cancel": d(&r.cancel),
                    });
                    (k.clone(), v)
                })
                .collect();
            json!({
                "name": m.name, "version": m.version, "last_inference": m.last_inference,
                "inference_count": m.inference_count, "execution_count": m.execution_count,
                "inference_stats": {
                    "success": d(&i.success), "fail": d(&i.fail), "queue": d(&i.queue),
                    "compute_input": d(&i.compute_input), "compute_infer": d(&i.compute_infer),
                    "compute_output": d(&i.compute_output), "cache_hit": d(&i.cache_hit),
                    "cache_miss": d(&i.cache_miss),
                },
                "batch_stats": m.batch_stats.iter().map(|b| json!({
                    "batch_size": b.batch_size, "compute_input": d(&b.compute_input),
                    "compute_infer": d(&b.compute_infer), "compute_output": d(&b.compute_output),
                })).collect::<Vec<_>>(),
                "memory_usage": m.memory_usage.iter().map(|u| json!({
                    "type": u.r#type, "id": u.id, "byte_size": u.byte_size,
                })).collect::<Vec<_>>(),
                "response_stats": responses,
            })
        })
        .collect();
    json!({ "model_stats": models })
}

pub async fn trace_over_grpc(s: &TestServer, model: &str, set: &TraceSet) -> Outcome {
    let settings = set
        .iter()
        .map(|(k, v)| {
            let value = v.iter().flatten().map(|s| s.to_string()).collect();
            (k.to_string(), trace_setting_request::SettingValue { value })
        })
        .collect();
    let r = s
        .client
        .clone()
        .trace_setting(TraceSettingRequest {
            settings,
            model_name: model.to_string(),
        })
        .await
        .map_err(grpc_err)?
        .into_inner();
    Ok(r.settings
        .into_iter()
        .map(|(k, v)| (k, json!(v.value)))
        .collect::<Map<_, _>>()
        .into())
}

/// GET without an update, else POST: `trace_level` as an array, other keys as a string.
pub async fn trace_over_http(s: &TestServer, model: &str, set: &TraceSet) -> HttpReply {
    let path = if model.is_empty() {
        "/v2/trace/setting".to_string()
    } else {
        format!("/v2/models/{model}/trace/setting")
    };
    if set.is_empty() {
        return s.get(&path).await;
    }
    let body: Map<String, Value> = set
        .iter()
        .map(|(k, v)| {
            let v = match v {
                None => Value::Null,
                Some(values) if *k == "trace_level" => json!(values),
                Some(values) => json!(values[0]),
            };
            (k.to_string(), v)
        })
        .collect();
    s.post_json(&path, &body.into()).await
}

/// The HTTP reply in gRPC's terms: every key a list of values.
pub fn trace_values(reply: Value) -> Value {
    let Value::Object(settings) = reply else {
        panic!("trace settings are an object: {reply}");
    };
    settings
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => (k, json!([s])),
            other => (k, other),
        })
        .collect::<Map<_, _>>()
        .into()
}

pub async fn log_over_grpc(s: &TestServer, set: &[(&'static str, LogIn)]) -> Outcome {
    let settings = set
        .iter()
        .map(|(k, v)| {
            let choice = match *v {
                LogIn::Bool(b) => In::BoolParam(b),
                LogIn::Uint(n) => In::Uint32Param(n),
                LogIn::Str(s) => In::StringParam(s.to_string()),
            };
            let value = log_settings_request::SettingValue {
                parameter_choice: Some(choice),
            };
            (k.to_string(), value)
        })
        .collect();
    let r = s
        .client
        .clone()
        .log_settings(LogSettingsRequest { settings })
        .await
        .map_err(grpc_err)?
        .into_inner();
    Ok(r.settings
        .into_iter()
        .map(|(k, v)| {
            let v = match v.parameter_choice.expect("a value") {
                Out::BoolParam(b) => json!(b),
                Out::Uint32Param(n) => json!(n),
                Out::StringParam(s) => json!(s),
            };
            (k, v)
        })
        .collect::<Map<_, _>>()
        .into())
}

pub async fn log_over_http(s: &TestServer, set: &[(&'static str, LogIn)]) -> HttpReply {
    if set.is_empty() {
        return s.get("/v2/logging").await;
    }
    let body: Map<String, Value> = set
        .iter()
        .map(|(k, v)| {
            let v = match *v {
                LogIn::Bool(b) => json!(b),
                LogIn::Uint(n) => json!(n),
                LogIn::Str(s) => json!(s),
            };
            (k.to_string(), v)
        })
        .collect();
    s.post_json("/v2/logging", &body.into()).await
}

/// Traces the global sampler has left: a request it samples draws one.
async fn traces_left(s: &TestServer) -> i64 {
    let r = trace_over_grpc(s, "", &vec![]).await.expect("TraceSetting");
    r["trace_count"][0].as_str().unwrap().parse().unwrap()
}

/// In opentelemetry mode a request that carries a valid W3C context is traced whatever the
/// rate and count, and does not draw from the count; any other request does. Both front-ends
/// must read the context alike: each row sends the same `traceparent` over gRPC and over HTTP
/// and counts the traces each call drew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_agree_on_the_clients_trace_context() {
    let s = TestServer::start_with(&bundled_repo(), |c| {
        c.trace = TraceConfig::parse(&[
            "mode=opentelemetry",
            "level=TIMESTAMPS",
            "rate=1",
            "count=100",
        ])
        .unwrap();
    })
    .await;
    let rows = [
        (
            "a valid traceparent",
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            0,
        ),
        ("no traceparent", None, 1),
        ("a malformed traceparent", Some("00-not-a-context"), 1),
        (
            "an all-zero trace id",
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            1,
        ),
    ];
    let (a, b) = simple_operands(1, 3);
    for (name, traceparent, drawn) in rows {
        let before = traces_left(&s).await;
        let mut req = tonic::Request::new(simple_request("simple", 1, &a, &b));
        if let Some(tp) = traceparent {
            req.metadata_mut()
                .insert("traceparent", tp.parse().unwrap());
        }
        let resp = s
            .client
            .clone()
            .model_infer(req)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
        let after_grpc = traces_left(&s).await;

        let mut req = s
            .http
            .post(s.url("/v2/models/simple/infer"))
            .body(simple_json(1, &a, &b).to_string());
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        let r = s.send(req).await;
        assert_eq!(r.status, 200, "{name}: {:?}", r.body);
        let after_http = traces_left(&s).await;

        assert_eq!(
            (before - after_grpc, after_grpc - after_http),
            (drawn, drawn),
            "{name}: traces drawn by gRPC and by HTTP"
        );
    }
}
