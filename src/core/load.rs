//! Samples of the serving load for `nereid_load_ratio` (telemetry/load_ratio.rs): for every
//! loaded version, its busy instances (the stats recorder), queued requests (the scheduler),
//! healthy instances (the load tracker) and batch size.

use std::sync::atomic::Ordering;

use super::Core;
use crate::telemetry::load_ratio::VersionLoad;

impl Core {
    /// Folds the load of every READY version, now, into the smoothed load ratios.
    pub fn sample_load(&self) {
        let versions = self.manager.ready_versions("");
        let loads: Vec<VersionLoad<'_>> = versions
            .iter()
            .map(|m| VersionLoad {
                model: &m.spec.name,
                busy: m.stats.busy_instances(),
                queued: m.scheduler.queued(),
                max_batch_size: m.spec.max_batch_size as usize,
                healthy: m.load.healthy.load(Ordering::Relaxed),
            })
            .collect();
        self.telemetry
            .load_ratio
            .observe(tokio::time::Instant::now(), &loads);
    }
}
