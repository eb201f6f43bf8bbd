//! Several servers in one process, and stopping. Tests and embedders start many servers in
//! one process (ARCHITECTURE.md rule 5), so the ONNX Runtime setup must be shareable.

use nereid::pb::inference::ServerMetadataRequest;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_start_one_after_another_in_one_process() {
    let first = TestServer::bundled_subset(&["simple"]).await;
    first.assert_still_serving().await;
    first.stop().await;
    let repo = repo_with(&[("simple", "simple")]);
    let second = TestServer::try_start_with(repo.path(), |_| {})
        .await
        .unwrap_or_else(|e| panic!("a second server in the same process failed to start: {e}"));
    second.assert_still_serving().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_side_by_side() {
    let repo = repo_with(&[("simple", "simple")]);
    let a = TestServer::start_with(repo.path(), |c| c.server_id = "a".into()).await;
    let b = TestServer::start_with(repo.path(), |c| c.server_id = "b".into()).await;
    assert_ne!(a.addr, b.addr);
    for (s, id) in [(&a, "a"), (&b, "b")] {
        let mut c = s.client.clone();
        assert_eq!(
            c.server_metadata(ServerMetadataRequest {})
                .await
                .unwrap()
                .into_inner()
                .name,
            id
        );
        s.assert_still_serving().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_closes_the_endpoint() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let client = s.client.clone();
    s.stop().await;
    // The open connection fails promptly instead of hanging.
    let (a, b) = simple_operands(1, 1);
    let mut c = client;
    let r = tokio::time::timeout(
        RPC_TIMEOUT,
        c.model_infer(simple_request("simple", 1, &a, &b)),
    )
    .await
    .expect("no hang");
    assert!(r.is_err(), "a stopped server answered: {r:?}");
}
