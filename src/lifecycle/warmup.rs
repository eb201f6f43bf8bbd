//! Warmup samples: what runs on every instance before a version is READY, so the first real
//! request of any batch size is not the slow one. From `model_warmup` in the config, plus (for
//! dynamically batched models, unless the `default_warmup` parameter is false) every preferred
//! batch size and the max batch size with zero data.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::ModelSpec;
use crate::model::config::ModelConfig;
use crate::model::limits::ConfigLimits;
use crate::pb::inference::model_warmup::input::InputDataType;
use crate::tensor::{DataType, Tensor, bytes_codec, checked_byte_len, element_count};

#[derive(Debug, Clone)]
pub(crate) struct WarmupSample {
    pub name: String,
    /// Executions of this sample on each instance.
    pub count: u32,
    /// Model inputs with the batch dimension prepended (batching models).
    pub inputs: Vec<Tensor>,
    /// A configured sample's failure fails the load; a default one only logs.
    pub required: bool,
}

pub(crate) fn samples(
    cfg: &ModelConfig,
    spec: &ModelSpec,
    model_dir: &Path,
    limits: &ConfigLimits,
) -> Result<Vec<WarmupSample>> {
    let mut out = Vec::new();
    for w in &cfg.model_warmup {
        let batch = w.batch_size.max(1) as i64;
        if !spec.batching() && batch != 1 {
            return Err(Error::invalid_arg(format!(
                "warmup sample '{}' of model '{}': batch_size must be 1 for a model that does not batch",
                w.name, spec.name
            )));
        }
        let name = if w.name.is_empty() {
            "warmup".to_string()
        } else {
            w.name.clone()
        };
        let rows = if spec.batching() { batch as usize } else { 1 };
        // Input bytes of the sample so far: every size below comes from the config, so it is
        // computed with checked arithmetic and held to --max-warmup-bytes before any allocation.
        let mut total = Some(0usize);
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
            let mut shape: Vec<i64> = if input.dims.is_empty() {
                io.dims.iter().map(|&d| d.max(1)).collect()
            } else {
                input.dims.clone()
            };
            if shape.iter().any(|&d| d < 0) {
                return Err(Error::invalid_arg(format!(
                    "warmup setting expects all variable-size dimensions are specified for input '{}'",
                    io.name
                )));
            }
            let per_item = element_count(&shape);
            let mut add = |bytes_per_item: Option<usize>| -> Result<()> {
                total = bytes_per_item
                    .and_then(|n| n.checked_mul(rows))
                    .zip(total)
                    .and_then(|(n, t)| t.checked_add(n));
                limits.check_warmup(&spec.name, &name, total)
            };
            let data = match &input.input_data_type {
                Some(InputDataType::InputDataFile(file)) => {
                    let path = crate::model::paths::inside(
                        &model_dir.join("warmup"),
                        &spec.name,
                        "input_data_file",
                        file,
                    )?;
                    let cannot_read = |e: std::io::Error| {
                        Error::invalid_arg(format!(
                            "warmup sample '{}' of model '{}': cannot read 'warmup/{}': {e}",
                            w.name,
                            spec.name,
                            crate::model::paths::printable(file.trim_start_matches('/'))
                        ))
                    };
                    let one = match io.dtype.byte_size() {
                        Some(size) => {
                            // As Triton: the file must hold at least one item's bytes; only
                            // those are used (a longer file is fine).
                            let expected = per_item.and_then(|n| checked_byte_len(n, size));
                            add(expected)?;
                            let expected = expected.unwrap_or(0);
                            let one = read_prefix(&path, expected).map_err(cannot_read)?;
                            if one.len() < expected {
                                return Err(Error::invalid_arg(format!(
                                    "warmup setting expects {expected} bytes, but the data provided from {file}only has {} bytes",
                                    one.len()
                                )));
                            }
                            one
                        }
                        None => {
                            // BYTES: the whole file is the serialized item (its framing is
                            // checked when the tensor is made); read one byte past the limit
                            // so an oversized file fails without being read whole.
                            let one = read_prefix(&path, limits.warmup_bytes.saturating_add(1))
                                .map_err(cannot_read)?;
                            add(Some(one.len()))?;
                            one
                        }
                    };
                    // The file holds one batch item; replicate it to the batch size.
                    one.repeat(rows)
                }
                Some(InputDataType::RandomData(_)) if io.dtype != DataType::Bytes => {
                    add(data_bytes(io.dtype, per_item))?;
                    random_data(io.dtype, per_item.unwrap_or(0) * rows)
                }
                _ => {
                    add(data_bytes(io.dtype, per_item))?;
                    zero_data(io.dtype, per_item.unwrap_or(0) * rows)
                }
            };
            if spec.batching() {
                shape.insert(0, batch);
            }
            let tensor = Tensor::new(io.name.clone(), io.dtype, shape, data).map_err(|e| {
                Error::invalid_arg(format!(
                    "warmup sample '{}' of model '{}': {}",
                    w.name, spec.name, e.message
                ))
            })?;
            inputs.push(tensor);
        }
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
            let name = format!("default batch {size}");
            match default_sample(spec, size, limits, &name) {
                Ok(inputs) => out.push(WarmupSample {
                    name,
                    count: 1,
                    inputs,
                    required: false,
                }),
                // Not asked for by the config: a sample past the limits is left out, not fatal.
                Err(e) => {
                    tracing::warn!(model = %spec.name, sample = %name, error = %e, "default warmup sample skipped")
                }
            }
        }
    }
    Ok(out)
}

/// Zero data for every required input at batch size `size`, within --max-warmup-bytes.
fn default_sample(
    spec: &ModelSpec,
    size: usize,
    limits: &ConfigLimits,
    name: &str,
) -> Result<Vec<Tensor>> {
    let mut total = Some(0usize);
    let mut inputs = Vec::new();
    for io in spec.inputs.iter().filter(|io| !io.optional) {
        let mut shape: Vec<i64> = io.dims.iter().map(|&d| d.max(1)).collect();
        shape.insert(0, size as i64);
        let elements = element_count(&shape);
        total = total
            .zip(data_bytes(io.dtype, elements))
            .and_then(|(t, n)| t.checked_add(n));
        limits.check_warmup(&spec.name, name, total)?;
        let data = zero_data(io.dtype, elements.unwrap_or(0));
        inputs.push(Tensor::new(io.name.clone(), io.dtype, shape, data)?);
    }
    Ok(inputs)
}

/// Bytes `zero_data` / `random_data` make for `elements` values (BYTES: "0" strings, 5 bytes).
fn data_bytes(dtype: DataType, elements: Option<usize>) -> Option<usize> {
    checked_byte_len(elements?, dtype.byte_size().unwrap_or(5))
}

/// At most `max` bytes from the start of the file: a larger file is never read whole.
fn read_prefix(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(max as u64)
        .read_to_end(&mut out)?;
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

    /// `samples` for a batching model with one input `x` of `dtype` dims [4], whose warmup
    /// sample is `sample` (the text inside `model_warmup [ { ... } ]`), and `file` written to
    /// `warmup/in` when given.
    fn warm(
        dtype: &str,
        sample: &str,
        file: Option<&[u8]>,
        limits: &ConfigLimits,
    ) -> Result<Vec<WarmupSample>> {
        use crate::model::config::{fill_server_defaults, normalize, parse_pbtxt};
        let text = format!(
            "name: \"m\" backend: \"onnxruntime\" max_batch_size: 8 input [ {{ name: \"x\" data_type: {dtype} dims: [ 4 ] }} ] output [ {{ name: \"y\" data_type: {dtype} dims: [ 4 ] }} ] parameters {{ key: \"default_warmup\" value: {{ string_value: \"false\" }} }} model_warmup [ {{ name: \"w\" {sample} }} ]"
        );
        let mut cfg = parse_pbtxt(Path::new("c"), &text).unwrap();
        fill_server_defaults(&mut cfg, "m", None).unwrap();
        normalize(&mut cfg, &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("warmup")).unwrap();
        if let Some(data) = file {
            std::fs::write(dir.path().join("warmup/in"), data).unwrap();
        }
        let spec = crate::model::spec::to_spec(&cfg, 1, dir.path()).unwrap();
        samples(&cfg, &spec, dir.path(), limits)
    }

    const FILE: &str = "inputs { key: \"x\" value: { data_type: TYPE_INT32 dims: [ 4 ] input_data_file: \"in\" } }";

    #[test]
    fn a_short_file_fails_and_a_long_one_gives_only_the_sample_bytes() {
        let limits = ConfigLimits::default();
        let short = warm("TYPE_INT32", FILE, Some(&[1; 15]), &limits).unwrap_err();
        assert_eq!(short.code(), crate::error::Code::InvalidArg);
        assert_eq!(
            short.message,
            "warmup setting expects 16 bytes, but the data provided from inonly has 15 bytes"
        );
        let long: Vec<u8> = (0..100).collect();
        let ok = warm(
            "TYPE_INT32",
            &format!("batch_size: 2 {FILE}"),
            Some(&long),
            &limits,
        )
        .unwrap();
        let t = &ok[0].inputs[0];
        assert_eq!(t.shape(), [2, 4]);
        let first: Vec<u8> = (0..16).collect();
        assert_eq!(t.data().as_ref(), [first.clone(), first].concat());
    }

    #[test]
    fn sizes_are_checked_before_anything_is_read_or_allocated() {
        let limits = ConfigLimits {
            warmup_bytes: 1000,
            ..ConfigLimits::default()
        };
        // No file at all: the size check comes first.
        let huge = "inputs { key: \"x\" value: { data_type: TYPE_INT32 dims: [ 1099511627776 ] input_data_file: \"in\" } }";
        assert_eq!(
            warm("TYPE_INT32", huge, None, &limits).unwrap_err().message,
            "model 'm': model_warmup 'w' needs 4398046511104 bytes of input data, more than --max-warmup-bytes 1000"
        );
        let overflow = "inputs { key: \"x\" value: { data_type: TYPE_INT32 dims: [ 4611686018427387904, 4 ] zero_data: true } }";
        assert!(
            warm("TYPE_INT32", overflow, None, &limits)
                .unwrap_err()
                .message
                .contains("more than 18446744073709551615 bytes")
        );
        let batch = "batch_size: 8 inputs { key: \"x\" value: { data_type: TYPE_INT32 dims: [ 32 ] random_data: true } }";
        assert!(
            warm("TYPE_INT32", batch, None, &limits).is_err(),
            "8 × 128 bytes"
        );
        let variable =
            "inputs { key: \"x\" value: { data_type: TYPE_INT32 dims: [ -1 ] zero_data: true } }";
        assert_eq!(
            warm("TYPE_INT32", variable, None, &limits)
                .unwrap_err()
                .message,
            "warmup setting expects all variable-size dimensions are specified for input 'x'"
        );
    }

    #[test]
    fn a_bytes_file_must_hold_the_sample_strings() {
        let limits = ConfigLimits {
            warmup_bytes: 64,
            ..ConfigLimits::default()
        };
        let file = "inputs { key: \"x\" value: { data_type: TYPE_STRING dims: [ 4 ] input_data_file: \"in\" } }";
        let four = bytes_codec::encode([b"a".as_slice(), b"b", b"", b"cd"]);
        let ok = warm("TYPE_STRING", file, Some(&four), &limits).unwrap();
        assert_eq!(ok[0].inputs[0].data().as_ref(), four.as_slice());
        let three = bytes_codec::encode([b"a".as_slice(), b"b", b""]);
        let err = warm("TYPE_STRING", file, Some(&three), &limits).unwrap_err();
        assert!(
            err.message.contains("expected 4 string elements, got 3"),
            "{err:?}"
        );
        let big = bytes_codec::encode([[b'x'; 60].as_slice(), b"", b"", b""]);
        let err = warm("TYPE_STRING", file, Some(&big), &limits).unwrap_err();
        assert!(err.message.contains("--max-warmup-bytes 64"), "{err:?}");
    }

    #[test]
    fn default_samples_past_the_limit_are_left_out() {
        use crate::model::config::{fill_server_defaults, normalize, parse_pbtxt};
        let text = "name: \"m\" backend: \"onnxruntime\" max_batch_size: 64 input [ { name: \"x\" data_type: TYPE_FP32 dims: [ 1024 ] } ] output [ { name: \"y\" data_type: TYPE_FP32 dims: [ 1024 ] } ] dynamic_batching { preferred_batch_size: [ 4 ] }";
        let mut cfg = parse_pbtxt(Path::new("c"), text).unwrap();
        fill_server_defaults(&mut cfg, "m", None).unwrap();
        normalize(&mut cfg, &[]).unwrap();
        let spec = crate::model::spec::to_spec(&cfg, 1, Path::new("m")).unwrap();
        // 4 × 4 KiB fits in 64 KiB, 64 × 4 KiB does not.
        let limits = ConfigLimits {
            warmup_bytes: 64 << 10,
            ..ConfigLimits::default()
        };
        let got = samples(&cfg, &spec, Path::new("m"), &limits).unwrap();
        let names: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["default batch 4"]);
        assert!(!got[0].required);
    }
}
