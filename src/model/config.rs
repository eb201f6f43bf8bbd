//! `config.pbtxt`: parse (protobuf text format against the real `inference.ModelConfig`
//! descriptor), server auto-fill and normalization. `spec` turns the result into the validated
//! `ModelSpec`. These are the places outside the front-ends that handle the config message.

use std::path::Path;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::error::{Error, Result};
use crate::pb::inference::{
    self as pb, model_config::SchedulingChoice, model_instance_group::Kind, model_version_policy,
};

pub(crate) use crate::pb::inference::ModelConfig;

pub(crate) const ONNX_PLATFORM: &str = "onnxruntime_onnx";
pub(crate) const ONNX_BACKEND: &str = "onnxruntime";
pub(crate) const DEFAULT_MODEL_FILENAME: &str = "model.onnx";

pub(crate) fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(crate::pb::DESCRIPTOR_SET).expect("descriptor set built by build.rs")
    })
}

/// Parses `text` (the contents of `path`) as a `ModelConfig` in protobuf text format.
/// Errors name the file, the line and what was wrong (e.g. the unknown field).
pub fn parse_pbtxt(path: &Path, text: &str) -> Result<ModelConfig> {
    let desc = descriptor_pool()
        .get_message_by_name("inference.ModelConfig")
        .expect("ModelConfig in descriptor");
    let fixed = add_list_colons(text);
    let msg = DynamicMessage::parse_text_format(desc, &fixed).map_err(|e| {
        // Counted in bytes: an offset that is not a char boundary cannot panic here.
        let line = miette::Diagnostic::labels(&e)
            .and_then(|mut l| l.next())
            .map(|span| {
                let before = &fixed.as_bytes()[..span.offset().min(fixed.len())];
                before.iter().filter(|&&b| b == b'\n').count() + 1
            });
        let at = line.map(|l| format!(" at line {l}")).unwrap_or_default();
        Error::invalid_arg(format!(
            "failed to parse model configuration '{}'{at}: {e}",
            path.display()
        ))
    })?;
    msg.transcode_to::<ModelConfig>()
        .map_err(|e| Error::internal(format!("model configuration '{}': {e}", path.display())))
}

/// Triton's configs write lists of messages without a colon (`input [ { … } ]`), which the
/// text-format grammar allows but prost-reflect does not accept; insert the colon.
/// Line structure is preserved, so error line numbers still point into the original file.
/// Any text may come here (a config is the operator's, or a client's through a load request's
/// `config`): the output is the input with `:` inserted before some `[`, no more than
/// `src.len() + 2 × (number of '[')` bytes, with the same lines.
pub(crate) fn add_list_colons(src: &str) -> String {
    let mut out = String::with_capacity(src.len() + 16);
    // The last two significant tokens: an identifier is 'i', other punctuation is itself.
    let (mut last, mut before_last) = (' ', ' ');
    let mut chars = src.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '#' => {
                let end = src[i..].find('\n').map_or(src.len(), |n| i + n);
                out.push_str(&src[i..end]);
                while chars.peek().is_some_and(|(j, _)| *j < end) {
                    chars.next();
                }
            }
            '"' | '\'' => {
                out.push(c);
                let mut escaped = false;
                for (_, d) in chars.by_ref() {
                    out.push(d);
                    if escaped {
                        escaped = false;
                    } else if d == '\\' {
                        escaped = true;
                    } else if d == c {
                        break;
                    }
                }
                (before_last, last) = (last, 's');
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                out.push(c);
                while let Some(&(_, d)) = chars.peek() {
                    if d.is_ascii_alphanumeric() || d == '_' || d == '.' {
                        out.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                (before_last, last) = (last, 'i');
            }
            '[' if last == 'i' && before_last != ':' => {
                out.push_str(": [");
                (before_last, last) = (last, '[');
            }
            c if c.is_whitespace() => out.push(c),
            c => {
                out.push(c);
                (before_last, last) = (last, c);
            }
        }
    }
    out
}

/// Reads `<model_dir>/config.pbtxt` (or `configs/<config_name>.pbtxt` when given and present).
/// A missing file yields an empty config when auto-complete may fill it.
pub fn read_config(
    model_dir: &Path,
    config_name: Option<&str>,
    auto_complete: bool,
) -> Result<ModelConfig> {
    let named = config_name.map(|n| model_dir.join("configs").join(format!("{n}.pbtxt")));
    let path = named
        .filter(|p| p.is_file())
        .unwrap_or_else(|| model_dir.join("config.pbtxt"));
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_pbtxt(&path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && auto_complete => {
            Ok(ModelConfig::default())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::invalid_arg(format!(
            "model configuration file '{}' is required when auto-complete is disabled",
            path.display()
        ))),
        Err(e) => Err(Error::internal(format!(
            "failed to read '{}': {e}",
            path.display()
        ))),
    }
}

/// Server-side fill before backend auto-complete: name, platform/backend, default file name,
/// version policy. Rejects anything that is not an ONNX Runtime model.
pub fn fill_server_defaults(
    cfg: &mut ModelConfig,
    name: &str,
    first_version_dir: Option<&Path>,
) -> Result<()> {
    if cfg.name.is_empty() {
        cfg.name = name.to_string();
    } else if cfg.name != name {
        return Err(Error::invalid_arg(format!(
            "unexpected directory name '{name}' for model '{}', directory name must equal model name",
            cfg.name
        )));
    }
    if cfg.default_model_filename.is_empty() && cfg.platform.is_empty() && cfg.backend.is_empty() {
        let has_onnx = first_version_dir.is_some_and(|d| d.join(DEFAULT_MODEL_FILENAME).exists());
        if has_onnx {
            cfg.backend = ONNX_BACKEND.into();
        }
    }
    match (cfg.platform.as_str(), cfg.backend.as_str()) {
        (ONNX_PLATFORM, "") | ("", ONNX_BACKEND) | (ONNX_PLATFORM, ONNX_BACKEND) => {
            cfg.platform = ONNX_PLATFORM.into();
            cfg.backend = ONNX_BACKEND.into();
        }
        ("", "") => {
            return Err(Error::invalid_arg(format!(
                "unable to determine the backend of model '{name}': set platform: \"{ONNX_PLATFORM}\" or backend: \"{ONNX_BACKEND}\" in its config.pbtxt, or provide <version>/{DEFAULT_MODEL_FILENAME}"
            )));
        }
        (platform, backend) => {
            return Err(Error::invalid_arg(format!(
                "model '{name}' asks for platform '{platform}' / backend '{backend}'; this server runs only platform '{ONNX_PLATFORM}' (backend '{ONNX_BACKEND}')"
            )));
        }
    }
    if cfg.default_model_filename.is_empty() {
        cfg.default_model_filename = DEFAULT_MODEL_FILENAME.into();
    }
    if cfg
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
        .is_none()
    {
        cfg.version_policy = Some(pb::ModelVersionPolicy {
            policy_choice: Some(model_version_policy::PolicyChoice::Latest(
                model_version_policy::Latest { num_versions: 1 },
            )),
        });
    }
    Ok(())
}

/// Normalization after auto-complete (model-config.md §10): preferred batch sizes, pinned
/// memory entries and instance groups; `gpus` are the CUDA devices this process can use.
pub fn normalize(cfg: &mut ModelConfig, gpus: &[i32]) -> Result<()> {
    if cfg.max_batch_size < 0 {
        return Err(Error::invalid_arg(format!(
            "max_batch_size must be non-negative for model '{}', got {}",
            cfg.name, cfg.max_batch_size
        )));
    }
    if let Some(SchedulingChoice::DynamicBatching(db)) = cfg.scheduling_choice.as_mut()
        && db.preferred_batch_size.is_empty()
        && cfg.max_batch_size > 0
    {
        db.preferred_batch_size = vec![cfg.max_batch_size];
    }
    if let Some(SchedulingChoice::SequenceBatching(sb)) = cfg.scheduling_choice.as_mut()
        && sb.max_sequence_idle_microseconds == 0
    {
        sb.max_sequence_idle_microseconds = 1_000_000;
    }
    if let Some(SchedulingChoice::SequenceBatching(sb)) = cfg.scheduling_choice.as_mut()
        && let Some(pb::model_sequence_batching::StrategyChoice::Oldest(o)) =
            sb.strategy_choice.as_mut()
        && o.preferred_batch_size.is_empty()
        && cfg.max_batch_size > 0
    {
        o.preferred_batch_size = vec![cfg.max_batch_size];
    }
    let opt = cfg.optimization.get_or_insert_with(Default::default);
    let pinned = pb::model_optimization_policy::PinnedMemoryBuffer { enable: true };
    opt.input_pinned_memory.get_or_insert(pinned);
    opt.output_pinned_memory.get_or_insert(pinned);

    if cfg.instance_group.is_empty() {
        cfg.instance_group.push(pb::ModelInstanceGroup {
            name: cfg.name.clone(),
            ..Default::default()
        });
    }
    let model = cfg.name.clone();
    for (i, g) in cfg.instance_group.iter_mut().enumerate() {
        if g.name.is_empty() {
            g.name = format!("{model}_{i}");
        }
        let kind = Kind::try_from(g.kind).map_err(|_| {
            Error::invalid_arg(format!(
                "instance group {} of model {model} has unknown kind {}",
                g.name, g.kind
            ))
        })?;
        let listed_exist = g.gpus.iter().all(|id| gpus.contains(id));
        let kind = match kind {
            // KIND_AUTO never fails: GPU when the listed (or any) GPUs exist, else CPU.
            Kind::Auto if !gpus.is_empty() && listed_exist => Kind::Gpu,
            Kind::Auto => {
                g.gpus.clear();
                Kind::Cpu
            }
            k => k,
        };
        match kind {
            Kind::Cpu => {
                if !g.gpus.is_empty() {
                    return Err(Error::invalid_arg(format!(
                        "instance group {} of model {model} has kind KIND_CPU but specifies one or more GPUs",
                        g.name
                    )));
                }
                if g.count < 1 {
                    // Triton's default for CPU instances of the onnxruntime backend.
                    g.count = 2;
                }
                if g.host_policy.is_empty() {
                    g.host_policy = "cpu".into();
                }
            }
            Kind::Gpu => {
                if gpus.is_empty() {
                    return Err(Error::invalid_arg(format!(
                        "instance group {} of model {model} has kind KIND_GPU but no GPUs are available (no CUDA driver or device on this machine)",
                        g.name
                    )));
                }
                if let Some(bad) = g.gpus.iter().find(|id| !gpus.contains(id)) {
                    return Err(Error::invalid_arg(format!(
                        "instance group {} of model {model} specifies invalid or unsupported gpu id {bad}; available GPUs: {gpus:?}",
                        g.name
                    )));
                }
                if g.gpus.is_empty() {
                    g.gpus = gpus.to_vec();
                }
                if g.count < 1 {
                    g.count = 1;
                }
            }
            Kind::Model | Kind::Auto => {
                return Err(Error::invalid_arg(format!(
                    "instance group {} of model {model} has kind KIND_MODEL, which the ONNX Runtime backend does not support",
                    g.name
                )));
            }
        }
        g.kind = kind as i32;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE: &str = r#"
name: "simple"   # a comment with [ brackets ] and "quotes"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1", data_type: TYPE_INT32, dims: [ 16 ] }
]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ]
output { name: "OUTPUT1" data_type: TYPE_INT32 dims: 16 }
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 100 priority_queue_policy { key: 1 value: { max_queue_size: 4 } } }
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
version_policy: { specific: { versions: [1, 3] } }
"#;

    #[test]
    fn parses_triton_style_config() {
        let cfg = parse_pbtxt(Path::new("config.pbtxt"), SIMPLE).unwrap();
        assert_eq!(cfg.name, "simple");
        assert_eq!(cfg.max_batch_size, 8);
        assert_eq!(cfg.input.len(), 2);
        assert_eq!(cfg.output.len(), 2);
        assert_eq!(cfg.input[1].dims, vec![16]);
        assert_eq!(cfg.instance_group[0].kind, Kind::Cpu as i32);
        let Some(SchedulingChoice::DynamicBatching(db)) = &cfg.scheduling_choice else {
            panic!()
        };
        assert_eq!(db.max_queue_delay_microseconds, 100);
        assert_eq!(db.priority_queue_policy[&1].max_queue_size, 4);
        assert_eq!(cfg.parameters["intra_op_thread_count"].string_value, "1");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let err = parse_pbtxt(
            Path::new("m/config.pbtxt"),
            "name: \"m\"\n\nbogus_field: 3\n",
        )
        .unwrap_err();
        assert!(
            err.message.contains("'m/config.pbtxt' at line 3"),
            "{}",
            err.message
        );
        assert!(err.message.contains("bogus_field"), "{}", err.message);
        let err =
            parse_pbtxt(Path::new("c"), "max_batch_size: 8\nmax_batch_size: 4\n").unwrap_err();
        assert!(err.message.contains("line 2"), "{}", err.message);
        let err = parse_pbtxt(
            Path::new("c"),
            "input [ { name: \"x\" data_type: TYPE_NOPE } ]",
        )
        .unwrap_err();
        assert!(err.message.contains("TYPE_NOPE"), "{}", err.message);
        assert!(parse_pbtxt(Path::new("c"), "").unwrap() == ModelConfig::default());
    }

    #[test]
    fn list_colons_leave_strings_and_comments_alone() {
        assert_eq!(add_list_colons("a [ 1 ]"), "a : [ 1 ]");
        assert_eq!(add_list_colons("a: [ 1 ]"), "a: [ 1 ]");
        assert_eq!(
            add_list_colons("n: \"x [\" # b [\nc [ ]"),
            "n: \"x [\" # b [\nc : [ ]"
        );
    }

    #[test]
    fn fill_and_normalize() {
        let mut cfg = parse_pbtxt(Path::new("c"), SIMPLE).unwrap();
        cfg.instance_group.clear();
        fill_server_defaults(&mut cfg, "simple", None).unwrap();
        normalize(&mut cfg, &[]).unwrap();
        assert_eq!(cfg.backend, "onnxruntime");
        assert_eq!(cfg.default_model_filename, "model.onnx");
        assert_eq!(cfg.instance_group[0].name, "simple");
        assert_eq!(cfg.instance_group[0].count, 2);
        let Some(SchedulingChoice::DynamicBatching(db)) = &cfg.scheduling_choice else {
            panic!()
        };
        assert_eq!(db.preferred_batch_size, vec![8]);

        let mut other = ModelConfig {
            platform: "tensorrt_plan".into(),
            ..Default::default()
        };
        let err = fill_server_defaults(&mut other, "x", None).unwrap_err();
        assert!(err.message.contains("tensorrt_plan"), "{}", err.message);
        let mut named = ModelConfig {
            name: "y".into(),
            ..Default::default()
        };
        assert!(
            fill_server_defaults(&mut named, "x", None)
                .unwrap_err()
                .message
                .contains("directory name must equal")
        );
    }

    #[test]
    fn instance_kinds_follow_the_gpus_present() {
        let gpu = |text: &str| parse_pbtxt(Path::new("c"), text).unwrap();
        let mut cfg = gpu("name: \"g\" instance_group [ { kind: KIND_GPU } ]");
        let err = normalize(&mut cfg, &[]).unwrap_err();
        assert!(
            err.message.contains("KIND_GPU but no GPUs are available"),
            "{}",
            err.message
        );
        let mut cfg = gpu("name: \"g\" instance_group [ { kind: KIND_GPU count: 2 } ]");
        normalize(&mut cfg, &[0, 1]).unwrap();
        assert_eq!(
            (
                cfg.instance_group[0].gpus.clone(),
                cfg.instance_group[0].count
            ),
            (vec![0, 1], 2)
        );
        let mut cfg = gpu("name: \"g\" instance_group [ { kind: KIND_GPU gpus: [ 3 ] } ]");
        assert!(
            normalize(&mut cfg, &[0])
                .unwrap_err()
                .message
                .contains("invalid or unsupported gpu id 3")
        );
        let mut cfg = gpu("name: \"g\" instance_group [ { kind: KIND_AUTO } ]");
        normalize(&mut cfg, &[]).unwrap();
        assert_eq!(
            (cfg.instance_group[0].kind, cfg.instance_group[0].count),
            (Kind::Cpu as i32, 2)
        );
        let mut cfg = gpu("name: \"g\" instance_group [ { kind: KIND_AUTO } ]");
        normalize(&mut cfg, &[0]).unwrap();
        assert_eq!(
            (
                cfg.instance_group[0].kind,
                cfg.instance_group[0].gpus.clone()
            ),
            (Kind::Gpu as i32, vec![0])
        );
        let mut cfg = gpu("name: \"g\" instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]");
        assert!(
            normalize(&mut cfg, &[0])
                .unwrap_err()
                .message
                .contains("KIND_CPU but specifies")
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Text made of the config grammar's pieces, so the fix-up's states are all reached.
        fn pbtxt_like() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("input".to_string()),
                Just("dims".to_string()),
                Just(" [ ".to_string()),
                Just("] ".to_string()),
                Just("{ ".to_string()),
                Just("} ".to_string()),
                Just(": ".to_string()),
                Just("\"".to_string()),
                Just("'".to_string()),
                Just("\\".to_string()),
                Just("# c [\n".to_string()),
                Just("\n".to_string()),
                Just("-1, 4".to_string()),
                Just("é".to_string()),
                any::<char>().prop_map(String::from),
            ];
            proptest::collection::vec(piece, 0..40).prop_map(|p| p.concat())
        }

        fn check(text: &str) -> Result<(), TestCaseError> {
            let fixed = add_list_colons(text);
            let brackets = text.matches('[').count();
            prop_assert!(fixed.len() <= text.len() + 2 * brackets);
            prop_assert_eq!(fixed.matches('\n').count(), text.matches('\n').count());
            prop_assert_eq!(
                fixed.replace(": [", "[").replace(':', ""),
                text.replace(": [", "[").replace(':', "")
            );
            // Parsing returns a config or an error naming the file, never a panic.
            if let Err(e) = parse_pbtxt(Path::new("config.pbtxt"), text) {
                prop_assert!(e.message.contains("config.pbtxt"), "{}", e.message);
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn any_text_is_fixed_up_within_bounds(text in any::<String>()) {
                check(&text)?;
            }

            #[test]
            fn config_like_text_is_fixed_up_within_bounds(text in pbtxt_like()) {
                check(&text)?;
            }
        }
    }
}
