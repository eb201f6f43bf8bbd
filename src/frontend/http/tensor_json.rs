//! JSON tensor `data` ↔ the server's raw little-endian bytes (http-protocol.md §5.3).
//! Inputs may be flat or nested; only the leaf count has to match the shape. Outputs are
//! always flat. FP16/BF16 have no JSON form.

use bytes::Bytes;
use serde_json::{Number, Value};

use crate::error::{Error, Result};
use crate::tensor::{DataType, Tensor, bytes_codec};

/// Deepest nesting of a `data` array, as Triton.
pub(crate) const MAX_DEPTH: usize = 100;

fn shape_mismatch() -> Error {
    Error::invalid_arg("Unable to parse 'data': Shape does not match true shape of 'data' field")
}

/// The JSON kind of a value, for messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        Value::Number(_) => "floating-point number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Encodes input `name`'s JSON `data` (which must be an array) as `count` elements of `dtype`.
pub(crate) fn decode_input(
    name: &str,
    dtype: DataType,
    count: usize,
    data: &Value,
) -> Result<Bytes> {
    if matches!(dtype, DataType::Fp16 | DataType::Bf16) {
        return Err(Error::invalid_arg(format!(
            "receiving {} data via JSON is not supported. Please use the binary data format for input {name}",
            dtype.as_str()
        )));
    }
    if !data.is_array() {
        return Err(Error::invalid_arg(format!(
            "Unable to parse 'data': attempt to access JSON non-array as array (input '{name}' got a {})",
            kind(data)
        )));
    }
    // A zero-element tensor still needs `data`, whose contents are ignored (Triton).
    if count == 0 {
        return Ok(Bytes::new());
    }
    let mut leaves = Vec::new();
    flatten(data, 0, count, &mut leaves)?;
    if leaves.len() != count {
        return Err(shape_mismatch());
    }
    let mut out = Vec::with_capacity(count * dtype.byte_size().unwrap_or(8));
    for (i, v) in leaves.into_iter().enumerate() {
        push(dtype, v, &mut out).map_err(|detail| {
            let mut shown = v.to_string();
            if shown.len() > 40 {
                shown = format!("{}...", &shown[..shown.floor_char_boundary(40)]);
            }
            Error::invalid_arg(format!(
                "Unable to parse 'data': {detail} (input '{name}', datatype {}, element {i}: {shown})",
                dtype.as_str()
            ))
        })?;
    }
    Ok(out.into())
}

/// Collects the leaves of nested arrays in row-major order; stops as soon as there are more
/// than `count`, so a short shape never makes the server walk a huge body twice.
fn flatten<'a>(v: &'a Value, depth: usize, count: usize, out: &mut Vec<&'a Value>) -> Result<()> {
    match v {
        Value::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(Error::invalid_arg(format!(
                    "Unable to parse 'data': nested deeper than {MAX_DEPTH} levels"
                )));
            }
            for item in items {
                flatten(item, depth + 1, count, out)?;
            }
            Ok(())
        }
        leaf => {
            if out.len() == count {
                return Err(shape_mismatch());
            }
            out.push(leaf);
            Ok(())
        }
    }
}

fn push(dtype: DataType, v: &Value, out: &mut Vec<u8>) -> std::result::Result<(), String> {
    const NOT_SIGNED: &str = "attempt to access JSON non-signed-integer as signed-integer";
    const NOT_UNSIGNED: &str = "attempt to access JSON non-unsigned-integer as unsigned-integer";
    let range = |what: &str| format!("value is out of range for {what}");
    let signed = || v.as_i64().ok_or_else(|| NOT_SIGNED.to_string());
    let unsigned = || v.as_u64().ok_or_else(|| NOT_UNSIGNED.to_string());
    match dtype {
        DataType::Bool => {
            let b = v
                .as_bool()
                .ok_or("attempt to access JSON non-boolean as boolean")?;
            out.push(b as u8);
        }
        DataType::Int8 => {
            let x = i8::try_from(signed()?).map_err(|_| range("INT8"))?;
            out.extend_from_slice(&x.to_le_bytes());
        }
        DataType::Int16 => {
            let x = i16::try_from(signed()?).map_err(|_| range("INT16"))?;
            out.extend_from_slice(&x.to_le_bytes());
        }
        DataType::Int32 => {
            let x = i32::try_from(signed()?).map_err(|_| range("INT32"))?;
            out.extend_from_slice(&x.to_le_bytes());
        }
        DataType::Int64 => out.extend_from_slice(&signed()?.to_le_bytes()),
        DataType::Uint8 => {
            let x = u8::try_from(unsigned()?).map_err(|_| range("UINT8"))?;
            out.push(x);
        }
        DataType::Uint16 => {
            let x = u16::try_from(unsigned()?).map_err(|_| range("UINT16"))?;
            out.extend_from_slice(&x.to_le_bytes());
        }
        DataType::Uint32 => {
            let x = u32::try_from(unsigned()?).map_err(|_| range("UINT32"))?;
            out.extend_from_slice(&x.to_le_bytes());
        }
        DataType::Uint64 => out.extend_from_slice(&unsigned()?.to_le_bytes()),
        DataType::Fp32 | DataType::Fp64 => {
            let x = v
                .as_f64()
                .ok_or("attempt to access JSON non-number as double")?;
            if dtype == DataType::Fp32 {
                out.extend_from_slice(&(x as f32).to_le_bytes());
            } else {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        DataType::Bytes => {
            let s = v
                .as_str()
                .ok_or("attempt to access JSON non-string as string")?;
            let len = u32::try_from(s.len()).map_err(|_| range("a BYTES element"))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        DataType::Fp16 | DataType::Bf16 => unreachable!("rejected by decode_input"),
    }
    Ok(())
}

/// An output tensor as a flat JSON array. Non-finite floats become `null` (JSON has no NaN);
/// BYTES elements that are not UTF-8 are converted lossily.
pub(crate) fn encode_output(t: &Tensor) -> Result<Value> {
    let count = t.element_count();
    let mismatch = || {
        Error::internal(format!(
            "output tensor shape does not match size of output for '{}'",
            t.name()
        ))
    };
    if let Some(size) = t.dtype().byte_size()
        && t.data().len() != count * size
    {
        return Err(mismatch());
    }
    let d = &t.data()[..];
    fn chunks<const N: usize>(d: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        d.chunks_exact(N)
            .map(|c| c.try_into().expect("exact chunk"))
    }
    let float = |x: f64| Number::from_f64(x).map_or(Value::Null, Value::Number);
    let values: Vec<Value> = match t.dtype() {
        DataType::Bool => d.iter().map(|&b| Value::Bool(b != 0)).collect(),
        DataType::Uint8 => d.iter().map(|&x| x.into()).collect(),
        DataType::Uint16 => chunks::<2>(d)
            .map(|c| u16::from_le_bytes(c).into())
            .collect(),
        DataType::Uint32 => chunks::<4>(d)
            .map(|c| u32::from_le_bytes(c).into())
            .collect(),
        DataType::Uint64 => chunks::<8>(d)
            .map(|c| u64::from_le_bytes(c).into())
            .collect(),
        DataType::Int8 => d.iter().map(|&x| (x as i8).into()).collect(),
        DataType::Int16 => chunks::<2>(d)
            .map(|c| i16::from_le_bytes(c).into())
            .collect(),
        DataType::Int32 => chunks::<4>(d)
            .map(|c| i32::from_le_bytes(c).into())
            .collect(),
        DataType::Int64 => chunks::<8>(d)
            .map(|c| i64::from_le_bytes(c).into())
            .collect(),
        DataType::Fp32 => chunks::<4>(d)
            .map(|c| float(f32::from_le_bytes(c) as f64))
            .collect(),
        DataType::Fp64 => chunks::<8>(d)
            .map(|c| float(f64::from_le_bytes(c)))
            .collect(),
        DataType::Bytes => bytes_codec::decode(d, count)
            .map_err(|_| mismatch())?
            .into_iter()
            .map(|e| Value::String(String::from_utf8_lossy(e).into_owned()))
            .collect(),
        DataType::Fp16 | DataType::Bf16 => {
            return Err(Error::invalid_arg(format!(
                "sending {} data via JSON is not supported. Please use the binary data format for output",
                t.dtype().as_str()
            )));
        }
    };
    Ok(Value::Array(values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dec(dtype: DataType, count: usize, data: Value) -> Result<Vec<u8>> {
        decode_input("x", dtype, count, &data).map(|b| b.to_vec())
    }

    #[test]
    fn flat_and_nested_data() {
        let flat = dec(DataType::Int32, 4, json!([1, -2, 3, 4])).unwrap();
        let nested = dec(DataType::Int32, 4, json!([[1, -2], [3, 4]])).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(&flat[4..8], &(-2i32).to_le_bytes());
        assert_eq!(
            dec(DataType::Bool, 2, json!([true, false])).unwrap(),
            vec![1, 0]
        );
        assert_eq!(
            dec(DataType::Fp32, 2, json!([1, 2.5])).unwrap(),
            [1.0f32.to_le_bytes(), 2.5f32.to_le_bytes()].concat()
        );
        assert_eq!(
            dec(DataType::Bytes, 2, json!(["ab", ""])).unwrap(),
            vec![2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]
        );
        assert_eq!(
            dec(DataType::Uint64, 1, json!([u64::MAX])).unwrap(),
            u64::MAX.to_le_bytes()
        );
        assert!(dec(DataType::Int8, 0, json!([])).unwrap().is_empty());
    }

    #[test]
    fn wrong_types_and_counts_are_clear_errors() {
        let table = [
            (DataType::Int32, 2, json!([1, "2"]), "non-signed-integer"),
            (DataType::Int32, 2, json!([1, 2.5]), "non-signed-integer"),
            (DataType::Uint8, 1, json!([-1]), "non-unsigned-integer"),
            (DataType::Uint8, 1, json!([256]), "out of range for UINT8"),
            (DataType::Int16, 1, json!([40000]), "out of range for INT16"),
            (DataType::Bool, 1, json!([1]), "non-boolean"),
            (DataType::Fp32, 1, json!(["1.0"]), "non-number"),
            (DataType::Bytes, 1, json!([1]), "non-string"),
            (DataType::Int32, 3, json!([1, 2]), "Shape does not match"),
            (DataType::Int32, 1, json!([1, 2]), "Shape does not match"),
            (DataType::Int32, 1, json!(5), "non-array"),
            (
                DataType::Fp16,
                1,
                json!([1.0]),
                "receiving FP16 data via JSON",
            ),
            (
                DataType::Bf16,
                1,
                json!([1.0]),
                "receiving BF16 data via JSON",
            ),
        ];
        for (dtype, count, data, want) in table {
            let err = dec(dtype, count, data.clone()).unwrap_err();
            assert_eq!(err.code, crate::error::Code::InvalidArg);
            assert!(err.message.contains(want), "{data}: {}", err.message);
        }
        let mut deep = json!([1]);
        for _ in 0..MAX_DEPTH {
            deep = json!([deep]);
        }
        assert!(
            dec(DataType::Int32, 1, deep)
                .unwrap_err()
                .message
                .contains("nested deeper")
        );
    }

    #[test]
    fn outputs_are_flat_json() {
        let t =
            |dtype, shape: Vec<i64>, data: Vec<u8>| Tensor::new("y", dtype, shape, data).unwrap();
        let ints = t(
            DataType::Int32,
            vec![2, 2],
            [1i32, -2, 3, 4]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        );
        assert_eq!(encode_output(&ints).unwrap(), json!([1, -2, 3, 4]));
        let floats = t(
            DataType::Fp32,
            vec![2],
            [0.5f32, f32::NAN]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        );
        assert_eq!(encode_output(&floats).unwrap(), json!([0.5, null]));
        let strings = t(
            DataType::Bytes,
            vec![2],
            bytes_codec::encode([b"hi".as_slice(), b"".as_slice()]),
        );
        assert_eq!(encode_output(&strings).unwrap(), json!(["hi", ""]));
        let half = t(DataType::Fp16, vec![1], vec![0, 0]);
        assert!(
            encode_output(&half)
                .unwrap_err()
                .message
                .starts_with("sending FP16 data via JSON is not supported")
        );
        // A tensor whose data is shorter than its shape cannot be made any more.
        assert!(Tensor::new("y", DataType::Int32, vec![2], vec![0; 4]).is_err());
    }
}
