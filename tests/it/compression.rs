//! gRPC compression: gzip and deflate requests, their expanded size held to the message limit
//! and to `--max-inflight-bytes` while they expand, and infer responses compressed as
//! `--grpc-infer-response-compression-level` says.

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};
use nereid::ResponseCompression;
use tonic::Code;
use tonic::codec::CompressionEncoding;

use crate::common::*;

fn encodings() -> [(CompressionEncoding, &'static str); 2] {
    [
        (CompressionEncoding::Gzip, "gzip"),
        (CompressionEncoding::Deflate, "deflate"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_deflate_requests_infer() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    for (encoding, name) in encodings() {
        let mut c = s
            .new_client()
            .await
            .send_compressed(encoding)
            .accept_compressed(encoding);
        let (a, b) = simple_operands(2, 3);
        let resp = c
            .model_infer(simple_request("simple", 2, &a, &b))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        // Level none (the default): the response is not compressed.
        assert!(resp.metadata().get("grpc-encoding").is_none(), "{name}");
        let resp = resp.into_inner();
        assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b), "{name}");
        assert_eq!(output_i32(&resp, "OUTPUT1"), sub(&a, &b), "{name}");
    }
    // Other methods take compressed requests too (tonic's own inflation).
    let mut c = s
        .new_client()
        .await
        .send_compressed(CompressionEncoding::Gzip);
    let ready = c
        .model_ready(nereid::pb::inference::ModelReadyRequest {
            name: "simple".into(),
            version: String::new(),
        })
        .await
        .unwrap();
    assert!(ready.into_inner().ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_compressed_as_the_level_says() {
    let s = TestServer::bundled_subset_with(&["simple"], |c| {
        c.grpc_response_compression = ResponseCompression::High
    })
    .await;
    for (encoding, name) in encodings() {
        let mut c = s.new_client().await.accept_compressed(encoding);
        let (a, b) = simple_operands(1, 5);
        let resp = c
            .model_infer(simple_request("simple", 1, &a, &b))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let got = resp
            .metadata()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap());
        assert_eq!(got, Some(name));
        assert_eq!(output_i32(&resp.into_inner(), "OUTPUT0"), add(&a, &b));
    }
    // A client that accepts no compression gets none.
    let (a, b) = simple_operands(1, 6);
    let mut c = s.new_client().await;
    let resp = c
        .model_infer(simple_request("simple", 1, &a, &b))
        .await
        .unwrap();
    assert!(resp.metadata().get("grpc-encoding").is_none());
    assert_eq!(output_i32(&resp.into_inner(), "OUTPUT0"), add(&a, &b));
}

/// A raw-deflate segment that expands to 1 MiB of zeros, ending on a byte boundary with the
/// compressor's history reset (a full flush): copies of it in a row expand to a copy each.
fn zero_segment() -> (Vec<u8>, Vec<u8>) {
    let mut c = Compress::new(Compression::best(), false);
    let mut segment = Vec::with_capacity(8 << 10);
    c.compress_vec(&vec![0u8; 1 << 20], &mut segment, FlushCompress::Full)
        .unwrap();
    let mut end = Vec::with_capacity(64);
    c.compress_vec(&[], &mut end, FlushCompress::Finish)
        .unwrap();
    (segment, end)
}

/// A gzip (or zlib, for deflate) message that expands to `mib` MiB of zeros. Its checksum is
/// wrong: nothing that stops at a limit reads that far.
fn bomb(gzip: bool, mib: usize) -> Vec<u8> {
    let (segment, end) = zero_segment();
    let mut out = if gzip {
        vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]
    } else {
        vec![0x78, 0xda]
    };
    for _ in 0..mib {
        out.extend_from_slice(&segment);
    }
    out.extend_from_slice(&end);
    out.extend_from_slice(&[0; 8]);
    out
}

#[test]
fn the_bomb_expands_one_mib_per_segment() {
    use std::io::Read;
    let expanded = |r: &mut dyn Read| {
        let mut buf = vec![0u8; 64 << 10];
        let mut n = 0usize;
        // Until the (wrong) checksum is read: the read that meets it reports the error instead
        // of its last bytes, so up to one buffer goes uncounted.
        while let Ok(k) = r.read(&mut buf) {
            if k == 0 {
                break;
            }
            assert!(buf[..k].iter().all(|&b| b == 0));
            n += k;
        }
        n
    };
    let at_least = (3 << 20) - (64 << 10);
    let gz = bomb(true, 3);
    assert!(expanded(&mut flate2::read::GzDecoder::new(&gz[..])) >= at_least);
    let zlib = bomb(false, 3);
    assert!(expanded(&mut flate2::read::ZlibDecoder::new(&zlib[..])) >= at_least);
}

/// Sends `message` as one compressed `ModelInfer` message on a raw HTTP/2 call; the answer's
/// gRPC status and message.
async fn raw_compressed_infer(s: &TestServer, encoding: &str, message: &[u8]) -> (String, String) {
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let head = http::Request::post(format!(
        "http://{}/inference.GRPCInferenceService/ModelInfer",
        s.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("grpc-encoding", encoding)
    .body(())
    .unwrap();
    let (response, mut body) = client.send_request(head, false).unwrap();
    let mut framed = vec![1];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    body.send_data(Bytes::from(framed), true).unwrap();
    let resp = tokio::time::timeout(RPC_TIMEOUT, response)
        .await
        .expect("answered")
        .unwrap();
    let (parts, mut body) = resp.into_parts();
    let mut headers = parts.headers;
    if headers.get("grpc-status").is_none() {
        // Not trailers-only: the status is in the trailers.
        while let Some(data) = body.data().await {
            data.unwrap();
        }
        if let Some(t) = body.trailers().await.unwrap() {
            headers.extend(t);
        }
    }
    let get = |n: &str| {
        let v = headers.get(n).map(|v| v.to_str().unwrap().to_owned());
        v.unwrap_or_default()
    };
    (get("grpc-status"), percent_decode(&get("grpc-message")))
}

fn percent_decode(s: &str) -> String {
    let raw = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// 4 GiB of zeros in 4 MiB of gzip (or zlib) against an 8 MiB message limit: refused once the
/// expansion passes the limit. Had the server expanded it, the test would need 4 GiB of memory;
/// that it finishes (on a machine that may not have it) is the evidence it did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_bomb_is_refused_at_the_message_limit() {
    let limit = 8 << 20;
    let s =
        TestServer::bundled_subset_with(&["simple"], |c| c.grpc_max_message_bytes = limit).await;
    for (gzip, name) in [(true, "gzip"), (false, "deflate")] {
        let message = bomb(gzip, 4096);
        assert!(message.len() < limit, "{} bytes", message.len());
        let (status, msg) = raw_compressed_infer(&s, name, &message).await;
        assert_eq!(
            status,
            (Code::ResourceExhausted as i32).to_string(),
            "{name}: {msg}"
        );
        assert_eq!(
            msg,
            format!("Received message larger than max (more than {limit} vs. {limit})"),
            "{name}"
        );
    }
    s.assert_still_serving().await;
}

/// A compressed request whose expanded size is over `--max-inflight-bytes` is refused as an
/// uncompressed one of that size is: invalid, naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expanded_bytes_count_against_the_inflight_cap() {
    let s = TestServer::bundled_subset_with(&["simple"], |c| c.inflight.bytes = 1 << 20).await;
    let big = Bytes::from(vec![0u8; 2 << 20]);
    let req = raw_request(
        "simple",
        vec![
            (input("INPUT0", "INT32", &[1, 16]), big.clone()),
            (input("INPUT1", "INT32", &[1, 16]), big),
        ],
    );
    let counted = || crate::overload::rejected_metric(&s, "simple", "too_large");
    let before = counted().await;
    let plain = s.infer(req.clone()).await.expect_err("over the cap");
    assert_eq!(plain.code(), Code::InvalidArgument, "{plain:?}");
    assert!(
        plain.message().contains("--max-inflight-bytes"),
        "{plain:?}"
    );
    for (encoding, name) in encodings() {
        let mut c = s.new_client().await.send_compressed(encoding);
        let st = c.model_infer(req.clone()).await.expect_err("over the cap");
        assert_eq!(st.code(), Code::InvalidArgument, "{name}: {st:?}");
        assert!(
            st.message()
                .contains("larger than the server accepts in flight")
                && st.message().contains("--max-inflight-bytes"),
            "{name}: {st:?}"
        );
    }
    // Each refusal is counted against the model, compressed or not: the compressed ones by the
    // head read from the first expanded bytes.
    assert_eq!(counted().await, before + 3);
    // Nothing stays counted: a request under the cap, compressed, still infers.
    let (a, b) = simple_operands(1, 1);
    let mut c = s
        .new_client()
        .await
        .send_compressed(CompressionEncoding::Gzip);
    let resp = c
        .model_infer(simple_request("simple", 1, &a, &b))
        .await
        .unwrap();
    assert_eq!(output_i32(&resp.into_inner(), "OUTPUT0"), add(&a, &b));
}

/// A compressed `ModelStreamInfer` stream: its messages are expanded one at a time under the
/// in-flight byte cap. A message under the cap is answered; one that expands past it ends the
/// stream with the refusal (the requests before it answered), counted against the model, and
/// nothing stays counted: a new compressed stream is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_stream_messages_expand_under_the_inflight_cap() {
    use tokio_stream::StreamExt;
    let s = TestServer::bundled_subset_with(&["simple"], |c| c.inflight.bytes = 1 << 20).await;
    let big = Bytes::from(vec![0u8; 2 << 20]);
    let mut over = raw_request(
        "simple",
        vec![
            (input("INPUT0", "INT32", &[1, 16]), big.clone()),
            (input("INPUT1", "INT32", &[1, 16]), big),
        ],
    );
    over.id = "over".into();
    let (a, b) = simple_operands(1, 4);
    let mut small = simple_request("simple", 1, &a, &b);
    small.id = "small".into();
    for (encoding, name) in encodings() {
        let before = crate::overload::rejected_metric(&s, "simple", "too_large").await;
        let mut c = s.new_client().await.send_compressed(encoding);
        // One message at a time: the next is sent once the one before is answered, so no other
        // request's bytes are in flight when `over` expands (the refusal is then "too large",
        // never "busy").
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut responses = c
            .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"))
            .into_inner();
        let mut out = Vec::new();
        tx.send(small.clone()).await.unwrap();
        let first = tokio::time::timeout(RPC_TIMEOUT, responses.next()).await;
        out.push(first.expect("progress").expect("a response"));
        tx.send(over.clone()).await.unwrap();
        // Never read: the refusal ends the stream (the send fails once the call is over).
        let _ = tx.send(small.clone()).await;
        drop(tx);
        while let Some(r) = tokio::time::timeout(RPC_TIMEOUT, responses.next())
            .await
            .expect("progress")
        {
            out.push(r);
        }
        assert_eq!(out.len(), 2, "{name}: {out:?}");
        let first = out[0].as_ref().expect("the small request is answered");
        assert!(first.error_message.is_empty(), "{name}: {first:?}");
        let resp = first.infer_response.as_ref().unwrap();
        assert_eq!(resp.id, "small", "{name}");
        assert_eq!(output_i32(resp, "OUTPUT0"), add(&a, &b), "{name}");
        let st = out[1].as_ref().expect_err("the refusal ends the stream");
        assert_eq!(st.code(), Code::InvalidArgument, "{name}: {st:?}");
        // Refused while expanding, before any of it was decoded (a decoded request's refusal
        // would be in-band and name its size).
        assert!(
            st.message().contains("(decompressed)")
                && st.message().contains("--max-inflight-bytes"),
            "{name}: {st:?}"
        );
        assert_eq!(
            crate::overload::rejected_metric(&s, "simple", "too_large").await,
            before + 1,
            "{name}"
        );
        // Nothing stays counted: a new compressed stream is served.
        let mut c = s.new_client().await.send_compressed(encoding);
        let mut responses = c
            .model_stream_infer(tokio_stream::iter([small.clone()]))
            .await
            .unwrap()
            .into_inner();
        let r = responses
            .next()
            .await
            .expect("a response")
            .expect("in-band");
        assert!(r.error_message.is_empty(), "{name}: {r:?}");
    }
}
