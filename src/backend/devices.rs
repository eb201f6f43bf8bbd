//! GPU discovery through the CUDA driver API (cudarc, loaded at run time). A machine without
//! the driver simply has no GPUs: nothing here panics or fails the server.

#![allow(unsafe_code)]

use cudarc::driver::{CudaContext, sys};

/// Ids of the CUDA devices this process can use; empty without a driver or a device.
pub fn visible_gpus() -> Vec<i32> {
    // SAFETY: only probes whether libcuda can be loaded; cudarc panics on first use otherwise.
    if !unsafe { sys::is_culib_present() } {
        tracing::debug!("no CUDA driver (libcuda.so) found: CPU only");
        return Vec::new();
    }
    match CudaContext::device_count() {
        Ok(n) => {
            tracing::info!(gpus = n, "CUDA devices found");
            (0..n).collect()
        }
        Err(e) => {
            tracing::info!("CUDA driver present but no usable device: {e:?}");
            Vec::new()
        }
    }
}
