//! The parameters of the repository and log settings requests, parsed once for both
//! front-ends (request and output parameters are in `request::params`). A front-end turns each
//! wire value into a `ParamValue` (or a `LoadValue`) and words the typed `ParamError` Triton's
//! way for its protocol.

use crate::lifecycle::manager::LoadRequest;
use crate::request::{Expected, ParamError, ParamValue};
use crate::telemetry::logging::LogUpdate;

/// A RepositoryModelLoad parameter's value as the wire carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoadValue {
    Str(String),
    /// File contents: gRPC `bytes_param`, HTTP's base64 string once decoded.
    Bytes(Vec<u8>),
    Other,
}

/// The load parameters (grpc-protocol.md §4.8, http-protocol.md §9.4): `config` (model-config
/// JSON in a string) and `file:<path>` (the file's bytes); any other key is refused.
pub(crate) fn load_request(
    params: impl IntoIterator<Item = (String, LoadValue)>,
) -> Result<LoadRequest, ParamError> {
    let mut load = LoadRequest::default();
    for (key, value) in params {
        match (key.as_str(), value) {
            ("config", LoadValue::Str(json)) => load.config = Some(json),
            ("config", _) => return Err(ParamError::kind(&key, Expected::String)),
            (k, LoadValue::Bytes(data)) if k.starts_with("file:") => {
                load.files.push((k["file:".len()..].to_string(), data))
            }
            (k, _) if k.starts_with("file:") => {
                return Err(ParamError::kind(&key, Expected::Bytes));
            }
            _ => return Err(ParamError::Unknown { key }),
        }
    }
    Ok(load)
}

/// The `unload_dependents` parameter of RepositoryModelUnload (absent = false).
pub(crate) fn unload_dependents(value: Option<ParamValue<'_>>) -> Result<bool, ParamError> {
    match value {
        None => Ok(false),
        Some(ParamValue::Bool(b)) => Ok(b),
        Some(_) => Err(ParamError::kind("unload_dependents", Expected::Bool)),
    }
}

/// A LogSettings update, `setting` looking a key up among the request's settings (absent =
/// leave as is). Keys are checked in Triton's order, `log_file` first; any value for
/// `log_file` is carried so that the update is refused as Triton refuses it.
pub(crate) fn log_update<'a>(
    setting: impl Fn(&str) -> Option<ParamValue<'a>>,
) -> Result<LogUpdate, ParamError> {
    let boolean = |key: &str| setting(key).map(|v| v.boolean(key)).transpose();
    let mut u = LogUpdate {
        file: setting("log_file").map(|v| match v {
            ParamValue::Str(s) => s.to_string(),
            _ => String::new(),
        }),
        ..LogUpdate::default()
    };
    u.info = boolean("log_info")?;
    u.warning = boolean("log_warning")?;
    u.error = boolean("log_error")?;
    u.verbose_level = setting("log_verbose_level")
        .map(|v| {
            v.unsigned()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| ParamError::kind("log_verbose_level", Expected::Uint32))
        })
        .transpose()?;
    u.format = setting("log_format")
        .map(|v| match v {
            ParamValue::Str(s) => Ok(s.to_string()),
            _ => Err(ParamError::kind("log_format", Expected::String)),
        })
        .transpose()?;
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_parameters() {
        let req = load_request([
            ("config".to_string(), LoadValue::Str("{}".into())),
            (
                "file:1/model.onnx".to_string(),
                LoadValue::Bytes(b"hi".to_vec()),
            ),
        ])
        .unwrap();
        assert_eq!(req.config.as_deref(), Some("{}"));
        assert_eq!(req.files, vec![("1/model.onnx".into(), b"hi".to_vec())]);
        assert_eq!(
            load_request([("config".to_string(), LoadValue::Other)]),
            Err(ParamError::kind("config", Expected::String))
        );
        assert_eq!(
            load_request([("file:x".to_string(), LoadValue::Str("x".into()))]),
            Err(ParamError::kind("file:x", Expected::Bytes))
        );
        assert_eq!(
            load_request([("other".to_string(), LoadValue::Str("x".into()))]),
            Err(ParamError::Unknown {
                key: "other".into()
            })
        );
        assert_eq!(unload_dependents(None), Ok(false));
        assert_eq!(unload_dependents(Some(ParamValue::Bool(true))), Ok(true));
        assert!(unload_dependents(Some(ParamValue::Int(1))).is_err());
    }

    #[test]
    fn log_settings() {
        let pairs = [
            ("log_info", ParamValue::Bool(false)),
            ("log_verbose_level", ParamValue::Uint(2)),
            ("log_format", ParamValue::Str("ISO8601")),
            ("log_file", ParamValue::Other),
        ];
        let get = |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let u = log_update(get).unwrap();
        assert_eq!(u.info, Some(false));
        assert_eq!(u.warning, None);
        assert_eq!(u.verbose_level, Some(2));
        assert_eq!(u.format.as_deref(), Some("ISO8601"));
        assert_eq!(u.file.as_deref(), Some(""));
        let one = |k: &'static str, v: ParamValue<'static>| {
            log_update(move |key: &str| (key == k).then_some(v))
        };
        assert_eq!(
            one("log_error", ParamValue::Int(1)),
            Err(ParamError::kind("log_error", Expected::Bool))
        );
        assert_eq!(
            one("log_verbose_level", ParamValue::Int(1 << 40)),
            Err(ParamError::kind("log_verbose_level", Expected::Uint32))
        );
        assert_eq!(
            one("log_format", ParamValue::Bool(true)),
            Err(ParamError::kind("log_format", Expected::String))
        );
    }
}
