//! The protocol floor of scripts/bench_overhead.sh: the thinnest tonic (gRPC) and axum (HTTP)
//! server that answers the KServe v2 calls perf_analyzer makes for the `simple` model
//! (OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 − INPUT1, INT32 [-1, 16]), with no queue, no
//! scheduler and no ONNX Runtime. Whatever Nereid spends per request beyond this is the server's
//! own cost. Both protocols share one runtime and one count of answered inferences.
//!
//! Usage: `cargo run --release --example floor -- --grpc-port 18101 --http-port 18100`

mod http;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::serve::ListenerExt as _;

use bytes::Bytes;
use clap::Parser;
use nereid::pb::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use nereid::pb::inference::model_infer_response::InferOutputTensor;
use nereid::pb::inference::model_metadata_response::TensorMetadata;
use nereid::pb::inference::*;
use tonic::{Request, Response, Status, Streaming};

const MODEL: &str = "simple";
const WIDTH: usize = 16;

#[derive(Parser)]
#[command(about = "Protocol-floor KServe v2 gRPC and HTTP server for the `simple` model")]
struct Args {
    /// gRPC port (listens on 127.0.0.1)
    #[arg(long, default_value_t = 18101)]
    grpc_port: u16,
    /// HTTP port (listens on 127.0.0.1; 0 = no HTTP)
    #[arg(long, default_value_t = 18100)]
    http_port: u16,
    /// tokio worker threads (0 = one per core, as Nereid's front-end runtime)
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

/// Counts the answered inferences, reported as successes by ModelStatistics (the bench divides
/// the server's CPU time by them).
#[derive(Default)]
struct Floor {
    answered: AtomicU64,
}

type Answer<T> = Result<Response<T>, Status>;

fn tensor(name: &str, rows: i64) -> TensorMetadata {
    TensorMetadata {
        name: name.into(),
        datatype: "INT32".into(),
        shape: vec![rows, WIDTH as i64],
    }
}

fn config() -> ModelConfig {
    let io = |name: &str| {
        (
            name.to_string(),
            DataType::TypeInt32 as i32,
            vec![WIDTH as i64],
        )
    };
    ModelConfig {
        name: MODEL.into(),
        platform: "onnxruntime_onnx".into(),
        backend: "onnxruntime".into(),
        max_batch_size: 8,
        input: ["INPUT0", "INPUT1"]
            .map(|n| {
                let (name, data_type, dims) = io(n);
                ModelInput {
                    name,
                    data_type,
                    dims,
                    ..Default::default()
                }
            })
            .to_vec(),
        output: ["OUTPUT0", "OUTPUT1"]
            .map(|n| {
                let (name, data_type, dims) = io(n);
                ModelOutput {
                    name,
                    data_type,
                    dims,
                    ..Default::default()
                }
            })
            .to_vec(),
        ..Default::default()
    }
}

fn ints(raw: &[u8]) -> impl Iterator<Item = i32> + '_ {
    raw.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// `simple`'s computation on raw little-endian INT32: (a + b, a − b), wrapping like the model.
fn compute(a: &[u8], b: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut sum = Vec::with_capacity(a.len());
    let mut diff = Vec::with_capacity(a.len());
    for (x, y) in ints(a).zip(ints(b)) {
        sum.extend_from_slice(&x.wrapping_add(y).to_le_bytes());
        diff.extend_from_slice(&x.wrapping_sub(y).to_le_bytes());
    }
    (sum, diff)
}

fn unimplemented<T>() -> Answer<T> {
    Err(Status::unimplemented("not part of the protocol floor"))
}

#[tonic::async_trait]
impl GrpcInferenceService for Floor {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Answer<ServerLiveResponse> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Answer<ServerReadyResponse> {
        Ok(Response::new(ServerReadyResponse { ready: true }))
    }

    async fn model_ready(&self, r: Request<ModelReadyRequest>) -> Answer<ModelReadyResponse> {
        Ok(Response::new(ModelReadyResponse {
            ready: r.get_ref().name == MODEL,
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Answer<ServerMetadataResponse> {
        Ok(Response::new(ServerMetadataResponse {
            name: "floor".into(),
            version: "0".into(),
            extensions: vec![],
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<ModelMetadataRequest>,
    ) -> Answer<ModelMetadataResponse> {
        if r.get_ref().name != MODEL {
            return Err(Status::not_found("unknown model"));
        }
        Ok(Response::new(ModelMetadataResponse {
            name: MODEL.into(),
            versions: vec!["1".into()],
            platform: "onnxruntime_onnx".into(),
            inputs: vec![tensor("INPUT0", -1), tensor("INPUT1", -1)],
            outputs: vec![tensor("OUTPUT0", -1), tensor("OUTPUT1", -1)],
        }))
    }

    async fn model_infer(&self, r: Request<ModelInferRequest>) -> Answer<ModelInferResponse> {
        let req = r.into_inner();
        let [a, b] = match req.raw_input_contents.as_slice() {
            [a, b] if a.len() == b.len() && a.len() % (4 * WIDTH) == 0 => [a, b],
            _ => {
                return Err(Status::invalid_argument(
                    "expects INPUT0, INPUT1 as raw INT32",
                ));
            }
        };
        let rows = (a.len() / (4 * WIDTH)) as i64;
        let (sum, diff) = compute(a, b);
        let output = |name: &str| {
            let t = tensor(name, rows);
            InferOutputTensor {
                name: t.name,
                datatype: t.datatype,
                shape: t.shape,
                ..Default::default()
            }
        };
        self.answered.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(ModelInferResponse {
            model_name: MODEL.into(),
            model_version: "1".into(),
            id: req.id,
            outputs: vec![output("OUTPUT0"), output("OUTPUT1")],
            raw_output_contents: vec![Bytes::from(sum), Bytes::from(diff)],
            ..Default::default()
        }))
    }

    type ModelStreamInferStream = tokio_stream::Empty<Result<ModelStreamInferResponse, Status>>;

    async fn model_stream_infer(
        &self,
        _: Request<Streaming<ModelInferRequest>>,
    ) -> Answer<Self::ModelStreamInferStream> {
        unimplemented()
    }

    async fn model_config(&self, r: Request<ModelConfigRequest>) -> Answer<ModelConfigResponse> {
        if r.get_ref().name != MODEL {
            return Err(Status::not_found("unknown model"));
        }
        Ok(Response::new(ModelConfigResponse {
            config: Some(config()),
        }))
    }

    /// perf_analyzer reads the server-side statistics before and after each window; the bench
    /// reads the successes.
    async fn model_statistics(
        &self,
        _: Request<ModelStatisticsRequest>,
    ) -> Answer<ModelStatisticsResponse> {
        let answered = self.answered.load(Ordering::Relaxed);
        Ok(Response::new(ModelStatisticsResponse {
            model_stats: vec![ModelStatistics {
                name: MODEL.into(),
                version: "1".into(),
                inference_count: answered,
                execution_count: answered,
                inference_stats: Some(InferStatistics {
                    success: Some(StatisticDuration {
                        count: answered,
                        ns: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }))
    }

    async fn repository_index(
        &self,
        _: Request<RepositoryIndexRequest>,
    ) -> Answer<RepositoryIndexResponse> {
        unimplemented()
    }

    async fn repository_model_load(
        &self,
        _: Request<RepositoryModelLoadRequest>,
    ) -> Answer<RepositoryModelLoadResponse> {
        unimplemented()
    }

    async fn repository_model_unload(
        &self,
        _: Request<RepositoryModelUnloadRequest>,
    ) -> Answer<RepositoryModelUnloadResponse> {
        unimplemented()
    }

    async fn system_shared_memory_status(
        &self,
        _: Request<SystemSharedMemoryStatusRequest>,
    ) -> Answer<SystemSharedMemoryStatusResponse> {
        unimplemented()
    }

    async fn system_shared_memory_register(
        &self,
        _: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Answer<SystemSharedMemoryRegisterResponse> {
        unimplemented()
    }

    async fn system_shared_memory_unregister(
        &self,
        _: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Answer<SystemSharedMemoryUnregisterResponse> {
        unimplemented()
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<CudaSharedMemoryStatusRequest>,
    ) -> Answer<CudaSharedMemoryStatusResponse> {
        unimplemented()
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<CudaSharedMemoryRegisterRequest>,
    ) -> Answer<CudaSharedMemoryRegisterResponse> {
        unimplemented()
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> Answer<CudaSharedMemoryUnregisterResponse> {
        unimplemented()
    }

    async fn trace_setting(&self, _: Request<TraceSettingRequest>) -> Answer<TraceSettingResponse> {
        unimplemented()
    }

    async fn log_settings(&self, _: Request<LogSettingsRequest>) -> Answer<LogSettingsResponse> {
        unimplemented()
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if args.workers > 0 {
        rt.worker_threads(args.workers);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("floor: {e}");
            return ExitCode::FAILURE;
        }
    };
    let floor = Arc::new(Floor::default());
    let grpc_addr = SocketAddr::from(([127, 0, 0, 1], args.grpc_port));
    let http_addr = SocketAddr::from(([127, 0, 0, 1], args.http_port));
    let served = rt.block_on(async move {
        // Both listeners are bound before the readiness line, so a caller may connect at once.
        let http = if args.http_port == 0 {
            None
        } else {
            let listener = tokio::net::TcpListener::bind(http_addr)
                .await
                .map_err(|e| format!("HTTP {http_addr}: {e}"))?
                .tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
            eprintln!("floor: HTTP on {http_addr}");
            let app = http::router(floor.clone());
            Some(tokio::spawn(async move {
                axum::serve(listener, app).await.map_err(|e| e.to_string())
            }))
        };
        eprintln!("floor: gRPC on {grpc_addr}");
        let grpc = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(GrpcInferenceServiceServer::from_arc(floor))
            .serve_with_shutdown(grpc_addr, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| format!("gRPC {grpc_addr}: {e}"));
        if let Some(h) = http {
            h.abort();
        }
        grpc
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: {e}");
            ExitCode::FAILURE
        }
    }
}
