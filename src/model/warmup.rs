//! Warmup samples: what runs on every instance before a version is READY, so the first real
//! request of any batch size is not the slow one. From `model_warmup` in the config, plus (for
//! dynamically batched models, unless the `default_warmup` parameter is false) every preferred
//! batch size and the max batch size with zero data.

use std::path::Path;

use bytes::Bytes;

use super::ModelSpec;
use super::config::ModelConfig;
use crate::error::{Error, Result};
use crate::pb::inference::model_warmup::input::InputDataType;
use crate::tensor::{DataType, Tensor, bytes_codec, element_count};

#[derive(Debug, Clone)]
pub struct WarmupSample {
    pub name: String,
    /// Executions of this sample on each instance.
    pub count: u32,
    /// Model inputs with the batch dimension prepended (batching models).
    pub inputs: Vec<Tensor>,
    /// A configured sample's failure fails the load; a default one only logs.
    pub required: bool,
}

pub fn samples(cfg: &ModelConfig, spec: &ModelSpec, model_dir: &Path) -> Result<Vec<WarmupSample>> {
    let mut out = Vec::new();
    for w in &cfg.model_warmup {
        let batch = w.batch_size.max(1) as i64;
        if !spec.batching() && batch != 1 {
            return Err(Error::invalid_arg(format!(
                "warmup sample '{}' of model '{}': batch_size must be 1 for a model that does not batch",
                w.name, spec.name
            )));
        }
        let mut inputs = Vec::with_capacity(spec.inputs.len());
        for io in &spec.inputs {
            let Some(input) = w.inputs.get(&io.name) else {
                if io.optional {
                    continue;
                }
                return Err(Error::invalid_arg(format!(
                    "warmup sample '{}' of model '{}' has no data for input '{}'",
                    w.name, spec.name, io.name
                )));
            };
            let mut shape = if input.dims.is_empty() {
                io.dims.iter().map(|&d| d.max(1)).collect()
            } else {
                input.dims.clone()
            };
            if spec.batching() {
                shape.insert(0, batch);
            }
            let per_item = element_count(if spec.batching() { &shape[1..] } else { &shape });
            let data = match &input.input_data_type {
                Some(InputDataType::InputDataFile(file)) => {
                    let path = super::paths::inside(
                        &model_dir.join("warmup"),
                        &spec.name,
                        "input_data_file",
                        file,
                    )?;
                    let one = std::fs::read(&path).map_err(|e| {
                        Error::invalid_arg(format!(
                            "warmup sample '{}' of model '{}': cannot read 'warmup/{}': {e}",
                            w.name,
                            spec.name,
                            super::paths::printable(file.trim_start_matches('/'))
                        ))
                    })?;
                    // The file holds one batch item; replicate it to the batch size.
                    one.repeat(if spec.batching() { batch as usize } else { 1 })
                }
                Some(InputDataType::RandomData(_)) if io.dtype != DataType::Bytes => {
                    random_data(io.dtype, per_item * batch as usize)
                }
                _ => zero_data(
                    io.dtype,
                    per_item * if spec.batching() { batch as usize } else { 1 },
                ),
            };
            inputs.push(Tensor {
                name: io.name.clone(),
                dtype: io.dtype,
                shape,
                data: Bytes::from(data),
            });
        }
        let name = if w.name.is_empty() {
            "warmup".to_string()
        } else {
            w.name.clone()
        };
        out.push(WarmupSample {
            name,
            count: w.count.max(1),
            inputs,
            required: true,
        });
    }
    let default_on = cfg.parameters.get("default_warmup").is_none_or(|p| {
        !matches!(
            p.string_value.to_ascii_lowercase().as_str(),
            "false" | "off" | "0"
        )
    });
    if let Some(db) = spec.dynamic_batching.as_ref().filter(|_| default_on) {
        let mut sizes = db.preferred_batch_sizes.clone();
        sizes.push(spec.max_batch_size as usize);
        sizes.sort_unstable();
        sizes.dedup();
        for size in sizes {
            let inputs = spec
                .inputs
                .iter()
                .filter(|io| !io.optional)
                .map(|io| {
                    let mut shape: Vec<i64> = io.dims.iter().map(|&d| d.max(1)).collect();
                    shape.insert(0, size as i64);
                    let data = zero_data(io.dtype, element_count(&shape));
                    Tensor {
                        name: io.name.clone(),
                        dtype: io.dtype,
                        shape,
                        data: Bytes::from(data),
                    }
                })
                .collect();
            out.push(WarmupSample {
                name: format!("default batch {size}"),
                count: 1,
                inputs,
                required: false,
            });
        }
    }
    Ok(out)
}

/// Zeros; for BYTES, "0" strings (zero-valued text that numeric string models can parse).
fn zero_data(dtype: DataType, elements: usize) -> Vec<u8> {
    match dtype.byte_size() {
        Some(size) => vec![0; elements * size],
        None => bytes_codec::encode(std::iter::repeat_n(b"0".as_slice(), elements)),
    }
}

/// Deterministic pseudo-random values that are valid for the type (floats in [0, 1), bools 0/1).
fn random_data(dtype: DataType, elements: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::with_capacity(elements * dtype.byte_size().unwrap_or(1));
    for _ in 0..elements {
        let r = next();
        let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
        match dtype {
            DataType::Bool => out.push((r & 1) as u8),
            DataType::Fp16 => out.extend_from_slice(&half::f16::from_f64(unit).to_le_bytes()),
            DataType::Bf16 => out.extend_from_slice(&half::bf16::from_f64(unit).to_le_bytes()),
            DataType::Fp32 => out.extend_from_slice(&(unit as f32).to_le_bytes()),
            DataType::Fp64 => out.extend_from_slice(&unit.to_le_bytes()),
            other => out.extend_from_slice(&r.to_le_bytes()[..other.byte_size().unwrap_or(1)]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_data_has_the_right_size_and_values() {
        assert_eq!(zero_data(DataType::Int32, 3), vec![0; 12]);
        assert_eq!(
            bytes_codec::decode(&zero_data(DataType::Bytes, 2), 2).unwrap(),
            vec![b"0".as_slice(), b"0"]
        );
        let f = random_data(DataType::Fp32, 100);
        assert_eq!(f.len(), 400);
        assert!(
            f.chunks(4)
                .all(|c| (0.0..1.0).contains(&f32::from_le_bytes(c.try_into().unwrap())))
        );
        assert!(random_data(DataType::Bool, 50).iter().all(|&b| b <= 1));
    }
}
