//! `--backend-config=[<backend>,]<key>=<value>`: the ONNX Runtime backend's settings with the
//! names and value spellings of Triton's ORT backend (`onnxruntime_loader.cc`): the default
//! max batch size for auto-complete and the process's global thread pool.

use crate::backend::GlobalThreadPool;

/// What the `--backend-config` flags set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackendSettings {
    pub(crate) default_max_batch_size: u32,
    /// `onnxruntime,enable-global-threadpool=1` with its thread counts.
    pub(crate) global_pool: Option<GlobalThreadPool>,
    /// Settings accepted but not acted on, as `--backend-config=<setting>`.
    pub(crate) ignored: Vec<String>,
}

/// Parses every setting; a malformed one or a bad value is an error naming it. As in Triton,
/// `intra_op_thread_count` / `inter_op_thread_count` size the global pool and mean nothing
/// without `enable-global-threadpool` (they are then reported as ignored), a count of 0 or
/// less is ONNX Runtime's default (one thread per core), and the models' own thread counts are
/// ignored while the global pool is on. `max_threads` (`--max-model-threads`) bounds the pool.
pub(crate) fn parse(settings: &[String], max_threads: usize) -> Result<BackendSettings, String> {
    let mut default_max_batch_size = 4;
    let mut enabled = false;
    let (mut intra, mut inter) = (None, None);
    let mut ignored = Vec::new();
    for setting in settings {
        let (backend, kv) = match setting.split_once(',') {
            Some((b, kv)) => (Some(b), kv),
            None => (None, setting.as_str()),
        };
        let Some((key, value)) = kv.split_once('=') else {
            return Err(format!(
                "--backend-config '{setting}': expected [<backend>,]<key>=<value>"
            ));
        };
        match (backend, key) {
            (None | Some("onnxruntime"), "default-max-batch-size") => {
                default_max_batch_size = value.parse().map_err(|_| {
                    format!("--backend-config '{setting}': default-max-batch-size must be a non-negative integer")
                })?;
            }
            (Some("onnxruntime"), "enable-global-threadpool") => {
                enabled = super::parse_bool(value)
                    .map_err(|e| format!("--backend-config '{setting}': {e}"))?;
            }
            (Some("onnxruntime"), "intra_op_thread_count") => {
                intra = Some((thread_count(setting, key, value)?, setting));
            }
            (Some("onnxruntime"), "inter_op_thread_count") => {
                inter = Some((thread_count(setting, key, value)?, setting));
            }
            _ => ignored.push(format!("--backend-config={setting}")),
        }
    }
    let global_pool = if enabled {
        let pool = GlobalThreadPool {
            intra_op_threads: intra.map_or(0, |(n, _)| n),
            inter_op_threads: inter.map_or(0, |(n, _)| n),
        };
        let threads = pool.intra_op_threads.saturating_add(pool.inter_op_threads);
        if threads > max_threads {
            return Err(format!(
                "--backend-config: the global thread pool's intra_op_thread_count {} + inter_op_thread_count {} = {threads} threads, more than --max-model-threads {max_threads}",
                pool.intra_op_threads, pool.inter_op_threads
            ));
        }
        Some(pool)
    } else {
        for (_, setting) in [intra, inter].into_iter().flatten() {
            ignored.push(format!(
                "--backend-config={setting} (it sizes the global thread pool, which needs --backend-config=onnxruntime,enable-global-threadpool=1)"
            ));
        }
        None
    };
    Ok(BackendSettings {
        default_max_batch_size,
        global_pool,
        ignored,
    })
}

/// A thread count as Triton reads it (an `int`; 0 or less = ONNX Runtime's default, kept as 0).
fn thread_count(setting: &str, key: &str, value: &str) -> Result<usize, String> {
    let n: i32 = value.trim().parse().map_err(|_| {
        format!(
            "--backend-config '{setting}': {key} must be an integer (0 = one thread per core), got '{value}'"
        )
    })?;
    Ok(usize::try_from(n).unwrap_or(0))
}
