//! What one model's config may ask for. A config is untrusted input (a load request carries
//! one), and a few of its numbers turn straight into threads or allocations: each has a ceiling
//! set by a server flag, checked at load before anything is started or allocated, and a config
//! past it fails the load with an error that names the model, the field, the value and the flag.

use super::ModelSpec;
use crate::error::{Error, Result};

/// `--max-instances-per-model`: instances of one version, all groups (and GPUs) together.
pub(crate) const DEFAULT_MAX_INSTANCES_PER_MODEL: usize = 64;
/// `--max-model-threads`: ONNX Runtime threads of one version, instances × threads per instance.
pub(crate) const DEFAULT_MAX_MODEL_THREADS: usize = 256;
/// `--max-tokenizer-threads`: a text model's `tokenizer_threads`.
pub(crate) const DEFAULT_MAX_TOKENIZER_THREADS: usize = 16;
/// `--max-warmup-bytes`: input bytes of one warmup sample (all inputs, whole batch).
pub(crate) const DEFAULT_MAX_WARMUP_BYTES: usize = 256 << 20;
/// `--max-text-length`: a text model's `max_length` in tokens (config or tokenizer file).
pub(crate) const DEFAULT_MAX_TEXT_LENGTH: usize = 8192;

/// The ceilings, from the server's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigLimits {
    pub instances_per_model: usize,
    pub model_threads: usize,
    pub tokenizer_threads: usize,
    pub warmup_bytes: usize,
    pub text_length: usize,
    /// False when ONNX Runtime runs every session on its global thread pool: sessions then own
    /// no threads, and only instances count (the pool itself is bounded once, at startup).
    pub session_threads: bool,
}

impl Default for ConfigLimits {
    fn default() -> Self {
        ConfigLimits {
            instances_per_model: DEFAULT_MAX_INSTANCES_PER_MODEL,
            model_threads: DEFAULT_MAX_MODEL_THREADS,
            tokenizer_threads: DEFAULT_MAX_TOKENIZER_THREADS,
            warmup_bytes: DEFAULT_MAX_WARMUP_BYTES,
            text_length: DEFAULT_MAX_TEXT_LENGTH,
            session_threads: true,
        }
    }
}

impl ConfigLimits {
    /// Instances and ONNX Runtime threads of a version; call before creating any session.
    /// Threads per instance are `intra_op_thread_count` (0 = the server shares the cores out,
    /// counted as 1) plus `inter_op_thread_count`; none with the global thread pool, which
    /// ignores those parameters.
    pub fn check_instances(&self, spec: &ModelSpec) -> Result<()> {
        let instances = spec
            .instances
            .iter()
            .fold(0usize, |n, g| n.saturating_add(g.count as usize));
        if instances > self.instances_per_model {
            return Err(Error::invalid_arg(format!(
                "model '{}': instance_group asks for {instances} instances, more than --max-instances-per-model {}",
                spec.name, self.instances_per_model
            )));
        }
        if !self.session_threads {
            return Ok(());
        }
        let per_instance = spec
            .ort
            .intra_op_threads
            .max(1)
            .saturating_add(spec.ort.inter_op_threads);
        let threads = instances.saturating_mul(per_instance);
        if threads > self.model_threads {
            return Err(Error::invalid_arg(format!(
                "model '{}': {instances} instances × {per_instance} threads (intra_op_thread_count {} + inter_op_thread_count {}) = {threads} threads, more than --max-model-threads {}",
                spec.name, spec.ort.intra_op_threads, spec.ort.inter_op_threads, self.model_threads
            )));
        }
        Ok(())
    }

    /// A text model's `max_length` (0 = not resolved yet) and `tokenizer_threads`.
    pub fn check_text(&self, model: &str, max_length: usize, threads: usize) -> Result<()> {
        if max_length > self.text_length {
            return Err(Error::invalid_arg(format!(
                "model '{model}': max_length {max_length} is more than --max-text-length {}",
                self.text_length
            )));
        }
        if threads > self.tokenizer_threads {
            return Err(Error::invalid_arg(format!(
                "model '{model}': tokenizer_threads {threads} is more than --max-tokenizer-threads {}",
                self.tokenizer_threads
            )));
        }
        Ok(())
    }

    /// Bytes of one warmup sample; `None` = the size overflowed while being computed.
    pub fn check_warmup(&self, model: &str, sample: &str, bytes: Option<usize>) -> Result<()> {
        match bytes {
            Some(n) if n <= self.warmup_bytes => Ok(()),
            _ => Err(Error::invalid_arg(format!(
                "model '{model}': model_warmup '{sample}' needs {} bytes of input data, more than --max-warmup-bytes {}",
                bytes.map_or_else(|| format!("more than {}", usize::MAX), |n| n.to_string()),
                self.warmup_bytes
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceKind, InstanceSpec, OrtOptions};

    fn spec(counts: &[u32], intra: usize, inter: usize) -> ModelSpec {
        ModelSpec {
            instances: counts
                .iter()
                .map(|&count| InstanceSpec {
                    name: "g".into(),
                    kind: DeviceKind::Cpu,
                    count,
                })
                .collect(),
            ort: OrtOptions {
                intra_op_threads: intra,
                inter_op_threads: inter,
                ..Default::default()
            },
            name: "m".into(),
            version: 1,
            max_batch_size: 0,
            inputs: vec![],
            outputs: vec![],
            model_path: "model.onnx".into(),
            dynamic_batching: None,
            text: None,
            sequence: None,
        }
    }

    #[test]
    fn instances_and_threads() {
        let l = ConfigLimits::default();
        assert!(l.check_instances(&spec(&[32, 32], 4, 0)).is_ok());
        assert_eq!(
            l.check_instances(&spec(&[100_000], 0, 0))
                .unwrap_err()
                .message,
            "model 'm': instance_group asks for 100000 instances, more than --max-instances-per-model 64"
        );
        assert_eq!(
            l.check_instances(&spec(&[u32::MAX, u32::MAX], 0, 0))
                .unwrap_err()
                .code(),
            crate::error::Code::InvalidArg
        );
        assert_eq!(
            l.check_instances(&spec(&[8], 32, 1)).unwrap_err().message,
            "model 'm': 8 instances × 33 threads (intra_op_thread_count 32 + inter_op_thread_count 1) = 264 threads, more than --max-model-threads 256"
        );
        assert!(
            l.check_instances(&spec(&[1], usize::MAX, usize::MAX))
                .is_err()
        );
        // With the global thread pool the sessions own no threads: only instances count.
        let global = ConfigLimits {
            session_threads: false,
            ..l
        };
        assert!(global.check_instances(&spec(&[8], 32, 1)).is_ok());
        assert!(global.check_instances(&spec(&[65], 1, 0)).is_err());
    }

    #[test]
    fn text_and_warmup() {
        let l = ConfigLimits::default();
        assert!(l.check_text("t", 8192, 16).is_ok());
        assert_eq!(
            l.check_text("t", 1 << 40, 1).unwrap_err().message,
            "model 't': max_length 1099511627776 is more than --max-text-length 8192"
        );
        assert_eq!(
            l.check_text("t", 0, 100_000).unwrap_err().message,
            "model 't': tokenizer_threads 100000 is more than --max-tokenizer-threads 16"
        );
        assert!(l.check_warmup("m", "w", Some(256 << 20)).is_ok());
        assert_eq!(
            l.check_warmup("m", "w", Some((256 << 20) + 1))
                .unwrap_err()
                .message,
            "model 'm': model_warmup 'w' needs 268435457 bytes of input data, more than --max-warmup-bytes 268435456"
        );
        assert!(l.check_warmup("m", "w", None).is_err());
    }
}
