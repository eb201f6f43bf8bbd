//! Backends run models. `Backend` inspects model files and creates `Runner`s; each runner is
//! one session, owned by one instance thread (`instance`). ONNX Runtime lives in `ort/` only.

pub(crate) mod cancel;
pub(crate) mod devices;
pub(crate) mod instance;
pub(crate) mod jobs;
pub(crate) mod ort;

pub(crate) use self::ort::GlobalThreadPool;
pub use self::ort::OrtBackend;
pub(crate) use cancel::CancelToken;
#[cfg(any(test, feature = "test-backend"))]
pub mod testing;

use std::path::Path;
use std::time::Duration;

use crate::error::Result;
use crate::model::io::ModelIo;
use crate::model::{InstanceSpec, ModelSpec};
use crate::tensor::Tensor;

/// Time spent in each phase of one execution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ComputeTimes {
    pub input: Duration,
    pub infer: Duration,
    pub output: Duration,
}

pub struct RunOutput {
    /// One per requested output, in the order asked.
    pub tensors: Vec<Tensor>,
    pub times: ComputeTimes,
}

/// One loaded model instance. `run` takes `&mut self`: a runner is used by one thread at a time.
pub trait Runner: Send + 'static {
    /// Runs the model. `inputs` carry the shapes the model expects (batch dim included);
    /// `outputs` names the model outputs to return.
    fn run(&mut self, inputs: Vec<Tensor>, outputs: &[&str]) -> Result<RunOutput>;

    /// Like `run`, and `cancel` stops it as soon as the backend can (warmup runs of a load
    /// that is no longer wanted). The default only checks before starting.
    fn run_cancellable(
        &mut self,
        inputs: Vec<Tensor>,
        outputs: &[&str],
        cancel: &CancelToken,
    ) -> Result<RunOutput> {
        if cancel.is_cancelled() {
            return Err(crate::error::Error::cancelled("run cancelled"));
        }
        self.run(inputs, outputs)
    }
}

pub trait Backend: Send + Sync + 'static {
    /// Reads the inputs and outputs of a model file (used by auto-complete and load validation).
    fn inspect(&self, path: &Path) -> Result<ModelIo>;

    /// Creates the runner for instance `index` of `group`. Called on a loading thread, never on
    /// an async worker.
    fn create_runner(
        &self,
        spec: &ModelSpec,
        group: &InstanceSpec,
        index: u32,
    ) -> Result<Box<dyn Runner>>;
}
