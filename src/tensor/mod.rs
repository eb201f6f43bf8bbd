//! Tensors as the server moves them: a datatype, a shape and little-endian bytes.
//! BYTES tensors hold Triton's serialized form (4-byte LE length + payload per element).

pub mod bytes_codec;

use bytes::Bytes;

use crate::error::{Error, Result};

/// KServe v2 datatypes. The wire name is `as_str()`, the config enum is `TYPE_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
    Bf16,
}

impl DataType {
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
        DataType::Bf16,
    ];

    /// Parses a wire datatype string; the match is exact and case-sensitive, as in Triton.
    pub fn from_wire(s: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
            DataType::Bf16 => "BF16",
        }
    }

    /// Value of the `inference.DataType` config enum (`TYPE_BOOL` = 1 … `TYPE_BF16` = 14).
    pub fn config_value(self) -> i32 {
        match self {
            DataType::Bool => 1,
            DataType::Uint8 => 2,
            DataType::Uint16 => 3,
            DataType::Uint32 => 4,
            DataType::Uint64 => 5,
            DataType::Int8 => 6,
            DataType::Int16 => 7,
            DataType::Int32 => 8,
            DataType::Int64 => 9,
            DataType::Fp16 => 10,
            DataType::Fp32 => 11,
            DataType::Fp64 => 12,
            DataType::Bytes => 13,
            DataType::Bf16 => 14,
        }
    }

    pub fn from_config_value(v: i32) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.config_value() == v)
    }

    /// The config enum's identifier, as written in `config.pbtxt` and in error messages.
    pub fn config_name(self) -> &'static str {
        match self {
            DataType::Bytes => "TYPE_STRING",
            DataType::Bool => "TYPE_BOOL",
            DataType::Uint8 => "TYPE_UINT8",
            DataType::Uint16 => "TYPE_UINT16",
            DataType::Uint32 => "TYPE_UINT32",
            DataType::Uint64 => "TYPE_UINT64",
            DataType::Int8 => "TYPE_INT8",
            DataType::Int16 => "TYPE_INT16",
            DataType::Int32 => "TYPE_INT32",
            DataType::Int64 => "TYPE_INT64",
            DataType::Fp16 => "TYPE_FP16",
            DataType::Fp32 => "TYPE_FP32",
            DataType::Fp64 => "TYPE_FP64",
            DataType::Bf16 => "TYPE_BF16",
        }
    }

    /// Bytes per element; `None` for BYTES, whose elements vary in size.
    pub fn byte_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }
}

/// Number of elements of a shape whose dims are all known (≥ 0). Saturates at `usize::MAX`:
/// a client can send any shape, and no real tensor comes near that count.
pub fn element_count(shape: &[i64]) -> usize {
    shape
        .iter()
        .fold(1usize, |n, &d| n.saturating_mul(d.max(0) as usize))
}

/// Formats a shape the way Triton's messages do: `[2,16]`.
pub fn shape_string(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(","))
}

/// A named tensor with its data. For fixed-size types `data.len() == elements × byte_size`;
/// for BYTES `data` is the length-prefixed serialization of exactly `elements` strings.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: DataType,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

impl Tensor {
    pub fn element_count(&self) -> usize {
        element_count(&self.shape)
    }

    /// Splits along the first dimension into pieces of `rows[i]` rows each (a batch back into requests).
    pub fn split_rows(&self, rows: &[usize]) -> Result<Vec<Tensor>> {
        let total: usize = rows.iter().sum();
        let first = self.shape.first().copied().unwrap_or(0) as usize;
        if first != total {
            return Err(Error::internal(format!(
                "output '{}' has batch dimension {first}, expected {total}",
                self.name
            )));
        }
        let per_row = self.element_count().checked_div(total).unwrap_or(0);
        let mut pieces = Vec::with_capacity(rows.len());
        let offsets = match self.dtype.byte_size() {
            Some(size) => rows.iter().map(|r| r * per_row * size).collect::<Vec<_>>(),
            None => bytes_codec::row_byte_lengths(&self.data, rows, per_row)
                .map_err(|e| Error::internal(format!("output '{}': {e}", self.name)))?,
        };
        let mut start = 0;
        for (r, len) in rows.iter().zip(offsets) {
            let mut shape = self.shape.clone();
            shape[0] = *r as i64;
            pieces.push(Tensor {
                name: self.name.clone(),
                dtype: self.dtype,
                shape,
                data: self.data.slice(start..start + len),
            });
            start += len;
        }
        Ok(pieces)
    }

    /// Concatenates tensors of the same name, type and non-batch shape along the first dimension.
    pub fn concat_rows(parts: &[&Tensor]) -> Tensor {
        let first = parts[0];
        if parts.len() == 1 {
            return first.clone();
        }
        let rows: i64 = parts.iter().map(|t| t.shape[0]).sum();
        let mut data = Vec::with_capacity(parts.iter().map(|t| t.data.len()).sum());
        for t in parts {
            data.extend_from_slice(&t.data);
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        Tensor {
            name: first.name.clone(),
            dtype: first.dtype,
            shape,
            data: Bytes::from(data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_and_config_names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::from_wire(d.as_str()), Some(d));
            assert_eq!(DataType::from_config_value(d.config_value()), Some(d));
        }
        assert_eq!(DataType::from_wire("STRING"), None);
        assert_eq!(DataType::from_wire("int32"), None);
    }

    #[test]
    fn split_and_concat_are_inverse() {
        let t = Tensor {
            name: "x".into(),
            dtype: DataType::Int32,
            shape: vec![3, 2],
            data: Bytes::from((0u8..24).collect::<Vec<_>>()),
        };
        let parts = t.split_rows(&[1, 2]).unwrap();
        assert_eq!(parts[0].shape, vec![1, 2]);
        assert_eq!(parts[1].data.len(), 16);
        let refs: Vec<&Tensor> = parts.iter().collect();
        assert_eq!(Tensor::concat_rows(&refs), t);
    }

    #[test]
    fn split_bytes_tensor_by_rows() {
        let data = bytes_codec::encode(["a", "bb", "ccc", "d"].iter().map(|s| s.as_bytes()));
        let t = Tensor {
            name: "s".into(),
            dtype: DataType::Bytes,
            shape: vec![2, 2],
            data: data.into(),
        };
        let parts = t.split_rows(&[1, 1]).unwrap();
        let second: Vec<&[u8]> = bytes_codec::decode(&parts[1].data, 2).unwrap();
        assert_eq!(second, vec![b"ccc".as_slice(), b"d".as_slice()]);
    }
}
