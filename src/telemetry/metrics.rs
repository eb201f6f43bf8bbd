//! Prometheus metrics: every family name this server exposes, the per-model-version metric
//! objects the stats recorder (`stats::ModelStats`) updates, and the `/metrics` exposition.
//!
//! Ownership: each loaded model version owns its metric objects (inside its recorder); a scrape
//! gathers them from the versions loaded at that moment, so a version's series appear at load
//! (initialised to 0, as in Triton) and disappear when the version is dropped. Nothing is
//! registered globally, so several servers in one process (the integration tests) never mix.
//!
//! Triton's families (`nv_*`, behaviour.md §7) keep Triton's names, labels and types: counters
//! have no `_total` suffix. Families Triton lacks are prefixed `nereid_` and follow Prometheus'
//! conventions (base units, `_total` on counters). `process_*` come from the prometheus crate's
//! process collector under their standard names.

use std::collections::BTreeMap;

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, Opts};

use super::system::SystemMetrics;
use crate::error::{Rejection, label_enum};

// Triton's per-model families.
pub(crate) const REQUEST_SUCCESS: &str = "nv_inference_request_success";
pub(crate) const REQUEST_FAILURE: &str = "nv_inference_request_failure";
pub(crate) const INFERENCE_COUNT: &str = "nv_inference_count";
pub(crate) const EXEC_COUNT: &str = "nv_inference_exec_count";
pub(crate) const REQUEST_DURATION_US: &str = "nv_inference_request_duration_us";
pub(crate) const QUEUE_DURATION_US: &str = "nv_inference_queue_duration_us";
pub(crate) const COMPUTE_INPUT_DURATION_US: &str = "nv_inference_compute_input_duration_us";
pub(crate) const COMPUTE_INFER_DURATION_US: &str = "nv_inference_compute_infer_duration_us";
pub(crate) const COMPUTE_OUTPUT_DURATION_US: &str = "nv_inference_compute_output_duration_us";
pub(crate) const PENDING_REQUEST_COUNT: &str = "nv_inference_pending_request_count";
pub(crate) const MODEL_LOAD_DURATION_SECS: &str = "nv_model_load_duration_secs";

label_enum! {
    /// Why an accepted request failed: Triton's `reason` label of `nv_inference_request_failure`.
    pub enum FailureReason {
        /// The queue timeout expired.
        Rejected => "REJECTED",
        /// The client went away before execution.
        Canceled => "CANCELED",
        /// The model execution failed.
        Backend => "BACKEND",
        Other => "OTHER",
    }
}
// Ours.
pub(crate) const REQUEST_SECONDS: &str = "nereid_inference_request_duration_seconds";
pub(crate) const QUEUE_SECONDS: &str = "nereid_inference_queue_duration_seconds";
pub(crate) const COMPUTE_SECONDS: &str = "nereid_inference_compute_duration_seconds";
pub(crate) const BATCH_SIZE: &str = "nereid_inference_batch_size";
pub(crate) const QUEUE_DEPTH: &str = "nereid_inference_queue_depth";
pub(crate) const REJECTED: &str = "nereid_inference_request_rejected_total";
pub(crate) const REJECTION_SECONDS: &str = "nereid_inference_rejection_duration_seconds";
pub(crate) const BATCHER_LATENESS: &str = "nereid_batcher_lateness_seconds";
pub(crate) const INSTANCES: &str = "nereid_model_instances";
pub(crate) const INSTANCES_BUSY: &str = "nereid_model_instances_busy";
pub(crate) const MODEL_STATE: &str = "nereid_model_state";
/// The scaling signal (`load_ratio.rs`).
pub(crate) const LOAD_RATIO: &str = "nereid_load_ratio";

pub(crate) const LABEL_MODEL: &str = "model";
pub(crate) const LABEL_VERSION: &str = "version";
pub(crate) const LABEL_REASON: &str = "reason";
pub(crate) const LABEL_PRIORITY: &str = "priority_level";
pub(crate) const LABEL_STATE: &str = "state";

/// Latency buckets in seconds: 100 µs .. 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Time-to-refusal buckets in seconds: 25 µs .. 1 s (refusals are meant to take well under 2 ms).
const REJECTION_BUCKETS: [f64; 15] = [
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.005, 0.01, 0.025,
    0.1, 0.25, 1.0,
];
/// Batcher lateness buckets in seconds: 5 µs .. 10 ms.
const LATENESS_BUCKETS: [f64; 12] = [
    0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.0015, 0.002, 0.005, 0.01,
];
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// What `--metrics-config` and `--allow-cpu-metrics` select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsOptions {
    /// The five `nv_*_duration_us` counters (`counter_latencies`, default true).
    pub counter_latencies: bool,
    pub cpu_metrics: bool,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        MetricsOptions {
            counter_latencies: true,
            cpu_metrics: true,
        }
    }
}

/// One model version's metric objects, labelled `{model, version}`. Updated only by the recorder.
pub(crate) struct ModelMetrics {
    pub success: IntCounter,
    /// One per `FailureReason`, at its `index()`; read through `failure`.
    failures: [IntCounter; FailureReason::ALL.len()],
    pub inference_count: IntCounter,
    pub exec_count: IntCounter,
    pub request_us: IntCounter,
    pub queue_us: IntCounter,
    pub compute_input_us: IntCounter,
    pub compute_infer_us: IntCounter,
    pub compute_output_us: IntCounter,
    pub pending: IntGauge,
    pub load_secs: Gauge,
    pub request_seconds: Histogram,
    pub queue_seconds: Histogram,
    pub compute_seconds: Histogram,
    pub batch_size: Histogram,
    /// One per priority level (index 0 = level 1, the highest).
    pub queue_depth: Vec<IntGauge>,
    /// One per `Rejection`, at its `index()`; read through `rejected`.
    rejections: [IntCounter; Rejection::ALL.len()],
    pub rejection_seconds: Histogram,
    /// How long after its queue delay ended a delayed batch was dispatched.
    pub batcher_lateness: Histogram,
    pub instances: IntGauge,
    pub instances_busy: IntGauge,
}

fn opts(name: &str, help: &str, model: &str, version: &str) -> Opts {
    Opts::new(name, help)
        .const_label(LABEL_MODEL, model)
        .const_label(LABEL_VERSION, version)
}

// Names and labels are constants checked by the unit test below, so construction cannot fail.
fn counter(o: Opts) -> IntCounter {
    IntCounter::with_opts(o).expect("valid metric name and labels")
}

fn gauge(o: Opts) -> IntGauge {
    IntGauge::with_opts(o).expect("valid metric name and labels")
}

fn histogram(name: &str, help: &str, model: &str, version: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(
        HistogramOpts::new(name, help)
            .const_label(LABEL_MODEL, model)
            .const_label(LABEL_VERSION, version)
            .buckets(buckets.to_vec()),
    )
    .expect("valid histogram")
}

impl ModelMetrics {
    pub(crate) fn new(model: &str, version: i64, priority_levels: usize) -> Self {
        let v = version.to_string();
        let o = |name: &str, help: &str| opts(name, help, model, &v);
        // Series in the order of `ALL`, so that `index()` finds each reason's counter.
        let failures = FailureReason::ALL.map(|r| {
            counter(
                o(
                    REQUEST_FAILURE,
                    "Number of failed inference requests, all batch sizes",
                )
                .const_label(LABEL_REASON, r.label()),
            )
        });
        let rejections = Rejection::ALL.map(|r| {
            counter(
                o(
                    REJECTED,
                    "Requests refused before being queued (not counted by nv_inference_request_failure)",
                )
                .const_label(LABEL_REASON, r.label()),
            )
        });
        ModelMetrics {
            success: counter(o(
                REQUEST_SUCCESS,
                "Number of successful inference requests, all batch sizes",
            )),
            failures,
            inference_count: counter(o(
                INFERENCE_COUNT,
                "Number of inferences performed (does not include cached requests)",
            )),
            exec_count: counter(o(
                EXEC_COUNT,
                "Number of model executions performed (does not include cached requests)",
            )),
            request_us: counter(o(
                REQUEST_DURATION_US,
                "Cumulative inference request duration in microseconds (includes cached requests)",
            )),
            queue_us: counter(o(
                QUEUE_DURATION_US,
                "Cumulative inference queuing duration in microseconds (includes cached requests)",
            )),
            compute_input_us: counter(o(
                COMPUTE_INPUT_DURATION_US,
                "Cumulative compute input duration in microseconds (does not include cached requests)",
            )),
            compute_infer_us: counter(o(
                COMPUTE_INFER_DURATION_US,
                "Cumulative compute inference duration in microseconds (does not include cached requests)",
            )),
            compute_output_us: counter(o(
                COMPUTE_OUTPUT_DURATION_US,
                "Cumulative inference compute output duration in microseconds (does not include cached requests)",
            )),
            pending: gauge(o(
                PENDING_REQUEST_COUNT,
                "Instantaneous number of pending requests awaiting execution per-model.",
            )),
            load_secs: Gauge::with_opts(o(
                MODEL_LOAD_DURATION_SECS,
                "Model load time in seconds",
            ))
            .expect("valid gauge"),
            request_seconds: histogram(
                REQUEST_SECONDS,
                "End-to-end duration of successful requests, from acceptance to response",
                model,
                &v,
                &LATENCY_BUCKETS,
            ),
            queue_seconds: histogram(
                QUEUE_SECONDS,
                "Time successful requests waited in the queue before their execution started",
                model,
                &v,
                &LATENCY_BUCKETS,
            ),
            compute_seconds: histogram(
                COMPUTE_SECONDS,
                "Duration of each model execution (input + infer + output)",
                model,
                &v,
                &LATENCY_BUCKETS,
            ),
            batch_size: histogram(
                BATCH_SIZE,
                "Rows per model execution (the executed batch size)",
                model,
                &v,
                &BATCH_BUCKETS,
            ),
            queue_depth: (1..=priority_levels.max(1))
                .map(|level| {
                    gauge(
                        o(
                            QUEUE_DEPTH,
                            "Requests accepted and not yet executing, per priority level (1 = highest)",
                        )
                        .const_label(LABEL_PRIORITY, level.to_string()),
                    )
                })
                .collect(),
            rejections,
            rejection_seconds: histogram(
                REJECTION_SECONDS,
                "Time from a request's arrival (its headers) to its refusal by the server's admission limits",
                model,
                &v,
                &REJECTION_BUCKETS,
            ),
            batcher_lateness: histogram(
                BATCHER_LATENESS,
                "Dynamic batcher lateness: dispatch time minus the oldest request's arrival minus max_queue_delay, for batches dispatched when that delay ended",
                model,
                &v,
                &LATENESS_BUCKETS,
            ),
            instances: gauge(o(INSTANCES, "Model instances (execution threads) loaded")),
            instances_busy: gauge(o(INSTANCES_BUSY, "Model instances executing a batch now")),
        }
    }

    /// The counter of failures for `why`.
    pub(crate) fn failure(&self, why: FailureReason) -> &IntCounter {
        &self.failures[why.index()]
    }

    /// The counter of refusals for `why`.
    pub(crate) fn rejected(&self, why: Rejection) -> &IntCounter {
        &self.rejections[why.index()]
    }

    /// The families of this version, as the scrape renders them.
    pub(crate) fn families(&self, opts: &MetricsOptions) -> Vec<MetricFamily> {
        let mut out = Vec::with_capacity(32);
        let mut add = |c: &dyn Collector| out.extend(c.collect());
        add(&self.success);
        self.failures.iter().for_each(|c| add(c));
        add(&self.inference_count);
        add(&self.exec_count);
        if opts.counter_latencies {
            add(&self.request_us);
            add(&self.queue_us);
            add(&self.compute_input_us);
            add(&self.compute_infer_us);
            add(&self.compute_output_us);
        }
        add(&self.pending);
        add(&self.load_secs);
        add(&self.request_seconds);
        add(&self.queue_seconds);
        add(&self.compute_seconds);
        add(&self.batch_size);
        self.queue_depth.iter().for_each(|g| add(g));
        self.rejections.iter().for_each(|c| add(c));
        add(&self.rejection_seconds);
        add(&self.batcher_lateness);
        add(&self.instances);
        add(&self.instances_busy);
        out
    }
}

/// One row of the model-state family: (model, version, state). Version is empty for a model
/// that failed before any version was tried.
pub(crate) struct StateRow<'a> {
    pub model: &'a str,
    pub version: String,
    pub state: &'a str,
}

/// The families of model states (`nereid_model_state{model,version,state} 1`).
pub(crate) fn state_families(rows: &[StateRow<'_>]) -> Vec<MetricFamily> {
    rows.iter()
        .flat_map(|r| {
            let g = gauge(
                opts(
                    MODEL_STATE,
                    "Lifecycle state of each model version known to the server (value 1)",
                    r.model,
                    &r.version,
                )
                .const_label(LABEL_STATE, r.state),
            );
            g.set(1);
            g.collect()
        })
        .collect()
}

/// Renders the Prometheus text exposition of `families` plus the server-wide families.
/// Families with the same name (one per model version) are merged under one HELP/TYPE.
pub(crate) fn render(
    families: Vec<MetricFamily>,
    system: Option<&SystemMetrics>,
    opts: &MetricsOptions,
) -> String {
    let mut by_name: BTreeMap<String, MetricFamily> = BTreeMap::new();
    let mut all = families;
    if let Some(sys) = system {
        all.extend(sys.families(opts.cpu_metrics));
    }
    for mut mf in all {
        match by_name.get_mut(mf.name()) {
            Some(existing) => existing.mut_metric().extend(mf.take_metric()),
            None => {
                by_name.insert(mf.name().to_string(), mf);
            }
        }
    }
    let merged: Vec<MetricFamily> = by_name.into_values().collect();
    let mut out = String::new();
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&merged, &mut out) {
        tracing::error!("failed to encode metrics: {e}");
    }
    out
}

/// The metrics listener's routes (http-protocol.md §11): `GET /metrics` (and `/metrics/`) is
/// the exposition; any other method, on any path, is 405 as in Triton; a GET of any other path
/// is 404 (Triton answers 200 with an empty body; a 404 makes a health check aimed at the
/// metrics port fail instead of passing by mistake). Served by the front-ends' accept layer.
pub(crate) fn router<F>(render: F) -> axum::Router
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    use axum::http::{Method, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;

    let handler = move || {
        let render = render.clone();
        async move {
            (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                render(),
            )
        }
    };
    let not_allowed = || async {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"Method Not Allowed"}"#,
        )
    };
    let route = get(handler).fallback(not_allowed);
    axum::Router::new()
        .route("/metrics", route.clone())
        .route("/metrics/", route)
        .fallback(move |method: Method| async move {
            if method == Method::GET {
                (
                    StatusCode::NOT_FOUND,
                    [(header::CONTENT_TYPE, "application/json")],
                    r#"{"error":"Not Found"}"#,
                )
                    .into_response()
            } else {
                not_allowed().await.into_response()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_version_series_start_at_zero_with_triton_labels() {
        let m = ModelMetrics::new("simple", 1, 2);
        let text = render(
            m.families(&MetricsOptions::default()),
            None,
            &Default::default(),
        );
        assert!(
            text.contains("# TYPE nv_inference_request_success counter"),
            "{text}"
        );
        assert!(text.contains(r#"nv_inference_request_success{model="simple",version="1"} 0"#));
        for reason in FailureReason::ALL.map(FailureReason::label) {
            let line = format!(
                r#"nv_inference_request_failure{{model="simple",reason="{reason}",version="1"}} 0"#
            );
            assert!(text.contains(&line), "missing {line}");
        }
        // Every refusal reason, in the order of `Rejection::ALL`.
        let reasons: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(REJECTED))
            .filter_map(|l| l.split(r#"reason=""#).nth(1)?.split('"').next())
            .collect();
        assert_eq!(
            reasons,
            [
                "queue_full",
                "invalid",
                "stopping",
                "deadline",
                "shed_priority",
                "model_not_ready",
                "server_draining",
                "server_busy",
                "too_large"
            ]
        );
        assert!(text.contains(
            r#"nereid_inference_queue_depth{model="simple",priority_level="2",version="1"} 0"#
        ));
        assert!(!text.contains("nv_inference_request_success_total"));
        assert_eq!(
            text.matches("# TYPE nv_inference_request_failure").count(),
            1
        );
    }

    #[test]
    fn versions_merge_into_one_family_and_latency_counters_can_be_off() {
        let a = ModelMetrics::new("m", 1, 1);
        let b = ModelMetrics::new("m", 2, 1);
        a.success.inc_by(3);
        let no_latency = MetricsOptions {
            counter_latencies: false,
            cpu_metrics: false,
        };
        let mut fams = a.families(&no_latency);
        fams.extend(b.families(&no_latency));
        let text = render(fams, None, &no_latency);
        assert_eq!(
            text.matches("# HELP nv_inference_request_success ").count(),
            1
        );
        assert!(text.contains(r#"nv_inference_request_success{model="m",version="1"} 3"#));
        assert!(text.contains(r#"nv_inference_request_success{model="m",version="2"} 0"#));
        assert!(!text.contains(REQUEST_DURATION_US));
    }

    #[test]
    fn state_rows_render() {
        let rows = [StateRow {
            model: "broken",
            version: "1".into(),
            state: "UNAVAILABLE",
        }];
        let text = render(state_families(&rows), None, &Default::default());
        assert!(
            text.contains(
                r#"nereid_model_state{model="broken",state="UNAVAILABLE",version="1"} 1"#
            )
        );
    }
}
