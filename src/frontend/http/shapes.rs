//! The JSON shapes of the HTTP/REST routes other than infer: server and model metadata,
//! statistics (the gRPC messages printed as JSON, `frontend::reports`), the repository index,
//! and the bodies of index/load/unload (http-protocol.md §4, §9).

use serde_json::{Map, Value, json};

use super::json::{as_bool, as_object, parse_json};
use super::params;
use crate::core::{ModelMetadata, ModelStatistics, ServerMetadata};
use crate::error::Result;
use crate::frontend::reports;
use crate::lifecycle::manager::{IndexEntry, LoadRequest};

pub(crate) fn server_metadata(m: ServerMetadata) -> Value {
    json!({ "name": m.name, "version": m.version, "extensions": m.extensions })
}

pub(crate) fn model_metadata(m: ModelMetadata) -> Value {
    reports::json(
        &reports::model_metadata(m),
        "inference.ModelMetadataResponse",
    )
}

/// Every member always present, every count/ns a JSON number: perf_analyzer reads them with
/// unsigned accessors and fails on absent members (http-protocol.md §9.2).
pub(crate) fn model_statistics(stats: Vec<ModelStatistics>) -> Value {
    reports::json(
        &reports::model_statistics(stats),
        "inference.ModelStatisticsResponse",
    )
}

/// A JSON array; `version`/`state` only when known, `reason` only when non-empty.
pub(crate) fn repository_index(rows: Vec<IndexEntry>) -> Value {
    Value::Array(
        rows.into_iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("name".into(), r.name.into());
                if let Some(v) = r.version {
                    o.insert("version".into(), v.to_string().into());
                }
                if let Some(s) = r.state {
                    o.insert("state".into(), s.as_str().into());
                }
                if !r.reason.is_empty() {
                    o.insert("reason".into(), r.reason.into());
                }
                Value::Object(o)
            })
            .collect(),
    )
}

/// The optional body of the index route: `{"ready": bool}` (default false).
pub(crate) fn index_request(body: &[u8]) -> Result<bool> {
    if body.is_empty() {
        return Ok(false);
    }
    let doc = parse_json(body)?;
    match as_object(&doc, "ready")?.get("ready") {
        Some(r) => as_bool(r, "ready"),
        None => Ok(false),
    }
}

fn body_parameters(doc: &Value) -> Result<Option<&Map<String, Value>>> {
    match as_object(doc, "parameters")?.get("parameters") {
        Some(p) => as_object(p, "parameters").map(Some),
        None => Ok(None),
    }
}

/// The optional body of the load route: `config` (model-config JSON in a string) and
/// `file:<path>` (base64 contents) parameters.
pub(crate) fn load_request(body: &[u8]) -> Result<LoadRequest> {
    if body.is_empty() {
        return Ok(LoadRequest::default());
    }
    params::load_request(body_parameters(&parse_json(body)?)?)
}

/// The optional body of the unload route: `unload_dependents` (default false).
pub(crate) fn unload_request(body: &[u8]) -> Result<bool> {
    if body.is_empty() {
        return Ok(false);
    }
    params::unload_dependents(body_parameters(&parse_json(body)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn repository_bodies() {
        assert!(!index_request(b"").unwrap());
        assert!(index_request(br#"{"ready":true}"#).unwrap());
        assert!(
            index_request(br#"{"ready":"yes"}"#)
                .unwrap_err()
                .message
                .contains("Unable to parse 'ready'")
        );
        let req =
            load_request(br#"{"parameters":{"config":"{}","file:1/model.onnx":"aGk="}}"#).unwrap();
        assert_eq!(req.config.as_deref(), Some("{}"));
        assert_eq!(
            req.files,
            vec![("1/model.onnx".to_string(), b"hi".to_vec())]
        );
        assert_eq!(load_request(b"{}").unwrap(), LoadRequest::default());
        for (body, want) in [
            (
                &br#"{"parameters":{"config":{}}}"#[..],
                "expected a JSON string",
            ),
            (br#"{"parameters":{"file:x":"!!"}}"#, "base64"),
            (
                br#"{"parameters":{"other":"x"}}"#,
                "unrecognized load parameter 'other'.",
            ),
        ] {
            let e = load_request(body).unwrap_err();
            assert_eq!(e.code, Code::InvalidArg);
            assert!(e.message.contains(want), "{}", e.message);
        }
        assert!(!unload_request(b"").unwrap());
        assert!(unload_request(br#"{"parameters":{"unload_dependents":true}}"#).unwrap());
        assert!(unload_request(br#"{"parameters":{"unload_dependents":1}}"#).is_err());
    }
}
