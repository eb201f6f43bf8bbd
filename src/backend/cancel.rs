//! A load's stop signal. The manager cancels a load that is no longer wanted (superseded by a
//! newer load of the same model, unloaded, or the server shuts down); the loader checks
//! `is_cancelled` between steps, and a run in progress is stopped through the hook its backend
//! registered (ONNX Runtime's terminate flag, in `ort/`).

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

type Hook = Box<dyn Fn() + Send + Sync>;

#[derive(Clone, Default)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    /// Why the load was stopped (first cancel wins).
    reason: Mutex<Option<String>>,
    hooks: Mutex<Vec<(u64, Hook)>>,
    next: AtomicU64,
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl CancelToken {
    /// Stops the work: sets the flag and calls every registered hook once. Later calls only
    /// keep the first reason.
    pub fn cancel(&self, reason: &str) {
        {
            let mut r = self.inner.reason.lock();
            if r.is_none() {
                *r = Some(reason.to_string());
            }
        }
        self.inner.cancelled.store(true, Ordering::SeqCst);
        let hooks = self.inner.hooks.lock();
        for (_, hook) in hooks.iter() {
            hook();
        }
    }

    /// Whether `other` is a clone of this token.
    pub fn same(&self, other: &CancelToken) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Why `cancel` was called ("unloaded", "superseded by a newer load", ...).
    pub fn reason(&self) -> Option<String> {
        self.inner.reason.lock().clone()
    }

    /// Calls `hook` on `cancel` (at once when already cancelled) until the guard is dropped.
    pub fn on_cancel(&self, hook: impl Fn() + Send + Sync + 'static) -> HookGuard {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.inner.hooks.lock().push((id, Box::new(hook)));
        // A cancel that raced the registration may have missed the hook: call it here too.
        if self.is_cancelled()
            && let Some((_, h)) = self.inner.hooks.lock().iter().find(|(i, _)| *i == id)
        {
            h();
        }
        HookGuard {
            token: self.clone(),
            id,
        }
    }
}

/// Unregisters a hook when dropped.
pub struct HookGuard {
    token: CancelToken,
    id: u64,
}

impl Drop for HookGuard {
    fn drop(&mut self) {
        self.token.inner.hooks.lock().retain(|(i, _)| *i != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn hooks_run_on_cancel_and_after_it() {
        let t = CancelToken::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let guard = t.on_cancel(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        assert!(!t.is_cancelled());
        t.cancel("unloaded");
        t.cancel("superseded");
        assert!(t.is_cancelled());
        assert_eq!(t.reason().as_deref(), Some("unloaded"));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        drop(guard);
        let c = calls.clone();
        let _late = t.on_cancel(move || {
            c.fetch_add(10, Ordering::SeqCst);
        });
        assert_eq!(calls.load(Ordering::SeqCst), 12, "a late hook runs at once");
    }
}
