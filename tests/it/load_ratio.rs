//! `nereid_load_ratio`, the autoscaling signal: (busy instances + queued requests /
//! max(1, max_batch_size)) / healthy instances, per model and server-wide. The window is 0
//! here, so each scrape shows the ratio of that moment; the smoothing itself is unit-tested
//! on paused time (telemetry/load_ratio.rs).

use crate::common::*;

fn ratio(text: &str, labels: Option<&str>) -> Option<f64> {
    match labels {
        Some(l) => sample(text, "nereid_load_ratio", l),
        None => text
            .lines()
            .find_map(|l| l.strip_prefix("nereid_load_ratio "))
            .and_then(|v| v.trim().parse().ok()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_ratio_counts_busy_instances_and_queued_batches() {
    // Two models of one instance each; `simple` has max_batch_size 8.
    let repo = fake_repo(&["busy", "idle"]);
    for m in ["busy", "idle"] {
        let cfg = read_config(repo.path(), m);
        write_config(
            repo.path(),
            m,
            &format!("{cfg}\ninstance_group [ {{ count: 1 kind: KIND_CPU }} ]\n"),
        );
    }
    let s = TestServer::start_fake_with(repo.path(), |c| {
        c.load_ratio_window = std::time::Duration::ZERO;
    })
    .await;
    let text = s.metrics().await;
    assert_eq!(ratio(&text, Some(r#"model="busy""#)), Some(0.0), "{text}");
    assert_eq!(ratio(&text, None), Some(0.0), "{text}");
    assert!(text.contains("# TYPE nereid_load_ratio gauge"), "{text}");

    // One execution held at the gate, then four requests queued behind it.
    s.gate().close();
    let mut calls = Vec::new();
    let (a, b) = simple_operands(1, 1);
    let first = s.client.clone();
    let req = simple_request("busy", 1, &a, &b);
    calls.push(tokio::spawn(async move {
        let mut c = first;
        c.model_infer(req).await
    }));
    s.wait_fake("the first request executes", |a| a.running == 1)
        .await;
    for _ in 0..4 {
        let mut c = s.client.clone();
        let req = simple_request("busy", 1, &a, &b);
        calls.push(tokio::spawn(async move { c.model_infer(req).await }));
    }
    s.wait_pending("busy", 4).await;
    // busy: (1 + 4 / 8) / 1; idle: 0; the server: (1.5 + 0) / (1 + 1).
    let text = s.metrics().await;
    assert_eq!(ratio(&text, Some(r#"model="busy""#)), Some(1.5), "{text}");
    assert_eq!(ratio(&text, Some(r#"model="idle""#)), Some(0.0), "{text}");
    assert_eq!(ratio(&text, None), Some(0.75), "{text}");

    s.gate().open();
    for c in calls {
        c.await.unwrap().expect("every request is answered");
    }
    wait_for("the load ratio falls back to 0", || async {
        ratio(&s.metrics().await, None) == Some(0.0)
    })
    .await;
}
