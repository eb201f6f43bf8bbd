//! Auto-complete of a config from the ONNX model's own inputs and outputs, and the load-time
//! check of a config against the graph, following Triton's ONNX Runtime backend
//! (behaviour.md §10.1–10.2).

use super::io::{IoDesc, ModelIo};
use crate::error::{Error, Result};
use crate::pb::inference::{self as pb, model_config::SchedulingChoice};
use crate::tensor::{DataType, shape_string};

use super::config::ModelConfig;

/// Fills `max_batch_size`, inputs, outputs and the default dynamic batcher from `io`.
/// A config that already lists inputs and outputs is left as it is.
pub(crate) fn auto_complete(
    cfg: &mut ModelConfig,
    io: &ModelIo,
    default_max_batch_size: u32,
) -> Result<()> {
    let model = cfg.name.clone();
    if (!cfg.input.is_empty() || !cfg.batch_input.is_empty()) && !cfg.output.is_empty() {
        tracing::debug!(
            model,
            "skipping model configuration auto-complete: inputs and outputs already specified"
        );
        return Ok(());
    }
    let batch_dim = |d: &IoDesc| d.shape.first() == Some(&-1);
    let can_batch = io.inputs.iter().chain(&io.outputs).all(batch_dim);
    if can_batch {
        if cfg.max_batch_size == 0 {
            cfg.max_batch_size = default_max_batch_size as i32;
            tracing::warn!(
                model,
                max_batch_size = cfg.max_batch_size,
                "auto-complete set max_batch_size; set it in config.pbtxt to choose another"
            );
        }
    } else if cfg.max_batch_size != 0 {
        return Err(Error::invalid_arg(format!(
            "autofill failed for model '{model}': model does not support batching while non-zero max_batch_size is specified"
        )));
    }
    if cfg.max_batch_size > 1 && cfg.scheduling_choice.is_none() {
        cfg.scheduling_choice = Some(SchedulingChoice::DynamicBatching(Default::default()));
    }
    let batching = cfg.max_batch_size > 0;
    let dims_of = |d: &IoDesc| -> (Vec<i64>, Option<pb::ModelTensorReshape>) {
        let dims: Vec<i64> = if batching {
            d.shape[1..].to_vec()
        } else {
            d.shape.clone()
        };
        if dims.is_empty() {
            (
                vec![1],
                batching.then(|| pb::ModelTensorReshape { shape: vec![] }),
            )
        } else {
            (dims, None)
        }
    };
    let dtype_of = |d: &IoDesc| -> Result<i32> {
        d.dtype.clone().map(DataType::config_value).map_err(|ty| {
            Error::invalid_arg(format!(
                "autofill failed for model '{model}': tensor '{}' has unsupported type {ty}",
                d.name
            ))
        })
    };
    // Sequence control and state inputs are graph inputs the server fills, never config inputs.
    let controls: Vec<String> = match &cfg.scheduling_choice {
        Some(SchedulingChoice::SequenceBatching(sb)) => sb
            .control_input
            .iter()
            .map(|c| c.name.clone())
            .chain(sb.state.iter().map(|s| s.input_name.clone()))
            .collect(),
        _ => Vec::new(),
    };
    if cfg.input.is_empty() {
        for d in io.inputs.iter().filter(|d| !controls.contains(&d.name)) {
            let (dims, reshape) = dims_of(d);
            cfg.input.push(pb::ModelInput {
                name: d.name.clone(),
                data_type: dtype_of(d)?,
                dims,
                reshape,
                ..Default::default()
            });
        }
    }
    if cfg.output.is_empty() {
        for d in &io.outputs {
            let (dims, reshape) = dims_of(d);
            cfg.output.push(pb::ModelOutput {
                name: d.name.clone(),
                data_type: dtype_of(d)?,
                dims,
                reshape,
                ..Default::default()
            });
        }
    }
    Ok(())
}

/// Checks the config's inputs and outputs against the graph: names, datatypes, shapes, count.
pub(crate) fn check_against_model(cfg: &ModelConfig, io: &ModelIo) -> Result<()> {
    let model = &cfg.name;
    // Sequence control inputs are graph inputs the server fills: each must be in the graph.
    // So are implicit states' inputs; their outputs are graph outputs the server keeps.
    let (controls, states) = super::sequence::from_config(cfg, None)?
        .map_or((Vec::new(), Vec::new()), |s| (s.controls, s.states));
    super::sequence::check_controls(model, &controls, cfg.max_batch_size > 0, &io.inputs)?;
    super::sequence::check_states(
        model,
        &states,
        cfg.max_batch_size > 0,
        &io.inputs,
        &io.outputs,
    )?;
    let filled = controls.len() + states.len();
    let required = cfg.input.iter().filter(|i| !i.optional).count() + filled;
    let most = cfg.input.len() + filled;
    if io.inputs.len() < required || io.inputs.len() > most {
        return Err(Error::invalid_arg(format!(
            "unable to load model '{model}', configuration expects {most} inputs, model provides {}",
            io.inputs.len()
        )));
    }
    let batching = cfg.max_batch_size > 0;
    let check = |what: &str,
                 name: &str,
                 data_type: i32,
                 dims: &[i64],
                 reshape: Option<&pb::ModelTensorReshape>,
                 graph: &[IoDesc]|
     -> Result<()> {
        let Some(d) = graph.iter().find(|d| d.name == name) else {
            let allowed: Vec<&str> = graph.iter().map(|d| d.name.as_str()).collect();
            return Err(Error::invalid_arg(format!(
                "unable to load model '{model}', unexpected inference {what} '{name}', allowed {what}s are: {}",
                allowed.join(", ")
            )));
        };
        let provided = d.config_type_name();
        let expected =
            DataType::from_config_value(data_type).map_or("TYPE_INVALID", |t| t.config_name());
        if expected != provided {
            return Err(Error::invalid_arg(format!(
                "unable to load model '{model}', configuration expects datatype {expected} for {what} '{name}', model provides {provided}"
            )));
        }
        let item: &[i64] = reshape.map_or(dims, |r| &r.shape);
        let mut full = item.to_vec();
        if batching {
            full.insert(0, -1);
        }
        let graph_ok = d.shape.len() == full.len()
            && (!batching || d.shape[0] == -1)
            && d.shape
                .iter()
                .zip(&full)
                .all(|(&g, &c)| g == -1 || c == -1 || g == c);
        // A graph scalar may be fed from a non-batching config whose dims are all 1.
        let scalar_ok = !batching && d.shape.is_empty() && item.iter().all(|&x| x == 1);
        if !graph_ok && !scalar_ok {
            return Err(Error::invalid_arg(format!(
                "unable to load model '{model}', {what} '{name}': model shape {} does not match the configuration shape {}{}",
                shape_string(&d.shape),
                shape_string(&full),
                if batching {
                    " (max_batch_size > 0 adds a leading batch dimension -1)"
                } else {
                    ""
                }
            )));
        }
        Ok(())
    };
    for i in &cfg.input {
        check(
            "input",
            &i.name,
            i.data_type,
            &i.dims,
            i.reshape.as_ref(),
            &io.inputs,
        )?;
    }
    for o in &cfg.output {
        check(
            "output",
            &o.name,
            o.data_type,
            &o.dims,
            o.reshape.as_ref(),
            &io.outputs,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(name: &str, dtype: DataType, shape: &[i64]) -> IoDesc {
        IoDesc {
            name: name.into(),
            dtype: Ok(dtype),
            shape: shape.to_vec(),
        }
    }

    fn io(shape: &[i64]) -> ModelIo {
        ModelIo {
            inputs: vec![
                desc("x", DataType::Fp32, shape),
                desc("y", DataType::Fp32, shape),
            ],
            outputs: vec![desc("sum", DataType::Fp32, shape)],
        }
    }

    #[test]
    fn fills_a_batching_model() {
        let mut cfg = ModelConfig {
            name: "m".into(),
            ..Default::default()
        };
        auto_complete(&mut cfg, &io(&[-1, 4]), 4).unwrap();
        assert_eq!(cfg.max_batch_size, 4);
        assert_eq!(cfg.input.len(), 2);
        assert_eq!(cfg.input[0].dims, vec![4]);
        assert_eq!(cfg.input[0].data_type, DataType::Fp32.config_value());
        assert!(matches!(
            cfg.scheduling_choice,
            Some(SchedulingChoice::DynamicBatching(_))
        ));
        check_against_model(&cfg, &io(&[-1, 4])).unwrap();
    }

    #[test]
    fn fills_a_non_batching_model_and_rejects_a_batch_size() {
        let mut cfg = ModelConfig {
            name: "m".into(),
            ..Default::default()
        };
        auto_complete(&mut cfg, &io(&[3, 4]), 4).unwrap();
        assert_eq!(cfg.max_batch_size, 0);
        assert_eq!(cfg.input[0].dims, vec![3, 4]);
        assert!(cfg.scheduling_choice.is_none());
        let mut cfg = ModelConfig {
            name: "m".into(),
            max_batch_size: 8,
            ..Default::default()
        };
        let err = auto_complete(&mut cfg, &io(&[3, 4]), 4).unwrap_err();
        assert!(
            err.message.contains("does not support batching"),
            "{}",
            err.message
        );
    }

    #[test]
    fn control_inputs_are_not_config_inputs() {
        let mut cfg = crate::model::config::parse_pbtxt(
            std::path::Path::new("c"),
            "name: \"m\" max_batch_size: 4 sequence_batching { control_input [ { name: \"y\" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] } ] }",
        )
        .unwrap();
        auto_complete(&mut cfg, &io(&[-1, 1]), 4).unwrap();
        let names: Vec<&str> = cfg.input.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["x"]);
        check_against_model(&cfg, &io(&[-1, 1])).unwrap();
        cfg.input.clear();
        let err = check_against_model(&cfg, &io(&[-1, 1])).unwrap_err();
        assert!(
            err.message.contains("expects 1 inputs, model provides 2"),
            "{}",
            err.message
        );
    }

    #[test]
    fn per_item_scalars_get_an_empty_reshape() {
        let mut cfg = ModelConfig {
            name: "m".into(),
            ..Default::default()
        };
        auto_complete(&mut cfg, &io(&[-1]), 4).unwrap();
        assert_eq!(cfg.input[0].dims, vec![1]);
        assert_eq!(
            cfg.input[0].reshape,
            Some(pb::ModelTensorReshape { shape: vec![] })
        );
        check_against_model(&cfg, &io(&[-1])).unwrap();
    }

    #[test]
    fn mismatches_are_load_errors() {
        let mut cfg = ModelConfig {
            name: "m".into(),
            ..Default::default()
        };
        auto_complete(&mut cfg, &io(&[-1, 4]), 4).unwrap();
        cfg.input[0].data_type = DataType::Int32.config_value();
        let err = check_against_model(&cfg, &io(&[-1, 4])).unwrap_err();
        assert!(
            err.message
                .contains("expects datatype TYPE_INT32 for input 'x', model provides TYPE_FP32"),
            "{}",
            err.message
        );
        cfg.input[0].data_type = DataType::Fp32.config_value();
        cfg.input[0].dims = vec![5];
        assert!(
            check_against_model(&cfg, &io(&[-1, 4]))
                .unwrap_err()
                .message
                .contains("does not match")
        );
        cfg.input.pop();
        assert!(
            check_against_model(&cfg, &io(&[-1, 4]))
                .unwrap_err()
                .message
                .contains("expects 1 inputs, model provides 2")
        );
    }
}
