//! ONNX Runtime backend: the only module that names `ort::`. The library is loaded at run time
//! (`load-dynamic`) from the path the server was given; one `Session` per instance.

#![allow(unsafe_code)]

use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::environment::Environment;
use ort::memory::Allocator;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{RunOptions, Session};
mod strings;

use ort::value::{DynTensor, DynTensorValueType, DynValue, TensorElementType, ValueType};

use super::{Backend, CancelToken, ComputeTimes, RunOutput, Runner};
use crate::error::{Error, Result};
use crate::model::io::{IoDesc, ModelIo};
use crate::model::{DeviceKind, InstanceSpec, ModelSpec};
use crate::tensor::{DataType, Tensor, bytes_codec};

/// Default library location, created by `scripts/install-onnxruntime.sh`.
pub(crate) const DEFAULT_DYLIB: &str = ".ort/libonnxruntime.so.1.31.1";

pub struct OrtBackend {
    env: Environment,
    /// Cores available to this process (cgroup-aware), shared out among instances.
    cores: usize,
}

impl OrtBackend {
    /// Loads ONNX Runtime from `path` (or `ORT_DYLIB_PATH`, or the default). A missing or
    /// unloadable library is an error with an instruction, never a panic.
    pub fn init(path: Option<&Path>) -> Result<Self> {
        let path: PathBuf = match path {
            Some(p) => p.to_path_buf(),
            None => std::env::var_os("ORT_DYLIB_PATH")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DYLIB)),
        };
        if !path.is_file() {
            return Err(Error::unavailable(format!(
                "ONNX Runtime library not found at '{}'. Run scripts/install-onnxruntime.sh (it extracts it from the PyPI wheel onnxruntime==1.31.1 into .ort/), or point --onnxruntime-library (or ORT_DYLIB_PATH) at libonnxruntime.so.1.31.1.",
                path.display()
            )));
        }
        let env = shared_environment(&path)?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        tracing::info!(path = %path.display(), cores, "ONNX Runtime loaded");
        Ok(OrtBackend { env, cores })
    }

    fn builder(&self) -> Result<SessionBuilder> {
        Session::builder(&self.env).map_err(ort_err)
    }
}

/// ONNX Runtime allows one environment per process (and one library); every server in the
/// process (tests start many) shares the first one.
fn shared_environment(path: &Path) -> Result<Environment> {
    static ENV: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);
    let mut env = ENV.lock();
    if let Some((loaded, e)) = env.as_ref() {
        if loaded != path {
            tracing::warn!(
                loaded = %loaded.display(),
                requested = %path.display(),
                "ONNX Runtime is already loaded in this process; keeping the loaded library"
            );
        }
        return Ok(e.clone());
    }
    let builder = ort::init_from(path).map_err(|e| {
        Error::unavailable(format!(
            "failed to load ONNX Runtime from '{}': {e}",
            path.display()
        ))
    })?;
    let e = builder.with_name("nereid").build().map_err(|e| {
        Error::internal(format!(
            "failed to create the ONNX Runtime environment: {e}"
        ))
    })?;
    *env = Some((path.to_path_buf(), e.clone()));
    Ok(e)
}

fn ort_err(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("onnx runtime error: {e}"))
}

/// `SessionBuilder` methods return an error type that owns the builder; keep only the message.
fn opt<T>(r: std::result::Result<T, ort::Error<SessionBuilder>>) -> Result<T> {
    r.map_err(|e| Error::invalid_arg(format!("onnx runtime error: {}", ort::Error::<()>::from(e))))
}

impl Backend for OrtBackend {
    fn inspect(&self, path: &Path) -> Result<ModelIo> {
        let mut b = opt(self.builder()?.with_intra_threads(1))?;
        b = opt(b.with_optimization_level(GraphOptimizationLevel::Disable))?;
        let session = b.commit_from_file(path).map_err(|e| load_err(path, e))?;
        let desc = |outlets: &[ort::value::Outlet]| -> Vec<IoDesc> {
            outlets
                .iter()
                .map(|o| {
                    let (dtype, shape) = match o.dtype() {
                        ValueType::Tensor { ty, shape, .. } => (
                            from_element_type(*ty).ok_or_else(|| ty.to_string()),
                            shape.iter().copied().collect(),
                        ),
                        other => (Err(other.to_string()), vec![]),
                    };
                    IoDesc {
                        name: o.name().to_string(),
                        dtype,
                        shape,
                    }
                })
                .collect()
        };
        Ok(ModelIo {
            inputs: desc(session.inputs()),
            outputs: desc(session.outputs()),
        })
    }

    fn create_runner(
        &self,
        spec: &ModelSpec,
        group: &InstanceSpec,
        index: u32,
    ) -> Result<Box<dyn Runner>> {
        let intra = if spec.ort.intra_op_threads > 0 {
            spec.ort.intra_op_threads
        } else {
            (self.cores / spec.instance_count().max(1)).max(1)
        };
        let inter = spec.ort.inter_op_threads.max(1);
        let level = match spec.ort.graph_level {
            -1 => GraphOptimizationLevel::Level1,
            1 => GraphOptimizationLevel::Level2,
            2 => GraphOptimizationLevel::Disable,
            _ => GraphOptimizationLevel::Level3,
        };
        let mut b = opt(self.builder()?.with_intra_threads(intra))?;
        b = opt(b.with_inter_threads(inter))?;
        b = opt(b.with_parallel_execution(spec.ort.parallel_execution))?;
        b = opt(b.with_optimization_level(level))?;
        if let Some(p) = spec.ort.mem_pattern {
            b = opt(b.with_memory_pattern(p))?;
        }
        if let DeviceKind::Gpu(id) = group.kind {
            // error_on_failure: a GPU instance that cannot get the CUDA provider fails to load
            // instead of silently running on the CPU.
            let cuda = ort::ep::CUDA::default()
                .with_device_id(id)
                .build()
                .error_on_failure();
            b = b.with_execution_providers([cuda]).map_err(|e| {
                Error::invalid_arg(format!(
                    "instance group {} of model '{}': cannot use the CUDA execution provider on GPU {id}: {}. The ONNX Runtime library must be the onnxruntime-gpu build with its CUDA libraries on LD_LIBRARY_PATH.",
                    group.name,
                    spec.name,
                    ort::Error::<()>::from(e)
                ))
            })?;
        }
        // ORT's intra-op pool spins between runs by default; once the instances' pools cover
        // every core, that spinning takes CPU from the network threads and from each other
        // (issue 22). Said once per version, at its first instance.
        let pools = spec.instance_count().max(1).saturating_mul(intra);
        if intra > 1 && pools >= self.cores {
            if index == 0 {
                tracing::info!(
                    model = %spec.name,
                    instances = spec.instance_count(),
                    intra_op_threads = intra,
                    cores = self.cores,
                    "intra-op spinning off: the instances' thread pools cover every core"
                );
            }
            b = opt(b.with_intra_op_spinning(false))?;
        }
        if let Some(arena) = spec.ort.mem_arena {
            b = opt(b.with_config_entry("session.use_arena", if arena { "1" } else { "0" }))?;
        }
        let session = b
            .commit_from_file(&spec.model_path)
            .map_err(|e| load_err(&spec.model_path, e))?;
        Ok(Box::new(OrtRunner { session }))
    }
}

fn load_err(path: &Path, e: ort::Error) -> Error {
    Error::invalid_arg(format!(
        "failed to load model file '{}': onnx runtime error: {e}",
        path.display()
    ))
}

struct OrtRunner {
    session: Session,
}

impl Runner for OrtRunner {
    fn run(&mut self, inputs: Vec<Tensor>, outputs: &[&str]) -> Result<RunOutput> {
        self.run_with(inputs, outputs, None)
    }

    /// ONNX Runtime's terminate flag is the cancel hook: a cancel during the run makes it
    /// return at the next kernel boundary.
    fn run_cancellable(
        &mut self,
        inputs: Vec<Tensor>,
        outputs: &[&str],
        cancel: &CancelToken,
    ) -> Result<RunOutput> {
        let options = Arc::new(RunOptions::new().map_err(ort_err)?);
        let hook_options = options.clone();
        let _hook = cancel.on_cancel(move || {
            if let Err(e) = hook_options.terminate() {
                tracing::warn!(error = %e, "cannot set ONNX Runtime's terminate flag");
            }
        });
        if cancel.is_cancelled() {
            return Err(Error::cancelled("run cancelled"));
        }
        self.run_with(inputs, outputs, Some(&options))
    }
}

impl OrtRunner {
    // The instance thread is an OS thread, not a tokio task: its phase times are real time.
    #[allow(
        clippy::disallowed_types,
        reason = "instance threads time ONNX Runtime's phases in real time, off the runtime"
    )]
    fn run_with(
        &mut self,
        inputs: Vec<Tensor>,
        outputs: &[&str],
        options: Option<&RunOptions>,
    ) -> Result<RunOutput> {
        use std::time::Instant;
        let t0 = Instant::now();
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for t in inputs {
            let value = to_ort(&t)?;
            values.push((t.into_parts().0, value));
        }
        let t1 = Instant::now();
        let results = match options {
            Some(o) => self.session.run_with_options(values, o),
            None => self.session.run(values),
        }
        .map_err(|e| Error::internal(format!("onnx runtime error: {e}")))?;
        let t2 = Instant::now();
        let mut tensors = Vec::with_capacity(outputs.len());
        for name in outputs {
            let value = results
                .get(name)
                .ok_or_else(|| Error::internal(format!("model did not produce output '{name}'")))?;
            tensors.push(from_ort(name, value)?);
        }
        let t3 = Instant::now();
        Ok(RunOutput {
            tensors,
            times: ComputeTimes {
                input: t1 - t0,
                infer: t2 - t1,
                output: t3 - t2,
            },
        })
    }
}

fn to_ort(t: &Tensor) -> Result<DynValue> {
    if t.dtype() == DataType::Bytes {
        let elements = bytes_codec::decode(t.data(), t.element_count())
            .map_err(|e| Error::invalid_arg(format!("input '{}': {e}", t.name())))?;
        return strings::to_ort(t.shape(), &elements);
    }
    let mut value = DynTensor::new(
        &Allocator::default(),
        element_type(t.dtype()),
        t.shape().to_vec(),
    )
    .map_err(ort_err)?;
    // The copy below relies on no caller: the data's length must equal both the byte length of
    // the shape and element type (checked arithmetic) and the size ONNX Runtime reports for the
    // tensor it just allocated, and that tensor must live in CPU memory.
    let capacity = value.size();
    let expected = crate::tensor::fixed_byte_len(t.dtype(), t.shape());
    if expected != Some(t.data().len())
        || capacity != Some(t.data().len())
        || !value.memory_info().is_cpu_accessible()
    {
        return Err(Error::internal(format!(
            "input '{}': {} bytes do not fit the ONNX Runtime tensor of shape {} ({} bytes)",
            t.name(),
            t.data().len(),
            crate::tensor::shape_string(t.shape()),
            capacity.map_or_else(|| "unknown".to_string(), |n| n.to_string())
        )));
    }
    if !t.data().is_empty() {
        let dst = value.data_ptr_mut().cast::<u8>();
        if dst.is_null() {
            return Err(Error::internal(format!(
                "input '{}': ONNX Runtime gave no buffer for {} bytes",
                t.name(),
                t.data().len()
            )));
        }
        // SAFETY: `dst` is the non-null CPU buffer of `value`, which ONNX Runtime just reported
        // to hold exactly `t.data().len()` bytes, the shape's byte length (both checked above);
        // `value` is a fresh allocation, so it cannot overlap `t.data()`.
        unsafe { std::ptr::copy_nonoverlapping(t.data().as_ptr(), dst, t.data().len()) };
    }
    Ok(value.into_dyn())
}

fn from_ort(name: &str, value: &DynValue) -> Result<Tensor> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return Err(Error::internal(format!("output '{name}' is not a tensor")));
    };
    let dtype = from_element_type(*ty).ok_or_else(|| {
        Error::internal(format!("output '{name}' has unsupported element type {ty}"))
    })?;
    let shape: Vec<i64> = shape.iter().copied().collect();
    let data = if dtype == DataType::Bytes {
        let elements = strings::from_ort(value)
            .map_err(|e| Error::internal(format!("output '{name}': {}", e.message)))?;
        bytes_codec::encode(elements.iter().map(Vec::as_slice))
    } else {
        let tensor = value
            .view()
            .downcast::<DynTensorValueType>()
            .map_err(ort_err)?;
        // The length read below is what both the shape (checked arithmetic) and ONNX Runtime's
        // own size of the buffer say; any disagreement is an error, not a read past the end.
        let len = crate::tensor::fixed_byte_len(dtype, &shape);
        let size = tensor.size();
        let Some(len) = len.filter(|&n| Some(n) == size) else {
            return Err(Error::internal(format!(
                "output '{name}': shape {} of {} does not match the {} bytes ONNX Runtime holds",
                crate::tensor::shape_string(&shape),
                dtype.as_str(),
                size.map_or_else(|| "unknown".to_string(), |n| n.to_string())
            )));
        };
        if !tensor.memory_info().is_cpu_accessible() {
            return Err(Error::internal(format!(
                "output '{name}' is not in CPU memory"
            )));
        }
        let src = tensor.data_ptr().cast::<u8>();
        if len == 0 || src.is_null() {
            Vec::new()
        } else {
            let mut out = Vec::new();
            out.try_reserve_exact(len).map_err(|_| {
                Error::unavailable(format!("output '{name}': cannot allocate {len} bytes"))
            })?;
            // SAFETY: `src` is the non-null CPU buffer of `value`, which ONNX Runtime reports
            // holds `len` bytes (checked above); it stays alive while `value` is borrowed here.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(src, len) });
            out
        }
    };
    Tensor::new(name, dtype, shape, data).map_err(|e| Error::internal(e.message))
}

fn element_type(d: DataType) -> TensorElementType {
    match d {
        DataType::Bool => TensorElementType::Bool,
        DataType::Uint8 => TensorElementType::Uint8,
        DataType::Uint16 => TensorElementType::Uint16,
        DataType::Uint32 => TensorElementType::Uint32,
        DataType::Uint64 => TensorElementType::Uint64,
        DataType::Int8 => TensorElementType::Int8,
        DataType::Int16 => TensorElementType::Int16,
        DataType::Int32 => TensorElementType::Int32,
        DataType::Int64 => TensorElementType::Int64,
        DataType::Fp16 => TensorElementType::Float16,
        DataType::Fp32 => TensorElementType::Float32,
        DataType::Fp64 => TensorElementType::Float64,
        DataType::Bytes => TensorElementType::String,
        DataType::Bf16 => TensorElementType::Bfloat16,
    }
}

fn from_element_type(t: TensorElementType) -> Option<DataType> {
    DataType::ALL.into_iter().find(|d| element_type(*d) == t)
}
