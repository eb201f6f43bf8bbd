//! The sequence batcher's own series (Triton has none): sequences holding a slot, sequences
//! waiting for one, and slots freed by the idle timeout. Labelled `{model, version}`, present
//! only for versions with `sequence_batching`, updated only through the stats recorder.

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntGauge, Opts};

use super::metrics::{LABEL_MODEL, LABEL_VERSION};

pub(crate) const SEQUENCE_ACTIVE: &str = "nereid_sequence_active";
pub(crate) const SEQUENCE_BACKLOG: &str = "nereid_sequence_backlog";
pub(crate) const SEQUENCE_IDLE_RELEASED: &str = "nereid_sequence_idle_released_total";

pub(crate) struct SequenceMetrics {
    pub active: IntGauge,
    pub backlog: IntGauge,
    pub idle_released: IntCounter,
}

impl SequenceMetrics {
    pub(crate) fn new(model: &str, version: i64) -> Self {
        let v = version.to_string();
        let o = |name: &str, help: &str| {
            Opts::new(name, help)
                .const_label(LABEL_MODEL, model)
                .const_label(LABEL_VERSION, v.as_str())
        };
        // Names and labels are constants (checked by the test below): construction cannot fail.
        SequenceMetrics {
            active: IntGauge::with_opts(o(
                SEQUENCE_ACTIVE,
                "Sequences holding a sequence slot (running, or ending after their END request)",
            ))
            .expect("valid gauge"),
            backlog: IntGauge::with_opts(o(
                SEQUENCE_BACKLOG,
                "New sequences waiting in the backlog for a free sequence slot",
            ))
            .expect("valid gauge"),
            idle_released: IntCounter::with_opts(o(
                SEQUENCE_IDLE_RELEASED,
                "Sequence slots released because their sequence was idle longer than max_sequence_idle_microseconds",
            ))
            .expect("valid counter"),
        }
    }

    pub(crate) fn families(&self) -> Vec<MetricFamily> {
        let mut out = self.active.collect();
        out.extend(self.backlog.collect());
        out.extend(self.idle_released.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_carry_model_and_version() {
        let m = SequenceMetrics::new("seq", 2);
        m.active.set(3);
        m.idle_released.inc();
        let f = m.families();
        let names: Vec<&str> = f.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [SEQUENCE_ACTIVE, SEQUENCE_BACKLOG, SEQUENCE_IDLE_RELEASED]
        );
        let labels = f[0].get_metric()[0].get_label();
        assert_eq!(labels.len(), 2);
        assert_eq!(f[0].get_metric()[0].get_gauge().get_value(), 3.0);
    }
}
