//! Pure tensor work around a text model's execution: padding token rows of several requests into
//! one batch, and pooling / normalising / trimming the graph's token output. No threads, no I/O.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::model::text::{Normalize, Pooling};
use crate::tensor::{DataType, Tensor};

fn i64s(t: &Tensor) -> Vec<i64> {
    t.data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

fn f32_bytes(v: &[f32]) -> Bytes {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.into()
}

/// Concatenates INT64 `[n_i, L_i]` token tensors (one per request) into `[Σ n_i, max L_i]`,
/// filling each row's tail with `pad`.
pub fn pad_concat(parts: &[&Tensor], pad: i64) -> Result<Tensor> {
    let first = parts
        .first()
        .ok_or_else(|| Error::internal("no token tensors to pad"))?;
    let width = parts.iter().map(|t| t.shape()[1]).max().unwrap_or(0) as usize;
    if parts.iter().all(|t| t.shape()[1] as usize == width) {
        return Tensor::concat_rows(parts);
    }
    if parts
        .iter()
        .any(|t| t.dtype() != DataType::Int64 || t.shape().len() != 2)
    {
        return Err(Error::internal(format!(
            "token input '{}': every part must be INT64 [rows, tokens]",
            first.name()
        )));
    }
    let rows: i64 = parts.iter().map(|t| t.shape()[0]).sum();
    let mut data = Vec::with_capacity(rows as usize * width * 8);
    let pad = pad.to_le_bytes();
    for t in parts {
        let len = t.shape()[1] as usize;
        for row in t.data().chunks_exact((len * 8).max(1)) {
            data.extend_from_slice(row);
            for _ in len..width {
                data.extend_from_slice(&pad);
            }
        }
    }
    Tensor::new(
        first.name(),
        DataType::Int64,
        vec![rows, width as i64],
        data,
    )
    .map_err(|e| Error::internal(e.message))
}

/// Tokens each row attends to: the ones of an INT64 `[B, L]` attention mask.
pub fn row_lengths(mask: &Tensor) -> Vec<usize> {
    let width = mask.shape().get(1).copied().unwrap_or(0).max(1) as usize;
    i64s(mask)
        .chunks(width)
        .map(|row| row.iter().filter(|&&m| m != 0).count())
        .collect()
}

/// Turns the graph's FP32 `[B, L, H]` token output into what the config promises: pooled to
/// `[B, H]` (mean over each row's first `lengths[b]` tokens, or the first token) and/or
/// L2-normalised along H. `name` becomes the tensor's name.
pub fn finish(
    hidden: Tensor,
    lengths: &[usize],
    pooling: Pooling,
    normalize: Normalize,
    name: &str,
) -> Result<Tensor> {
    let [b, l, h] = match hidden.shape() {
        [b, l, h] if hidden.dtype() == DataType::Fp32 => [*b as usize, *l as usize, *h as usize],
        _ => {
            return Err(Error::internal(format!(
                "text model output '{}' is {} {}; pooling needs FP32 [batch, sequence, hidden]",
                hidden.name(),
                hidden.dtype().as_str(),
                crate::tensor::shape_string(hidden.shape())
            )));
        }
    };
    if lengths.len() != b {
        return Err(Error::internal(format!(
            "text model output '{}' has {b} rows, the batch has {}",
            hidden.name(),
            lengths.len()
        )));
    }
    if pooling == Pooling::None && normalize == Normalize::None {
        return Ok(hidden.renamed(name));
    }
    let values = f32s(&hidden);
    let (mut out, shape) = match pooling {
        Pooling::None => (values, hidden.shape().to_vec()),
        Pooling::Mean => (mean_pool(&values, l, h, lengths), vec![b as i64, h as i64]),
        Pooling::Cls => (
            (0..b)
                .flat_map(|r| values[r * l * h..r * l * h + h].iter().copied())
                .collect(),
            vec![b as i64, h as i64],
        ),
    };
    if normalize == Normalize::L2 {
        l2_normalize(&mut out, h);
    }
    Tensor::new(name, DataType::Fp32, shape, f32_bytes(&out))
        .map_err(|e| Error::internal(e.message))
}

/// Mean of each row's first `lengths[r]` token vectors (`values` is `[B, l, h]`); a row with no
/// tokens gives zeros.
pub fn mean_pool(values: &[f32], l: usize, h: usize, lengths: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(lengths.len() * h);
    let mut sum = vec![0f64; h];
    for (r, &n) in lengths.iter().enumerate() {
        let n = n.min(l);
        sum.iter_mut().for_each(|s| *s = 0.0);
        for t in 0..n {
            let start = (r * l + t) * h;
            for (s, &v) in sum.iter_mut().zip(&values[start..start + h]) {
                *s += v as f64;
            }
        }
        let div = n.max(1) as f64;
        out.extend(sum.iter().map(|s| (s / div) as f32));
    }
    out
}

/// Scales each consecutive vector of `h` values to unit length (a zero vector stays zero).
pub fn l2_normalize(values: &mut [f32], h: usize) {
    for v in values.chunks_mut(h.max(1)) {
        let norm = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
        let scale = 1.0 / norm.max(1e-12);
        v.iter_mut().for_each(|x| *x = (*x as f64 * scale) as f32);
    }
}

/// Keeps the first `len` tokens of a `[rows, L, H]` tensor (a request's rows after the batch was
/// padded past the request's own longest text).
pub fn trim_tokens(t: Tensor, len: usize) -> Result<Tensor> {
    let (rows, l) = match t.shape() {
        [rows, l, ..] => (*rows as usize, *l as usize),
        _ => {
            return Err(Error::internal(format!(
                "text model output '{}' has shape {}; expected [rows, tokens, ...]",
                t.name(),
                crate::tensor::shape_string(t.shape())
            )));
        }
    };
    if len >= l {
        return Ok(t);
    }
    let item = t.dtype().byte_size().unwrap_or(1);
    let per_token: usize = t.shape()[2..].iter().product::<i64>() as usize * item;
    let mut data = Vec::with_capacity(rows * len * per_token);
    for r in 0..rows {
        let start = r * l * per_token;
        data.extend_from_slice(&t.data()[start..start + len * per_token]);
    }
    let mut shape = t.shape().to_vec();
    shape[1] = len as i64;
    Tensor::new(t.name(), t.dtype(), shape, data).map_err(|e| Error::internal(e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(name: &str, shape: [i64; 2], v: &[i64]) -> Tensor {
        let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Tensor::new(name, DataType::Int64, shape.to_vec(), data).unwrap()
    }

    fn floats(shape: &[i64], v: &[f32]) -> Tensor {
        Tensor::new("h", DataType::Fp32, shape.to_vec(), f32_bytes(v)).unwrap()
    }

    #[test]
    fn pads_requests_of_different_lengths_to_the_longest() {
        let a = ints("input_ids", [1, 2], &[101, 102]);
        let b = ints("input_ids", [2, 4], &[101, 7, 8, 102, 101, 9, 102, 0]);
        let t = pad_concat(&[&a, &b], 0).unwrap();
        assert_eq!(t.shape(), [3, 4]);
        assert_eq!(
            i64s(&t),
            vec![101, 102, 0, 0, 101, 7, 8, 102, 101, 9, 102, 0]
        );
        let same = pad_concat(&[&a, &a], 5).unwrap();
        assert_eq!(i64s(&same), vec![101, 102, 101, 102]);
        let mask = ints(
            "attention_mask",
            [3, 4],
            &[1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0],
        );
        assert_eq!(row_lengths(&mask), vec![2, 4, 3]);
    }

    #[test]
    fn mean_pooling_ignores_padding_and_l2_normalises() {
        // 2 rows × 3 tokens × 2 dims; row 0 has 2 real tokens, row 1 has 3.
        let h = floats(
            &[2, 3, 2],
            &[1., 2., 3., 4., 100., 100., 1., 0., 2., 0., 3., 0.],
        );
        let mean = finish(h.clone(), &[2, 3], Pooling::Mean, Normalize::None, "E").unwrap();
        assert_eq!((mean.name(), mean.shape()), ("E", [2, 2].as_slice()));
        assert_eq!(f32s(&mean), vec![2., 3., 2., 0.]);
        let unit = finish(h.clone(), &[2, 3], Pooling::Mean, Normalize::L2, "E").unwrap();
        let v = f32s(&unit);
        assert!((v[0] - 2. / 13f32.sqrt()).abs() < 1e-7 && (v[1] - 3. / 13f32.sqrt()).abs() < 1e-7);
        assert_eq!(&v[2..], &[1., 0.]);
        let cls = finish(h.clone(), &[2, 3], Pooling::Cls, Normalize::None, "E").unwrap();
        assert_eq!(f32s(&cls), vec![1., 2., 1., 0.]);
        let tokens = finish(h.clone(), &[2, 3], Pooling::None, Normalize::None, "E").unwrap();
        assert_eq!(tokens.shape(), vec![2, 3, 2]);
        let err = finish(h, &[2], Pooling::Mean, Normalize::None, "E").unwrap_err();
        assert!(
            err.message.contains("has 2 rows, the batch has 1"),
            "{}",
            err.message
        );
        let mut zero = vec![0f32; 4];
        l2_normalize(&mut zero, 2);
        assert_eq!(zero, vec![0.; 4]);
    }

    #[test]
    fn trims_a_request_back_to_its_own_length() {
        let t = floats(&[2, 3, 1], &[1., 2., 3., 4., 5., 6.]);
        let trimmed = trim_tokens(t.clone(), 2).unwrap();
        assert_eq!(trimmed.shape(), [2, 2, 1]);
        assert_eq!(f32s(&trimmed), vec![1., 2., 4., 5.]);
        assert_eq!(trim_tokens(t.clone(), 3).unwrap(), t);
        assert!(trim_tokens(floats(&[6], &[0.; 6]), 2).is_err());
    }
}
