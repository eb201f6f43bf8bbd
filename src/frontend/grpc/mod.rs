//! The KServe v2 gRPC front-end (`inference.GRPCInferenceService`) and `grpc.health.v1.Health`.

pub mod convert;
pub mod status;

use std::pin::Pin;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::core::Core;
use crate::pb::health::{self, health_check_response::ServingStatus, health_server::Health};
use crate::pb::inference::{self as pb, grpc_inference_service_server::GrpcInferenceService};

/// Triton's fixed gRPC message limit (INT32_MAX bytes).
pub const MAX_MESSAGE_BYTES: usize = i32::MAX as usize;

#[derive(Clone)]
pub struct GrpcService {
    core: Arc<Core>,
}

impl GrpcService {
    pub fn new(core: Arc<Core>) -> Self {
        GrpcService { core }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not implemented by this server yet"))
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
        Ok(Response::new(convert::model_metadata(
            self.core.model_metadata(&r.name, &r.version)?,
        )))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Reply<pb::ModelInferResponse> {
        let arrival = Instant::now();
        let deadline = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(convert::grpc_timeout)
            .map(|t| arrival + t);
        let mut req = convert::infer_request(req.into_inner(), arrival)?;
        req.params.deadline = deadline;
        let resp = self.core.infer(req).await?;
        Ok(Response::new(convert::infer_response(resp)))
    }

    type ModelStreamInferStream =
        Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

    async fn model_stream_infer(
        &self,
        _: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Reply<Self::ModelStreamInferStream> {
        Err(unimplemented("ModelStreamInfer"))
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
        Ok(Response::new(convert::model_statistics(
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
            self.core.repository_index(r.ready)?,
        )))
    }

    async fn repository_model_load(
        &self,
        req: Request<pb::RepositoryModelLoadRequest>,
    ) -> Reply<pb::RepositoryModelLoadResponse> {
        let r = req.into_inner();
        no_repository_name(&r.repository_name)?;
        let load = convert::load_request(r.parameters)?;
        self.core.load_model(&r.model_name, load).await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Reply<pb::RepositoryModelUnloadResponse> {
        let r = req.into_inner();
        no_repository_name(&r.repository_name)?;
        let dependents = matches!(
            r.parameters
                .get("unload_dependents")
                .and_then(|p| p.parameter_choice.as_ref()),
            Some(pb::model_repository_parameter::ParameterChoice::BoolParam(
                true
            ))
        );
        self.core.unload_model(&r.model_name, dependents).await?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        _: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Reply<pb::SystemSharedMemoryStatusResponse> {
        Err(shm_disabled())
    }

    async fn system_shared_memory_register(
        &self,
        _: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Reply<pb::SystemSharedMemoryRegisterResponse> {
        Err(shm_disabled())
    }

    async fn system_shared_memory_unregister(
        &self,
        _: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Reply<pb::SystemSharedMemoryUnregisterResponse> {
        Err(shm_disabled())
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Reply<pb::CudaSharedMemoryStatusResponse> {
        Err(shm_disabled())
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Reply<pb::CudaSharedMemoryRegisterResponse> {
        Err(shm_disabled())
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Reply<pb::CudaSharedMemoryUnregisterResponse> {
        Err(shm_disabled())
    }

    async fn trace_setting(
        &self,
        _: Request<pb::TraceSettingRequest>,
    ) -> Reply<pb::TraceSettingResponse> {
        Err(unimplemented("TraceSetting"))
    }

    async fn log_settings(
        &self,
        _: Request<pb::LogSettingsRequest>,
    ) -> Reply<pb::LogSettingsResponse> {
        Err(unimplemented("LogSettings"))
    }
}

/// See `frontend::SHM_DISABLED`.
fn shm_disabled() -> Status {
    Status::unimplemented(crate::frontend::SHM_DISABLED)
}

#[derive(Clone)]
pub struct HealthService {
    core: Arc<Core>,
}

impl HealthService {
    pub fn new(core: Arc<Core>) -> Self {
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
