//! The KServe v2 gRPC front-end (`inference.GRPCInferenceService`) and `grpc.health.v1.Health`.

pub(crate) mod compression;
pub(crate) mod convert;
pub(crate) mod early;
pub(crate) mod head;
pub(crate) mod inflating;
pub(crate) mod params;
pub(crate) mod serve;
pub(crate) mod settings;
mod shm;
pub(crate) mod status;
pub(crate) mod stream;

use std::sync::Arc;

use tokio::time::Instant;
use tonic::codegen::http::HeaderMap;
use tonic::{Request, Response, Status, Streaming};

use crate::core::Core;
use crate::frontend::reports;
use crate::pb::health::{self, health_check_response::ServingStatus, health_server::Health};
use crate::pb::inference::{self as pb, grpc_inference_service_server::GrpcInferenceService};
use crate::request::{Origin, Protocol};
use crate::telemetry::spans;

/// Triton's fixed gRPC message limit (INT32_MAX bytes).
pub(crate) const MAX_MESSAGE_BYTES: usize = i32::MAX as usize;

#[derive(Clone)]
pub(crate) struct GrpcService {
    core: Arc<Core>,
}

impl GrpcService {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        GrpcService { core }
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// A unary call arriving now: its `grpc-timeout` is the client's deadline, its metadata may
/// carry a W3C trace context.
pub(crate) fn call_origin(headers: &HeaderMap) -> Origin {
    let arrival = Instant::now();
    let deadline = headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(convert::grpc_timeout)
        .and_then(|t| arrival.checked_add(t));
    Origin {
        protocol: Protocol::Grpc,
        arrival,
        deadline,
        trace: super::trace_context(headers),
    }
}

fn no_repository_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        Ok(())
    } else {
        Err(Status::unimplemented(
            "'repository_name' specification is not supported",
        ))
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Reply<pb::ServerLiveResponse> {
        Ok(Response::new(pb::ServerLiveResponse {
            live: self.core.live()?,
        }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Reply<pb::ServerReadyResponse> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.core.ready()?,
        }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Reply<pb::ModelReadyResponse> {
        let r = req.into_inner();
        Ok(Response::new(pb::ModelReadyResponse {
            ready: self.core.model_ready(&r.name, &r.version)?,
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Reply<pb::ServerMetadataResponse> {
        let m = self.core.server_metadata();
        Ok(Response::new(pb::ServerMetadataResponse {
            name: m.name,
            version: m.version,
            extensions: m.extensions,
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Reply<pb::ModelMetadataResponse> {
        let r = req.into_inner();
        Ok(Response::new(reports::model_metadata(
            self.core.model_metadata(&r.name, &r.version)?,
        )))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Reply<pb::ModelInferResponse> {
        // The early layer's origin, taken before the body arrived (serve.rs always installs
        // the layer); without it the call arrives now.
        let origin = match req.extensions().get::<early::HeadOrigin>() {
            Some(head) => head.0.clone(),
            None => call_origin(req.metadata().as_ref()),
        };
        let msg = req.into_inner();
        let ctx = self
            .core
            .open_request(origin, &msg.model_name, &msg.model_version);
        let span = ctx.span().clone();
        let (decoded, placement) = self.core.receive(&ctx, || shm::decode(&self.core, msg))?;
        let resp = self.core.submit(decoded, ctx)?.await?;
        placement.write_outputs(&resp)?;
        let _send = spans::send(&span).entered();
        let mut reply = convert::infer_response(resp);
        shm::clear_placed(&mut reply, &placement);
        Ok(Response::new(reply))
    }

    type ModelStreamInferStream = stream::ResponseStream;

    async fn model_stream_infer(
        &self,
        req: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Reply<Self::ModelStreamInferStream> {
        let trace = super::trace_context(req.metadata().as_ref());
        let hard_errors = req
            .metadata()
            .get("triton_grpc_error")
            .is_some_and(|v| v.as_bytes() == b"true");
        Ok(Response::new(stream::serve(
            self.core.clone(),
            req.into_inner(),
            trace,
            hard_errors,
        )))
    }

    async fn model_config(
        &self,
        req: Request<pb::ModelConfigRequest>,
    ) -> Reply<pb::ModelConfigResponse> {
        let r = req.into_inner();
        let config = self.core.model_config(&r.name, &r.version)?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some((*config).clone()),
        }))
    }

    async fn model_statistics(
        &self,
        req: Request<pb::ModelStatisticsRequest>,
    ) -> Reply<pb::ModelStatisticsResponse> {
        let r = req.into_inner();
        Ok(Response::new(reports::model_statistics(
            self.core.statistics(&r.name, &r.version)?,
        )))
    }

    async fn repository_index(
        &self,
        req: Request<pb::RepositoryIndexRequest>,
    ) -> Reply<pb::RepositoryIndexResponse> {
        let r = req.into_inner();
        no_repository_name(&r.repository_name)?;
        Ok(Response::new(convert::repository_index(
            self.core.repository_index(r.ready).await?,
        )))
    }

    async fn repository_model_load(
        &self,
        req: Request<pb::RepositoryModelLoadRequest>,
    ) -> Reply<pb::RepositoryModelLoadResponse> {
        let r = req.into_inner();
        no_repository_name(&r.repository_name)?;
        let load = params::load_request(r.parameters)?;
        self.core.load_model(&r.model_name, load).await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Reply<pb::RepositoryModelUnloadResponse> {
        let r = req.into_inner();
        no_repository_name(&r.repository_name)?;
        let dependents = params::unload_dependents(&r.parameters)?;
        self.core.unload_model(&r.model_name, dependents).await?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        req: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Reply<pb::SystemSharedMemoryStatusResponse> {
        let r = req.into_inner();
        Ok(Response::new(shm::system_status(&self.core, &r.name)?))
    }

    async fn system_shared_memory_register(
        &self,
        req: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Reply<pb::SystemSharedMemoryRegisterResponse> {
        let r = req.into_inner();
        self.core
            .shm()
            .register_system(&r.name, &r.key, r.offset, r.byte_size)?;
        Ok(Response::new(pb::SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(
        &self,
        req: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Reply<pb::SystemSharedMemoryUnregisterResponse> {
        self.core.shm().unregister_system(&req.into_inner().name)?;
        Ok(Response::new(pb::SystemSharedMemoryUnregisterResponse {}))
    }

    async fn cuda_shared_memory_status(
        &self,
        req: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Reply<pb::CudaSharedMemoryStatusResponse> {
        let r = req.into_inner();
        Ok(Response::new(shm::cuda_status(&self.core, &r.name)?))
    }

    async fn cuda_shared_memory_register(
        &self,
        req: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Reply<pb::CudaSharedMemoryRegisterResponse> {
        Err(shm::cuda_register(&req.into_inner()).into())
    }

    async fn cuda_shared_memory_unregister(
        &self,
        req: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Reply<pb::CudaSharedMemoryUnregisterResponse> {
        self.core.shm().unregister_cuda(&req.into_inner().name)?;
        Ok(Response::new(pb::CudaSharedMemoryUnregisterResponse {}))
    }

    async fn trace_setting(
        &self,
        req: Request<pb::TraceSettingRequest>,
    ) -> Reply<pb::TraceSettingResponse> {
        let r = req.into_inner();
        let current = if r.settings.is_empty() {
            self.core.trace_settings(&r.model_name)?
        } else {
            self.core
                .update_trace_settings(&r.model_name, settings::trace_pairs(&r.settings))?
        };
        Ok(Response::new(settings::trace_response(current)))
    }

    async fn log_settings(
        &self,
        req: Request<pb::LogSettingsRequest>,
    ) -> Reply<pb::LogSettingsResponse> {
        let r = req.into_inner();
        let current = if r.settings.is_empty() {
            self.core.log_settings()
        } else {
            self.core
                .update_log_settings(&params::log_update(&r.settings)?)?
        };
        Ok(Response::new(settings::log_response(current)))
    }
}

#[derive(Clone)]
pub(crate) struct HealthService {
    core: Arc<Core>,
}

impl HealthService {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        HealthService { core }
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    /// SERVING exactly when the server is ready (the `service` field is ignored, as in Triton).
    async fn check(
        &self,
        _: Request<health::HealthCheckRequest>,
    ) -> Reply<health::HealthCheckResponse> {
        let status = if self.core.ready()? {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(Response::new(health::HealthCheckResponse {
            status: status as i32,
        }))
    }
}
