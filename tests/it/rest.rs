//! HTTP/REST test support: reqwest calls on a `TestServer`, infer bodies and reply decoding.
#![allow(dead_code)]

use std::collections::HashMap;

use bytes::Bytes;

use crate::common::*;

/// What an HTTP call returned: status, headers and the whole body.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Bytes,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `{"error": ...}` message, asserting the body has exactly that shape.
    #[track_caller]
    pub fn error(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "error replies are JSON"
        );
        let json = self.json();
        let obj = json.as_object().expect("error body is an object");
        assert_eq!(obj.len(), 1, "error body has one member: {json}");
        obj["error"]
            .as_str()
            .expect("error is a string")
            .to_string()
    }

    /// The JSON header of an infer reply (the whole body unless it has a binary section).
    pub fn infer_header(&self) -> serde_json::Value {
        let n = self
            .header("inference-header-content-length")
            .map_or(self.body.len(), |v| v.parse().unwrap());
        serde_json::from_slice(&self.body[..n]).expect("infer header is JSON")
    }

    /// The binary sections of an infer reply, by output name, walked in JSON order.
    pub fn binary_outputs(&self) -> HashMap<String, Bytes> {
        let header = self.infer_header();
        let mut pos = self
            .header("inference-header-content-length")
            .map_or(self.body.len(), |v| v.parse().unwrap());
        let mut out = HashMap::new();
        for o in header["outputs"].as_array().unwrap() {
            if let Some(n) = o["parameters"]["binary_data_size"].as_u64() {
                let n = n as usize;
                out.insert(
                    o["name"].as_str().unwrap().to_string(),
                    self.body.slice(pos..pos + n),
                );
                pos += n;
            }
        }
        assert_eq!(pos, self.body.len(), "binary sections cover the body");
        out
    }
}

impl TestServer {
    /// Sends `req` (built on `self.http`) and reads the whole reply.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> HttpReply {
        let resp = req.send().await.expect("HTTP request answered");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("HTTP body read");
        HttpReply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> HttpReply {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> HttpReply {
        self.send(self.http.post(self.url(path)).body(body)).await
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> HttpReply {
        self.post(path, body.to_string()).await
    }

    /// Proves the HTTP side still serves: one JSON `simple` inference with exact results.
    pub async fn assert_http_still_serving(&self) {
        let (a, b) = simple_operands(1, 5);
        let r = self
            .post_json("/v2/models/simple/infer", &simple_json(1, &a, &b))
            .await;
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        let json = r.json();
        assert_eq!(json_i32(&json, "OUTPUT0"), add(&a, &b));
        assert_eq!(json_i32(&json, "OUTPUT1"), sub(&a, &b));
    }
}

/// A `simple`-shaped JSON infer body with `data` arrays (`rows` 0 = no batch dimension).
pub fn simple_json(rows: i64, a: &[i32], b: &[i32]) -> serde_json::Value {
    let shape: Vec<i64> = if rows == 0 { vec![16] } else { vec![rows, 16] };
    serde_json::json!({
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": shape, "data": a},
            {"name": "INPUT1", "datatype": "INT32", "shape": shape, "data": b},
        ]
    })
}

/// A body with the JSON header followed by the binary sections, and the header's length.
pub fn binary_body(header: &serde_json::Value, sections: &[&[u8]]) -> (Vec<u8>, usize) {
    let mut body = header.to_string().into_bytes();
    let n = body.len();
    for s in sections {
        body.extend_from_slice(s);
    }
    (body, n)
}

/// The JSON `data` of output `name` as i32s.
pub fn json_i32(resp: &serde_json::Value, name: &str) -> Vec<i32> {
    let o = resp["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output '{name}' in {resp}"));
    assert_eq!(o["datatype"], "INT32");
    o["data"]
        .as_array()
        .unwrap_or_else(|| panic!("output '{name}' has no JSON data: {o}"))
        .iter()
        .map(|v| v.as_i64().unwrap() as i32)
        .collect()
}

pub fn le_i32(raw: &[u8]) -> Vec<i32> {
    raw.chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
