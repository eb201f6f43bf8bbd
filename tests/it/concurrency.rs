//! Many requests in flight at once on one model.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_all_succeed() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let mut tasks = Vec::new();
    for i in 0..32i32 {
        // Half share the server's connection, half open their own.
        let mut client = if i % 2 == 0 {
            s.client.clone()
        } else {
            s.new_client().await
        };
        tasks.push(tokio::spawn(async move {
            let rows = (i % 8 + 1) as usize;
            let (a, b) = simple_operands(rows, i);
            let mut req = simple_request("simple", rows as i64, &a, &b);
            req.id = format!("c{i}");
            let resp = client.model_infer(req).await.map(|r| r.into_inner());
            (i, rows, a, b, resp)
        }));
    }
    let mut total_rows = 0;
    for t in tasks {
        let (i, rows, a, b, resp) = tokio::time::timeout(RPC_TIMEOUT, t)
            .await
            .expect("no hang")
            .expect("task ran");
        let resp = resp.unwrap_or_else(|e| panic!("request {i}: {e:?}"));
        assert_eq!(resp.id, format!("c{i}"));
        assert_eq!(output(&resp, "OUTPUT0").0.shape, vec![rows as i64, 16]);
        assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b), "request {i}");
        assert_eq!(output_i32(&resp, "OUTPUT1"), sub(&a, &b), "request {i}");
        total_rows += rows as u64;
    }
    let mut c = s.client.clone();
    let st = c
        .model_statistics(nereid::pb::inference::ModelStatisticsRequest {
            name: "simple".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let m = &st.model_stats[0];
    assert_eq!(m.inference_count, total_rows);
    assert_eq!(
        m.inference_stats.as_ref().unwrap().success.unwrap().count,
        32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_across_models() {
    let s = TestServer::bundled_subset(&["simple", "simple_nobatch", "simple_versions"]).await;
    let mut tasks = Vec::new();
    for i in 0..16i32 {
        let client = s.client.clone();
        let model = ["simple", "simple_versions", "simple_nobatch", "simple"][i as usize % 4];
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let (a, b) = simple_operands(1, i);
            let rows = if model == "simple_nobatch" { 0 } else { 1 };
            let resp = client
                .model_infer(simple_request(model, rows, &a, &b))
                .await
                .unwrap()
                .into_inner();
            let offset = if model == "simple_versions" { 2 } else { 0 };
            let want: Vec<i32> = add(&a, &b).iter().map(|x| x + offset).collect();
            assert_eq!(output_i32(&resp, "OUTPUT0"), want, "{model} request {i}");
        }));
    }
    for t in tasks {
        tokio::time::timeout(RPC_TIMEOUT, t)
            .await
            .expect("no hang")
            .expect("task succeeded");
    }
}
