//! The metrics listener: Triton's `nv_*` families with Triton's names and labels
//! (behaviour.md §7), our histograms, gauges and rejections, and agreement with ModelStatistics.

use nereid::pb::inference::ModelStatisticsRequest;
use tonic::Code;

use crate::common::*;

const SIMPLE: &str = r#"model="simple",version="1""#;

fn failure(model: &str, reason: &str) -> String {
    format!(r#"model="{model}",reason="{reason}",version="1""#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_exist_at_load_with_triton_names_and_labels() {
    let s = TestServer::bundled_subset(&["simple", "simple_versions"]).await;
    let text = s.metrics().await;
    for (family, kind) in [
        ("nv_inference_request_success", "counter"),
        ("nv_inference_request_failure", "counter"),
        ("nv_inference_count", "counter"),
        ("nv_inference_exec_count", "counter"),
        ("nv_inference_request_duration_us", "counter"),
        ("nv_inference_queue_duration_us", "counter"),
        ("nv_inference_compute_input_duration_us", "counter"),
        ("nv_inference_compute_infer_duration_us", "counter"),
        ("nv_inference_compute_output_duration_us", "counter"),
        ("nv_inference_pending_request_count", "gauge"),
        ("nv_model_load_duration_secs", "gauge"),
        ("nv_cpu_utilization", "gauge"),
        ("nv_cpu_memory_total_bytes", "gauge"),
        ("nv_cpu_memory_used_bytes", "gauge"),
        ("nereid_inference_request_duration_seconds", "histogram"),
        ("nereid_inference_queue_duration_seconds", "histogram"),
        ("nereid_inference_compute_duration_seconds", "histogram"),
        ("nereid_inference_batch_size", "histogram"),
        ("nereid_inference_queue_depth", "gauge"),
        ("nereid_inference_request_rejected_total", "counter"),
        ("nereid_inference_rejection_duration_seconds", "histogram"),
        ("nereid_batcher_lateness_seconds", "histogram"),
        ("nereid_model_instances", "gauge"),
        ("nereid_model_instances_busy", "gauge"),
        ("nereid_model_state", "gauge"),
    ] {
        let line = format!("# TYPE {family} {kind}");
        assert_eq!(text.matches(&line).count(), 1, "one '{line}'");
    }
    assert!(!text.contains("nv_inference_request_success_total"));
    assert_eq!(
        sample(&text, "nv_inference_request_success", SIMPLE),
        Some(0.0)
    );
    for reason in ["REJECTED", "CANCELED", "BACKEND", "OTHER"] {
        assert_eq!(
            sample(
                &text,
                "nv_inference_request_failure",
                &failure("simple", reason)
            ),
            Some(0.0),
            "failure series for {reason}"
        );
    }
    assert_eq!(
        sample(&text, "nv_inference_pending_request_count", SIMPLE),
        Some(0.0)
    );
    assert!(sample(&text, "nv_model_load_duration_secs", SIMPLE).unwrap() > 0.0);
    assert!(sample(&text, "nereid_model_instances", SIMPLE).unwrap() >= 1.0);
    assert_eq!(
        sample(
            &text,
            "nereid_model_state",
            r#"model="simple",state="READY",version="1""#
        ),
        Some(1.0)
    );
    // Every loaded version of simple_versions has its own series.
    assert!(text.contains(r#"nv_inference_request_success{model="simple_versions",version="#));
    assert!(
        sample(&text, "process_resident_memory_bytes", "").is_none(),
        "no labels: plain name"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("process_resident_memory_bytes "))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_requests_and_agree_with_statistics() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    // Two of one row, one of three rows: 3 requests, 5 inferences, 3 executions.
    for rows in [1i64, 3, 1] {
        let (a, b) = simple_operands(rows as usize, 2);
        s.infer(simple_request("simple", rows, &a, &b))
            .await
            .unwrap();
    }
    // Refused before queueing: counted as a rejection, not as a Triton failure.
    let (a, b) = simple_operands(1, 1);
    let mut bad = simple_request("simple", 1, &a, &b);
    bad.inputs[0].datatype = "FP32".into();
    assert_status(s.infer(bad).await, Code::InvalidArgument, &[]);

    let text = s.metrics().await;
    let get = |name: &str| sample(&text, name, SIMPLE).unwrap_or_else(|| panic!("{name}"));
    assert_eq!(get("nv_inference_request_success"), 3.0);
    assert_eq!(get("nv_inference_count"), 5.0);
    assert_eq!(get("nv_inference_exec_count"), 3.0);
    assert_eq!(get("nv_inference_pending_request_count"), 0.0);
    assert_eq!(get("nereid_inference_request_duration_seconds_count"), 3.0);
    assert_eq!(get("nereid_inference_queue_duration_seconds_count"), 3.0);
    assert_eq!(get("nereid_inference_compute_duration_seconds_count"), 3.0);
    assert_eq!(get("nereid_inference_batch_size_sum"), 5.0);
    assert_eq!(get("nereid_model_instances_busy"), 0.0);
    assert_eq!(
        sample(
            &text,
            "nereid_inference_request_rejected_total",
            r#"model="simple",reason="invalid",version="1""#
        ),
        Some(1.0)
    );
    for reason in ["REJECTED", "CANCELED", "BACKEND", "OTHER"] {
        assert_eq!(
            sample(
                &text,
                "nv_inference_request_failure",
                &failure("simple", reason)
            ),
            Some(0.0)
        );
    }

    let mut c = s.client.clone();
    let st = c
        .model_statistics(ModelStatisticsRequest {
            name: "simple".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .model_stats
        .remove(0);
    let inf = st.inference_stats.unwrap();
    assert_eq!(
        inf.success.unwrap().count as f64,
        get("nv_inference_request_success")
    );
    assert_eq!(st.inference_count as f64, get("nv_inference_count"));
    assert_eq!(st.execution_count as f64, get("nv_inference_exec_count"));
    // Whole microseconds per request: within one µs per request of the statistics' ns.
    let us = get("nv_inference_request_duration_us");
    let ns = inf.success.unwrap().ns as f64;
    assert!(
        us <= ns / 1000.0 && us >= ns / 1000.0 - 3.0,
        "{us} µs vs {ns} ns"
    );
}

/// A copy of `simple` named `dyn` with one instance and `dynamic_batching { <db> }`.
fn dynamic_repo(db: &str) -> tempfile::TempDir {
    let repo = repo_with(&[("dyn", "simple")]);
    let text = read_config(repo.path(), "dyn");
    write_config(
        repo.path(),
        "dyn",
        &format!(
            "{text}\ninstance_group [ {{ count: 1 kind: KIND_CPU }} ]\ndynamic_batching {{ {db} }}\n"
        ),
    );
    repo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_gauges_timeouts_and_full_queues() {
    let repo = dynamic_repo(
        "max_queue_delay_microseconds: 3600000000 priority_levels: 2 default_priority_level: 2 \
         default_queue_policy { max_queue_size: 2 default_timeout_microseconds: 3000000 }",
    );
    let s = TestServer::start(repo.path()).await.owning(repo);
    let labels = r#"model="dyn",version="1""#;
    // Two requests wait at the default level (2) until their queue timeout (3 s) expires; the
    // delay (an hour) never releases them. The checks below wait on the gauges, not the clock;
    // they need only finish within those 3 s, a margin that the server's own clock sets.
    let mut waiting = Vec::new();
    for i in 0..2 {
        let mut c = s.client.clone();
        waiting.push(tokio::spawn(async move {
            let (a, b) = simple_operands(1, i);
            c.model_infer(simple_request("dyn", 1, &a, &b)).await
        }));
    }
    s.wait_pending("dyn", 2).await;
    let text = s.metrics().await;
    assert_eq!(
        sample(&text, "nv_inference_pending_request_count", labels),
        Some(2.0)
    );
    let depth = |t: &str, level: u32| {
        sample(
            t,
            "nereid_inference_queue_depth",
            &format!(r#"model="dyn",priority_level="{level}",version="1""#),
        )
    };
    assert_eq!(depth(&text, 2), Some(2.0));
    assert_eq!(depth(&text, 1), Some(0.0));
    // The level is full: refused at once.
    let (a, b) = simple_operands(1, 3);
    assert_status(
        s.infer(simple_request("dyn", 1, &a, &b)).await,
        Code::Unavailable,
        &["Exceeds maximum queue size"],
    );
    for w in waiting {
        assert_status(
            w.await.unwrap(),
            Code::Unavailable,
            &["Request timeout expired"],
        );
    }
    let text = s.metrics().await;
    assert_eq!(
        sample(&text, "nv_inference_pending_request_count", labels),
        Some(0.0)
    );
    assert_eq!(depth(&text, 2), Some(0.0));
    assert_eq!(
        sample(
            &text,
            "nv_inference_request_failure",
            &failure("dyn", "REJECTED")
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "nereid_inference_request_rejected_total",
            r#"model="dyn",reason="queue_full",version="1""#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "nv_inference_request_success", labels),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_counters_can_be_turned_off_and_the_listener_follows_triton() {
    let s =
        TestServer::bundled_subset_with(&["simple"], |c| c.metrics.counter_latencies = false).await;
    let text = s.metrics().await;
    assert!(!text.contains("nv_inference_request_duration_us"));
    assert!(text.contains("nv_inference_request_success"));
    let (status, body) = http_get(s.metrics_addr, "GET", "/metrics/").await;
    assert_eq!(status, 200);
    assert!(body.contains("nv_inference_count"));
    let (status, body) = http_get(s.metrics_addr, "POST", "/metrics").await;
    assert_eq!(
        (status, body.as_str()),
        (405, r#"{"error":"Method Not Allowed"}"#)
    );
    let (status, body) = http_get(s.metrics_addr, "GET", "/elsewhere").await;
    assert_eq!((status, body.as_str()), (404, r#"{"error":"Not Found"}"#));
    let (status, _) = http_get(s.metrics_addr, "DELETE", "/elsewhere").await;
    assert_eq!(status, 405);
}
