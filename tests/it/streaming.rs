//! ModelStreamInfer (grpc-protocol.md §7): one response per request, in arrival order, errors
//! in-band unless `triton_grpc_error: true`, OK after the client half-closes.

use nereid::pb::inference::infer_parameter::ParameterChoice;
use nereid::pb::inference::{ModelInferRequest, ModelStreamInferResponse};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::common::*;

/// `simple`, plus copies `slow` (a lone request waits 300 ms for a batch) and `expiring`
/// (a lone request times out in the queue after 100 ms).
fn stream_repo() -> tempfile::TempDir {
    let repo = repo_with(&[
        ("simple", "simple"),
        ("slow", "simple"),
        ("expiring", "simple"),
    ]);
    for (name, db) in [
        ("slow", "max_queue_delay_microseconds: 300000"),
        (
            "expiring",
            "max_queue_delay_microseconds: 5000000 default_queue_policy { default_timeout_microseconds: 100000 }",
        ),
    ] {
        let text = read_config(repo.path(), name);
        write_config(
            repo.path(),
            name,
            &format!(
                "{text}\ninstance_group [ {{ count: 1 kind: KIND_CPU }} ]\ndynamic_batching {{ {db} }}\n"
            ),
        );
    }
    repo
}

fn request(model: &str, id: &str, seed: i32) -> ModelInferRequest {
    let (a, b) = simple_operands(1, seed);
    let mut r = simple_request(model, 1, &a, &b);
    r.id = id.into();
    r
}

fn is_final(r: &ModelStreamInferResponse) -> Option<bool> {
    r.infer_response
        .as_ref()?
        .parameters
        .get("triton_final_response")
        .and_then(|p| match p.parameter_choice {
            Some(ParameterChoice::BoolParam(b)) => Some(b),
            _ => None,
        })
}

/// Sends `reqs` then half-closes; returns every item the server wrote, in order.
async fn exchange(
    s: &TestServer,
    reqs: Vec<ModelInferRequest>,
    hard_errors: bool,
) -> Vec<Result<ModelStreamInferResponse, tonic::Status>> {
    let mut c = s.client.clone();
    let mut call = tonic::Request::new(tokio_stream::iter(reqs));
    if hard_errors {
        call.metadata_mut()
            .insert("triton_grpc_error", "true".parse().unwrap());
    }
    let mut responses = tokio::time::timeout(RPC_TIMEOUT, c.model_stream_infer(call))
        .await
        .expect("stream opens")
        .expect("stream accepted")
        .into_inner();
    let mut out = Vec::new();
    while let Some(item) = tokio::time::timeout(RPC_TIMEOUT, responses.next())
        .await
        .expect("stream makes progress")
    {
        let end = item.is_err();
        out.push(item);
        if end {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_in_arrival_order_with_in_band_errors() {
    let repo = stream_repo();
    let s = TestServer::start(repo.path()).await.owning(repo);
    let mut bad = request("simple", "bad-dtype", 3);
    bad.inputs[0].datatype = "FP32".into();
    let reqs = vec![
        request("slow", "r0", 0),     // completes last, answered first
        request("simple", "r1", 1),   // completes at once
        request("expiring", "r2", 2), // queue timeout: an error from the model's queue
        bad,                          // refused by validation
        request("nope", "r4", 4),     // unknown model
        request("simple", "r5", 5),
    ];
    let out = exchange(&s, reqs, false).await;
    assert_eq!(out.len(), 6, "one response per request, then OK: {out:?}");
    let out: Vec<ModelStreamInferResponse> = out.into_iter().map(|r| r.expect("in-band")).collect();
    let ids: Vec<&str> = out
        .iter()
        .map(|r| r.infer_response.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(ids, ["r0", "r1", "r2", "bad-dtype", "r4", "r5"]);
    for (i, seed) in [(0, 0), (1, 1), (5, 5)] {
        let r = &out[i];
        assert!(r.error_message.is_empty(), "{r:?}");
        let resp = r.infer_response.as_ref().unwrap();
        let (a, b) = simple_operands(1, seed);
        assert_eq!(output_i32(resp, "OUTPUT0"), add(&a, &b));
        assert_eq!(resp.model_name, if i == 0 { "slow" } else { "simple" });
        assert_eq!(is_final(r), Some(true));
    }
    assert!(
        out[2].error_message.contains("Request timeout expired"),
        "{:?}",
        out[2]
    );
    assert_eq!(is_final(&out[2]), Some(true), "the model's queue answered");
    assert!(out[3].error_message.contains("FP32"), "{:?}", out[3]);
    assert!(
        out[4].error_message.contains("unknown model"),
        "{:?}",
        out[4]
    );
    for r in &out[2..5] {
        let resp = r.infer_response.as_ref().unwrap();
        assert!(resp.outputs.is_empty() && resp.raw_output_contents.is_empty());
        assert!(resp.model_name.is_empty(), "cleared except the id");
    }
    assert_eq!(is_final(&out[3]), None, "rejected before execution");
    assert_eq!(is_final(&out[4]), None, "rejected before execution");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_grpc_error_ends_the_stream_with_the_first_error() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let mut bad = request("simple", "bad", 2);
    bad.inputs[0].shape = vec![1, 15];
    let reqs = vec![
        request("simple", "ok", 1),
        bad,
        request("simple", "never", 3),
    ];
    let out = exchange(&s, reqs, true).await;
    assert_eq!(out.len(), 2, "{out:?}");
    let first = out[0].as_ref().expect("first succeeds");
    assert_eq!(first.infer_response.as_ref().unwrap().id, "ok");
    let status = out[1].as_ref().expect_err("the error ends the stream");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_duplex_many_requests_across_models() {
    let s = TestServer::bundled_subset(&["simple", "simple_identity"]).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<ModelInferRequest>(8);
    let mut c = s.client.clone();
    let mut responses = c
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    const N: i32 = 300;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            let model = if i % 3 == 0 {
                "simple_identity"
            } else {
                "simple"
            };
            let r = if model == "simple" {
                request(model, &i.to_string(), i)
            } else {
                let words = [format!("a{i}"), format!("b{i}")];
                let mut r = raw_request(
                    model,
                    vec![(input("INPUT0", "BYTES", &[1, 2]), bytes_tensor(&words))],
                );
                r.id = i.to_string();
                r
            };
            tx.send(r).await.unwrap();
        }
        // Dropping `tx` half-closes the stream.
    });
    for i in 0..N {
        let r = tokio::time::timeout(RPC_TIMEOUT, responses.next())
            .await
            .expect("progress")
            .expect("a response per request")
            .expect("in-band");
        assert!(r.error_message.is_empty(), "{i}: {}", r.error_message);
        let resp = r.infer_response.unwrap();
        assert_eq!(resp.id, i.to_string());
        let (a, b) = simple_operands(1, i);
        if i % 3 == 0 {
            assert_eq!(
                output_strings(&resp, "OUTPUT0"),
                [format!("a{i}"), format!("b{i}")]
            );
        } else {
            assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
        }
    }
    sender.await.unwrap();
    assert!(responses.next().await.is_none(), "OK after the half-close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_queued_requests() {
    // On the fake backend: its gate holds `dyn`'s one instance, so the request stays queued
    // until the client has gone; the batcher finds it cancelled when the instance frees up.
    let s = crate::overload::fake_server("", |_| {}).await;
    let busy = crate::overload::occupy(&s, 0).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<ModelInferRequest>(1);
    let mut c = s.client.clone();
    let responses = c
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(request("dyn", "gone", 1)).await.unwrap();
    s.wait_pending("dyn", 1).await;
    drop(responses);
    drop(tx);
    // The server has seen the client go: only the held request is still in flight.
    wait_for("the server drops the abandoned request", || async {
        s.core().inflight() == 1
    })
    .await;
    s.gate().open();
    busy.await.unwrap().expect("the held request completes");
    let labels = r#"model="dyn",reason="CANCELED",version="1""#;
    wait_for("the cancellation is counted", || async {
        sample(&s.metrics().await, "nv_inference_request_failure", labels) == Some(1.0)
    })
    .await;
    let canceled = sample(&s.metrics().await, "nv_inference_request_failure", labels);
    assert_eq!(canceled, Some(1.0), "the queued request was cancelled");
    s.assert_still_serving().await;
}
