//! Wire ↔ core conversion for TraceSetting and LogSettings (grpc-protocol.md §4.11, §4.12).
//! The settings themselves (keys, validation, effect) live behind `Core`.

use std::collections::HashMap;

use crate::core::TraceSettings;
use crate::frontend::reports::{self, LogValue};
use crate::pb::inference::{
    self as pb, log_settings_response, trace_setting_request, trace_setting_response,
};
use crate::telemetry::logging::LogSettings;

/// A request's settings as `(key, values)` pairs; an empty list clears the key.
pub(crate) fn trace_pairs(
    settings: &HashMap<String, trace_setting_request::SettingValue>,
) -> Vec<(&str, Option<Vec<String>>)> {
    settings
        .iter()
        .map(|(k, v)| (k.as_str(), Some(v.value.clone())))
        .collect()
}

pub(crate) fn trace_response(settings: TraceSettings) -> pb::TraceSettingResponse {
    let mut out: HashMap<String, trace_setting_response::SettingValue> = HashMap::new();
    for (k, v) in settings {
        // A repeated key (several `resource` attributes) lists all its values.
        out.entry(k).or_default().value.extend(v);
    }
    pb::TraceSettingResponse { settings: out }
}

pub(crate) fn log_response(s: LogSettings) -> pb::LogSettingsResponse {
    use log_settings_response::{SettingValue, setting_value::ParameterChoice as P};
    let settings = reports::log_settings(s)
        .into_iter()
        .map(|(k, v)| {
            let choice = match v {
                LogValue::Bool(b) => P::BoolParam(b),
                LogValue::Uint32(n) => P::Uint32Param(n),
                LogValue::Str(s) => P::StringParam(s),
            };
            let value = SettingValue {
                parameter_choice: Some(choice),
            };
            (k.to_string(), value)
        })
        .collect();
    pb::LogSettingsResponse { settings }
}
