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

/// Number of elements of a shape whose dims are all known (≥ 0); `None` when a dim is negative
/// or the product overflows (a zero dim makes it 0 whatever the others are). Shapes come from clients and configs, so nothing here may wrap.
pub(crate) fn element_count(shape: &[i64]) -> Option<usize> {
    if shape.iter().any(|&d| d < 0) {
        return None;
    }
    if shape.contains(&0) {
        return Some(0);
    }
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
}

/// Bytes of `elements` values of a fixed-size type, `None` past what one allocation may hold
/// (`isize::MAX`): a size computed from untrusted numbers is checked before anything is reserved.
pub(crate) fn checked_byte_len(elements: usize, element_size: usize) -> Option<usize> {
    elements
        .checked_mul(element_size)
        .filter(|&n| n <= isize::MAX as usize)
}

/// Bytes of a tensor of `dtype` and `shape`; `None` for BYTES (variable size), for a shape with
/// a negative dim, and on overflow.
pub(crate) fn fixed_byte_len(dtype: DataType, shape: &[i64]) -> Option<usize> {
    checked_byte_len(element_count(shape)?, dtype.byte_size()?)
}

/// Formats a shape the way Triton's messages do: `[2,16]`.
pub(crate) fn shape_string(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(","))
}

/// A named tensor with its data. Invariant, kept by `Tensor::new` (the only way to make one
/// from parts) and by every method that returns a new one: no dim is negative, the element
/// count does not overflow, and for fixed-size types `data.len() == elements × byte_size`; for
/// BYTES `data` is the length-prefixed serialization of exactly `elements` strings. Code that
/// hands the data to ONNX Runtime relies on it (and still checks the byte length itself).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    name: String,
    dtype: DataType,
    shape: Vec<i64>,
    data: Bytes,
}

impl Tensor {
    /// Checks the invariant; the error (INVALID_ARG) names the tensor and both sizes.
    pub fn new(
        name: impl Into<String>,
        dtype: DataType,
        shape: Vec<i64>,
        data: impl Into<Bytes>,
    ) -> Result<Tensor> {
        let name = name.into();
        let data = data.into();
        let elements = element_count(&shape).ok_or_else(|| {
            Error::invalid_arg(format!(
                "tensor '{name}': shape {} has a negative dimension or too many elements",
                shape_string(&shape)
            ))
        })?;
        match dtype.byte_size() {
            Some(size) => {
                let expected = checked_byte_len(elements, size).ok_or_else(|| {
                    Error::invalid_arg(format!(
                        "tensor '{name}': shape {} of {} is too large",
                        shape_string(&shape),
                        dtype.as_str()
                    ))
                })?;
                if expected != data.len() {
                    return Err(Error::invalid_arg(format!(
                        "tensor '{name}': shape {} of {} needs {expected} bytes, got {}",
                        shape_string(&shape),
                        dtype.as_str(),
                        data.len()
                    )));
                }
            }
            None => bytes_codec::check(&data, elements)
                .map_err(|e| Error::invalid_arg(format!("tensor '{name}': {e}")))?,
        }
        Ok(Tensor {
            name,
            dtype,
            shape,
            data,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    pub fn shape(&self) -> &[i64] {
        &self.shape
    }

    /// The little-endian values (fixed-size types) or the BYTES serialization.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Number of elements; cannot overflow (checked when the tensor was made).
    pub fn element_count(&self) -> usize {
        element_count(&self.shape).unwrap_or(0)
    }

    pub fn into_parts(self) -> (String, DataType, Vec<i64>, Bytes) {
        (self.name, self.dtype, self.shape, self.data)
    }

    /// The same data under another name.
    pub fn renamed(self, name: impl Into<String>) -> Tensor {
        Tensor {
            name: name.into(),
            ..self
        }
    }

    /// The same data seen with another shape of the same element count (a config `reshape`);
    /// any other count is an error, so an inconsistent reshape never reaches ONNX Runtime.
    pub fn reshaped(self, shape: Vec<i64>) -> Result<Tensor> {
        if element_count(&shape) != Some(self.element_count()) {
            return Err(Error::invalid_arg(format!(
                "tensor '{}': cannot view shape {} as {}: the element counts differ",
                self.name,
                shape_string(&self.shape),
                shape_string(&shape)
            )));
        }
        Ok(Tensor { shape, ..self })
    }

    /// Splits along the first dimension into pieces of `rows[i]` rows each (a batch back into requests).
    pub fn split_rows(&self, rows: &[usize]) -> Result<Vec<Tensor>> {
        let total = rows
            .iter()
            .try_fold(0usize, |a, &r| a.checked_add(r))
            .ok_or_else(|| Error::internal("row counts overflow"))?;
        let first = self.shape.first().copied().unwrap_or(0) as usize;
        if first != total || self.shape.is_empty() {
            return Err(Error::internal(format!(
                "output '{}' has batch dimension {first}, expected {total}",
                self.name
            )));
        }
        // Per-row counts and sizes are below the whole tensor's, which was checked.
        let per_row = self.element_count().checked_div(total).unwrap_or(0);
        let mut pieces = Vec::with_capacity(rows.len());
        let lengths = match self.dtype.byte_size() {
            Some(size) => rows.iter().map(|r| r * per_row * size).collect::<Vec<_>>(),
            None => bytes_codec::row_byte_lengths(&self.data, rows, per_row)
                .map_err(|e| Error::internal(format!("output '{}': {e}", self.name)))?,
        };
        let mut start = 0;
        for (r, len) in rows.iter().zip(lengths) {
            let mut shape = self.shape.clone();
            shape[0] = *r as i64;
            // Whole rows of valid data: the piece keeps the invariant.
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

    /// Concatenates tensors of the same name, type and non-batch shape along the first
    /// dimension; parts that differ in type or item shape are an error.
    pub fn concat_rows(parts: &[&Tensor]) -> Result<Tensor> {
        let first = parts
            .first()
            .ok_or_else(|| Error::internal("no tensors to concatenate"))?;
        if parts.len() == 1 {
            return Ok((*first).clone());
        }
        let item = first.shape.get(1..).unwrap_or(&[]);
        let mut rows: i64 = 0;
        let mut bytes: usize = 0;
        for t in parts {
            if t.dtype != first.dtype || t.shape.is_empty() || &t.shape[1..] != item {
                return Err(Error::internal(format!(
                    "tensor '{}': cannot concatenate {} {} with {} {}",
                    first.name,
                    first.dtype.as_str(),
                    shape_string(&first.shape),
                    t.dtype.as_str(),
                    shape_string(&t.shape)
                )));
            }
            rows = rows
                .checked_add(t.shape[0])
                .ok_or_else(|| Error::internal("batch rows overflow"))?;
            bytes = bytes
                .checked_add(t.data.len())
                .ok_or_else(|| Error::internal("batch bytes overflow"))?;
        }
        let mut data = Vec::new();
        data.try_reserve_exact(bytes).map_err(|_| {
            Error::unavailable(format!(
                "cannot allocate {bytes} bytes for batch input '{}'",
                first.name
            ))
        })?;
        for t in parts {
            data.extend_from_slice(&t.data);
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        Tensor::new(first.name.clone(), first.dtype, shape, data)
            .map_err(|e| Error::internal(e.message))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

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
        let t = Tensor::new(
            "x",
            DataType::Int32,
            vec![3, 2],
            (0u8..24).collect::<Vec<_>>(),
        )
        .unwrap();
        let parts = t.split_rows(&[1, 2]).unwrap();
        assert_eq!(parts[0].shape(), [1, 2]);
        assert_eq!(parts[1].data().len(), 16);
        let refs: Vec<&Tensor> = parts.iter().collect();
        assert_eq!(Tensor::concat_rows(&refs).unwrap(), t);
    }

    #[test]
    fn split_bytes_tensor_by_rows() {
        let data = bytes_codec::encode(["a", "bb", "ccc", "d"].iter().map(|s| s.as_bytes()));
        let t = Tensor::new("s", DataType::Bytes, vec![2, 2], data).unwrap();
        let parts = t.split_rows(&[1, 1]).unwrap();
        let second: Vec<&[u8]> = bytes_codec::decode(parts[1].data(), 2).unwrap();
        assert_eq!(second, vec![b"ccc".as_slice(), b"d".as_slice()]);
    }

    #[test]
    fn element_count_is_checked() {
        assert_eq!(element_count(&[]), Some(1));
        assert_eq!(element_count(&[2, 3]), Some(6));
        assert_eq!(element_count(&[0, 7]), Some(0));
        assert_eq!(element_count(&[-1, 4]), None);
        assert_eq!(element_count(&[1 << 40, 1 << 40]), None);
        assert_eq!(element_count(&[i64::MAX, 2]), Some(usize::MAX - 1));
        assert_eq!(element_count(&[i64::MAX, 3]), None);
        assert_eq!(element_count(&[1 << 40, 1 << 40, 0]), Some(0));
        assert_eq!(fixed_byte_len(DataType::Fp32, &[1 << 61]), None);
        assert_eq!(fixed_byte_len(DataType::Fp32, &[2, 3]), Some(24));
        assert_eq!(fixed_byte_len(DataType::Bytes, &[2]), None);
        assert_eq!(checked_byte_len(usize::MAX / 2, 2), None);
    }

    #[test]
    fn constructor_keeps_the_invariant() {
        let ok = Tensor::new("x", DataType::Fp32, vec![2, 2], vec![0u8; 16]).unwrap();
        assert_eq!(
            (ok.name(), ok.dtype(), ok.element_count()),
            ("x", DataType::Fp32, 4)
        );
        let short = Tensor::new("x", DataType::Fp32, vec![2, 2], vec![0u8; 15]).unwrap_err();
        assert_eq!(short.code(), crate::error::Code::InvalidArg);
        assert_eq!(
            short.message,
            "tensor 'x': shape [2,2] of FP32 needs 16 bytes, got 15"
        );
        assert!(Tensor::new("x", DataType::Fp32, vec![2, 2], vec![0u8; 17]).is_err());
        assert!(Tensor::new("x", DataType::Int8, vec![-1], vec![0u8; 1]).is_err());
        let huge = Tensor::new("x", DataType::Int64, vec![1 << 62, 4], vec![]).unwrap_err();
        assert!(
            huge.message
                .contains("has a negative dimension or too many"),
            "{huge:?}"
        );
        let huge = Tensor::new("x", DataType::Int64, vec![1 << 61], vec![]).unwrap_err();
        assert!(huge.message.contains("is too large"), "{huge:?}");
        let text = bytes_codec::encode([b"ab".as_slice(), b""]);
        assert!(Tensor::new("s", DataType::Bytes, vec![2], text.clone()).is_ok());
        assert!(Tensor::new("s", DataType::Bytes, vec![3], text.clone()).is_err());
        assert!(Tensor::new("s", DataType::Bytes, vec![1], text[..5].to_vec()).is_err());
    }

    #[test]
    fn reshape_keeps_the_element_count() {
        let t = Tensor::new("x", DataType::Int32, vec![3, 4], vec![0u8; 48]).unwrap();
        let r = t.clone().reshaped(vec![3, 2, 2]).unwrap();
        assert_eq!(r.shape(), [3, 2, 2]);
        let bad = t.clone().reshaped(vec![3, 4, 2]).unwrap_err();
        assert_eq!(
            bad.message,
            "tensor 'x': cannot view shape [3,4] as [3,4,2]: the element counts differ"
        );
        assert!(t.reshaped(vec![-3, -4]).is_err());
    }

    #[test]
    fn concat_refuses_mismatched_parts() {
        let a = Tensor::new("x", DataType::Int32, vec![1, 2], vec![0u8; 8]).unwrap();
        let b = Tensor::new("x", DataType::Int32, vec![1, 3], vec![0u8; 12]).unwrap();
        assert!(Tensor::concat_rows(&[&a, &b]).is_err());
        assert!(Tensor::concat_rows(&[]).is_err());
    }

    proptest! {
        /// Whatever shape and data length come in, the constructor either refuses or yields a
        /// tensor whose data length is exactly elements × size; it never panics.
        #[test]
        fn constructor_never_accepts_a_wrong_length(
            shape in prop::collection::vec(prop_oneof![
                -2i64..8, any::<i64>(), Just(1i64 << 32)
            ], 0..6),
            len in 0usize..512,
            dtype in prop::sample::select(DataType::ALL.to_vec()),
        ) {
            let result = Tensor::new("p", dtype, shape.clone(), vec![0u8; len]);
            if let Ok(t) = &result {
                let elements = element_count(&shape).expect("accepted shapes have a count");
                match dtype.byte_size() {
                    Some(size) => prop_assert_eq!(elements * size, len),
                    // all-zero bytes are empty strings, 4 bytes each
                    None => prop_assert_eq!(elements * 4, len),
                }
                prop_assert_eq!(t.element_count(), elements);
            }
        }

        /// element_count equals the exact product whenever that fits, and is `None` otherwise.
        #[test]
        fn element_count_matches_wide_arithmetic(
            shape in prop::collection::vec(prop_oneof![
                -1i64..1000, any::<i64>()
            ], 0..5),
        ) {
            // i64 dims below 2^63: five of them fit in 2^315, so use u128 per step and give up
            // (None) only when the exact product is beyond usize anyway.
            let expected = if shape.iter().any(|&d| d < 0) {
                None
            } else if shape.contains(&0) {
                Some(0)
            } else {
                shape
                    .iter()
                    .try_fold(1u128, |n, &d| n.checked_mul(d as u128))
                    .and_then(|n| usize::try_from(n).ok())
            };
            prop_assert_eq!(element_count(&shape), expected);
        }
    }
}
