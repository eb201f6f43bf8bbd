//! `config.pbtxt`: parse (protobuf text format against the real `inference.ModelConfig`
//! descriptor), server auto-fill, normalization, and conversion into the validated `ModelSpec`.
//! This module is the one place outside the front-ends that handles the config message.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use prost_reflect::{DescriptorPool, DynamicMessage};

use super::{
    DeviceKind, DynamicBatching, InstanceSpec, IoSpec, ModelSpec, OrtOptions, QueuePolicy,
    TimeoutAction,
};
use crate::error::{Error, Result};
use crate::pb::inference::{
    self as pb, model_config::SchedulingChoice, model_instance_group::Kind, model_version_policy,
};
use crate::tensor::DataType;

pub use crate::pb::inference::ModelConfig;

pub const ONNX_PLATFORM: &str = "onnxruntime_onnx";
pub const ONNX_BACKEND: &str = "onnxruntime";
pub const DEFAULT_MODEL_FILENAME: &str = "model.onnx";

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
        let line = miette::Diagnostic::labels(&e)
            .and_then(|mut l| l.next())
            .map(|span| {
                fixed[..span.offset().min(fixed.len())]
                    .matches('\n')
                    .count()
                    + 1
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
fn add_list_colons(src: &str) -> String {
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

/// Checks the dims rules shared by inputs and outputs.
fn check_dims(
    model: &str,
    what: &str,
    name: &str,
    dims: &[i64],
    reshape: Option<&pb::ModelTensorReshape>,
    batching: bool,
) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid_arg(format!(
            "model '{model}' has an {what} without a name"
        )));
    }
    if dims.is_empty() {
        return Err(Error::invalid_arg(format!(
            "model '{model}' {what} '{name}' must specify 'dims'"
        )));
    }
    let bad = |d: &[i64]| d.iter().any(|&x| x != -1 && x < 1);
    if bad(dims) {
        return Err(Error::invalid_arg(format!(
            "model '{model}' {what} '{name}' dims must be -1 or positive, got {}",
            crate::tensor::shape_string(dims)
        )));
    }
    if let Some(r) = reshape {
        if bad(&r.shape) {
            return Err(Error::invalid_arg(format!(
                "model '{model}' {what} '{name}' reshape must be -1 or positive, got {}",
                crate::tensor::shape_string(&r.shape)
            )));
        }
        if r.shape.is_empty() && !batching {
            return Err(Error::invalid_arg(format!(
                "model '{model}' {what} '{name}' has an empty reshape but the model does not batch"
            )));
        }
        let vars = |d: &[i64]| d.iter().filter(|&&x| x == -1).count();
        let fixed = |d: &[i64]| d.iter().filter(|&&x| x > 0).product::<i64>();
        if vars(dims) != vars(&r.shape) || (vars(dims) == 0 && fixed(dims) != fixed(&r.shape)) {
            return Err(Error::invalid_arg(format!(
                "model '{model}' {what} '{name}' has different size for dims and reshape"
            )));
        }
    }
    Ok(())
}

fn data_type(model: &str, what: &str, name: &str, v: i32) -> Result<DataType> {
    DataType::from_config_value(v).ok_or_else(|| {
        Error::invalid_arg(format!(
            "model '{model}' {what} '{name}' must specify a valid 'data_type'"
        ))
    })
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "on" | "1" => Ok(true),
        "false" | "off" | "0" => Ok(false),
        _ => Err(Error::invalid_arg(format!(
            "parameter '{key}' expects a boolean (true/false/on/off/1/0), got '{v}'"
        ))),
    }
}

fn parse_ort_options(cfg: &ModelConfig) -> Result<OrtOptions> {
    let mut o = OrtOptions {
        graph_level: cfg
            .optimization
            .as_ref()
            .and_then(|p| p.graph.as_ref())
            .map_or(0, |g| g.level),
        ..Default::default()
    };
    let num = |key: &str, v: &str| -> Result<usize> {
        v.trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(|n| n as usize)
            .ok_or_else(|| {
                Error::invalid_arg(format!(
                    "parameter '{key}' of model '{}' expects a non-negative integer, got '{v}'",
                    cfg.name
                ))
            })
    };
    for (key, p) in &cfg.parameters {
        let v = p.string_value.as_str();
        match key.as_str() {
            "intra_op_thread_count" => o.intra_op_threads = num(key, v)?,
            "inter_op_thread_count" => o.inter_op_threads = num(key, v)?,
            "execution_mode" => {
                o.parallel_execution = match v.trim() {
                    "0" => false,
                    "1" => true,
                    _ => {
                        return Err(Error::invalid_arg(format!(
                            "parameter 'execution_mode' of model '{}' must be 0 (sequential) or 1 (parallel), got '{v}'",
                            cfg.name
                        )));
                    }
                }
            }
            "enable_mem_arena" => o.mem_arena = Some(parse_bool(key, v)?),
            "enable_mem_pattern" => o.mem_pattern = Some(parse_bool(key, v)?),
            _ => {
                tracing::debug!(model = %cfg.name, parameter = %key, "model parameter not used by this server")
            }
        }
    }
    Ok(o)
}

/// Checks the effective config and turns it into the `ModelSpec` of one version.
pub fn to_spec(cfg: &ModelConfig, version: i64, model_dir: &Path) -> Result<ModelSpec> {
    let model = cfg.name.as_str();
    let batching = cfg.max_batch_size > 0;
    let mut inputs = Vec::with_capacity(cfg.input.len());
    for i in &cfg.input {
        check_dims(
            model,
            "input",
            &i.name,
            &i.dims,
            i.reshape.as_ref(),
            batching,
        )?;
        if i.optional && batching {
            return Err(Error::invalid_arg(format!(
                "model '{model}' input '{}': optional inputs are not supported for models with max_batch_size > 0 (ONNX Runtime backend)",
                i.name
            )));
        }
        inputs.push(IoSpec {
            name: i.name.clone(),
            dtype: data_type(model, "input", &i.name, i.data_type)?,
            dims: i.dims.clone(),
            reshape: i.reshape.as_ref().map(|r| r.shape.clone()),
            optional: i.optional,
            labels: None,
        });
    }
    let mut outputs = Vec::with_capacity(cfg.output.len());
    for o in &cfg.output {
        check_dims(
            model,
            "output",
            &o.name,
            &o.dims,
            o.reshape.as_ref(),
            batching,
        )?;
        let labels = if o.label_filename.is_empty() {
            None
        } else {
            let path = model_dir.join(&o.label_filename);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::invalid_arg(format!(
                    "model '{model}' output '{}': cannot read label file '{}': {e}",
                    o.name,
                    path.display()
                ))
            })?;
            Some(Arc::new(text.lines().map(str::to_owned).collect()))
        };
        outputs.push(IoSpec {
            name: o.name.clone(),
            dtype: data_type(model, "output", &o.name, o.data_type)?,
            dims: o.dims.clone(),
            reshape: o.reshape.as_ref().map(|r| r.shape.clone()),
            optional: false,
            labels,
        });
    }
    if inputs.is_empty() || outputs.is_empty() {
        return Err(Error::invalid_arg(format!(
            "model '{model}' must specify at least one input and one output (auto-complete is disabled or could not fill them)"
        )));
    }
    let instances = cfg
        .instance_group
        .iter()
        .map(|g| InstanceSpec {
            name: g.name.clone(),
            kind: if g.kind == Kind::Gpu as i32 {
                DeviceKind::Gpu(g.gpus.first().copied().unwrap_or(0))
            } else {
                DeviceKind::Cpu
            },
            count: g.count.max(1) as u32,
        })
        .collect();
    Ok(ModelSpec {
        name: model.to_string(),
        version,
        max_batch_size: cfg.max_batch_size as u32,
        inputs,
        outputs,
        model_path: model_dir
            .join(version.to_string())
            .join(&cfg.default_model_filename),
        instances,
        ort: parse_ort_options(cfg)?,
        dynamic_batching: dynamic_batching(cfg)?,
        text: crate::preprocess::TextSpec::from_config(cfg, model_dir)?,
    })
}

fn queue_policy(p: Option<&pb::ModelQueuePolicy>) -> QueuePolicy {
    let p = p.cloned().unwrap_or_default();
    QueuePolicy {
        max_queue_size: p.max_queue_size as usize,
        default_timeout: std::time::Duration::from_micros(p.default_timeout_microseconds),
        timeout_action: if p.timeout_action == pb::model_queue_policy::TimeoutAction::Delay as i32 {
            TimeoutAction::Delay
        } else {
            TimeoutAction::Reject
        },
        allow_timeout_override: p.allow_timeout_override,
    }
}

/// Validates `dynamic_batching` (behaviour.md §8.2). A model with `max_batch_size: 0` runs
/// every request alone, whatever the config says.
fn dynamic_batching(cfg: &ModelConfig) -> Result<Option<DynamicBatching>> {
    let Some(SchedulingChoice::DynamicBatching(db)) = &cfg.scheduling_choice else {
        return Ok(None);
    };
    if cfg.max_batch_size == 0 {
        return Ok(None);
    }
    let model = &cfg.name;
    let mbs = cfg.max_batch_size as i64;
    let mut preferred = Vec::with_capacity(db.preferred_batch_size.len());
    for &p in &db.preferred_batch_size {
        if p < 1 || p as i64 > mbs {
            return Err(Error::invalid_arg(format!(
                "dynamic batching preferred size must be positive and <= max_batch_size {mbs} for model '{model}', got {p}"
            )));
        }
        preferred.push(p as usize);
    }
    preferred.sort_unstable();
    preferred.dedup();
    let enabled = db.priority_levels > 0;
    let levels = db.priority_levels.max(1) as usize;
    let default_level = if enabled {
        if db.default_priority_level < 1 || db.default_priority_level > db.priority_levels {
            return Err(Error::invalid_arg(format!(
                "default_priority_level must be in the range [1, {}] for model '{model}', got {}",
                db.priority_levels, db.default_priority_level
            )));
        }
        db.default_priority_level as usize
    } else {
        1
    };
    for &level in db.priority_queue_policy.keys() {
        if !enabled || level < 1 || level > db.priority_levels {
            return Err(Error::invalid_arg(format!(
                "priority queue policy must have a key in the range [1, {}] for model '{model}', got {level}",
                db.priority_levels
            )));
        }
    }
    let default_policy = db.default_queue_policy.as_ref();
    let queue_policies: Vec<QueuePolicy> = (1..=levels as u64)
        .map(|l| queue_policy(db.priority_queue_policy.get(&l).or(default_policy)))
        .collect();
    if db.preserve_ordering
        && (levels > 1
            || queue_policies
                .iter()
                .any(|p| p.timeout_action == TimeoutAction::Delay))
    {
        return Err(Error::invalid_arg(format!(
            "preserve_ordering of model '{model}' allows only one priority level and no DELAY timeout action"
        )));
    }
    Ok(Some(DynamicBatching {
        preferred_batch_sizes: preferred,
        max_queue_delay: std::time::Duration::from_micros(db.max_queue_delay_microseconds),
        preserve_ordering: db.preserve_ordering,
        priority_levels: levels,
        default_priority_level: default_level,
        queue_policies,
        priorities_enabled: enabled,
    }))
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

    #[test]
    fn dynamic_batching_settings_are_validated() {
        let spec = |text: &str| {
            let mut cfg = parse_pbtxt(Path::new("c"), text).unwrap();
            fill_server_defaults(&mut cfg, "m", None)?;
            normalize(&mut cfg, &[])?;
            to_spec(&cfg, 1, Path::new("m"))
        };
        let io = "input [ { name: \"x\" data_type: TYPE_FP32 dims: [ 4 ] } ] output [ { name: \"y\" data_type: TYPE_FP32 dims: [ 4 ] } ]";
        let ok = spec(&format!(
            "name: \"m\" backend: \"onnxruntime\" max_batch_size: 8 {io} dynamic_batching {{ preferred_batch_size: [ 8, 2 ] max_queue_delay_microseconds: 500 priority_levels: 2 default_priority_level: 2 default_queue_policy {{ max_queue_size: 5 timeout_action: DELAY default_timeout_microseconds: 10 }} priority_queue_policy {{ key: 1 value: {{ max_queue_size: 1 }} }} }}"
        ))
        .unwrap();
        let db = ok.dynamic_batching.unwrap();
        assert_eq!(db.preferred_batch_sizes, vec![2, 8]);
        assert_eq!(db.max_queue_delay, std::time::Duration::from_micros(500));
        assert_eq!((db.priority_levels, db.default_priority_level), (2, 2));
        assert_eq!(db.queue_policies[0].max_queue_size, 1);
        assert_eq!(db.queue_policies[1].timeout_action, TimeoutAction::Delay);
        let bad = [
            (
                "preferred_batch_size: [ 9 ]",
                "preferred size must be positive and <= max_batch_size 8",
            ),
            (
                "priority_levels: 2 default_priority_level: 3",
                "default_priority_level must be in the range [1, 2]",
            ),
            (
                "priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 5 value: { } }",
                "key in the range [1, 2]",
            ),
            (
                "preserve_ordering: true priority_levels: 2 default_priority_level: 1",
                "preserve_ordering",
            ),
        ];
        for (db, want) in bad {
            let err = spec(&format!("name: \"m\" backend: \"onnxruntime\" max_batch_size: 8 {io} dynamic_batching {{ {db} }}")).unwrap_err();
            assert!(err.message.contains(want), "{db}: {}", err.message);
        }
        let none = spec(&format!(
            "name: \"m\" backend: \"onnxruntime\" max_batch_size: 0 {io} dynamic_batching {{ }}"
        ))
        .unwrap();
        assert!(
            none.dynamic_batching.is_none(),
            "max_batch_size 0 runs requests alone"
        );
    }
}
