//! The scaling signal: `nereid_load_ratio`, how much of its serving capacity each model (and
//! the whole server) is using, smoothed over `--load-ratio-window-secs`.
//!
//! For one model version: (busy instances + queued requests ÷ max(1, max_batch_size)) ÷
//! healthy instances. Queued requests count in batches, since one execution takes up to
//! `max_batch_size` of them: 1.0 means every healthy instance is busy with nothing waiting,
//! 2.0 means a full round of batches waits behind them. A model's series sums the numerators
//! and the healthy instances of its loaded versions; the server-wide series (no `model`
//! label) sums them over every model, so one busy model among idle ones still shows, unlike
//! Triton's queue time averaged over models. Healthy instances count at least one, so a model
//! whose instances are all out keeps a finite ratio.
//!
//! Each series is an exponentially weighted moving average over time: a sample `dt` after the
//! previous one moves the average by `1 - exp(-dt / window)` of the way to the new value, so
//! samples taken at uneven times (the periodic refresh, each scrape) weigh by the time they
//! stand for. A window of 0 reports the latest sample unsmoothed.

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, Opts};
use tokio::time::Instant;

use super::metrics::{LABEL_MODEL, LOAD_RATIO};

/// The default `--load-ratio-window-secs`.
pub(crate) const DEFAULT_WINDOW: Duration = Duration::from_secs(30);

/// One loaded model version's load at the moment of a sample.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VersionLoad<'a> {
    pub model: &'a str,
    /// Instances executing a batch now.
    pub busy: usize,
    /// Requests accepted and waiting for an instance.
    pub queued: usize,
    pub max_batch_size: usize,
    /// Instances taking work (circuit breakers closed).
    pub healthy: usize,
}

impl VersionLoad<'_> {
    /// The numerator: busy instances plus the batches the queue holds.
    fn work(&self) -> f64 {
        self.busy as f64 + self.queued as f64 / self.max_batch_size.max(1) as f64
    }
}

/// Work and capacity summed over versions.
#[derive(Default, Clone, Copy)]
struct Sum {
    work: f64,
    healthy: usize,
}

impl Sum {
    fn ratio(self) -> f64 {
        self.work / self.healthy.max(1) as f64
    }
}

#[derive(Default)]
struct Averages {
    last: Option<Instant>,
    server: f64,
    models: BTreeMap<String, f64>,
}

/// The smoothed load ratios, updated by `observe` and rendered by `families`.
pub struct LoadRatio {
    window: Duration,
    averages: Mutex<Averages>,
}

impl Default for LoadRatio {
    fn default() -> Self {
        LoadRatio::new(DEFAULT_WINDOW)
    }
}

impl LoadRatio {
    pub fn new(window: Duration) -> Self {
        LoadRatio {
            window,
            averages: Mutex::new(Averages::default()),
        }
    }

    /// The weight of a sample taken `dt` after the previous one.
    fn weight(&self, dt: Duration) -> f64 {
        if self.window.is_zero() {
            return 1.0;
        }
        1.0 - (-dt.as_secs_f64() / self.window.as_secs_f64()).exp()
    }

    /// Folds the versions loaded `now` into the averages. A model seen for the first time
    /// starts at its sample; a model no longer loaded is dropped.
    pub(crate) fn observe(&self, now: Instant, versions: &[VersionLoad<'_>]) {
        let mut per_model: BTreeMap<&str, Sum> = BTreeMap::new();
        let mut server = Sum::default();
        for v in versions {
            let s = per_model.entry(v.model).or_default();
            s.work += v.work();
            s.healthy = s.healthy.saturating_add(v.healthy);
            server.work += v.work();
            server.healthy = server.healthy.saturating_add(v.healthy);
        }
        let mut avg = self.averages.lock();
        let w = match avg.last {
            None => 1.0,
            Some(last) => self.weight(now.saturating_duration_since(last)),
        };
        avg.last = Some(now);
        avg.server += w * (server.ratio() - avg.server);
        avg.models
            .retain(|name, _| per_model.contains_key(name.as_str()));
        for (name, sum) in per_model {
            match avg.models.get_mut(name) {
                Some(a) => *a += w * (sum.ratio() - *a),
                None => {
                    avg.models.insert(name.to_string(), sum.ratio());
                }
            }
        }
    }

    /// The server-wide average, then each model's.
    pub(crate) fn values(&self) -> (f64, Vec<(String, f64)>) {
        let avg = self.averages.lock();
        let models = avg.models.iter().map(|(m, v)| (m.clone(), *v)).collect();
        (avg.server, models)
    }

    /// `nereid_load_ratio` (server-wide) and `nereid_load_ratio{model}`.
    pub(crate) fn families(&self) -> Vec<MetricFamily> {
        let help = "Load on serving capacity, (busy instances + queued requests / max(1, max_batch_size)) / healthy instances, as an EWMA over --load-ratio-window-secs; without a model label: summed over every model";
        let (server, models) = self.values();
        let mut out = Vec::new();
        let g = Gauge::with_opts(Opts::new(LOAD_RATIO, help)).expect("valid gauge");
        g.set(server);
        out.extend(g.collect());
        for (model, v) in models {
            let g = Gauge::with_opts(Opts::new(LOAD_RATIO, help).const_label(LABEL_MODEL, model))
                .expect("valid gauge");
            g.set(v);
            out.extend(g.collect());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(model: &str, busy: usize, queued: usize, mbs: usize, healthy: usize) -> VersionLoad<'_> {
        VersionLoad {
            model,
            busy,
            queued,
            max_batch_size: mbs,
            healthy,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[tokio::test(start_paused = true)]
    async fn the_ratio_counts_queued_requests_in_batches_and_sums_versions() {
        let r = LoadRatio::new(Duration::ZERO);
        let now = Instant::now();
        // a: 1 busy of 2, 8 queued in batches of 4 → (1 + 2) / 2. b: two versions, idle and
        // full (mbs 0 counts each request as one execution) → (0 + 1 + 3) / (1 + 1).
        r.observe(
            now,
            &[v("a", 1, 8, 4, 2), v("b", 0, 0, 0, 1), v("b", 1, 3, 0, 1)],
        );
        let (server, models) = r.values();
        assert_eq!(models.len(), 2);
        assert!(close(models[0].1, 1.5), "{models:?}");
        assert!(close(models[1].1, 2.0), "{models:?}");
        // Sums: (3 + 4) / (2 + 2).
        assert!(close(server, 1.75), "{server}");
        // No healthy instance: divided by one, not by zero.
        r.observe(now, &[v("a", 0, 6, 2, 0)]);
        let (server, models) = r.values();
        assert!(close(server, 3.0) && models == [("a".to_string(), 3.0)]);
        // An empty server is at rest.
        r.observe(now, &[]);
        assert_eq!(r.values(), (0.0, vec![]));
    }

    #[tokio::test(start_paused = true)]
    async fn the_average_moves_by_the_time_each_sample_stands_for() {
        let r = LoadRatio::new(Duration::from_secs(30));
        let t0 = Instant::now();
        r.observe(t0, &[v("m", 0, 0, 1, 1)]);
        // 30 s at 1.0 after 0.0: 1 - e^-1 of the way.
        r.observe(t0 + Duration::from_secs(30), &[v("m", 1, 0, 1, 1)]);
        let want = 1.0 - (-1.0f64).exp();
        let (server, models) = r.values();
        assert!(close(server, want) && close(models[0].1, want), "{server}");
        // Three samples 10 s apart weigh as one 30 s apart.
        let r2 = LoadRatio::new(Duration::from_secs(30));
        r2.observe(t0, &[v("m", 0, 0, 1, 1)]);
        for s in [10, 20, 30] {
            r2.observe(t0 + Duration::from_secs(s), &[v("m", 1, 0, 1, 1)]);
        }
        assert!(close(r2.values().0, want));
        let text = super::super::metrics::render(r.families(), None, &Default::default());
        assert!(text.contains("# TYPE nereid_load_ratio gauge"), "{text}");
        assert!(
            text.contains("nereid_load_ratio{model=\"m\"} 0.63"),
            "{text}"
        );
        assert!(text.contains("\nnereid_load_ratio 0.63"), "{text}");
    }
}
