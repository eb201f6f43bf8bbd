//! `ModelConfig` ↔ JSON with the protobuf JSON mapping, as Triton uses it for the HTTP `config`
//! route and for the `config` load parameter (model-config.md §9.2).

use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};

use super::config::{ModelConfig, descriptor_pool};
use crate::error::{Error, Result};

fn descriptor() -> MessageDescriptor {
    descriptor_pool()
        .get_message_by_name("inference.ModelConfig")
        .expect("ModelConfig in descriptor")
}

/// A protobuf message (`name` its full name, e.g. `inference.ModelConfig`) as Triton prints it
/// in JSON: proto field names, every scalar, list and map printed even at its default, enums
/// by name, 64-bit integers as JSON numbers.
pub(crate) fn message_to_json<M: Message>(msg: &M, name: &str) -> serde_json::Value {
    let desc = descriptor_pool()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} in descriptor"));
    let msg = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .unwrap_or_else(|e| panic!("a {name} re-decodes: {e}"));
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false)
        .stringify_64_bit_integers(false);
    msg.serialize_with_options(serde_json::value::Serializer, &opts)
        .unwrap_or_else(|e| panic!("a {name} serializes to JSON: {e}"))
}

/// The effective config as Triton prints it (`message_to_json`).
pub fn to_json(cfg: &ModelConfig) -> serde_json::Value {
    message_to_json(cfg, "inference.ModelConfig")
}

/// Parses a JSON config (proto or lowerCamelCase names, 64-bit values as numbers or strings,
/// enum names or numbers). Unknown fields are errors.
pub(crate) fn from_json(text: &str) -> Result<ModelConfig> {
    let mut de = serde_json::Deserializer::from_str(text);
    let msg =
        DynamicMessage::deserialize_with_options(descriptor(), &mut de, &DeserializeOptions::new())
            .and_then(|m| de.end().map(|_| m))
            .map_err(|e| Error::invalid_arg(format!("Invalid config override: {e}")))?;
    msg.transcode_to::<ModelConfig>()
        .map_err(|e| Error::invalid_arg(format!("Invalid config override: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn round_trips_and_prints_like_triton() {
        let text = r#"name: "m" max_batch_size: 8 input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
            output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ] dynamic_batching { max_queue_delay_microseconds: 100 }"#;
        let cfg = super::super::config::parse_pbtxt(Path::new("c"), text).unwrap();
        let json = to_json(&cfg);
        assert_eq!(json["max_batch_size"], 8);
        assert_eq!(json["input"][0]["dims"], serde_json::json!([4]));
        assert_eq!(json["input"][0]["data_type"], "TYPE_FP32");
        assert_eq!(json["input"][0]["optional"], false);
        assert_eq!(
            json["dynamic_batching"]["max_queue_delay_microseconds"],
            100
        );
        assert_eq!(json["platform"], "");
        assert_eq!(json["parameters"], serde_json::json!({}));
        assert!(json.get("sequence_batching").is_none());
        assert_eq!(from_json(&json.to_string()).unwrap(), cfg);
    }

    #[test]
    fn parses_overrides_and_rejects_unknown_fields() {
        let cfg = from_json(r#"{"name":"m","maxBatchSize":"4","input":[{"name":"x","data_type":"TYPE_INT32","dims":["2"]}]}"#).unwrap();
        assert_eq!(cfg.max_batch_size, 4);
        assert_eq!(cfg.input[0].dims, vec![2]);
        let err = from_json(r#"{"name":"m","bogus":1}"#).unwrap_err();
        assert!(
            err.message.starts_with("Invalid config override:") && err.message.contains("bogus"),
            "{}",
            err.message
        );
        assert!(from_json("{not json").is_err());
    }
}
