//! JSON ↔ core for the trace and log settings routes (http-protocol.md §9.8, §9.9). The
//! settings themselves (keys, validation, effect) live behind `Core`, shared with gRPC.

use serde_json::{Map, Value};

use super::json::{as_array, as_object, as_str, parse_json};
use super::params::{param_error, value};
use crate::core::TraceSettings;
use crate::core::params;
use crate::error::Result;
use crate::frontend::reports::{self, LogValue};
use crate::telemetry::logging::{LogSettings, LogUpdate};

/// A POST body's settings object; an empty body changes nothing.
fn settings_object(body: &[u8]) -> Result<Map<String, Value>> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    let doc = parse_json(body)?;
    as_object(&doc, "settings").cloned()
}

/// A trace settings update as `(key, values)` pairs for `Core::update_trace_settings`:
/// `trace_level` is an array of strings, `trace_rate`, `trace_count` and `log_frequency` a
/// string each, and JSON `null` clears a key. `trace_file` is refused by the core whatever its
/// value; keys Triton does not know are ignored, as Triton does.
pub(crate) fn trace_update(body: &[u8]) -> Result<Vec<(String, Option<Vec<String>>)>> {
    let mut pairs = Vec::new();
    for (key, v) in settings_object(body)? {
        let values = match (key.as_str(), &v) {
            (_, Value::Null) | ("trace_file", _) => None,
            ("trace_level", levels) => Some(
                as_array(levels, &key)?
                    .iter()
                    .map(|l| as_str(l, &key).map(str::to_string))
                    .collect::<Result<Vec<_>>>()?,
            ),
            ("trace_rate" | "trace_count" | "log_frequency", n) => {
                Some(vec![as_str(n, &key)?.to_string()])
            }
            _ => continue,
        };
        pairs.push((key, values));
    }
    Ok(pairs)
}

/// The settings as Triton's JSON: `trace_level` an array, every other key a string (a key
/// with several values, such as OpenTelemetry `resource` attributes, an array of them).
pub(crate) fn trace_json(settings: TraceSettings) -> Value {
    let mut out = Map::new();
    for (k, v) in settings {
        let values = match out.remove(&k) {
            Some(Value::String(s)) => std::iter::once(s).chain(v).collect(),
            Some(Value::Array(a)) => a
                .into_iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .chain(v)
                .collect(),
            _ => v,
        };
        let value = match values.as_slice() {
            [one] if k != "trace_level" => Value::String(one.clone()),
            _ => Value::from(values),
        };
        out.insert(k, value);
    }
    Value::Object(out)
}

/// A log settings update; JSON `null` values are ignored, as Triton does.
pub(crate) fn log_update(body: &[u8]) -> Result<LogUpdate> {
    let settings = settings_object(body)?;
    params::log_update(|k| settings.get(k).filter(|v| !v.is_null()).map(value)).map_err(param_error)
}

pub(crate) fn log_json(s: LogSettings) -> Value {
    let settings = reports::log_settings(s)
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                LogValue::Bool(b) => Value::from(b),
                LogValue::Uint32(n) => Value::from(n),
                LogValue::Str(s) => Value::from(s),
            };
            (k.to_string(), v)
        })
        .collect();
    Value::Object(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trace_bodies() {
        assert!(trace_update(b"").unwrap().is_empty());
        let pairs = trace_update(
            br#"{"trace_level":["TIMESTAMPS","TENSORS"],"trace_rate":"6","log_frequency":null,"trace_file":"x","other":5}"#,
        )
        .unwrap();
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("trace_level"),
            Some(Some(vec!["TIMESTAMPS".into(), "TENSORS".into()]))
        );
        assert_eq!(get("trace_rate"), Some(Some(vec!["6".into()])));
        assert_eq!(get("log_frequency"), Some(None));
        assert_eq!(get("trace_file"), Some(None));
        assert_eq!(get("other"), None);
        let e = trace_update(br#"{"trace_rate":6}"#).unwrap_err();
        assert_eq!(
            e.message,
            "Unable to parse 'trace_rate': attempt to access JSON non-string as string"
        );
        assert!(trace_update(br#"{"trace_level":"OFF"}"#).is_err());
        assert!(trace_update(b"[]").is_err());
    }

    #[test]
    fn trace_settings_json() {
        let v = trace_json(vec![
            ("trace_level".into(), vec!["OFF".into()]),
            ("trace_rate".into(), vec!["1000".into()]),
            ("resource".into(), vec!["a=1".into()]),
            ("resource".into(), vec!["b=2".into()]),
        ]);
        assert_eq!(
            v,
            json!({"trace_level": ["OFF"], "trace_rate": "1000", "resource": ["a=1", "b=2"]})
        );
    }

    #[test]
    fn log_bodies() {
        let u =
            log_update(br#"{"log_info":false,"log_verbose_level":2,"log_error":null}"#).unwrap();
        assert_eq!(
            (u.info, u.verbose_level, u.error),
            (Some(false), Some(2), None)
        );
        let e = log_update(br#"{"log_warning":"yes"}"#).unwrap_err();
        assert_eq!(
            e.message,
            "Unable to parse 'log_warning': attempt to access JSON non-boolean as boolean"
        );
        assert_eq!(
            log_update(br#"{"log_file":"x"}"#).unwrap().file.as_deref(),
            Some("x")
        );
        assert_eq!(log_update(br#"{"log_file":null}"#).unwrap().file, None);
        assert_eq!(
            log_json(LogSettings::default()),
            json!({"log_file": "", "log_info": true, "log_warning": true, "log_error": true,
                   "log_verbose_level": 0, "log_format": "default"})
        );
    }
}
