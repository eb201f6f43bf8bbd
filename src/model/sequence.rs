//! `sequence_batching { ... }` → `SequenceSpec`, the sequence batcher's validated settings
//! (sequence-batching.md §4.4, §5): the strategy, the idle limit and the control inputs the
//! server fills for the model. Load errors carry Triton's texts.

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::pb::inference::model_config::SchedulingChoice;
use crate::pb::inference::model_sequence_batching::{self as sb, control::Kind};
use crate::tensor::DataType;

use super::config::ModelConfig;
use super::io::IoDesc;

mod state;
pub(crate) use state::StateSpec;
pub(crate) use state::check_states;

/// Which signal a control input carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    Start,
    End,
    Ready,
    Corrid,
}

impl ControlKind {
    fn from_kind(k: Kind) -> Self {
        match k {
            Kind::ControlSequenceStart => ControlKind::Start,
            Kind::ControlSequenceEnd => ControlKind::End,
            Kind::ControlSequenceReady => ControlKind::Ready,
            Kind::ControlSequenceCorrid => ControlKind::Corrid,
        }
    }

    /// The enum name Triton prints (`CONTROL_SEQUENCE_START`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ControlKind::Start => "CONTROL_SEQUENCE_START",
            ControlKind::End => "CONTROL_SEQUENCE_END",
            ControlKind::Ready => "CONTROL_SEQUENCE_READY",
            ControlKind::Corrid => "CONTROL_SEQUENCE_CORRID",
        }
    }
}

/// The `[false, true]` values of a boolean control, in the tensor type they are written as.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FlagValues {
    Int32([i32; 2]),
    Fp32([f32; 2]),
    Bool([bool; 2]),
}

/// How a control is encoded: a boolean control's two values, or CORRID's data type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ControlForm {
    Flag(FlagValues),
    /// UINT64, INT64, UINT32, INT32 or BYTES.
    Corrid(DataType),
}

/// One control input: a model input the server fills, one element per batch row.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    /// The graph input's name (not listed in the config's `input[]`).
    pub name: String,
    pub kind: ControlKind,
    pub form: ControlForm,
}

impl Control {
    /// The tensor type the server feeds.
    pub fn dtype(&self) -> DataType {
        match self.form {
            ControlForm::Flag(FlagValues::Int32(_)) => DataType::Int32,
            ControlForm::Flag(FlagValues::Fp32(_)) => DataType::Fp32,
            ControlForm::Flag(FlagValues::Bool(_)) => DataType::Bool,
            ControlForm::Corrid(t) => t,
        }
    }
}

/// How sequences share an instance's batches.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// Each sequence owns one batch row (slot) of one instance for its whole life.
    Direct {
        /// Only honoured with a non-zero `min_slot_utilization`.
        max_queue_delay: Duration,
        /// Fraction of the slots that must hold a request before a batch runs early; 0 = none.
        min_slot_utilization: f32,
    },
    /// Sequences are pinned to an instance; its batches take the oldest ready requests, at
    /// most one per sequence, without padding.
    Oldest {
        max_candidates: usize,
        /// Ascending, each in 1..=max_batch_size (normalized to `[max_batch_size]`).
        preferred_batch_sizes: Vec<usize>,
        max_queue_delay: Duration,
        preserve_ordering: bool,
    },
}

/// `sequence_batching` after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceSpec {
    pub strategy: Strategy,
    /// A sequence whose last request arrived longer ago than this loses its slot.
    pub idle: Duration,
    pub controls: Vec<Control>,
    /// Implicit states, carried by the slot from one request of a sequence to the next.
    pub states: Vec<StateSpec>,
}

impl SequenceSpec {
    /// Sequence slots of one instance (§5.1): direct max(1, max_batch_size); oldest
    /// `max_candidate_sequences` when > 0, else the same.
    pub fn slots_per_instance(&self, max_batch_size: u32) -> usize {
        let rows = (max_batch_size as usize).max(1);
        match &self.strategy {
            Strategy::Oldest { max_candidates, .. } if *max_candidates > 0 => *max_candidates,
            _ => rows,
        }
    }

    /// The CORRID control, whose data type decides which ids a request may carry.
    pub fn corrid(&self) -> Option<&Control> {
        self.controls.iter().find(|c| c.kind == ControlKind::Corrid)
    }
}

/// The CORRID types Triton accepts.
const CORRID_TYPES: [DataType; 5] = [
    DataType::Uint64,
    DataType::Int64,
    DataType::Uint32,
    DataType::Int32,
    DataType::Bytes,
];

/// Validates `cfg.sequence_batching` (None when the model has none). `model_dir` holds the
/// implicit states' `initial_state/` files (without it they are not read).
pub(crate) fn from_config(
    cfg: &ModelConfig,
    model_dir: Option<&Path>,
) -> Result<Option<SequenceSpec>> {
    let Some(SchedulingChoice::SequenceBatching(seq)) = &cfg.scheduling_choice else {
        return Ok(None);
    };
    let m = &cfg.name;
    if cfg.response_cache.as_ref().is_some_and(|c| c.enable) {
        return Err(Error::invalid_arg(format!(
            "Response Cache does not currently support model {m} with sequence batching scheduler. Please disable the response cache."
        )));
    }
    if seq.iterative_sequence {
        return Err(Error::invalid_arg(format!(
            "iterative sequences (sequence_batching.iterative_sequence) are not supported by the ONNX Runtime backend for {m}"
        )));
    }
    let controls = controls(m, &seq.control_input)?;
    let states = state::states(m, &seq.state, cfg.max_batch_size > 0, model_dir)?;
    let mbs = cfg.max_batch_size.max(0) as usize;
    let strategy = match &seq.strategy_choice {
        None => Strategy::Direct {
            max_queue_delay: Duration::ZERO,
            min_slot_utilization: 0.0,
        },
        Some(sb::StrategyChoice::Direct(d)) => {
            let u = d.minimum_slot_utilization;
            if !(0.0..=1.0).contains(&u) {
                return Err(Error::invalid_arg(format!(
                    "sequence batching minimum slot utilization must be in range (0.0, 1.0] for {m}"
                )));
            }
            Strategy::Direct {
                max_queue_delay: Duration::from_micros(d.max_queue_delay_microseconds),
                min_slot_utilization: u,
            }
        }
        Some(sb::StrategyChoice::Oldest(o)) => {
            let mut preferred = Vec::with_capacity(o.preferred_batch_size.len());
            for &p in &o.preferred_batch_size {
                if p <= 0 {
                    return Err(Error::invalid_arg(format!(
                        "sequence batching preferred batch size must be positive for {m}"
                    )));
                }
                if p as usize > mbs.max(1) {
                    return Err(Error::invalid_arg(format!(
                        "sequence batching preferred batch size must be <= max batch size for {m}"
                    )));
                }
                preferred.push(p as usize);
            }
            preferred.sort_unstable();
            preferred.dedup();
            Strategy::Oldest {
                max_candidates: o.max_candidate_sequences.max(0) as usize,
                preferred_batch_sizes: preferred,
                max_queue_delay: Duration::from_micros(o.max_queue_delay_microseconds),
                preserve_ordering: o.preserve_ordering,
            }
        }
    };
    Ok(Some(SequenceSpec {
        strategy,
        idle: Duration::from_micros(seq.max_sequence_idle_microseconds.max(1)),
        controls,
        states,
    }))
}

/// The control inputs, checked as Triton checks them (one kind per tensor, one tensor per
/// kind, exactly one `[false, true]` form of two values on a boolean kind, a CORRID type).
fn controls(m: &str, inputs: &[sb::ControlInput]) -> Result<Vec<Control>> {
    let mut out: Vec<Control> = Vec::new();
    for input in inputs {
        if input.name.is_empty() {
            return Err(Error::invalid_arg(format!(
                "sequence batching control tensor must have a name for {m}"
            )));
        }
        for c in &input.control {
            let kind = Kind::try_from(c.kind)
                .map(ControlKind::from_kind)
                .map_err(|_| {
                    Error::invalid_arg(format!(
                        "sequence batching control '{}' has unknown kind {} for {m}",
                        input.name, c.kind
                    ))
                })?;
            if out.iter().any(|o| o.name == input.name && o.kind != kind) {
                return Err(Error::invalid_arg(format!(
                    "sequence batching control tensor '{}' is specified for multiple control kinds for {m}",
                    input.name
                )));
            }
            if out.iter().any(|o| o.kind == kind) {
                return Err(Error::invalid_arg(format!(
                    "sequence batching specifies multiple {} tensors for {m}",
                    kind.name()
                )));
            }
            let form = form(m, kind, c)?;
            out.push(Control {
                name: input.name.clone(),
                kind,
                form,
            });
        }
    }
    Ok(out)
}

fn form(m: &str, kind: ControlKind, c: &sb::Control) -> Result<ControlForm> {
    let k = kind.name();
    let given = [
        !c.int32_false_true.is_empty(),
        !c.fp32_false_true.is_empty(),
        !c.bool_false_true.is_empty(),
    ];
    let forms = given.iter().filter(|&&g| g).count();
    if kind == ControlKind::Corrid {
        if forms > 0 {
            return Err(Error::invalid_arg(format!(
                "sequence batching must not specify either 'int32_false_true', 'fp32_false_true' or 'bool_false_true' for {k} for {m}"
            )));
        }
        let t = DataType::from_config_value(c.data_type).filter(|t| CORRID_TYPES.contains(t));
        return t.map(ControlForm::Corrid).ok_or_else(|| {
            Error::invalid_arg(format!(
                "unexpected data type for control {k} for {m}. Allowed data types are TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING"
            ))
        });
    }
    if forms == 0 {
        return Err(Error::invalid_arg(format!(
            "sequence batching must specify either 'int32_false_true', 'fp32_false_true' or 'bool_false_true' for {k} for {m}"
        )));
    }
    if forms > 1 {
        return Err(Error::invalid_arg(format!(
            "sequence batching specifies more than one from 'int32_false_true', 'fp32_false_true' and 'bool_false_true' for {k} for {m}"
        )));
    }
    let two = |name: &str, len: usize| {
        if len == 2 {
            Ok(())
        } else {
            Err(Error::invalid_arg(format!(
                "sequence batching control '{name}' must have exactly 2 entries for {k} for {m}"
            )))
        }
    };
    let values = if given[0] {
        let v = &c.int32_false_true;
        two("int32_false_true", v.len())?;
        FlagValues::Int32([v[0], v[1]])
    } else if given[1] {
        let v = &c.fp32_false_true;
        two("fp32_false_true", v.len())?;
        FlagValues::Fp32([v[0], v[1]])
    } else {
        let v = &c.bool_false_true;
        two("bool_false_true", v.len())?;
        FlagValues::Bool([v[0], v[1]])
    };
    Ok(ControlForm::Flag(values))
}

/// Checks each control against the graph's inputs: present, of the type the server feeds,
/// one element per row (`[-1, 1]` when the model batches, `[1]` when it does not; -1 fits any).
pub(crate) fn check_controls(
    m: &str,
    controls: &[Control],
    batching: bool,
    graph: &[IoDesc],
) -> Result<()> {
    for c in controls {
        let Some(d) = graph.iter().find(|d| d.name == c.name) else {
            let inputs: Vec<&str> = graph.iter().map(|d| d.name.as_str()).collect();
            return Err(Error::invalid_arg(format!(
                "unable to load model '{m}', sequence batching control input '{}' ({}) is not an input of the model; its inputs are: {}",
                c.name,
                c.kind.name(),
                inputs.join(", ")
            )));
        };
        let want = c.dtype();
        if d.dtype.as_ref() != Ok(&want) {
            let provided = d.config_type_name();
            return Err(Error::invalid_arg(format!(
                "unable to load model '{m}', sequence batching control input '{}' ({}) is fed as {}, model provides {provided}",
                c.name,
                c.kind.name(),
                want.config_name()
            )));
        }
        let fits = |g: i64, c: i64| g == -1 || g == c;
        let shape_ok = match (batching, d.shape.as_slice()) {
            (true, [b, one]) => *b == -1 && fits(*one, 1),
            (false, [one]) => fits(*one, 1),
            _ => false,
        };
        if !shape_ok {
            return Err(Error::invalid_arg(format!(
                "unable to load model '{m}', sequence batching control input '{}' ({}): model shape {} cannot take one element per request ({})",
                c.name,
                c.kind.name(),
                crate::tensor::shape_string(&d.shape),
                if batching { "[-1,1]" } else { "[1]" }
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::parse_pbtxt;
    use std::path::Path;

    fn spec(seq: &str) -> Result<Option<SequenceSpec>> {
        let text = format!("name: \"m\" max_batch_size: 4 sequence_batching {{ {seq} }}");
        from_config(&parse_pbtxt(Path::new("c"), &text).unwrap(), None)
    }

    fn control(name: &str, kind: &str, form: &str) -> String {
        format!("control_input [ {{ name: \"{name}\" control [ {{ kind: {kind} {form} }} ] }} ]")
    }

    #[test]
    fn every_control_form_parses() {
        let s = spec(&format!(
            "oldest {{ max_candidate_sequences: 3 }} {} {} {} {}",
            control("S", "CONTROL_SEQUENCE_START", "int32_false_true: [ 0, 1 ]"),
            control("E", "CONTROL_SEQUENCE_END", "fp32_false_true: [ 0.5, 1.5 ]"),
            control(
                "R",
                "CONTROL_SEQUENCE_READY",
                "bool_false_true: [ false, true ]"
            ),
            control("C", "CONTROL_SEQUENCE_CORRID", "data_type: TYPE_STRING"),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(s.controls.len(), 4);
        assert_eq!(
            s.controls[1].form,
            ControlForm::Flag(FlagValues::Fp32([0.5, 1.5]))
        );
        assert_eq!(s.corrid().unwrap().dtype(), DataType::Bytes);
        assert_eq!(s.slots_per_instance(4), 3);
        let direct = spec("").unwrap().unwrap();
        assert_eq!(direct.slots_per_instance(0), 1);
        assert_eq!(direct.slots_per_instance(8), 8);
    }

    #[test]
    fn bad_controls_get_tritons_texts() {
        let s = "CONTROL_SEQUENCE_START";
        let cases = [
            (
                control("", s, "int32_false_true: [ 0, 1 ]"),
                "sequence batching control tensor must have a name for m",
            ),
            (
                format!(
                    "{} {}",
                    control("A", s, "int32_false_true: [ 0, 1 ]"),
                    control("B", s, "int32_false_true: [ 0, 1 ]")
                ),
                "sequence batching specifies multiple CONTROL_SEQUENCE_START tensors for m",
            ),
            (
                "control_input [ { name: \"A\" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }, { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] } ]".to_string(),
                "sequence batching control tensor 'A' is specified for multiple control kinds for m",
            ),
            (
                control("A", s, ""),
                "sequence batching must specify either 'int32_false_true', 'fp32_false_true' or 'bool_false_true' for CONTROL_SEQUENCE_START for m",
            ),
            (
                control("A", s, "int32_false_true: [ 0, 1 ] fp32_false_true: [ 0, 1 ]"),
                "sequence batching specifies more than one from 'int32_false_true', 'fp32_false_true' and 'bool_false_true' for CONTROL_SEQUENCE_START for m",
            ),
            (
                control("A", s, "int32_false_true: [ 0, 1, 2 ]"),
                "sequence batching control 'int32_false_true' must have exactly 2 entries for CONTROL_SEQUENCE_START for m",
            ),
            (
                control("A", "CONTROL_SEQUENCE_CORRID", "data_type: TYPE_UINT64 int32_false_true: [ 0, 1 ]"),
                "sequence batching must not specify either 'int32_false_true', 'fp32_false_true' or 'bool_false_true' for CONTROL_SEQUENCE_CORRID for m",
            ),
            (
                control("A", "CONTROL_SEQUENCE_CORRID", "data_type: TYPE_FP32"),
                "unexpected data type for control CONTROL_SEQUENCE_CORRID for m. Allowed data types are TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING",
            ),
            (
                "oldest { preferred_batch_size: [ 0 ] }".to_string(),
                "sequence batching preferred batch size must be positive for m",
            ),
            (
                "oldest { preferred_batch_size: [ 5 ] }".to_string(),
                "sequence batching preferred batch size must be <= max batch size for m",
            ),
            (
                "direct { minimum_slot_utilization: 1.5 }".to_string(),
                "sequence batching minimum slot utilization must be in range (0.0, 1.0] for m",
            ),
        ];
        for (seq, want) in cases {
            let e = spec(&seq).unwrap_err();
            assert_eq!(e.message, want, "{seq}");
            assert_eq!(e.code, crate::error::Code::InvalidArg);
        }
    }
}
