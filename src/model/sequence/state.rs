//! Implicit state (`sequence_batching.state[]`, sequence-batching.md §7): each state is a graph
//! input the server feeds from the slot and a graph output that becomes the slot's next input.
//! Load errors carry Triton's texts; the initial state is built once, here, at load.

use std::path::Path;

use crate::error::{Error, Result};
use crate::pb::inference::model_sequence_batching as sb;
use crate::tensor::{DataType, Tensor, checked_byte_len, element_count, shape_string};

use super::super::paths;

/// The largest initial state one state may ask for (a config is not trusted to allocate more).
const MAX_INITIAL_BYTES: usize = 256 << 20;

/// One implicit state after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct StateSpec {
    /// The graph input the server feeds (never sent by a client).
    pub input: String,
    /// The graph output that becomes the next request's `input`.
    pub output: String,
    pub dtype: DataType,
    /// Per-row dims (without the batch dim), `-1` allowed.
    pub dims: Vec<i64>,
    /// The state a START request's row gets: one row (batch dim 1 when the model batches),
    /// named `input`.
    pub initial: Tensor,
}

/// Validates `states` of model `m` (in `model_dir`, whose `initial_state/` holds data files).
/// Without a folder (a config checked before its files are known) data files are not read and
/// their initial state is zeros.
pub(crate) fn states(
    m: &str,
    states: &[sb::State],
    batching: bool,
    model_dir: Option<&Path>,
) -> Result<Vec<StateSpec>> {
    let mut out: Vec<StateSpec> = Vec::with_capacity(states.len());
    for s in states {
        let i = &s.input_name;
        if out.iter().any(|o| &o.input == i) {
            return Err(Error::invalid_arg(format!(
                "State input name '{i}' specified more than once."
            )));
        }
        if s.input_name.is_empty() || s.output_name.is_empty() {
            return Err(Error::invalid_arg(format!(
                "sequence batching state of model '{m}' must set both 'input_name' and 'output_name'"
            )));
        }
        let dtype = DataType::from_config_value(s.data_type).ok_or_else(|| {
            Error::invalid_arg(format!(
                "sequence batching state '{i}' of model '{m}' has an invalid data_type"
            ))
        })?;
        if s.use_growable_memory {
            return Err(Error::invalid_arg(format!(
                "sequence batching state '{i}' of model '{m}': use_growable_memory needs KIND_GPU instances, which this server's ONNX Runtime backend does not run implicit state on"
            )));
        }
        if s.dims.iter().any(|&d| d < -1) {
            return Err(Error::invalid_arg(format!(
                "sequence batching state '{i}' of model '{m}' has an invalid dim in {}",
                shape_string(&s.dims)
            )));
        }
        let initial = initial(m, s, dtype, batching, model_dir)?;
        out.push(StateSpec {
            input: i.clone(),
            output: s.output_name.clone(),
            dtype,
            dims: s.dims.clone(),
            initial,
        });
    }
    Ok(out)
}

fn initial(
    m: &str,
    s: &sb::State,
    dtype: DataType,
    batching: bool,
    model_dir: Option<&Path>,
) -> Result<Tensor> {
    let i = &s.input_name;
    if s.initial_state.len() > 1 {
        return Err(Error::invalid_arg(format!(
            "initial_state field for state input '{i}' must contain exactly one or zero element. Found '{}' elements.",
            s.initial_state.len()
        )));
    }
    let (dims, file) = match s.initial_state.first() {
        None => (s.dims.iter().map(|&d| d.max(1)).collect::<Vec<_>>(), None),
        Some(init) => {
            if init.data_type != s.data_type {
                return Err(Error::invalid_arg(format!(
                    "The data type used for 'initial_state' field of state '{i}' does not match the state data type."
                )));
            }
            if init.name.is_empty() {
                return Err(Error::invalid_arg(format!(
                    "Field 'name' must be set when using initial_state for state input '{i}'."
                )));
            }
            if init.dims.len() != s.dims.len() {
                return Err(Error::invalid_arg(format!(
                    "Number of dimensions in 'initial_state' doesn't match the size of 'state' dimensions for state input '{i}'. {} != {}",
                    init.dims.len(),
                    s.dims.len()
                )));
            }
            if init.dims.iter().any(|&d| d < 0) {
                return Err(Error::invalid_arg(format!(
                    "'initial_state' field for state input name '{i}' contains variable dimensions."
                )));
            }
            for (&a, &b) in init.dims.iter().zip(&s.dims) {
                if b != -1 && a != b {
                    return Err(Error::invalid_arg(format!(
                        "'initial_state' dim for input name '{i}' doesn't match 'state' dim description. {a} != {b}"
                    )));
                }
            }
            let file = match &init.state_data {
                Some(sb::initial_state::StateData::DataFile(f)) => Some(f.as_str()),
                _ => None,
            };
            (init.dims.clone(), file)
        }
    };
    let mut shape = dims;
    if batching {
        shape.insert(0, 1);
    }
    let elements = element_count(&shape).ok_or_else(|| too_large(m, i))?;
    // BYTES: each zero element is a 4-byte length of 0, an empty string.
    let need = checked_byte_len(elements, dtype.byte_size().unwrap_or(4))
        .filter(|&n| n <= MAX_INITIAL_BYTES)
        .ok_or_else(|| too_large(m, i))?;
    let data = match (file, model_dir) {
        (Some(f), Some(dir)) => read_initial(m, i, f, dir, dtype, need)?,
        _ => vec![0u8; need],
    };
    Tensor::new(i.clone(), dtype, shape, data).map_err(|e| {
        Error::invalid_arg(format!(
            "initial_state of state input '{i}' of model '{m}': {}",
            e.message
        ))
    })
}

fn too_large(m: &str, i: &str) -> Error {
    Error::invalid_arg(format!(
        "initial_state of state input '{i}' of model '{m}' is larger than {MAX_INITIAL_BYTES} bytes"
    ))
}

/// Reads `<model_dir>/initial_state/<f>`, which must stay inside that folder (symbolic links
/// included) and hold exactly `need` bytes (BYTES: the whole file, checked as a serialization).
fn read_initial(
    m: &str,
    i: &str,
    f: &str,
    dir: &Path,
    dtype: DataType,
    need: usize,
) -> Result<Vec<u8>> {
    let base = dir.join("initial_state");
    let field = format!("initial_state data_file of state input '{i}'");
    let path = paths::inside(&base, m, &field, f)?;
    let escapes = || {
        Error::invalid_arg(format!(
            "model '{m}': {field} '{}' must stay inside the model folder",
            paths::printable(f)
        ))
    };
    let unreadable = |e: std::io::Error| {
        Error::invalid_arg(format!(
            "model '{m}': cannot read {field} '{}': {e}",
            paths::printable(f)
        ))
    };
    let real = path.canonicalize().map_err(unreadable)?;
    let real_base = base.canonicalize().map_err(unreadable)?;
    if !real.starts_with(&real_base) {
        return Err(escapes());
    }
    let len = std::fs::metadata(&real).map_err(unreadable)?.len();
    if len > MAX_INITIAL_BYTES as u64 {
        return Err(too_large(m, i));
    }
    let data = std::fs::read(&real).map_err(unreadable)?;
    if dtype != DataType::Bytes && data.len() != need {
        let f = paths::printable(f);
        let k = data.len();
        return Err(Error::invalid_arg(if k < need {
            // Triton's text (sic: no space before "only"), then the state it belongs to.
            format!(
                "initial_state setting expects {need} bytes, but the data provided from {f}only has {k} bytes. (state input '{i}' of model '{m}')"
            )
        } else {
            format!(
                "initial_state setting expects {need} bytes, but the data provided from {f} has {k} bytes. (state input '{i}' of model '{m}')"
            )
        }));
    }
    Ok(data)
}

/// Checks each state against the graph: its input a graph input and its output a graph output,
/// of the state's type, with the state's dims (plus the batch dim when the model batches).
pub(crate) fn check_states(
    m: &str,
    states: &[StateSpec],
    batching: bool,
    inputs: &[super::super::io::IoDesc],
    outputs: &[super::super::io::IoDesc],
) -> Result<()> {
    for s in states {
        for (what, name, graph) in [("input", &s.input, inputs), ("output", &s.output, outputs)] {
            let Some(d) = graph.iter().find(|d| &d.name == name) else {
                return Err(Error::invalid_arg(format!(
                    "unable to load model '{m}', sequence batching state {what} '{name}' (state '{}') is not an {what} of the model",
                    s.input
                )));
            };
            if d.dtype.as_ref() != Ok(&s.dtype) {
                let provided = d.config_type_name();
                return Err(Error::invalid_arg(format!(
                    "unable to load model '{m}', sequence batching state {what} '{name}' (state '{}') is {}, model provides {provided}",
                    s.input,
                    s.dtype.config_name()
                )));
            }
            let mut want = s.dims.clone();
            if batching {
                want.insert(0, -1);
            }
            let fits = d.shape.len() == want.len()
                && d.shape
                    .iter()
                    .zip(&want)
                    .all(|(&g, &c)| g == -1 || c == -1 || g == c);
            if !fits {
                return Err(Error::invalid_arg(format!(
                    "unable to load model '{m}', sequence batching state {what} '{name}' (state '{}'): model shape {} does not match the state shape {}",
                    s.input,
                    shape_string(&d.shape),
                    shape_string(&want)
                )));
            }
        }
    }
    Ok(())
}
