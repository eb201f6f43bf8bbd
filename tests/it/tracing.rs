//! OTLP export: the real `nereid` binary (the tracing subscriber is process-wide, so the server
//! runs in its own process) exports the request spans to an in-process fake collector; the
//! spans carry the trace id of the client's `traceparent`.

use parking_lot::Mutex;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use nereid::pb::inference::TraceSettingRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio_stream::wrappers::TcpListenerStream;

use crate::common::*;

#[derive(Debug, Clone)]
struct Exported {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    links: Vec<String>,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Exported {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name,
                        links: s.links.iter().map(|l| hex(&l.span_id)).collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The server process; killed when dropped.
struct Process {
    child: Child,
    addr: SocketAddr,
}

impl Process {
    fn start(args: &[String]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nereid"))
            .arg(format!("--model-repository={}", bundled_repo().display()))
            .args([
                "--grpc-address=127.0.0.1",
                "--grpc-port=0",
                "--allow-metrics=false",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nereid starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("Started GRPCInferenceService at ").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        // A bound on a hang only.
        let addr = rx
            .recv_timeout(WAIT_LIMIT)
            .expect("the server logs its gRPC address")
            .parse()
            .unwrap();
        Process { child, addr }
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        // A bound on a hang only: the exit itself is what the test waits for.
        let deadline = Instant::now() + WAIT_LIMIT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not stop after SIGTERM");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn with_traceparent<T>(msg: T, trace_id: &str, parent: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent}-01").parse().unwrap(),
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_the_collector_with_the_clients_trace_id() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let svc = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let server = Process::start(&[
        "--trace-config=mode=opentelemetry".into(),
        format!("--trace-config=opentelemetry,url=http://{otlp}"),
        "--trace-config=opentelemetry,bsp_schedule_delay=100".into(),
        "--trace-config=level=TIMESTAMPS".into(),
        // Only requests with a propagated context are traced.
        "--trace-config=rate=0".into(),
    ]);
    let mut c = connect(server.addr).await;

    let settings = c
        .trace_setting(TraceSettingRequest::default())
        .await
        .unwrap()
        .into_inner()
        .settings;
    assert_eq!(settings["trace_mode"].value, ["opentelemetry"]);
    assert_eq!(settings["url"].value, [format!("http://{otlp}")]);

    let unary_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let (a, b) = simple_operands(1, 1);
    let mut req = simple_request("simple", 1, &a, &b);
    req.id = "traced-1".into();
    let resp = c
        .model_infer(with_traceparent(req, unary_trace, client_span))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
    // Not traced: no context and rate=0.
    c.model_infer(simple_request("simple", 1, &a, &b))
        .await
        .unwrap();

    let stream_trace = "0af7651916cd43dd8448eb211c80319c";
    let reqs = vec![simple_request("simple", 1, &a, &b)];
    let mut responses = c
        .model_stream_infer(with_traceparent(
            tokio_stream::iter(reqs),
            stream_trace,
            "b7ad6b7169203331",
        ))
        .await
        .unwrap()
        .into_inner();
    while let Some(r) = tokio_stream::StreamExt::next(&mut responses).await {
        assert!(r.unwrap().error_message.is_empty());
    }

    let want = ["request", "receive", "queue", "batch", "compute", "send"];
    // Polls what the collector received; WAIT_LIMIT only turns a hang into a failure.
    let deadline = Instant::now() + WAIT_LIMIT;
    let spans = loop {
        let spans = collector.spans.lock().clone();
        let complete = |t: &str| {
            want.iter()
                .all(|n| spans.iter().any(|s| s.trace_id == t && s.name == *n))
        };
        if complete(unary_trace) && complete(stream_trace) {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans received so far: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let of = |t: &str, n: &str| {
        spans
            .iter()
            .find(|s| s.trace_id == t && s.name == n)
            .unwrap()
            .clone()
    };
    let request = of(unary_trace, "request");
    assert_eq!(
        request.parent, client_span,
        "the client's span is the parent"
    );
    for child in ["receive", "queue", "batch", "send"] {
        assert_eq!(of(unary_trace, child).parent, request.span_id, "{child}");
    }
    assert_eq!(
        of(unary_trace, "compute").parent,
        of(unary_trace, "batch").span_id
    );
    let traces: std::collections::BTreeSet<&str> =
        spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(
        traces.len(),
        2,
        "only the requests with a context: {traces:?}"
    );
    assert!(spans.iter().all(|s| s.links.len() <= 1));
    server.stop();
}
