//! Overload refusals from a `ModelInfer` call's head: over a raw HTTP/2 connection, a call
//! sends its head and part of its tensors, then stalls. A request the server refuses for
//! overload is answered while its body is still open (the refusal needs only model, id and
//! parameters); one it admits waits for the rest of its body and is answered in full.

use std::time::Duration;

use bytes::Bytes;
use nereid::pb::inference::ModelInferResponse;
use prost::Message;

use crate::common::*;
use crate::overload::{fake_server, occupy, queue_up, rejected_metric, request, shed_server};

/// A gRPC call on its own HTTP/2 connection whose body is sent in parts.
struct RawCall {
    response: h2::client::ResponseFuture,
    body: h2::SendStream<Bytes>,
    /// The whole gRPC-framed message.
    framed: Vec<u8>,
}

impl RawCall {
    /// Opens `ModelInfer` with `req` and sends only its first `first` framed bytes.
    async fn start(
        s: &TestServer,
        req: &nereid::pb::inference::ModelInferRequest,
        first: usize,
    ) -> RawCall {
        let (response, mut body) = raw_grpc_call(s, "ModelInfer").await;
        let framed = grpc_framed(&req.encode_to_vec());
        assert!(first < framed.len(), "the call must stall before its end");
        // The head split over several small DATA frames, as a slow link would deliver it.
        for part in framed[..first].chunks(7) {
            body.send_data(Bytes::copy_from_slice(part), false).unwrap();
        }
        RawCall {
            response,
            body,
            framed,
        }
    }
}

/// A successful call's answer: the whole response body, read under flow control, its
/// trailers saying OK, decoded.
async fn read_answer(resp: http::Response<h2::RecvStream>) -> ModelInferResponse {
    assert_eq!(resp.status(), 200);
    let (data, status) = read_raw_reply(resp).await;
    assert_eq!(status, "0");
    ModelInferResponse::decode(&data[5..]).unwrap()
}

/// Bytes of `req`'s head (fields 1-4) in its gRPC framing, prefix included.
fn head_len(req: &nereid::pb::inference::ModelInferRequest) -> usize {
    let mut head = req.clone();
    head.inputs.clear();
    head.outputs.clear();
    head.raw_input_contents.clear();
    5 + head.encoded_len()
}

/// `grpc-message` decoded (spaces and a few other characters travel percent-encoded).
fn grpc_message(h: &http::HeaderMap) -> String {
    let raw = text(h, "grpc-message").as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            let hex = std::str::from_utf8(&raw[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The header (or trailer) `name` as text.
fn text<'a>(h: &'a http::HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} in {h:?}"))
        .to_str()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overload_refusal_comes_before_the_request_body_has_arrived() {
    let s = fake_server("default_queue_policy { max_queue_size: 2 }", |_| {}).await;
    let busy = occupy(&s, 0).await;
    let queued = queue_up(&s, 2, 0);
    s.wait_pending("dyn", 2).await;

    let mut req = request(0);
    req.id = "stalled-1".into();
    // The head (model, id) and a few bytes of the first tensor; the rest never comes.
    let call = RawCall::start(&s, &req, head_len(&req) + 4).await;
    // The body never completes: any answer comes while it is open (RPC_TIMEOUT catches a hang).
    let resp = tokio::time::timeout(RPC_TIMEOUT, call.response)
        .await
        .expect("refused while the body is still open")
        .unwrap();
    // A trailers-only gRPC answer: the status is in the headers.
    let h = resp.headers();
    assert_eq!(resp.status(), 200);
    assert_eq!(text(h, "grpc-status"), "14", "UNAVAILABLE");
    let msg = grpc_message(h);
    assert_eq!(msg, "[request id: stalled-1] Exceeds maximum queue size");
    let pushback: u64 = text(h, "grpc-retry-pushback-ms").parse().unwrap();
    assert!(pushback > 0);
    assert!(
        h.contains_key("grpc-status-details-bin"),
        "RetryInfo detail"
    );
    // Counted once, as a refusal after the whole body would be, and timed.
    assert_eq!(rejected_metric(&s, "dyn", "queue_full").await, 1);
    let timed = sample(
        &s.metrics().await,
        "nereid_inference_rejection_duration_seconds_count",
        r#"model="dyn",version="1""#,
    );
    assert_eq!(timed, Some(1.0));
    s.gate().open();
    busy.await.unwrap().expect("the held request completes");
    for q in queued {
        q.await.unwrap().expect("accepted requests complete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_decides_by_priority_and_an_admitted_call_waits_for_its_body() {
    let s = shed_server().await;
    let busy = occupy(&s, 2).await;
    let low = queue_up(&s, 2, 2);
    s.wait_pending("dyn", 2).await;

    // Priority 2 is past its high-water mark: refused from the head, priority read from the
    // parameters that precede the tensors.
    let req = request(2);
    let low_call = RawCall::start(&s, &req, head_len(&req) + 1).await;
    let resp = tokio::time::timeout(RPC_TIMEOUT, low_call.response)
        .await
        .expect("refused while the body is still open")
        .unwrap();
    assert_eq!(text(resp.headers(), "grpc-status"), "14");
    let msg = grpc_message(resp.headers());
    assert!(
        msg.contains("high-water mark for priority level 2"),
        "{msg}"
    );
    assert_eq!(rejected_metric(&s, "dyn", "shed_priority").await, 1);

    // Priority 1 has room: no answer while its body is incomplete, then the full answer.
    let (a, b) = simple_operands(1, 1);
    let req = request(1);
    let sent = head_len(&req) + 10;
    let RawCall {
        mut response,
        mut body,
        framed,
    } = RawCall::start(&s, &req, sent).await;
    // An observation of absence, not a bound: no answer within this window. A slow machine
    // can only make it see less, never fail a correct server.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut response)
            .await
            .is_err(),
        "an admitted call is not answered before its body is complete"
    );
    body.send_data(Bytes::copy_from_slice(&framed[sent..]), true)
        .unwrap();
    // Complete, it queues behind the held instance; the gate opens once it waits there.
    s.wait_pending("dyn", 3).await;
    s.gate().open();
    let resp = tokio::time::timeout(RPC_TIMEOUT, response)
        .await
        .expect("answered")
        .unwrap();
    let out = read_answer(resp).await;
    let sum: Vec<i32> = out.raw_output_contents[0]
        .chunks(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let want: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_eq!(sum, want);
    busy.await.unwrap().expect("the held request completes");
    for q in low {
        q.await.unwrap().expect("accepted requests complete");
    }
}

/// A call's arrival is its head's: a refusal decided only once the body is whole is timed from
/// the head, so the time the body took to arrive counts, as over HTTP, where the request is
/// opened before its body is read (and the client's deadline counts from there too). The
/// handler runs only once the message is whole, so a clock read there would leave it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_the_body_is_timed_from_the_head() {
    // simple's two tensors are 128 bytes: the head passes (it has no tensors yet), the whole
    // request is refused as larger than the in-flight cap, a timed refusal.
    let s = TestServer::bundled_subset_with(&["simple"], |c| c.inflight.bytes = 64).await;
    let (a, b) = simple_operands(1, 3);
    let req = simple_request("simple", 1, &a, &b);
    let sent = head_len(&req) + 10;
    let RawCall {
        response,
        mut body,
        framed,
    } = RawCall::start(&s, &req, sent).await;
    // The stimulus, not a wait for state: the body stalls for at least this long (a slow
    // machine only stretches it, which the lower bound below allows).
    let stall = Duration::from_millis(300);
    tokio::time::sleep(stall).await;
    body.send_data(Bytes::copy_from_slice(&framed[sent..]), true)
        .unwrap();
    let resp = tokio::time::timeout(RPC_TIMEOUT, response)
        .await
        .expect("answered")
        .unwrap();
    // A trailers-only answer: the status is in the headers.
    let h = resp.headers();
    assert_eq!(text(h, "grpc-status"), "3", "INVALID_ARGUMENT");
    let msg = grpc_message(h);
    assert!(msg.contains("--max-inflight-bytes"), "{msg}");

    let metrics = s.metrics().await;
    let labels = r#"model="simple",version="1""#;
    let count = sample(
        &metrics,
        "nereid_inference_rejection_duration_seconds_count",
        labels,
    );
    assert_eq!(count, Some(1.0));
    let took = sample(
        &metrics,
        "nereid_inference_rejection_duration_seconds_sum",
        labels,
    )
    .expect("timed");
    assert!(
        took >= stall.as_secs_f64(),
        "the refusal took {took} s from arrival, leaving out the {} ms the body stalled",
        stall.as_millis()
    );
}
