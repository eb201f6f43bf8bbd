//! The live trace settings (global and per-model overrides) and the per-request sampling
//! decision.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{OtelConfig, Settings, TraceConfig, TraceLevel, TraceMode, TraceUpdate};

/// Keys a scope overrides; `None` = the value of the enclosing scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Overrides {
    level: Option<TraceLevel>,
    rate: Option<u32>,
    count: Option<i32>,
    log_frequency: Option<u32>,
}

impl Overrides {
    fn apply(&mut self, u: &TraceUpdate) {
        u.level.apply(&mut self.level);
        u.rate.apply(&mut self.rate);
        u.count.apply(&mut self.count);
        u.log_frequency.apply(&mut self.log_frequency);
    }

    fn over(&self, base: Settings) -> Settings {
        Settings {
            level: self.level.unwrap_or(base.level),
            rate: self.rate.unwrap_or(base.rate),
            count: self.count.unwrap_or(base.count),
            log_frequency: self.log_frequency.unwrap_or(base.log_frequency),
        }
    }
}

/// Sampling state of one scope: requests seen since the last update, traces left.
#[derive(Debug, Default)]
struct Sampler {
    seen: u64,
    remaining: i32,
}

#[derive(Debug, Default)]
struct State {
    global: Overrides,
    global_sampler: Sampler,
    models: HashMap<String, (Overrides, Sampler)>,
}

/// The live trace settings. Sampling takes a lock only while some scope traces.
#[derive(Debug)]
pub struct TraceControl {
    startup: Settings,
    mode: TraceMode,
    file: String,
    otel: OtelConfig,
    state: Mutex<State>,
    /// Some scope has a level other than OFF.
    active: AtomicBool,
}

impl Default for TraceControl {
    fn default() -> Self {
        TraceControl::new(&TraceConfig::default())
    }
}

impl TraceControl {
    pub fn new(cfg: &TraceConfig) -> Self {
        let t = TraceControl {
            startup: cfg.settings,
            mode: cfg.mode(),
            file: cfg.file.clone(),
            otel: cfg.otel.clone(),
            state: Mutex::new(State::default()),
            active: AtomicBool::new(false),
        };
        {
            let mut s = t.state.lock();
            s.global_sampler.remaining = cfg.settings.count;
            t.refresh_active(&s);
        }
        t
    }

    pub fn mode(&self) -> TraceMode {
        self.mode
    }

    fn refresh_active(&self, s: &State) {
        let global = s.global.over(self.startup);
        let any = !global.level.is_off()
            || s.models
                .values()
                .any(|(o, _)| !o.over(global).level.is_off());
        self.active.store(any, Ordering::Release);
    }

    /// Whether this request to `model` is traced. A request carrying a propagated trace context
    /// is traced in opentelemetry mode whatever the rate and count (as Triton does), as long as
    /// tracing is on for the model.
    pub fn sample(&self, model: &str, propagated: bool) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return false;
        }
        let mut s = self.state.lock();
        let s = &mut *s;
        let global = s.global.over(self.startup);
        let (eff, own_count, sampler) = match s.models.get_mut(model) {
            Some((o, sampler)) => (o.over(global), o.count.is_some(), sampler),
            None => (global, true, &mut s.global_sampler),
        };
        if eff.level.is_off() {
            return false;
        }
        if propagated && self.mode == TraceMode::OpenTelemetry {
            return true;
        }
        if eff.rate == 0 {
            return false;
        }
        sampler.seen += 1;
        if !sampler.seen.is_multiple_of(u64::from(eff.rate)) {
            return false;
        }
        // A model without its own count draws from the global one.
        let remaining = if own_count {
            &mut sampler.remaining
        } else {
            &mut s.global_sampler.remaining
        };
        match *remaining {
            0 => false,
            n if n > 0 => {
                *remaining -= 1;
                true
            }
            _ => true,
        }
    }

    /// Applies `u` to the global settings (`model` None) or to the model's overrides, and
    /// restarts that scope's sampling.
    pub fn update(&self, model: Option<&str>, u: &TraceUpdate) {
        let mut s = self.state.lock();
        match model {
            None => {
                s.global.apply(u);
                let count = s.global.over(self.startup).count;
                s.global_sampler = Sampler {
                    seen: 0,
                    remaining: count,
                };
            }
            Some(m) => {
                let global = s.global.over(self.startup);
                let entry = s.models.entry(m.to_string()).or_default();
                entry.0.apply(u);
                entry.1 = Sampler {
                    seen: 0,
                    remaining: entry.0.over(global).count,
                };
            }
        }
        self.refresh_active(&s);
    }

    /// The effective settings of `model` (or the global ones), as Triton reports them. In
    /// opentelemetry mode the export settings follow the common keys.
    pub fn settings(&self, model: Option<&str>) -> Vec<(String, Vec<String>)> {
        let eff = {
            let s = self.state.lock();
            let global = s.global.over(self.startup);
            let mut eff = match model.and_then(|m| s.models.get(m)) {
                Some((o, _)) => o.over(global),
                None => global,
            };
            // Report the traces left, as Triton does.
            eff.count = match model.and_then(|m| s.models.get(m)) {
                Some((o, sampler)) if o.count.is_some() => sampler.remaining,
                _ => s.global_sampler.remaining,
            };
            eff
        };
        let one = |k: &str, v: String| (k.to_string(), vec![v]);
        let mut out = vec![
            ("trace_level".to_string(), eff.level.names()),
            one("trace_rate", eff.rate.to_string()),
            one("trace_count", eff.count.to_string()),
        ];
        match self.mode {
            TraceMode::Triton => {
                out.push(one("log_frequency", eff.log_frequency.to_string()));
                out.push(one("trace_file", self.file.clone()));
            }
            TraceMode::OpenTelemetry => {}
        }
        out.push(one("trace_mode", self.mode.as_str().to_string()));
        if self.mode == TraceMode::OpenTelemetry {
            let o = &self.otel;
            out.push(one("url", o.url.clone()));
            out.push(one("bsp_max_queue_size", o.bsp_max_queue_size.to_string()));
            out.push(one(
                "bsp_schedule_delay",
                o.bsp_schedule_delay.as_millis().to_string(),
            ));
            out.push(one(
                "bsp_max_export_batch_size",
                o.bsp_max_export_batch_size.to_string(),
            ));
            for (k, v) in &o.resource {
                out.push(one("resource", format!("{k}={v}")));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::trace::{Change, TraceConfig, TraceLevel, TraceUpdate};

    fn get<'a>(s: &'a [(String, Vec<String>)], k: &str) -> &'a [String] {
        &s.iter().find(|(key, _)| key == k).unwrap().1
    }

    #[test]
    fn model_overrides_follow_global_for_unset_keys() {
        let t = TraceControl::default();
        assert_eq!(get(&t.settings(None), "trace_level"), ["OFF"]);
        assert_eq!(get(&t.settings(None), "trace_mode"), ["triton"]);
        t.update(
            Some("simple"),
            &TraceUpdate {
                log_frequency: Change::Set(2),
                ..Default::default()
            },
        );
        t.update(
            None,
            &TraceUpdate {
                rate: Change::Set(6),
                ..Default::default()
            },
        );
        let m = t.settings(Some("simple"));
        assert_eq!(get(&m, "trace_rate"), ["6"]);
        assert_eq!(get(&m, "log_frequency"), ["2"]);
        assert_eq!(get(&t.settings(None), "log_frequency"), ["0"]);
        t.update(
            Some("simple"),
            &TraceUpdate {
                log_frequency: Change::Clear,
                ..Default::default()
            },
        );
        assert_eq!(get(&t.settings(Some("simple")), "log_frequency"), ["0"]);
    }

    #[test]
    fn sampling_follows_level_rate_and_count() {
        let t = TraceControl::default();
        assert!(!t.sample("m", false), "OFF by default");
        t.update(
            None,
            &TraceUpdate {
                level: Change::Set(TraceLevel {
                    timestamps: true,
                    tensors: false,
                }),
                rate: Change::Set(2),
                count: Change::Set(2),
                ..Default::default()
            },
        );
        let picks: Vec<bool> = (0..8).map(|_| t.sample("m", false)).collect();
        assert_eq!(
            picks,
            [false, true, false, true, false, false, false, false]
        );
        assert_eq!(get(&t.settings(None), "trace_count"), ["0"]);
        // Propagated contexts bypass rate and count only in opentelemetry mode.
        assert!(!t.sample("m", true));
        let otel = TraceControl::new(
            &TraceConfig::parse(&["mode=opentelemetry", "level=TIMESTAMPS", "rate=0"]).unwrap(),
        );
        assert!(!otel.sample("m", false));
        assert!(otel.sample("m", true));
        assert_eq!(get(&otel.settings(None), "url"), ["http://localhost:4317"]);
    }
}
