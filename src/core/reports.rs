//! What `Core` reports about the server and its models, in neutral types both front-ends
//! encode field by field. Each front-end destructures these structs without `..`, so a field
//! added here fails to compile until both wire shapes carry it: the two cannot drift apart.

use crate::lifecycle::manager::LoadedModel;
use crate::model::IoSpec;
use crate::telemetry::stats::StatsSnapshot;

pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

/// An input or output as model metadata reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMetadata {
    pub name: String,
    /// The wire datatype (`BYTES` for TYPE_STRING).
    pub datatype: &'static str,
    /// The configured dims, with the batch dimension (-1) first when the model batches.
    pub shape: Vec<i64>,
}

pub struct ModelMetadata {
    pub name: String,
    /// The requested version, or every READY version ascending.
    pub versions: Vec<String>,
    pub platform: String,
    /// Of the newest matching version (inputs/outputs are the same for all versions).
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

impl ModelMetadata {
    pub(super) fn of(model: &LoadedModel, versions: Vec<String>) -> Self {
        let batching = model.spec.batching();
        let tensors = |ios: &[IoSpec]| {
            ios.iter()
                .map(|io| TensorMetadata {
                    name: io.name.clone(),
                    datatype: io.dtype.as_str(),
                    shape: batching
                        .then_some(-1)
                        .into_iter()
                        .chain(io.dims.iter().copied())
                        .collect(),
                })
                .collect()
        };
        ModelMetadata {
            name: model.spec.name.clone(),
            versions,
            platform: model.config.platform.clone(),
            inputs: tensors(&model.spec.inputs),
            outputs: tensors(&model.spec.outputs),
        }
    }
}

/// Where memory is held (`memory_usage.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    Cpu,
    CpuPinned,
    Gpu,
}

impl MemoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryKind::Cpu => "CPU",
            MemoryKind::CpuPinned => "CPU_PINNED",
            MemoryKind::Gpu => "GPU",
        }
    }
}

/// Memory a model version holds on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUsage {
    pub kind: MemoryKind,
    /// The device id.
    pub id: i64,
    pub byte_size: u64,
}

pub struct ModelStatistics {
    pub name: String,
    pub version: i64,
    pub stats: StatsSnapshot,
    /// The GPU memory the version took at load, per device.
    pub memory_usage: Vec<MemoryUsage>,
}

impl ModelStatistics {
    pub(super) fn of(model: &LoadedModel) -> Self {
        ModelStatistics {
            name: model.spec.name.clone(),
            version: model.spec.version,
            stats: model.stats.snapshot(),
            memory_usage: model
                .gpu_memory
                .iter()
                .map(|&(id, byte_size)| MemoryUsage {
                    kind: MemoryKind::Gpu,
                    id: i64::from(id),
                    byte_size,
                })
                .collect(),
        }
    }
}
