//! Connection hygiene of the one accept layer: slow and idle connections are closed after their
//! limit while other clients are served, the server's descriptors for them are released, the
//! per-listener connection cap holds, an over-limit chunked body is refused while it is still
//! being sent, and the header caps answer as configured.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// The socket inodes this process holds for connections accepted on `port` (the server side
/// of each connection, not the listener), read from /proc: what the server has open for the
/// listener, untouched by other tests' descriptors in this process.
fn server_sockets(port: u16) -> usize {
    let mut inodes = HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let local_port = cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // State 0A is LISTEN: the listener itself.
            if local_port == Some(port) && cols[3] != "0A" {
                inodes.insert(format!("socket:[{}]", cols[9]));
            }
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| inodes.contains(l.to_string_lossy().as_ref()))
                .count()
        })
        .unwrap_or(0)
}

/// Whether the server (this process) still holds its end of the connection from the client
/// port `peer` to the listener on `port`: a socket with that local and remote port whose inode
/// is one of this process's descriptors (a closed one lingers, if at all, with inode 0).
fn server_holds(port: u16, peer: u16) -> bool {
    let mut inodes = HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let port_of = |col: &str| {
                col.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if port_of(cols[1]) == Some(port) && port_of(cols[2]) == Some(peer) {
                inodes.insert(format!("socket:[{}]", cols[9]));
            }
        }
    }
    std::fs::read_dir("/proc/self/fd").is_ok_and(|dir| {
        dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|l| inodes.contains(l.to_string_lossy().as_ref()))
    })
}

/// Reads until the server closes the connection (EOF or reset); returns what was read.
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT_LIMIT, read)
        .await
        .expect("the server closes the connection");
    got
}

fn quick_limits(c: &mut nereid::ServerConfig) {
    c.connections.listen.handshake_timeout = Duration::from_secs(1);
    c.connections.http1.header_timeout = Duration::from_secs(1);
    c.connections.http1.idle_timeout = Duration::from_secs(1);
}

async fn live_over_http(s: &TestServer) -> bool {
    s.http
        .get(s.url("/v2/health/live"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_and_silent_connections_are_closed_while_others_are_served() {
    let repo = fake_repo(&["simple"]);
    let s = TestServer::start_fake_with(repo.path(), quick_limits).await;
    let (http_port, grpc_port) = (s.http_addr.port(), s.addr.port());

    // Headers sent a byte at a time, then nothing: the header timeout.
    let mut slow = TcpStream::connect(s.http_addr).await.unwrap();
    slow.write_all(b"GET /v2/health/live HTTP/1.1\r\nHo")
        .await
        .unwrap();
    // A served request on a kept-alive connection, then silence: the idle timeout.
    let mut idle = TcpStream::connect(s.http_addr).await.unwrap();
    idle.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // A gRPC connection that never sends the HTTP/2 preface: the handshake timeout.
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    // The server's end of the silent connection, followed by the client's port (the
    // fixture's own gRPC client holds other connections to the same listener).
    let silent_port = silent.local_addr().unwrap().port();
    wait_for("the three connections are accepted", || async {
        server_holds(grpc_port, silent_port) && server_sockets(http_port) >= 2
    })
    .await;

    // Others are served meanwhile, on both protocols.
    assert!(live_over_http(&s).await);
    s.assert_still_serving().await;

    let slow_got = read_until_closed(&mut slow).await;
    let idle_got = String::from_utf8_lossy(&read_until_closed(&mut idle).await).into_owned();
    assert!(idle_got.starts_with("HTTP/1.1 200"), "{idle_got}");
    let silent_got = read_until_closed(&mut silent).await;
    // hyper may answer a header timeout with nothing or with a 408; never with a 200.
    assert!(!String::from_utf8_lossy(&slow_got).contains("200 OK"));
    // The server may have sent its own SETTINGS before giving up on the preface.
    let _ = silent_got;
    drop((slow, idle, silent));

    wait_for("the server released the gRPC connection", || async {
        !server_holds(grpc_port, silent_port)
    })
    .await;
    // reqwest's pooled connection is itself closed by the idle timeout in the end.
    wait_for("the server released every HTTP connection", || async {
        server_sockets(http_port) == 0
    })
    .await;
    assert!(live_over_http(&s).await);
    s.stop().await;
}

async fn get_live(addr: SocketAddr, stream: &mut TcpStream) -> String {
    let _ = addr;
    stream
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(RPC_TIMEOUT, stream.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_per_listener() {
    let repo = fake_repo(&["simple"]);
    let s = TestServer::start_fake_with(repo.path(), |c| {
        c.connections.listen.max_connections = 2;
    })
    .await;
    let port = s.http_addr.port();
    let mut first = TcpStream::connect(s.http_addr).await.unwrap();
    let mut second = TcpStream::connect(s.http_addr).await.unwrap();
    assert!(
        get_live(s.http_addr, &mut first)
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        get_live(s.http_addr, &mut second)
            .await
            .starts_with("HTTP/1.1 200")
    );
    // The third connection completes in the kernel's backlog but is not taken by the server
    // while two are held; its request waits.
    let mut third = TcpStream::connect(s.http_addr).await.unwrap();
    third
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(server_sockets(port), 2);
    // One held connection closes: the third is accepted and answered.
    drop(first);
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT_LIMIT, third.read(&mut buf))
        .await
        .expect("the third connection is served once a slot frees")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(server_sockets(port) <= 2);
    // The gRPC listener has its own two slots: the fixture's client holds one.
    s.assert_still_serving().await;
    drop((second, third));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_limit_chunked_body_is_refused_while_it_is_still_sent() {
    let repo = fake_repo(&["simple"]);
    let s = TestServer::start_fake_with(repo.path(), |c| c.http_max_input_size = 1000).await;
    let mut conn = TcpStream::connect(s.http_addr).await.unwrap();
    conn.write_all(
        b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    // 1200 bytes in two chunks: over the limit, and the body's last chunk is never sent.
    let chunk = format!("258\r\n{}\r\n", " ".repeat(600));
    conn.write_all(chunk.as_bytes()).await.unwrap();
    conn.write_all(chunk.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("increase the limit") {
        let n = tokio::time::timeout(WAIT_LIMIT, conn.read(&mut buf))
            .await
            .expect("the 400 arrives before the body is finished")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 400"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(
        text.contains("exceeds the maximum allowed value of 1000 bytes. use --http-max-input-size to increase the limit."),
        "{text}"
    );
    drop(conn);
    s.stop().await;
}

/// A body dribbled a byte at a time: answered 408 with `Connection: close` once
/// `--http-body-timeout-secs` has passed, while other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_a_byte_at_a_time_is_cut_off_at_the_body_timeout() {
    let repo = fake_repo(&["simple"]);
    let s = TestServer::start_fake_with(repo.path(), |c| {
        c.connections.http1.body_timeout = Duration::from_secs(1);
    })
    .await;
    let mut conn = TcpStream::connect(s.http_addr).await.unwrap();
    conn.write_all(
        b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
    )
    .await
    .unwrap();
    // One byte at a time, until the server answers (each write keeps the connection busy, so
    // neither the header nor the idle timer can be what ends it).
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let answer = async {
        loop {
            tokio::select! {
                n = conn.read(&mut buf) => {
                    let n = n.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&got).contains("--http-body-timeout-secs") {
                        break;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if conn.write_all(b" ").await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    tokio::time::timeout(WAIT_LIMIT, answer)
        .await
        .expect("the server answers the dribbled body");
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 408"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(live_over_http(&s).await, "other clients are served");
    drop(conn);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_caps_refuse_oversized_heads_on_both_protocols() {
    let repo = fake_repo(&["simple"]);
    let s = TestServer::start_fake_with(repo.path(), |c| {
        c.connections.http1.max_headers = 10;
        c.connections.http1.max_header_bytes = 8192;
        c.connections.http2.max_header_list_size = 4096;
    })
    .await;
    // HTTP: too many header fields, then too large a head: 431.
    let mut many = String::from("GET /v2/health/live HTTP/1.1\r\nHost: x\r\n");
    for i in 0..20 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let big = format!(
        "GET /v2/health/live HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    for head in [many, big] {
        let mut conn = TcpStream::connect(s.http_addr).await.unwrap();
        conn.write_all(head.as_bytes()).await.unwrap();
        let got = String::from_utf8_lossy(&read_until_closed(&mut conn).await).into_owned();
        assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    }
    assert!(live_over_http(&s).await);

    // gRPC: metadata over the header-list cap is refused; the server goes on serving.
    let mut client = s.new_client().await;
    let mut req = tonic::Request::new(nereid::pb::inference::ServerLiveRequest {});
    req.metadata_mut()
        .insert("x-big", "a".repeat(8000).parse().unwrap());
    let refused = tokio::time::timeout(RPC_TIMEOUT, client.server_live(req))
        .await
        .expect("an answer");
    assert!(refused.is_err(), "{refused:?}");
    s.assert_still_serving().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_closes_the_connection_and_others_are_served() {
    let repo = fake_repo(&["simple"]);
    let s = TestServer::start_fake_with(repo.path(), |c| {
        c.connections.http2.max_pending_accept_reset_streams = 5;
    })
    .await;
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    // Streams opened and cancelled at once, written in one burst: the server sees each one
    // reset before it could accept it, and past the limit calls it a flood (GOAWAY).
    for _ in 0..500 {
        let head = http::Request::post(format!(
            "http://{}/inference.GRPCInferenceService/ServerLive",
            s.addr
        ))
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
        match client.send_request(head, false) {
            Ok((_, mut body)) => body.send_reset(h2::Reason::CANCEL),
            Err(_) => break,
        }
    }
    let ended = tokio::time::timeout(WAIT_LIMIT, conn)
        .await
        .expect("the server closes the flooding connection")
        .unwrap();
    // GOAWAY(ENHANCE_YOUR_CALM), or, when the client was still writing as the server closed,
    // the broken pipe of that close.
    let e = ended.expect_err("the connection ends in an error");
    assert!(
        e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || e.is_io(),
        "{e}"
    );
    s.assert_still_serving().await;
    s.stop().await;
}
