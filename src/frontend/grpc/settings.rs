//! Wire ↔ core conversion for TraceSetting and LogSettings (grpc-protocol.md §4.11, §4.12).
//! The settings themselves (keys, validation, effect) live behind `Core`.

use std::collections::HashMap;

use crate::core::TraceSettings;
use crate::error::{Error, Result};
use crate::pb::inference::{
    self as pb, log_settings_request, log_settings_response, trace_setting_request,
    trace_setting_response,
};
use crate::telemetry::logging::{LogSettings, LogUpdate};

/// A request's settings as `(key, values)` pairs; an empty list clears the key.
pub fn trace_pairs(
    settings: &HashMap<String, trace_setting_request::SettingValue>,
) -> Vec<(&str, Option<Vec<String>>)> {
    settings
        .iter()
        .map(|(k, v)| (k.as_str(), Some(v.value.clone())))
        .collect()
}

pub fn trace_response(settings: TraceSettings) -> pb::TraceSettingResponse {
    let mut out: HashMap<String, trace_setting_response::SettingValue> = HashMap::new();
    for (k, v) in settings {
        // A repeated key (several `resource` attributes) lists all its values.
        out.entry(k).or_default().value.extend(v);
    }
    pb::TraceSettingResponse { settings: out }
}

/// Checks each key's value kind, in Triton's order (`log_file` first).
pub fn log_update(
    settings: &HashMap<String, log_settings_request::SettingValue>,
) -> Result<LogUpdate> {
    use log_settings_request::setting_value::ParameterChoice as P;
    let get = |k: &str| settings.get(k).and_then(|v| v.parameter_choice.clone());
    let boolean = |k: &str| match get(k) {
        None if !settings.contains_key(k) => Ok(None),
        Some(P::BoolParam(b)) => Ok(Some(b)),
        _ => Err(Error::invalid_arg(format!("expect boolean for '{k}'"))),
    };
    let mut u = LogUpdate::default();
    if settings.contains_key("log_file") {
        u.file = Some(match get("log_file") {
            Some(P::StringParam(s)) => s,
            _ => String::new(),
        });
    }
    u.info = boolean("log_info")?;
    u.warning = boolean("log_warning")?;
    u.error = boolean("log_error")?;
    if settings.contains_key("log_verbose_level") {
        match get("log_verbose_level") {
            Some(P::Uint32Param(n)) => u.verbose_level = Some(n),
            _ => {
                return Err(Error::invalid_arg("expect int32 for 'log_verbose_level'"));
            }
        }
    }
    if settings.contains_key("log_format") {
        match get("log_format") {
            Some(P::StringParam(s)) => u.format = Some(s),
            _ => return Err(Error::invalid_arg("expect string for 'log_format'")),
        }
    }
    Ok(u)
}

pub fn log_response(s: LogSettings) -> pb::LogSettingsResponse {
    use log_settings_response::{SettingValue, setting_value::ParameterChoice as P};
    let v = |p: P| SettingValue {
        parameter_choice: Some(p),
    };
    let settings = [
        ("log_file", v(P::StringParam(s.file))),
        ("log_info", v(P::BoolParam(s.info))),
        ("log_warning", v(P::BoolParam(s.warning))),
        ("log_error", v(P::BoolParam(s.error))),
        ("log_verbose_level", v(P::Uint32Param(s.verbose_level))),
        (
            "log_format",
            v(P::StringParam(s.format.as_str().to_string())),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    pb::LogSettingsResponse { settings }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log_settings_request::{SettingValue, setting_value::ParameterChoice as P};

    fn req(pairs: &[(&str, P)]) -> HashMap<String, SettingValue> {
        pairs
            .iter()
            .map(|(k, p)| {
                (
                    k.to_string(),
                    SettingValue {
                        parameter_choice: Some(p.clone()),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn log_value_kinds() {
        let e = log_update(&req(&[("log_info", P::Uint32Param(1))])).unwrap_err();
        assert_eq!(e.message, "expect boolean for 'log_info'");
        let e = log_update(&req(&[("log_verbose_level", P::BoolParam(true))])).unwrap_err();
        assert_eq!(e.message, "expect int32 for 'log_verbose_level'");
        let e = log_update(&req(&[("log_format", P::BoolParam(true))])).unwrap_err();
        assert_eq!(e.message, "expect string for 'log_format'");
        let u = log_update(&req(&[
            ("log_warning", P::BoolParam(false)),
            ("log_verbose_level", P::Uint32Param(2)),
            ("log_file", P::StringParam("x".into())),
        ]))
        .unwrap();
        assert_eq!(u.warning, Some(false));
        assert_eq!(u.verbose_level, Some(2));
        assert_eq!(u.file.as_deref(), Some("x"));
        assert_eq!(u.info, None);
    }
}
