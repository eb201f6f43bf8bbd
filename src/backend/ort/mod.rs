//! ONNX Runtime backend: the only module that names `ort::`. The library is loaded at run time
//! (`load-dynamic`) from the path the server was given; one `Session` per instance.

#![allow(unsafe_code)]

use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::memory::Allocator;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{RunOptions, Session};
mod strings;
mod threads;

pub(crate) use threads::GlobalThreadPool;
use threads::NamedThreads;

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
    /// Set when the environment has a global thread pool: sessions then own no threads.
    global_pool: Option<GlobalThreadPool>,
}

impl OrtBackend {
    /// Loads ONNX Runtime from `path` (or `ORT_DYLIB_PATH`, or the default). A missing or
    /// unloadable library is an error with an instruction, never a panic.
    pub fn init(path: Option<&Path>) -> Result<Self> {
        Self::init_with(path, None)
    }

    /// `init`, with the environment's global thread pool when `global_pool` is set. The
    /// environment is process-wide: asking for other thread settings than those of an
    /// environment this process already created is an error, not a silent mismatch.
    pub fn init_with(path: Option<&Path>, global_pool: Option<GlobalThreadPool>) -> Result<Self> {
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
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let env = shared_environment(&path, global_pool, cores)?;
        match global_pool {
            None => tracing::info!(path = %path.display(), cores, "ONNX Runtime loaded"),
            Some(pool) => {
                let spin = threads::global_spinning(pool, cores);
                tracing::info!(
                    path = %path.display(),
                    cores,
                    intra_op_threads = pool.intra_op_threads,
                    inter_op_threads = pool.inter_op_threads,
                    spinning = spin.as_str(),
                    "ONNX Runtime loaded with a global thread pool (0 threads = one per core); sessions own no threads"
                )
            }
        }
        Ok(OrtBackend {
            env,
            cores,
            global_pool,
        })
    }

    fn builder(&self) -> Result<SessionBuilder> {
        Session::builder(&self.env).map_err(ort_err)
    }

    /// A session's threads. With the global pool the session owns none (`ort` calls
    /// `DisablePerSessionThreads` for every session of an environment that has a global pool)
    /// and the model's thread parameters are ignored, as Triton ignores them. Otherwise the
    /// intra-op threads are the config's or cores ÷ instances, and the intra-op pool spins as
    /// `threads::spinning` decides. `first`: the version's first instance, which says so.
    fn session_threads(
        &self,
        b: SessionBuilder,
        spec: &ModelSpec,
        first: bool,
    ) -> Result<SessionBuilder> {
        let instances = spec.instance_count();
        let o = &spec.ort;
        if let Some(pool) = self.global_pool {
            if first {
                tracing::info!(
                    model = %spec.name,
                    version = spec.version,
                    instances,
                    intra_op_threads = pool.intra_op_threads,
                    inter_op_threads = pool.inter_op_threads,
                    cores = self.cores,
                    "sessions run on ONNX Runtime's global thread pool and own no threads"
                );
                if o.intra_op_threads > 0
                    || o.inter_op_threads > 0
                    || o.intra_op_spinning.is_some()
                    || o.inter_op_spinning.is_some()
                {
                    tracing::warn!(
                        model = %spec.name,
                        version = spec.version,
                        "the model's intra_op_thread_count, inter_op_thread_count and session.*.allow_spinning parameters are ignored: --backend-config=onnxruntime,enable-global-threadpool=1 runs every session on the global thread pool"
                    );
                }
            }
            return Ok(b);
        }
        let intra = if o.intra_op_threads > 0 {
            o.intra_op_threads
        } else {
            (self.cores / instances.max(1)).max(1)
        };
        let mut b = opt(b.with_intra_threads(intra))?;
        b = opt(b.with_inter_threads(o.inter_op_threads.max(1)))?;
        b = opt(b.with_thread_manager(NamedThreads(threads::SESSION_THREAD_NAME)))?;
        let spin = threads::spinning(o.intra_op_spinning, instances, intra, self.cores);
        if first {
            let why = match (spin.from_parameter, spin.on) {
                (true, _) => "session.intra_op.allow_spinning",
                (false, false) => "instances × intra-op threads cover every core",
                (false, true) => "instances × intra-op threads leave a core free",
            };
            tracing::info!(
                model = %spec.name,
                version = spec.version,
                instances,
                intra_op_threads = intra,
                cores = self.cores,
                spinning = spin.as_str(),
                chosen = spin.source(),
                "intra-op spinning {} ({}: {why})",
                spin.as_str(),
                spin.source()
            );
        }
        b = opt(b.with_intra_op_spinning(spin.on))?;
        if let Some(on) = o.inter_op_spinning {
            b = opt(b.with_inter_op_spinning(on))?;
        }
        Ok(b)
    }
}

/// The environment this process created, with the library and global pool it was made with.
struct SharedEnv {
    path: PathBuf,
    global_pool: Option<GlobalThreadPool>,
    env: Environment,
}

/// ONNX Runtime allows one environment per process (and one library); every server in the
/// process (tests start many) shares the first one. Its thread pools are fixed when it is
/// created, so a server asking for other ones cannot start in this process.
fn shared_environment(
    path: &Path,
    global_pool: Option<GlobalThreadPool>,
    cores: usize,
) -> Result<Environment> {
    static ENV: Mutex<Option<SharedEnv>> = Mutex::new(None);
    let mut env = ENV.lock();
    if let Some(shared) = env.as_ref() {
        if shared.global_pool != global_pool {
            return Err(Error::unavailable(format!(
                "ONNX Runtime's environment already exists in this process with {}; this server asks for {}, and ONNX Runtime allows one environment per process: run it as a process of its own",
                pool_text(shared.global_pool),
                pool_text(global_pool)
            )));
        }
        if shared.path != path {
            tracing::warn!(
                loaded = %shared.path.display(),
                requested = %path.display(),
                "ONNX Runtime is already loaded in this process; keeping the loaded library"
            );
        }
        return Ok(shared.env.clone());
    }
    let builder = ort::init_from(path).map_err(|e| {
        Error::unavailable(format!(
            "failed to load ONNX Runtime from '{}': {e}",
            path.display()
        ))
    })?;
    let mut builder = builder.with_name("nereid");
    if let Some(pool) = global_pool {
        let spin = threads::global_spinning(pool, cores);
        let options = GlobalThreadPoolOptions::default()
            .with_intra_threads(pool.intra_op_threads)
            .and_then(|o| o.with_inter_threads(pool.inter_op_threads))
            .and_then(|o| o.with_spin_control(spin.on))
            .and_then(|o| o.with_thread_manager(NamedThreads(threads::GLOBAL_THREAD_NAME)))
            .map_err(|e| {
                Error::invalid_arg(format!(
                    "ONNX Runtime's global thread pool ({}): {e}",
                    pool_text(global_pool)
                ))
            })?;
        builder = builder.with_global_thread_pool(options);
    }
    let e = builder.build().map_err(|e| {
        Error::internal(format!(
            "failed to create the ONNX Runtime environment: {e}"
        ))
    })?;
    *env = Some(SharedEnv {
        path: path.to_path_buf(),
        global_pool,
        env: e.clone(),
    });
    Ok(e)
}

fn pool_text(pool: Option<GlobalThreadPool>) -> String {
    match pool {
        None => "no global thread pool".into(),
        Some(p) => format!(
            "a global thread pool of {} intra-op and {} inter-op threads",
            p.intra_op_threads, p.inter_op_threads
        ),
    }
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
        // Said once per version, at its first instance as the loader creates them (a rebuild of
        // that instance after failures says it again).
        let first = index == 0 && spec.instances.first() == Some(group);
        let level = match spec.ort.graph_level {
            -1 => GraphOptimizationLevel::Level1,
            1 => GraphOptimizationLevel::Level2,
            2 => GraphOptimizationLevel::Disable,
            _ => GraphOptimizationLevel::Level3,
        };
        let mut b = self.session_threads(self.builder()?, spec, first)?;
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
