//! TraceSetting and LogSettings (grpc-protocol.md §4.11, §4.12) with Triton's keys and errors.

use std::collections::HashMap;

use nereid::pb::inference::log_settings_request::{self, setting_value::ParameterChoice as In};
use nereid::pb::inference::log_settings_response::setting_value::ParameterChoice as Out;
use nereid::pb::inference::{
    LogSettingsRequest, LogSettingsResponse, TraceSettingRequest, trace_setting_request,
};
use tonic::Code;

use crate::common::*;

type Settings = HashMap<String, Vec<String>>;

async fn trace(
    s: &TestServer,
    model: &str,
    set: &[(&str, &[&str])],
) -> Result<Settings, tonic::Status> {
    let mut c = s.client.clone();
    let settings = set
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                trace_setting_request::SettingValue {
                    value: v.iter().map(|s| s.to_string()).collect(),
                },
            )
        })
        .collect();
    let r = c
        .trace_setting(TraceSettingRequest {
            settings,
            model_name: model.into(),
        })
        .await?
        .into_inner();
    Ok(r.settings.into_iter().map(|(k, v)| (k, v.value)).collect())
}

fn one(s: &Settings, k: &str) -> String {
    let v = &s[k];
    assert_eq!(v.len(), 1, "{k}: {v:?}");
    v[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_settings_global_and_per_model() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let g = trace(&s, "", &[]).await.unwrap();
    assert_eq!(g["trace_level"], ["OFF"]);
    assert_eq!(one(&g, "trace_rate"), "1000");
    assert_eq!(one(&g, "trace_count"), "-1");
    assert_eq!(one(&g, "log_frequency"), "0");
    assert_eq!(one(&g, "trace_file"), "");
    assert_eq!(one(&g, "trace_mode"), "triton");
    assert_eq!(g.len(), 6);

    // A model override; the other keys follow the global settings.
    let m = trace(&s, "simple", &[("log_frequency", &["2"])])
        .await
        .unwrap();
    assert_eq!(one(&m, "log_frequency"), "2");
    let g = trace(
        &s,
        "",
        &[
            ("trace_rate", &["6"]),
            ("trace_level", &["TIMESTAMPS", "TENSORS"]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(one(&g, "log_frequency"), "0");
    let m = trace(&s, "simple", &[]).await.unwrap();
    assert_eq!(one(&m, "trace_rate"), "6");
    assert_eq!(m["trace_level"], ["TIMESTAMPS", "TENSORS"]);
    // An empty list clears the override.
    let m = trace(&s, "simple", &[("log_frequency", &[])])
        .await
        .unwrap();
    assert_eq!(one(&m, "log_frequency"), "0");
    let g = trace(&s, "", &[("trace_level", &["OFF"])]).await.unwrap();
    assert_eq!(g["trace_level"], ["OFF"]);
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_settings_errors() {
    let s = TestServer::bundled_subset(&[]).await;
    assert_status(
        trace(&s, "nope", &[]).await,
        Code::InvalidArgument,
        &["Request for unknown model : nope"],
    );
    assert_status(
        trace(&s, "", &[("trace_file", &["x.json"])]).await,
        Code::Unimplemented,
        &["trace file location can not be updated through network protocol"],
    );
    assert_status(
        trace(&s, "", &[("trace_rate", &["1", "2"])]).await,
        Code::InvalidArgument,
        &["expect only 1 value for 'trace_rate'"],
    );
    assert_status(
        trace(&s, "", &[("trace_rate", &["often"])]).await,
        Code::InvalidArgument,
        &["Unable to parse 'trace_rate', got: often"],
    );
    assert_status(
        trace(&s, "", &[("trace_count", &["-2"])]).await,
        Code::InvalidArgument,
        &["trace_count"],
    );
    assert_status(
        trace(&s, "", &[("trace_level", &["OFF", "TIMESTAMPS"])]).await,
        Code::InvalidArgument,
        &["OFF"],
    );
    // Nothing changed.
    assert_eq!(
        one(&trace(&s, "", &[]).await.unwrap(), "trace_rate"),
        "1000"
    );
}

async fn log(s: &TestServer, set: Vec<(&str, In)>) -> Result<LogSettingsResponse, tonic::Status> {
    let mut c = s.client.clone();
    let settings = set
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                log_settings_request::SettingValue {
                    parameter_choice: Some(v),
                },
            )
        })
        .collect();
    c.log_settings(LogSettingsRequest { settings })
        .await
        .map(|r| r.into_inner())
}

fn value(r: &LogSettingsResponse, k: &str) -> Out {
    r.settings[k].parameter_choice.clone().expect(k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_settings_read_update_and_errors() {
    let s = TestServer::bundled_subset(&[]).await;
    let r = log(&s, vec![]).await.unwrap();
    assert_eq!(r.settings.len(), 6);
    assert_eq!(value(&r, "log_file"), Out::StringParam(String::new()));
    assert_eq!(value(&r, "log_info"), Out::BoolParam(true));
    assert_eq!(value(&r, "log_warning"), Out::BoolParam(true));
    assert_eq!(value(&r, "log_error"), Out::BoolParam(true));
    assert_eq!(value(&r, "log_verbose_level"), Out::Uint32Param(0));
    assert_eq!(value(&r, "log_format"), Out::StringParam("default".into()));

    let r = log(
        &s,
        vec![
            ("log_info", In::BoolParam(false)),
            ("log_verbose_level", In::Uint32Param(1)),
            ("log_format", In::StringParam("ISO8601".into())),
        ],
    )
    .await
    .unwrap();
    assert_eq!(value(&r, "log_info"), Out::BoolParam(false));
    assert_eq!(value(&r, "log_verbose_level"), Out::Uint32Param(1));
    assert_eq!(value(&r, "log_format"), Out::StringParam("ISO8601".into()));

    assert_status(
        log(&s, vec![("log_file", In::StringParam("x.log".into()))]).await,
        Code::Unimplemented,
        &["log file location can not be updated through network protocol"],
    );
    assert_status(
        log(&s, vec![("log_error", In::Uint32Param(1))]).await,
        Code::InvalidArgument,
        &["expect boolean for 'log_error'"],
    );
    assert_status(
        log(&s, vec![("log_verbose_level", In::BoolParam(true))]).await,
        Code::InvalidArgument,
        &["expect int32 for 'log_verbose_level'"],
    );
    assert_status(
        log(&s, vec![("log_format", In::StringParam("xml".into()))]).await,
        Code::InvalidArgument,
        &["invalid argument for log_format, got: xml"],
    );
    let r = log(&s, vec![]).await.unwrap();
    assert_eq!(
        value(&r, "log_info"),
        Out::BoolParam(false),
        "errors change nothing"
    );
}
