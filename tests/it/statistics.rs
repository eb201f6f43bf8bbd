//! ModelStatistics counting rules (behaviour.md §6).

use std::time::{SystemTime, UNIX_EPOCH};

use nereid::pb::inference::{ModelStatistics, ModelStatisticsRequest, StatisticDuration};
use tonic::Code;

use crate::common::*;

async fn stats(
    s: &TestServer,
    name: &str,
    version: &str,
) -> Result<Vec<ModelStatistics>, tonic::Status> {
    let mut c = s.client.clone();
    c.model_statistics(ModelStatisticsRequest {
        name: name.into(),
        version: version.into(),
    })
    .await
    .map(|r| r.into_inner().model_stats)
}

fn dur(d: &Option<StatisticDuration>) -> StatisticDuration {
    d.expect("duration present")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_after_successful_requests() {
    let s = TestServer::bundled_subset(&["simple", "simple_nobatch"]).await;
    let before = stats(&s, "simple", "").await.unwrap();
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].name, "simple");
    assert_eq!(before[0].version, "1");
    assert_eq!(before[0].inference_count, 0);
    assert_eq!(before[0].execution_count, 0);
    assert_eq!(before[0].last_inference, 0);
    assert!(before[0].batch_stats.is_empty());

    // Failed validation is not counted (behaviour.md §2 notes).
    let (a, b) = simple_operands(1, 1);
    let mut bad = simple_request("simple", 1, &a, &b);
    bad.inputs[0].datatype = "FP32".into();
    s.infer(bad).await.unwrap_err();
    let (a9, b9) = simple_operands(9, 1);
    s.infer(simple_request("simple", 9, &a9, &b9))
        .await
        .unwrap_err();

    // 4 requests of 1 row, 2 of 3 rows: N = 6, rows = 10.
    let start_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for rows in [1i64, 3, 1, 1, 3, 1] {
        let (a, b) = simple_operands(rows as usize, rows as i32);
        let resp = s
            .infer(simple_request("simple", rows, &a, &b))
            .await
            .unwrap();
        assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
    }
    let end_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    let all = stats(&s, "simple", "").await.unwrap();
    assert_eq!(all.len(), 1);
    let m = &all[0];
    assert_eq!(m.inference_count, 10);
    assert_eq!(m.execution_count, 6);
    assert!(
        m.last_inference >= start_ms && m.last_inference <= end_ms,
        "{} not in [{start_ms}, {end_ms}]",
        m.last_inference
    );
    let inf = m.inference_stats.as_ref().expect("inference_stats present");
    let success = dur(&inf.success);
    assert_eq!(success.count, 6);
    assert!(success.ns > 0);
    assert_eq!(dur(&inf.fail).count, 0);
    assert_eq!(dur(&inf.queue).count, 6, "queue.count equals success.count");
    for (what, d) in [
        ("compute_input", &inf.compute_input),
        ("compute_infer", &inf.compute_infer),
        ("compute_output", &inf.compute_output),
    ] {
        assert_eq!(dur(d).count, 6, "{what}");
    }
    assert!(dur(&inf.compute_infer).ns > 0);
    assert!(
        success.ns >= dur(&inf.compute_infer).ns,
        "end-to-end covers compute"
    );
    assert_eq!(dur(&inf.cache_hit).count, 0);
    assert_eq!(dur(&inf.cache_miss).count, 0);

    let mut batches: Vec<(u64, u64)> = m
        .batch_stats
        .iter()
        .map(|b| {
            let infer = dur(&b.compute_infer);
            assert_eq!(dur(&b.compute_input).count, infer.count);
            assert_eq!(dur(&b.compute_output).count, infer.count);
            assert!(infer.ns > 0);
            (b.batch_size, infer.count)
        })
        .collect();
    batches.sort_unstable();
    assert_eq!(batches, vec![(1, 4), (3, 2)]);

    // Version "1" is the same record; other models are untouched.
    assert_eq!(stats(&s, "simple", "1").await.unwrap(), all);
    let other = stats(&s, "simple_nobatch", "").await.unwrap();
    assert_eq!(other[0].inference_count, 0);
    assert_eq!(other[0].execution_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_batching_model_counts_one_per_request() {
    let s = TestServer::bundled_subset(&["simple", "simple_nobatch"]).await;
    for seed in 0..3 {
        let (a, b) = simple_operands(1, seed);
        s.infer(simple_request("simple_nobatch", 0, &a, &b))
            .await
            .unwrap();
    }
    let m = &stats(&s, "simple_nobatch", "").await.unwrap()[0];
    assert_eq!(m.inference_count, 3);
    assert_eq!(m.execution_count, 3);
    assert_eq!(m.batch_stats.len(), 1);
    assert_eq!(m.batch_stats[0].batch_size, 1);
    assert_eq!(dur(&m.batch_stats[0].compute_infer).count, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_have_separate_statistics() {
    let s = TestServer::bundled_subset(&["simple", "simple_versions"]).await;
    let (a, b) = simple_operands(2, 1);
    let mut req = simple_request("simple_versions", 2, &a, &b);
    req.model_version = "2".into();
    s.infer(req).await.unwrap();
    let both = stats(&s, "simple_versions", "").await.unwrap();
    let versions: Vec<(&str, u64)> = both
        .iter()
        .map(|m| (m.version.as_str(), m.inference_count))
        .collect();
    assert_eq!(versions, vec![("2", 2), ("3", 0)]);
    let only3 = stats(&s, "simple_versions", "3").await.unwrap();
    assert_eq!(only3.len(), 1);
    assert_eq!(only3[0].version, "3");
    assert_eq!(only3[0].execution_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_or_version() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let st = assert_status(stats(&s, "nope", "").await, Code::InvalidArgument, &[]);
    assert_eq!(st.message(), "requested model 'nope' is not available");
    let st = assert_status(stats(&s, "simple", "2").await, Code::InvalidArgument, &[]);
    assert_eq!(
        st.message(),
        "requested model version is not available for model 'simple'"
    );
    assert_status(
        stats(&s, "simple", "abc").await,
        Code::InvalidArgument,
        &["'abc'"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_name_returns_every_ready_version() {
    let s = TestServer::bundled().await;
    let all = stats(&s, "", "").await.unwrap();
    // 19 models, simple_versions with two READY versions.
    assert_eq!(all.len(), BUNDLED_MODELS + 1);
    let mut keys: Vec<(String, String)> = all
        .iter()
        .map(|m| (m.name.clone(), m.version.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), all.len(), "no duplicates");
    assert!(keys.contains(&("simple_versions".into(), "2".into())));
    assert!(keys.contains(&("simple_versions".into(), "3".into())));
    assert!(keys.contains(&("add_sub_autocomplete".into(), "1".into())));
    for m in &all {
        assert!(m.inference_stats.is_some(), "{m:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_model_is_not_listed() {
    let repo = repo_with(&[("simple", "simple"), ("broken", "simple")]);
    std::fs::write(repo.path().join("broken/1/model.onnx"), b"junk").unwrap();
    let s = TestServer::start_with(repo.path(), |c| c.exit_on_error = false).await;
    let all = stats(&s, "", "").await.unwrap();
    let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["simple"]);
    assert_status(
        stats(&s, "broken", "").await,
        Code::InvalidArgument,
        &["requested model 'broken' is not available"],
    );
}
