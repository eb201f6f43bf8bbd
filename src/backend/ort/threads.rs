//! ONNX Runtime's threads on a shared CPU: the process-wide pool that Triton's
//! `--backend-config=onnxruntime,enable-global-threadpool=1` asks for, and whether a pool's idle
//! threads may spin. Pure decisions; `mod.rs` applies them to the environment and the sessions.

/// The global thread pool of the process's ONNX Runtime environment (Triton's ORT backend:
/// `enable-global-threadpool=1` with `intra_op_thread_count` / `inter_op_thread_count`). Every
/// session then runs on it and owns no threads (`DisablePerSessionThreads`), and the models'
/// own `intra_op_thread_count` / `inter_op_thread_count` are ignored, as in Triton.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalThreadPool {
    /// 0 = ONNX Runtime's default (one thread per core).
    pub intra_op_threads: usize,
    /// 0 = ONNX Runtime's default.
    pub inter_op_threads: usize,
}

/// Spawns ONNX Runtime's pool threads as named OS threads: `ort-global` for the global pool,
/// `ort-session` for a session's own pools, so that they are told apart from the runtime's in
/// `top -H` and `/proc/<pid>/task` (ONNX Runtime's own threads inherit their creator's name).
/// ONNX Runtime still sets any thread affinity inside the thread; the stack is 8 MiB, the
/// usual pthread default that ONNX Runtime's own threads get.
pub(crate) struct NamedThreads(pub(crate) &'static str);

pub(crate) const GLOBAL_THREAD_NAME: &str = "ort-global";
pub(crate) const SESSION_THREAD_NAME: &str = "ort-session";

impl ort::environment::ThreadManager for NamedThreads {
    type Thread = std::thread::JoinHandle<()>;

    fn create(&self, work: impl FnOnce() + Send + 'static) -> ort::Result<Self::Thread> {
        std::thread::Builder::new()
            .name(self.0.to_string())
            .stack_size(8 << 20)
            .spawn(work)
            .map_err(|e| ort::Error::new(format!("cannot start an ONNX Runtime thread: {e}")))
    }

    fn join(thread: Self::Thread) -> ort::Result<()> {
        thread
            .join()
            .map_err(|_| ort::Error::new("an ONNX Runtime thread panicked"))
    }
}

/// Whether a thread pool's idle threads spin, and what decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spinning {
    pub(crate) on: bool,
    pub(crate) from_parameter: bool,
}

impl Spinning {
    /// How the load log says it.
    pub(crate) fn as_str(self) -> &'static str {
        if self.on { "on" } else { "off" }
    }

    pub(crate) fn source(self) -> &'static str {
        if self.from_parameter {
            "from parameter"
        } else {
            "default"
        }
    }
}

/// ORT's intra-op pool spins between runs by default. Once `pools` pools of `threads` threads
/// each cover every core, that spinning takes CPU from the network threads and from the other
/// pools, so the default turns it off there; below that ORT's default (on) stands. A model's
/// `parameter` (`session.intra_op.allow_spinning`) overrides the default either way.
pub(crate) fn spinning(
    parameter: Option<bool>,
    pools: usize,
    threads: usize,
    cores: usize,
) -> Spinning {
    match parameter {
        Some(on) => Spinning {
            on,
            from_parameter: true,
        },
        None => Spinning {
            on: pools.max(1).saturating_mul(threads.max(1)) < cores.max(1),
            from_parameter: false,
        },
    }
}

/// The global pool's spinning: one pool of `intra_op_threads` (0 = one per core).
pub(crate) fn global_spinning(pool: GlobalThreadPool, cores: usize) -> Spinning {
    let threads = if pool.intra_op_threads == 0 {
        cores
    } else {
        pool.intra_op_threads
    };
    spinning(None, 1, threads, cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spins_only_while_the_pools_leave_a_core_free() {
        let off = Spinning {
            on: false,
            from_parameter: false,
        };
        let on = Spinning {
            on: true,
            from_parameter: false,
        };
        // 2 instances × 1 thread on 2 cores: every core is covered.
        assert_eq!(spinning(None, 2, 1, 2), off);
        assert_eq!(spinning(None, 2, 2, 4), off);
        assert_eq!(spinning(None, 3, 2, 4), off);
        assert_eq!(spinning(None, 1, 2, 4), on);
        assert_eq!(spinning(None, 1, 1, 16), on);
        // Overflow saturates to "covers every core"; zeros count as one.
        assert_eq!(spinning(None, usize::MAX, usize::MAX, 8), off);
        assert_eq!(spinning(None, 0, 0, 0), off);
        assert_eq!(spinning(None, 0, 0, 2), on);
    }

    #[test]
    fn the_parameter_wins_both_ways() {
        assert_eq!(
            spinning(Some(true), 8, 8, 2),
            Spinning {
                on: true,
                from_parameter: true
            }
        );
        assert_eq!(
            spinning(Some(false), 1, 2, 64),
            Spinning {
                on: false,
                from_parameter: true
            }
        );
        assert_eq!(spinning(Some(false), 1, 2, 64).source(), "from parameter");
        assert_eq!(spinning(None, 1, 2, 64).source(), "default");
    }

    #[test]
    fn the_global_pool_spins_only_below_the_cores() {
        let pool = |intra| GlobalThreadPool {
            intra_op_threads: intra,
            inter_op_threads: 0,
        };
        assert!(!global_spinning(pool(0), 4).on, "0 = one thread per core");
        assert!(!global_spinning(pool(2), 2).on);
        assert!(global_spinning(pool(2), 4).on);
    }
}
