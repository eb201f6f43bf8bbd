//! HTTP/REST bad input and compression: every malformed request gets a clear `{"error"}` with
//! Triton's status, and the server keeps serving.

use std::io::{Read, Write};

use bytes::Bytes;
use flate2::Compression;
use flate2::read::{GzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};
use serde_json::json;

use crate::common::*;
use crate::rest::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400_and_the_server_keeps_serving() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = simple_operands(1, 2);
    let good = simple_json(1, &a, &b);
    let mut wrong_type = good.clone();
    wrong_type["inputs"][0]["data"][3] = json!("three");
    let mut float_for_int = good.clone();
    float_for_int["inputs"][1]["data"][0] = json!(1.5);
    let mut short = good.clone();
    short["inputs"][0]["data"] = json!([1, 2, 3]);
    let mut no_data = good.clone();
    no_data["inputs"][0].as_object_mut().unwrap().remove("data");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "truncated JSON",
            r#"{"inputs": [{"name": "#.into(),
            "failed to parse the request JSON buffer: ",
        ),
        (
            "not JSON",
            "hello".into(),
            "failed to parse the request JSON buffer: ",
        ),
        (
            "empty body",
            String::new(),
            "failed to parse the request JSON buffer: ",
        ),
        (
            "string for INT32",
            wrong_type.to_string(),
            "Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer (input 'INPUT0', datatype INT32, element 3: \"three\")",
        ),
        (
            "float for INT32",
            float_for_int.to_string(),
            "non-signed-integer",
        ),
        (
            "too few elements",
            short.to_string(),
            "Shape does not match true shape of 'data' field",
        ),
        ("no data", no_data.to_string(), "But no field is set"),
        (
            "inputs not an array",
            r#"{"inputs": 3}"#.into(),
            "Unable to parse 'inputs'",
        ),
    ];
    for (what, body, want) in cases {
        let r = s.post("/v2/models/simple/infer", body).await;
        assert_eq!(r.status, 400, "{what}");
        let e = r.error();
        assert!(e.contains(want), "{what}: {e}");
    }
    s.assert_http_still_serving().await;
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_header_errors() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = simple_operands(1, 3);
    let header = json!({"inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": 64}},
        {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": 64}},
    ]});
    let (body, n) = binary_body(&header, &[&i32_bytes(&a), &i32_bytes(&b)]);
    let send = |len: String, body: Vec<u8>| {
        s.http
            .post(s.url("/v2/models/simple/infer"))
            .header("Inference-Header-Content-Length", len)
            .body(body)
    };
    // A header length past the end of the body.
    let r = s
        .send(send((body.len() + 1).to_string(), body.clone()))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error(),
        format!(
            "inference header size should be in range (0, {}), got: {}",
            body.len(),
            body.len() + 1
        )
    );
    let r = s.send(send("ten".into(), body.clone())).await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("Inference-Header-Content-Length"));
    // Fewer binary bytes than binary_data_size, and more.
    let r = s
        .send(send(n.to_string(), body[..body.len() - 10].to_vec()))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error(),
        "unexpected size for input 'INPUT1', expecting 10 additional bytes for model 'simple'"
    );
    let mut long = body.clone();
    long.extend_from_slice(&[0; 3]);
    let r = s.send(send(n.to_string(), long)).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error(),
        "unexpected additional input data for model 'simple'"
    );
    // A header length that cuts the JSON short.
    let r = s.send(send((n - 1).to_string(), body.clone())).await;
    assert_eq!(r.status, 400);
    assert!(
        r.error()
            .starts_with("failed to parse the request JSON buffer")
    );
    // "Wrong" Content-Type: Triton ignores it and so do we; binary data without the
    // Inference-Header-Content-Length header is simply not JSON.
    let req = s
        .http
        .post(s.url("/v2/models/simple/infer"))
        .header("Content-Type", "application/octet-stream")
        .body(body.clone());
    let r = s.send(req).await;
    assert_eq!(r.status, 400);
    assert!(
        r.error()
            .starts_with("failed to parse the request JSON buffer")
    );
    let req = s
        .http
        .post(s.url("/v2/models/simple/infer"))
        .header("Content-Type", "text/plain")
        .body(simple_json(1, &a, &b).to_string());
    assert_eq!(s.send(req).await.status, 200);
    let r = s.send(send(n.to_string(), body)).await;
    assert_eq!(r.status, 200);
    s.assert_http_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_size_limit() {
    let limit = 4096;
    let s = TestServer::bundled_subset_with(&["identity_fp32", "simple"], |c| {
        c.http_max_input_size = limit
    })
    .await;
    let msg_tail = format!(
        "exceeds the maximum allowed value of {limit} bytes. Use --http-max-input-size to increase the limit."
    );
    // JSON, with Content-Length.
    let big = json!({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16],
        "data": vec![0; 16], "pad": "x".repeat(limit)}]});
    let r = s.post_json("/v2/models/simple/infer", &big).await;
    assert_eq!(r.status, 400);
    let e = r.error();
    assert!(e.starts_with("Request JSON size of "), "{e}");
    assert!(e.ends_with(&msg_tail), "{e}");
    // Binary, far over the limit: the client still gets the reply.
    let req = s
        .http
        .post(s.url("/v2/models/identity_fp32/infer"))
        .header("Inference-Header-Content-Length", 0)
        .body(vec![0u8; 8 << 20]);
    let r = s.send(req).await;
    assert_eq!(r.status, 400);
    assert!(r.error().ends_with(&msg_tail));
    // A small gzip body that inflates past the limit.
    let bomb = gzip(&vec![b' '; 4 * limit]);
    assert!(bomb.len() < limit);
    let req = s
        .http
        .post(s.url("/v2/models/simple/infer"))
        .header("Content-Encoding", "gzip")
        .body(bomb);
    let r = s.send(req).await;
    assert_eq!(r.status, 400);
    assert!(r.error().ends_with(&msg_tail));
    // Other routes too.
    let r = s.post("/v2/repository/index", " ".repeat(limit + 1)).await;
    assert_eq!(r.status, 400);
    // Under the limit still works.
    s.assert_http_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_deflate_both_ways() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let (a, b) = simple_operands(2, 6);
    let body = simple_json(2, &a, &b).to_string();
    for (encoding, packed) in [
        ("gzip", gzip(body.as_bytes())),
        ("deflate", zlib(body.as_bytes())),
    ] {
        // Compressed request, plain reply.
        let req = s
            .http
            .post(s.url("/v2/models/simple/infer"))
            .header("Content-Encoding", encoding)
            .body(packed.clone());
        let r = s.send(req).await;
        assert_eq!(r.status, 200, "{encoding}: {:?}", r.body);
        assert!(r.header("content-encoding").is_none());
        assert_eq!(json_i32(&r.json(), "OUTPUT0"), add(&a, &b));
        // Compressed request and reply.
        let req = s
            .http
            .post(s.url("/v2/models/simple/infer"))
            .header("Content-Encoding", encoding)
            .header("Accept-Encoding", encoding)
            .body(packed);
        let r = s.send(req).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some(encoding));
        let mut plain = Vec::new();
        if encoding == "gzip" {
            GzDecoder::new(&r.body[..]).read_to_end(&mut plain).unwrap();
        } else {
            ZlibDecoder::new(&r.body[..])
                .read_to_end(&mut plain)
                .unwrap();
        }
        let j: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(json_i32(&j, "OUTPUT1"), sub(&a, &b));
    }
    // Binary reply, gzipped: the header length counts the uncompressed JSON.
    let mut bin = simple_json(1, &a[..16], &b[..16]);
    bin["parameters"] = json!({"binary_data_output": true});
    let req = s
        .http
        .post(s.url("/v2/models/simple/infer"))
        .header("Accept-Encoding", "deflate;q=0.5, gzip;q=0.9")
        .body(bin.to_string());
    let r = s.send(req).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let mut plain = Vec::new();
    GzDecoder::new(&r.body[..]).read_to_end(&mut plain).unwrap();
    let n: usize = r
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    let header: serde_json::Value = serde_json::from_slice(&plain[..n]).unwrap();
    assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 64);
    assert_eq!(le_i32(&plain[n..n + 64]), add(&a[..16], &b[..16]));
    // Other routes never compress.
    let req = s
        .http
        .get(s.url("/v2/models/simple"))
        .header("Accept-Encoding", "gzip");
    let r = s.send(req).await;
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.json()["name"], "simple");

    // An unsupported request encoding: 501 naming what is supported.
    let req = s
        .http
        .post(s.url("/v2/models/simple/infer"))
        .header("Content-Encoding", "br")
        .body(body.clone());
    let r = s.send(req).await;
    assert_eq!(r.status, 501);
    assert_eq!(r.header("accept-encoding"), Some("gzip, deflate"));
    assert_eq!(r.error(), "Unsupported compression type");
    // A body that is not what it claims to be.
    let req = s
        .http
        .post(s.url("/v2/models/simple/infer"))
        .header("Content-Encoding", "gzip")
        .body(body);
    let r = s.send(req).await;
    assert_eq!(r.status, 400);
    assert!(
        r.error()
            .starts_with("failed to decompress the request body (gzip)")
    );
    s.assert_http_still_serving().await;
}

/// Shapes whose element count is astronomically large (or overflows) must be refused with the
/// usual size-mismatch error, not crash the server or try to allocate for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_shapes_are_refused_not_allocated() {
    let s = TestServer::bundled_subset(&["identity_fp32", "simple", "simple_identity"]).await;
    for (model, datatype, dim) in [
        ("simple_identity", "BYTES", 1i64 << 40),
        ("identity_fp32", "FP32", 1i64 << 62),
        ("identity_fp32", "FP32", i64::MAX),
    ] {
        let header = json!({"id": "huge", "inputs": [{"name": "INPUT0", "datatype": datatype, "shape": [1, dim],
            "parameters": {"binary_data_size": 4}}]});
        let (body, n) = binary_body(&header, &[&[0u8; 4]]);
        let req = s
            .http
            .post(s.url(&format!("/v2/models/{model}/infer")))
            .header("Inference-Header-Content-Length", n)
            .body(body);
        let r = s.send(req).await;
        assert_eq!(r.status, 400, "{model} [1, {dim}]");
        let e = r.error();
        assert!(e.contains("INPUT0"), "{e}");

        let mut req = raw_request(
            model,
            vec![(
                input("INPUT0", datatype, &[1, dim]),
                Bytes::from_static(&[0; 4]),
            )],
        );
        req.id = "huge".into();
        let g = s.infer(req).await.unwrap_err();
        assert_eq!(g.code(), tonic::Code::InvalidArgument, "{g:?}");
        assert_eq!(g.message(), e, "gRPC and HTTP agree");
    }
    s.assert_http_still_serving().await;
    s.assert_still_serving().await;
}
