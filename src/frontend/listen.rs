//! The one accept layer of the three listeners (gRPC, HTTP, metrics). It bounds the connections
//! each listener holds (`--max-connections`: a connection holds a semaphore permit, and the
//! listener accepts only while one is free, so a flood waits in the kernel's backlog instead of
//! eating descriptors), gives each connection `--grpc-handshake-timeout-secs` to finish its TLS
//! handshake and to send its first bytes (gRPC: the 24-byte HTTP/2 preface), and serves HTTP/1
//! connections itself with hyper (header timeout, header caps, idle keep-alive close).
//! gRPC connections go to tonic as a stream of ready connections (`incoming`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tower::ServiceExt;

use super::tls::Tls;

/// The HTTP/2 connection preface a gRPC client sends first (RFC 9113 §3.4).
pub(crate) const H2_PREFACE_LEN: usize = 24;

/// Limits every listener applies to its connections.
#[derive(Debug, Clone, Copy)]
pub struct ListenOptions {
    /// Connections one listener holds at once (accepted, handshaking or served).
    pub max_connections: usize,
    /// Time a new connection has to finish its TLS handshake and send its first bytes.
    pub handshake_timeout: Duration,
}

/// HTTP/1 limits of the HTTP and metrics listeners.
#[derive(Debug, Clone, Copy)]
pub struct Http1Options {
    /// Time a client has to send a request's whole header block (from the connection's start,
    /// or from the end of the previous response on a kept-alive connection).
    pub header_timeout: Duration,
    /// A kept-alive connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
    /// Time a request's whole body may take to arrive once its headers are in (a body sent a
    /// byte at a time cannot hold the connection longer); past it: 408 and `Connection: close`.
    pub body_timeout: Duration,
    /// Largest request head (request line + headers) in bytes; more is answered 431.
    pub max_header_bytes: usize,
    /// Most header fields in one request; more is answered 431.
    pub max_headers: usize,
}

/// A listener with its limits and optional TLS.
pub(crate) struct Listener {
    tcp: TcpListener,
    permits: Arc<Semaphore>,
    max: u32,
    handshake_timeout: Duration,
    /// Bytes the client must have sent within the handshake timeout (after TLS).
    first_bytes: usize,
    tls: Option<Arc<Tls>>,
}

impl Listener {
    /// `first_bytes`: how much the client must send within the handshake timeout (the gRPC
    /// listener asks for the HTTP/2 preface; the HTTP listeners rely on the header timeout).
    pub(crate) fn new(
        tcp: TcpListener,
        options: ListenOptions,
        first_bytes: usize,
        tls: Option<Arc<Tls>>,
    ) -> Listener {
        // The semaphore's own ceiling bounds the count; `acquire_many` takes a u32.
        let max = options
            .max_connections
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
        Listener {
            tcp,
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
            handshake_timeout: options.handshake_timeout,
            first_bytes,
            tls,
        }
    }

    /// Accepts until `stop` turns true, handing each connection that completed its TLS
    /// handshake to `ready`. Connections still handshaking when `stop` turns are dropped.
    async fn accept_loop<F>(&self, mut stop: watch::Receiver<bool>, ready: F)
    where
        F: Fn(Conn) + Clone + Send + 'static,
    {
        loop {
            let permit = tokio::select! {
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = stopped(&mut stop) => return,
            };
            let accepted = tokio::select! {
                r = self.tcp.accept() => r,
                _ = stopped(&mut stop) => return,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: log, breathe,
                    // go on (returning would take the listener down for good).
                    tracing::warn!("accept failed: {e}");
                    drop(permit);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Small responses must not wait for Nagle's algorithm (40 ms stalls with delayed ACKs).
            let _ = tcp.set_nodelay(true);
            let deadline = tokio::time::Instant::now() + self.handshake_timeout;
            let tls = self.tls.clone();
            let first_bytes = self.first_bytes;
            let ready = ready.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let local = tcp.local_addr().ok();
                let io = match tls {
                    None => Io::Plain(tcp),
                    Some(tls) => {
                        let handshake = tokio::time::timeout_at(deadline, tls.accept(tcp));
                        tokio::select! {
                            r = handshake => match r {
                                Ok(Ok(s)) => Io::Tls(Box::new(s)),
                                Ok(Err(e)) => {
                                    tracing::debug!(%remote, "TLS handshake failed: {e}");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%remote, "TLS handshake timed out");
                                    return;
                                }
                            },
                            _ = stopped(&mut stop) => return,
                        }
                    }
                };
                ready(Conn {
                    io,
                    first: (first_bytes > 0).then(|| Box::pin(tokio::time::sleep_until(deadline))),
                    need: first_bytes,
                    remote: Some(remote),
                    local,
                    _permit: permit,
                });
            });
        }
    }

    /// The gRPC side: ready connections as a stream for tonic's `serve_with_incoming`. The
    /// stream ends when `stop` turns true.
    pub(crate) fn incoming(
        self,
        stop: watch::Receiver<bool>,
    ) -> ReceiverStream<Result<Conn, io::Error>> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let send = move |conn: Conn| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(Ok(conn)).await;
                });
            };
            self.accept_loop(stop, send).await;
        });
        ReceiverStream::new(rx)
    }

    /// The HTTP/1 side: serves `app` on every connection until `stop` turns true, then lets
    /// each connection finish its request in progress and waits for all of them to close.
    pub(crate) async fn serve_http1(
        self,
        app: axum::Router,
        options: Http1Options,
        stop: watch::Receiver<bool>,
    ) -> io::Result<()> {
        let serve_stop = stop.clone();
        self.accept_loop(stop, move |conn| {
            tokio::spawn(serve_http1_conn(
                conn,
                app.clone(),
                options,
                serve_stop.clone(),
            ));
        })
        .await;
        // The socket closes now, so new connections are refused instead of waiting in the
        // backlog while the open ones finish.
        let Listener {
            tcp, permits, max, ..
        } = self;
        drop(tcp);
        let _ = permits.acquire_many(max).await;
        Ok(())
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Requests in progress on one HTTP/1 connection, for its idle timer.
#[derive(Default)]
struct Activity {
    inflight: AtomicUsize,
    changed: Notify,
}

struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: &Arc<Activity>) -> Busy {
        a.inflight.fetch_add(1, Ordering::AcqRel);
        a.changed.notify_waiters();
        Busy(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

impl Activity {
    /// Resolves once no request has been in progress for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.inflight.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(idle) => {
                    if self.inflight.load(Ordering::Acquire) == 0 {
                        return;
                    }
                }
                _ = changed => {}
            }
        }
    }
}

async fn serve_http1_conn(
    conn: Conn,
    app: axum::Router,
    options: Http1Options,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::default());
    let svc_activity = activity.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let busy = Busy::new(&svc_activity);
        let app = app.clone();
        async move {
            let resp = app.oneshot(req.map(axum::body::Body::new)).await;
            drop(busy);
            resp
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_headers(options.max_headers)
        // hyper's floor for its read buffer is 8 KiB.
        .max_buf_size(options.max_header_bytes.max(8192))
        .keep_alive(true);
    let remote = conn.remote;
    let served = builder.serve_connection(TokioIo::new(conn), svc);
    tokio::pin!(served);
    let mut closing = false;
    loop {
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(?remote, "HTTP connection closed: {e}");
                }
                return;
            }
            // Graceful: a request in progress finishes, an idle connection closes now.
            _ = stopped(&mut stop), if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = activity.idle_for(options.idle_timeout), if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection: its stream, its listener permit (released when it closes), and
/// until its first bytes arrived, the handshake deadline that closes it.
pub(crate) struct Conn {
    io: Io,
    first: Option<Pin<Box<Sleep>>>,
    need: usize,
    remote: Option<SocketAddr>,
    local: Option<SocketAddr>,
    _permit: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.local,
            remote_addr: self.remote,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if this.need > 0 {
            match &r {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len().saturating_sub(before);
                    this.need = this.need.saturating_sub(n);
                    if this.need == 0 {
                        this.first = None;
                    }
                }
                Poll::Pending => {
                    if let Some(deadline) = this.first.as_mut()
                        && deadline.as_mut().poll(cx).is_ready()
                    {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client sent no request within the handshake timeout",
                        )));
                    }
                }
                Poll::Ready(Err(_)) => {}
            }
        }
        r
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
