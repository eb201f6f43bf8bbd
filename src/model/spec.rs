//! The effective config → the validated `ModelSpec` of one version: inputs and outputs (dims,
//! reshape, labels), instance groups, ONNX Runtime options, and the dynamic batcher's settings.

use std::path::Path;
use std::sync::Arc;

use super::config::ModelConfig;
use super::paths;
use super::{
    DeviceKind, DynamicBatching, InstanceSpec, IoSpec, ModelSpec, OrtOptions, QueuePolicy,
    TimeoutAction,
};
use crate::error::{Error, Result};
use crate::pb::inference::{
    self as pb, model_config::SchedulingChoice, model_instance_group::Kind,
};
use crate::tensor::DataType;

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
        // As Triton: the fixed dims between (and around) the -1s must hold the same number of
        // elements in dims and reshape, so that a request's data fills the reshaped tensor
        // exactly ([2, 4, -1, 6] → [8, -1, 1, 6] is fine, [-1, 4] → [-1, 2] is not).
        let (d, r) = (segments(dims), segments(&r.shape));
        let different = || {
            Error::invalid_arg(format!(
                "model '{model}' {what} '{name}' has different size for dims and reshape"
            ))
        };
        if d.len() != r.len() {
            return Err(if d.len() == 1 || r.len() == 1 {
                different()
            } else {
                Error::invalid_arg(format!(
                    "model '{model}' {what} '{name}' has different number of variable-size dimensions for dims and reshape"
                ))
            });
        }
        if d.iter().zip(&r).any(|(a, b)| a.is_none() || a != b) {
            return Err(different());
        }
    }
    Ok(())
}

/// Element counts of the runs of fixed dims separated by -1 (one more than the -1s); `None` for
/// a run whose product overflows.
fn segments(dims: &[i64]) -> Vec<Option<u64>> {
    dims.split(|&d| d == -1)
        .map(|run| {
            run.iter()
                .try_fold(1u64, |n, &d| n.checked_mul(u64::try_from(d).ok()?))
        })
        .collect()
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

/// ONNX Runtime's own spelling of a spinning switch (`0`/`1`), and `true`/`false`.
fn spinning(model: &str, key: &str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(Error::invalid_arg(format!(
            "model '{model}': parameter '{key}' must be 0, 1, true or false, got '{v}'"
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
            "session.intra_op.allow_spinning" => {
                o.intra_op_spinning = Some(spinning(&cfg.name, key, v)?)
            }
            "session.inter_op.allow_spinning" => {
                o.inter_op_spinning = Some(spinning(&cfg.name, key, v)?)
            }
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
            // Triton joins label files to the model folder (not the version folder).
            let path = paths::inside(model_dir, model, "label_filename", &o.label_filename)?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                tracing::warn!(model, path = %path.display(), error = %e, "cannot read label file");
                Error::invalid_arg(format!(
                    "model '{model}' output '{}': cannot read label file '{}': {e}",
                    o.name,
                    paths::printable(&o.label_filename)
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
        model_path: paths::inside(
            &model_dir.join(version.to_string()),
            model,
            "default_model_filename",
            &cfg.default_model_filename,
        )?,
        instances,
        ort: parse_ort_options(cfg)?,
        dynamic_batching: dynamic_batching(cfg)?,
        text: super::text::TextSpec::from_config(cfg, model_dir)?,
        sequence: super::sequence::from_config(cfg, Some(model_dir))?,
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
    use crate::model::config::{fill_server_defaults, normalize, parse_pbtxt};

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

    #[test]
    fn spinning_parameters() {
        let ort = |params: &str| {
            let text = format!(
                "name: \"m\" backend: \"onnxruntime\" max_batch_size: 0 input [ {{ name: \"x\" data_type: TYPE_FP32 dims: [ 4 ] }} ] output [ {{ name: \"y\" data_type: TYPE_FP32 dims: [ 4 ] }} ] {params}"
            );
            let cfg = parse_pbtxt(Path::new("c"), &text).unwrap();
            parse_ort_options(&cfg).map_err(|e| e.message)
        };
        let param = |key: &str, v: &str| {
            format!("parameters {{ key: \"{key}\" value: {{ string_value: \"{v}\" }} }}")
        };
        let intra = "session.intra_op.allow_spinning";
        let inter = "session.inter_op.allow_spinning";
        let none = ort("").unwrap();
        assert_eq!(
            (none.intra_op_spinning, none.inter_op_spinning),
            (None, None)
        );
        for (v, want) in [("0", false), ("1", true), ("true", true), ("FALSE", false)] {
            assert_eq!(
                ort(&param(intra, v)).unwrap().intra_op_spinning,
                Some(want),
                "{v}"
            );
            assert_eq!(
                ort(&param(inter, v)).unwrap().inter_op_spinning,
                Some(want),
                "{v}"
            );
        }
        for v in ["yes", "2", "", "on"] {
            assert_eq!(
                ort(&param(intra, v)).unwrap_err(),
                format!("model 'm': parameter '{intra}' must be 0, 1, true or false, got '{v}'")
            );
        }
        assert!(ort(&param(inter, "maybe")).unwrap_err().contains(inter));
    }

    #[test]
    fn dims_and_reshape_hold_the_same_elements_between_variable_dims() {
        let reshape = |dims: &[i64], shape: &[i64]| {
            let r = pb::ModelTensorReshape {
                shape: shape.to_vec(),
            };
            check_dims("m", "input", "x", dims, Some(&r), true).map_err(|e| e.message)
        };
        assert_eq!(reshape(&[4], &[2, 2]), Ok(()));
        assert_eq!(reshape(&[-1, 4], &[-1, 2, 2]), Ok(()));
        assert_eq!(reshape(&[2, 4, -1, 6], &[8, -1, 1, 6]), Ok(()));
        assert_eq!(reshape(&[1], &[]), Ok(()));
        let different = "model 'm' input 'x' has different size for dims and reshape";
        // The attack: fixed counts 4 and 2 around one variable dim each.
        assert_eq!(reshape(&[-1, 4], &[-1, 2]), Err(different.into()));
        assert_eq!(reshape(&[2, -1], &[-1, 2]), Err(different.into()));
        assert_eq!(reshape(&[4], &[2, 3]), Err(different.into()));
        assert_eq!(reshape(&[-1, 4], &[4]), Err(different.into()));
        assert_eq!(reshape(&[2], &[]), Err(different.into()));
        assert_eq!(
            reshape(&[-1, -1], &[-1]),
            Err("model 'm' input 'x' has different number of variable-size dimensions for dims and reshape".into())
        );
        assert_eq!(
            reshape(&[i64::MAX, i64::MAX, -1], &[i64::MAX, i64::MAX, -1]),
            Err(different.into()),
            "a product that overflows is never a match"
        );
    }
}
