//! Connection hygiene of the one accept layer: slow and idle connections are closed after their
//! limit while other clients are served, the server's descriptors for them are released, the
//! per-listener connection cap holds, an over-limit chunked body is refused while it is still
//! being sent, the header caps answer as configured, and the HTTP/2 reset limits close a
//! connection that passes them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// How many of this process's descriptors are TCP sockets whose /proc/net/tcp row passes
/// `keep(local port, remote port, state)`. A closed socket lingers, if at all, with inode 0,
/// which no descriptor names.
fn held_sockets(keep: impl Fn(u16, u16, &str) -> bool) -> usize {
    let port_of = |col: &str| {
        col.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
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
            if let (Some(local), Some(remote)) = (port_of(cols[1]), port_of(cols[2]))
                && keep(local, remote, cols[3])
            {
                inodes.insert(format!("socket:[{}]", cols[9]));
            }
        }
    }
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| {
        dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|l| inodes.contains(l.to_string_lossy().as_ref()))
            .count()
    })
}

/// The sockets this process holds for connections accepted on `port` (the server side of
/// each connection, not the listener, whose state is 0A, LISTEN): what the server has open for
/// the listener, untouched by other tests' descriptors in this process.
fn server_sockets(port: u16) -> usize {
    held_sockets(|local, _, state| local == port && state != "0A")
}

/// Whether the server (this process) still holds its end of the connection from the client
/// port `peer` to the listener on `port`.
fn server_holds(port: u16, peer: u16) -> bool {
    held_sockets(|local, remote, _| local == port && remote == peer) > 0
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
    // On a new connection: the pooled one may be the one the server just closed.
    let fresh = reqwest::Client::new();
    let live = fresh.get(s.url("/v2/health/live")).send().await;
    assert!(live.is_ok_and(|r| r.status() == 200));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_on_the_grpc_listener() {
    let repo = fake_repo(&["simple"]);
    let s = TestServer::start_fake_with(repo.path(), |c| {
        c.connections.listen.max_connections = 2;
    })
    .await;
    let port = s.addr.port();
    // The fixture's own client holds one of the two slots.
    s.assert_still_serving().await;
    assert_eq!(server_sockets(port), 1);
    let second = TcpStream::connect(s.addr).await.unwrap();
    let (second, conn) = h2::client::handshake(second).await.unwrap();
    let second_conn = tokio::spawn(conn);
    let second = second.ready().await.unwrap();
    let accepted = async {
        while server_sockets(port) < 2 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(WAIT_LIMIT, accepted)
        .await
        .expect("the second connection is accepted");
    // The third connection completes in the kernel's backlog but is not taken while two are
    // held: its call waits.
    let addr = s.addr;
    let third = tokio::spawn(async move {
        let mut c = connect(addr).await;
        c.server_live(nereid::pb::inference::ServerLiveRequest {})
            .await
            .map(|r| r.into_inner().live)
    });
    assert_eq!(server_sockets(port), 2);
    assert!(!third.is_finished());
    // The second connection closes: the third is accepted and answered.
    drop(second);
    second_conn.abort();
    let live = tokio::time::timeout(WAIT_LIMIT, third)
        .await
        .expect("the third connection is served once a slot frees")
        .unwrap();
    assert!(live.expect("ServerLive answers"));
    assert!(server_sockets(port) <= 2);
    s.stop().await;
}

/// One HTTP/2 frame: its 9-byte header, then `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The HPACK block of a `ServerLive` call that also carries `connection: keep-alive`, a field
/// HTTP/2 forbids (RFC 9113 §8.2.2): a malformed request the server must reset itself. Every
/// field is a literal without indexing, so the blocks share no decoder state.
fn malformed_call_headers() -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
    let literal = |b: &mut Vec<u8>, first: &[u8], value: &str| {
        b.extend_from_slice(first);
        b.push(u8::try_from(value.len()).unwrap());
        b.extend_from_slice(value.as_bytes());
    };
    literal(
        &mut b,
        &[0x04], // :path, static index 4
        "/inference.GRPCInferenceService/ServerLive",
    );
    literal(&mut b, &[0x01], "x"); // :authority, static index 1
    literal(&mut b, &[0x0f, 0x10], "application/grpc"); // content-type, static index 31
    literal(&mut b, &[0x00], "connection"); // a new name...
    literal(&mut b, &[], "keep-alive"); // ...and its value
    b
}

/// Reads the server's HTTP/2 frames as `(type, stream, payload)` until `done` says so or the
/// connection closes; returns every frame read.
async fn read_frames(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut done: impl FnMut(u8, u32, &[u8]) -> bool,
) -> Vec<(u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    let read = async {
        loop {
            while let Some((head, after)) = buf.split_first_chunk::<9>() {
                let len =
                    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                let Some(payload) = after.get(..len) else {
                    break;
                };
                let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                let (kind, payload) = (head[3], payload.to_vec());
                buf.drain(..9 + len);
                let stop = done(kind, id, &payload);
                frames.push((kind, id, payload));
                if stop {
                    return;
                }
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT_LIMIT, read)
        .await
        .expect("the server answers");
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_server_must_reset_are_capped_per_connection() {
    const RST_STREAM: u8 = 0x3;
    const GOAWAY: u8 = 0x7;
    let repo = fake_repo(&["simple"]);
    let s = TestServer::start_fake_with(repo.path(), |c| {
        c.connections.http2.max_local_error_reset_streams = 5;
    })
    .await;
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
    let block = malformed_call_headers();
    // Under the cap: four malformed calls are reset one by one, and a good call on the same
    // connection (the same fields without `connection`; the last one left out) is answered.
    for id in [1, 3, 5, 7] {
        // HEADERS with END_STREAM | END_HEADERS.
        out.extend(h2_frame(0x1, 0x5, id, &block));
    }
    let good = &block[..block.len() - 1 - 10 - 1 - 10 - 1];
    out.extend(h2_frame(0x1, 0x4, 9, good)); // HEADERS with END_HEADERS
    out.extend(h2_frame(0x0, 0x1, 9, &[0, 0, 0, 0, 0])); // an empty message, END_STREAM
    conn.write_all(&out).await.unwrap();
    let mut buf = Vec::new();
    let frames = read_frames(&mut conn, &mut buf, |kind, id, _| kind == 0x1 && id == 9).await;
    let resets: Vec<u32> = frames
        .iter()
        .filter(|f| f.0 == RST_STREAM)
        .map(|f| f.1)
        .collect();
    assert_eq!(resets, [1, 3, 5, 7], "{frames:?}");
    assert!(frames.iter().all(|f| f.0 != GOAWAY), "{frames:?}");
    // Past the cap, the connection is closed with GOAWAY(ENHANCE_YOUR_CALM).
    let mut out = Vec::new();
    for i in 0..20u32 {
        out.extend(h2_frame(0x1, 0x5, 11 + 2 * i, &block));
    }
    conn.write_all(&out).await.unwrap();
    let frames = read_frames(&mut conn, &mut buf, |kind, _, _| kind == GOAWAY).await;
    let goaway = frames.iter().find(|f| f.0 == GOAWAY).expect("a GOAWAY");
    assert_eq!(goaway.2.get(4..8), Some(&[0, 0, 0, 0xb][..]), "{frames:?}");
    s.assert_still_serving().await;
    s.stop().await;
}
