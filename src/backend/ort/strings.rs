//! BYTES ↔ ONNX Runtime string tensors, byte for byte. A BYTES element is any byte string (NUL
//! bytes, invalid UTF-8, binary): the C API's explicit-length calls carry it unchanged both
//! ways, where the `ort` crate's own string helpers go through C strings and `String`.

use ort::AsPointer;
use ort::memory::Allocator;
use ort::value::{DynTensor, DynValue, TensorElementType, ValueType};

use crate::error::{Error, Result};

fn ort_err(e: ort::Error) -> Error {
    Error::internal(format!("onnx runtime error: {e}"))
}

/// Turns a status the C API returned into a result.
///
/// # Safety
/// `status` must be what an ONNX Runtime API call just returned (null or an owned status).
unsafe fn check(status: ort::sys::OrtStatusPtr) -> Result<()> {
    // SAFETY: the caller's contract; `result_from_status` releases a non-null status.
    unsafe { ort::Error::result_from_status(status) }.map_err(ort_err)
}

/// The element count of `shape` (checked arithmetic; `None` for a negative dimension or an
/// overflow).
fn element_count(shape: &[i64]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
}

/// A string tensor of `shape` whose element `i` is exactly `elements[i]`; `elements` must fill
/// `shape` exactly (checked here).
pub(super) fn to_ort(shape: &[i64], elements: &[&[u8]]) -> Result<DynValue> {
    let mut value = DynTensor::new(
        &Allocator::default(),
        TensorElementType::String,
        shape.to_vec(),
    )
    .map_err(ort_err)?;
    if element_count(shape) != Some(elements.len()) {
        return Err(Error::internal(format!(
            "{} string elements do not fill a tensor of shape {}",
            elements.len(),
            crate::tensor::shape_string(shape)
        )));
    }
    let api = ort::api();
    let ptr = value.ptr_mut();
    for (index, element) in elements.iter().enumerate() {
        let mut buffer: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: `ptr` is the live string tensor created above, `index` is below its element
        // count (checked above); ONNX Runtime resizes that element to `element.len()` bytes
        // and hands back its buffer.
        unsafe {
            check((api.GetResizedStringTensorElementBuffer)(
                ptr,
                index,
                element.len(),
                &mut buffer,
            ))?
        };
        if element.is_empty() {
            continue;
        }
        if buffer.is_null() {
            return Err(Error::internal(
                "ONNX Runtime gave no buffer for a string element",
            ));
        }
        // SAFETY: `buffer` is non-null and holds exactly `element.len()` bytes (the length it
        // was just resized to); it belongs to the tensor, so it cannot overlap `element`.
        unsafe {
            std::ptr::copy_nonoverlapping(element.as_ptr(), buffer.cast::<u8>(), element.len())
        };
    }
    Ok(value.into_dyn())
}

/// The elements of the string tensor `value`, each with its exact bytes. Their count is read
/// from the tensor's own type and shape, as ONNX Runtime reports them, not taken from a caller.
pub(super) fn from_ort(value: &DynValue) -> Result<Vec<Vec<u8>>> {
    let ValueType::Tensor {
        ty: TensorElementType::String,
        shape,
        ..
    } = value.dtype()
    else {
        return Err(Error::internal("not a string tensor"));
    };
    let dims: Vec<i64> = shape.iter().copied().collect();
    let count = element_count(&dims).ok_or_else(|| {
        Error::internal(format!(
            "string tensor of invalid shape {}",
            crate::tensor::shape_string(&dims)
        ))
    })?;
    let api = ort::api();
    let ptr = value.ptr();
    let mut out = Vec::new();
    out.try_reserve_exact(count)
        .map_err(|_| Error::unavailable("cannot allocate the string output"))?;
    for index in 0..count {
        let mut len = 0usize;
        // SAFETY: `ptr` is a live string tensor of `count` elements (its own shape, read
        // above) and `index` is below `count`.
        unsafe { check((api.GetStringTensorElementLength)(ptr, index, &mut len))? };
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(len)
            .map_err(|_| Error::unavailable("cannot allocate a string output element"))?;
        bytes.resize(len, 0);
        if len > 0 {
            // SAFETY: `bytes` holds exactly `len` writable bytes, the element's length that
            // ONNX Runtime just reported; it copies that many bytes and no more.
            unsafe {
                check((api.GetStringTensorElement)(
                    ptr,
                    len,
                    index,
                    bytes.as_mut_ptr().cast(),
                ))?
            };
        }
        out.push(bytes);
    }
    Ok(out)
}
