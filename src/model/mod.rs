//! What a model is (the description layer): its configuration (`config`, `spec`,
//! `autocomplete`), the repository on disk (`repository`, `paths`), the lifecycle states
//! (`state`), the text settings of a text model (`text`) and the inputs/outputs its model file
//! declares (`io`). Loading and keeping models is `lifecycle`'s job.
//!
//! `ModelSpec` is the server's own, validated view of an effective config: the scheduler,
//! the backend and `validate` work from it and never see the protobuf message.

pub(crate) mod autocomplete;
pub(crate) mod config;
pub(crate) mod config_json;
pub(crate) mod io;
pub(crate) mod limits;
pub(crate) mod paths;
pub(crate) mod repository;
pub(crate) mod sequence;
pub(crate) mod spec;
pub(crate) mod state;
pub(crate) mod text;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::tensor::DataType;
pub(crate) use sequence::SequenceSpec;
use text::TextSpec;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    pub version: i64,
    /// 0 = the model does not batch; inputs carry no batch dimension.
    pub max_batch_size: u32,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
    /// The ONNX file this version runs.
    pub model_path: PathBuf,
    pub instances: Vec<InstanceSpec>,
    pub ort: OrtOptions,
    /// The dynamic batcher's settings; `None` = Triton's default scheduler (each request alone).
    pub dynamic_batching: Option<DynamicBatching>,
    /// Server-side tokenization and post-processing (a config that names a `tokenizer`).
    pub text: Option<TextSpec>,
    /// The sequence batcher's settings (`sequence_batching`); `None` = not a sequence model.
    pub sequence: Option<sequence::SequenceSpec>,
}

impl ModelSpec {
    pub fn batching(&self) -> bool {
        self.max_batch_size > 0
    }

    /// The graph output behind config output `index` (a text model post-processes another one).
    pub fn graph_output(&self, index: usize) -> &str {
        match &self.text {
            Some(t) => &t.graph_output,
            None => &self.outputs[index].name,
        }
    }

    pub fn instance_count(&self) -> usize {
        self.instances.iter().map(|g| g.count as usize).sum()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct IoSpec {
    pub name: String,
    pub dtype: DataType,
    /// Shape without the batch dimension; -1 = variable.
    pub dims: Vec<i64>,
    /// Shape the model itself sees/produces (without batch dim), when it differs from `dims`.
    pub reshape: Option<Vec<i64>>,
    pub optional: bool,
    /// Labels for the classification extension (outputs only).
    pub labels: Option<Arc<Vec<String>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Gpu(i32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    pub name: String,
    pub kind: DeviceKind,
    pub count: u32,
}

/// Session options from the config's `parameters` and `optimization`, as Triton's ORT backend names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrtOptions {
    /// 0 = chosen by the server so that instances × threads fits the cores.
    pub intra_op_threads: usize,
    pub inter_op_threads: usize,
    pub parallel_execution: bool,
    /// `optimization.graph.level`: 0 all, -1 basic, 1 extended, 2 disabled.
    pub graph_level: i32,
    pub mem_arena: Option<bool>,
    pub mem_pattern: Option<bool>,
    /// `session.intra_op.allow_spinning` (a Nereid parameter): `None` = the server decides
    /// (off once instances × intra-op threads reach the cores).
    pub intra_op_spinning: Option<bool>,
    /// `session.inter_op.allow_spinning` (a Nereid parameter): `None` = ONNX Runtime's default.
    pub inter_op_spinning: Option<bool>,
}

/// `dynamic_batching { ... }` after validation (model-config.md §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicBatching {
    /// Ascending, each in 1..=max_batch_size.
    pub preferred_batch_sizes: Vec<usize>,
    pub max_queue_delay: Duration,
    pub preserve_ordering: bool,
    /// Priority levels, at least 1 (a config's 0 = priorities disabled = one level).
    pub priority_levels: usize,
    /// Level (1 = highest) used when a request gives no priority.
    pub default_priority_level: usize,
    /// One policy per level, index = level - 1.
    pub queue_policies: Vec<QueuePolicy>,
    /// True when the config enabled priorities (`priority_levels > 0`).
    pub priorities_enabled: bool,
}

impl DynamicBatching {
    /// The settings that make the batcher behave as Triton's default scheduler: one level,
    /// no delay, no queue timeout (client deadlines still apply).
    pub fn default_scheduler() -> Self {
        DynamicBatching {
            preferred_batch_sizes: vec![],
            max_queue_delay: Duration::ZERO,
            preserve_ordering: false,
            priority_levels: 1,
            default_priority_level: 1,
            queue_policies: vec![QueuePolicy {
                max_queue_size: 0,
                default_timeout: Duration::ZERO,
                timeout_action: TimeoutAction::Reject,
                allow_timeout_override: false,
            }],
            priorities_enabled: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutAction {
    Reject,
    Delay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuePolicy {
    /// 0 = no per-level limit (the server-wide queue capacity still applies).
    pub max_queue_size: usize,
    /// Zero = no timeout.
    pub default_timeout: Duration,
    pub timeout_action: TimeoutAction,
    pub allow_timeout_override: bool,
}
