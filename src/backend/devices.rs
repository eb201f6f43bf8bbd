//! GPU discovery through the CUDA driver API (cudarc, loaded at run time). A machine without
//! the driver simply has no GPUs: nothing here panics or fails the server.

#![allow(unsafe_code)]

use cudarc::driver::{CudaContext, sys};

/// Ids of the CUDA devices this process can use; empty without a driver or a device.
pub(crate) fn visible_gpus() -> Vec<i32> {
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

/// (free, total) bytes of GPU `id`, from the driver.
pub(crate) fn memory_info(id: i32) -> Result<(u64, u64), String> {
    // SAFETY: as above; guards cudarc's panic when the driver library is missing.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver (libcuda.so) found".into());
    }
    let ctx = CudaContext::new(id as usize).map_err(|e| format!("GPU {id}: {e:?}"))?;
    let (free, total) = ctx.mem_get_info().map_err(|e| format!("GPU {id}: {e:?}"))?;
    Ok((free as u64, total as u64))
}

/// Decides whether a load that needs `need` more bytes fits on a GPU with `free` of `total`
/// bytes, and stays under `limit` (a fraction of `total`, `--model-load-gpu-limit`).
pub(crate) fn admit(
    device: i32,
    need: u64,
    free: u64,
    total: u64,
    limit: Option<f64>,
) -> Result<(), String> {
    if need > free {
        return Err(format!(
            "GPU {device} has {} MiB free, the load needs an estimated {} MiB",
            free >> 20,
            need >> 20
        ));
    }
    if let Some(limit) = limit {
        let used_after = total.saturating_sub(free) + need;
        if used_after as f64 > limit * total as f64 {
            return Err(format!(
                "loading would use {:.1}% of GPU {device} ({} of {} MiB), above --model-load-gpu-limit {device}:{limit}",
                used_after as f64 * 100.0 / total as f64,
                used_after >> 20,
                total >> 20
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_arithmetic() {
        const G: u64 = 1 << 30;
        assert!(admit(0, 2 * G, 4 * G, 8 * G, None).is_ok());
        assert!(
            admit(0, 5 * G, 4 * G, 8 * G, None)
                .unwrap_err()
                .contains("4096 MiB free")
        );
        // 4 GiB used + 2 GiB = 75% of 8 GiB: over a 0.7 limit, under 0.8.
        assert!(
            admit(0, 2 * G, 4 * G, 8 * G, Some(0.7))
                .unwrap_err()
                .contains("75.0%")
        );
        assert!(admit(0, 2 * G, 4 * G, 8 * G, Some(0.8)).is_ok());
    }

    #[test]
    fn no_driver_is_an_empty_list_not_a_panic() {
        // On machines without a driver (CI) this must simply be empty; with one it lists ids.
        let gpus = visible_gpus();
        assert!(gpus.iter().enumerate().all(|(i, id)| i as i32 == *id));
    }
}
