//! The drain after the shutdown delay: gRPC connections get HTTP/2 GOAWAY (a stream opened
//! before it finishes, a new one is refused at the HTTP/2 level), idle HTTP keep-alive
//! connections are closed, a busy one closes after its response, and both listeners stop
//! accepting. Nothing is answered "Server exiting" on a connection that was open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nereid::testing::FakeBackend;
use nereid::{Listeners, RunningServer, ServerConfig, bind};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::common::*;

/// An HTTP/1.1 request on `conn`, read up to the end of its body (`Content-Length`).
async fn http_exchange(conn: &mut TcpStream, request: &str) -> String {
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the response ended: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

/// Resolves once the peer closed `conn` (a read of 0 bytes or a reset).
async fn closed_by_peer(conn: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn infer_json() -> String {
    let v: Vec<String> = (0..16).map(|i| i.to_string()).collect();
    let data = v.join(",");
    format!(
        r#"{{"inputs":[{{"name":"INPUT0","datatype":"INT32","shape":[1,16],"data":[{data}]}},{{"name":"INPUT1","datatype":"INT32","shape":[1,16],"data":[{data}]}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_delay_connections_close_gracefully_and_nothing_open_is_refused() {
    let repo = fake_repo(&["simple"]);
    let mut config = ServerConfig::new(vec![repo.path().to_path_buf()]);
    config.shutdown_delay = Duration::ZERO;
    config.exit_timeout = Duration::from_secs(3600);
    let backend = FakeBackend::default();
    let gate = backend.gate.clone();
    let listeners = Listeners {
        grpc: Some(bind("127.0.0.1:0".parse().unwrap()).await.unwrap()),
        http: Some(bind("127.0.0.1:0".parse().unwrap()).await.unwrap()),
        metrics: None,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let running = RunningServer::start_with_backend(config, listeners, Arc::new(backend), async {
        let _ = stopped.await;
    })
    .await
    .expect("the server starts");
    let core = running.core.clone();
    let grpc: SocketAddr = running.grpc_addr.unwrap();
    let http: SocketAddr = running.http_addr.unwrap();
    gate.close();

    // A gRPC call held at the gate, on a raw HTTP/2 connection that sees the GOAWAY.
    let tcp = TcpStream::connect(grpc).await.unwrap();
    let (h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut h2c = h2c.ready().await.unwrap();
    let head = || {
        http::Request::post(format!(
            "http://{grpc}/inference.GRPCInferenceService/ModelInfer"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
    };
    let (a, b) = simple_operands(1, 5);
    let msg = Bytes::from(grpc_framed(
        &simple_request("simple", 1, &a, &b).encode_to_vec(),
    ));
    let (held_grpc, mut body) = h2c.send_request(head(), false).unwrap();
    body.send_data(msg.clone(), true).unwrap();

    // An HTTP inference held at the gate, and an idle kept-alive HTTP connection.
    let mut busy_http = TcpStream::connect(http).await.unwrap();
    let body_json = infer_json();
    let post = format!(
        "POST /v2/models/simple/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body_json}",
        body_json.len()
    );
    busy_http.write_all(post.as_bytes()).await.unwrap();
    let mut idle_http = TcpStream::connect(http).await.unwrap();
    let live = http_exchange(
        &mut idle_http,
        "GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    wait_for("both inferences are in flight", || async {
        core.inflight() == 2
    })
    .await;

    let _ = stop.send(());
    // The idle HTTP connection is closed; new connections are refused on both ports.
    tokio::time::timeout(WAIT_LIMIT, closed_by_peer(&mut idle_http))
        .await
        .expect("the idle keep-alive connection is closed");
    for addr in [grpc, http] {
        wait_for(&format!("{addr} refuses new connections"), || async {
            TcpStream::connect(addr).await.is_err()
        })
        .await;
    }
    // GOAWAY: the connection takes no new stream. Between hyper's two GOAWAY frames (one
    // PING apart) a stream may still be taken; such a call, with no message, is answered at
    // once with an error status, so the loop goes on until the client is refused.
    wait_for("a new stream is refused after the GOAWAY", || {
        let mut c = h2c.clone();
        async move {
            match c.send_request(head(), true) {
                Err(_) => true,
                Ok((resp, _)) => resp.await.is_err(),
            }
        }
    })
    .await;
    assert_eq!(core.inflight(), 2, "both held requests are still in flight");

    // The held requests are answered in full.
    gate.open();
    let resp = held_grpc.await.expect("the opened stream is answered");
    assert_eq!(resp.status(), 200);
    let mut resp_body = resp.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = resp_body.data().await {
        data.extend_from_slice(&chunk.unwrap());
    }
    let trailers = resp_body.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{trailers:?}");
    let reply = nereid::pb::inference::ModelInferResponse::decode(&data[5..]).expect("a response");
    assert_eq!(output_i32(&reply, "OUTPUT0"), add(&a, &b));
    let mut got = Vec::new();
    tokio::time::timeout(WAIT_LIMIT, busy_http.read_to_end(&mut got))
        .await
        .expect("the busy HTTP connection closes after its response")
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");

    tokio::time::timeout(WAIT_LIMIT, running.wait())
        .await
        .expect("the server stops once its connections closed")
        .expect("the server stops cleanly");
}
