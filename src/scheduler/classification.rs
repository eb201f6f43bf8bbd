//! The classification extension: an output asked for with `class_count` comes back as the top K
//! "value:index[:label]" strings per batch item instead of its values.

use crate::error::{Error, Result};
use crate::model::{IoSpec, ModelSpec};
use crate::tensor::{DataType, Tensor, bytes_codec};
use crate::validate::OutputRequest;

/// A requested output as the request asked for it: as is, or classified.
pub(super) fn finish_output(spec: &ModelSpec, o: &OutputRequest, t: Tensor) -> Result<Tensor> {
    match o.classification {
        None => Ok(t),
        Some(k) => classify(spec, &spec.outputs[o.index], t, k as usize),
    }
}

/// The classification extension: top-k "value:index[:label]" strings per batch item.
fn classify(spec: &ModelSpec, io: &IoSpec, t: Tensor, k: usize) -> Result<Tensor> {
    let values = numeric_values(&t)?;
    let rows = if spec.batching() {
        t.shape().first().copied().unwrap_or(1).max(0) as usize
    } else {
        1
    };
    let per_row = values.len().checked_div(rows).unwrap_or(0);
    let k = k.min(per_row);
    let mut strings: Vec<String> = Vec::with_capacity(rows * k);
    for r in 0..rows {
        let row = &values[r * per_row..(r + 1) * per_row];
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| {
            row[b]
                .0
                .partial_cmp(&row[a].0)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        for &i in idx.iter().take(k) {
            let label = io.labels.as_ref().and_then(|l| l.get(i));
            strings.push(match label {
                Some(l) => format!("{}:{i}:{l}", row[i].1),
                None => format!("{}:{i}", row[i].1),
            });
        }
    }
    let shape = if spec.batching() {
        vec![rows as i64, k as i64]
    } else {
        vec![k as i64]
    };
    let data = bytes_codec::encode(strings.iter().map(|s| s.as_bytes()));
    Tensor::new(t.name(), DataType::Bytes, shape, data).map_err(|e| Error::internal(e.message))
}

/// Elements as (ordering key, text as Triton prints it).
fn numeric_values(t: &Tensor) -> Result<Vec<(f64, String)>> {
    macro_rules! ints {
        ($ty:ty) => {
            t.data()
                .chunks_exact(size_of::<$ty>())
                .map(|c| {
                    let v = <$ty>::from_le_bytes(c.try_into().expect("chunk size"));
                    (v as f64, v.to_string())
                })
                .collect()
        };
    }
    macro_rules! floats {
        ($conv:expr, $n:expr) => {
            t.data()
                .chunks_exact($n)
                .map(|c| {
                    let v: f64 = $conv(c);
                    (v, format!("{v:.6}"))
                })
                .collect()
        };
    }
    Ok(match t.dtype() {
        DataType::Bool | DataType::Uint8 => ints!(u8),
        DataType::Int8 => ints!(i8),
        DataType::Uint16 => ints!(u16),
        DataType::Int16 => ints!(i16),
        DataType::Uint32 => ints!(u32),
        DataType::Int32 => ints!(i32),
        DataType::Uint64 => ints!(u64),
        DataType::Int64 => ints!(i64),
        DataType::Fp16 => floats!(
            |c: &[u8]| half::f16::from_le_bytes([c[0], c[1]]).to_f64(),
            2
        ),
        DataType::Bf16 => floats!(
            |c: &[u8]| half::bf16::from_le_bytes([c[0], c[1]]).to_f64(),
            2
        ),
        DataType::Fp32 => floats!(
            |c: &[u8]| f32::from_le_bytes(c.try_into().expect("4")) as f64,
            4
        ),
        DataType::Fp64 => floats!(|c: &[u8]| f64::from_le_bytes(c.try_into().expect("8")), 8),
        DataType::Bytes => {
            return Err(Error::invalid_arg(format!(
                "classification is not supported for BYTES output '{}'",
                t.name()
            )));
        }
    })
}
