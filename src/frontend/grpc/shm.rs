//! gRPC's side of client shared memory: the six shared-memory RPCs, and requests decoded with
//! their tensors placed in regions (shared-memory.md §2, §8, §9). The `shared_memory_*`
//! parameters are read by `params::shm_ref`.

use crate::core::Core;
use crate::error::{Error, Result};
use crate::pb::inference as pb;
use crate::request::InferRequest;
use crate::shm::Placement;

/// Decodes a `ModelInferRequest` and places its tensors in the regions it names: its inputs
/// read from them, its outputs' places pinned until the returned placement drops.
pub(super) fn decode(core: &Core, msg: pb::ModelInferRequest) -> Result<(InferRequest, Placement)> {
    let (mut req, refs) = super::convert::infer_request(msg)?;
    let placement = core.shm().place(&mut req, &refs)?;
    Ok((req, placement))
}

/// An output written to a region keeps its name, datatype and shape in the reply and an empty
/// raw entry at its index (shared-memory.md §9).
pub(super) fn clear_placed(resp: &mut pb::ModelInferResponse, placement: &Placement) {
    if !placement.has_outputs() {
        return;
    }
    for (o, raw) in resp.outputs.iter().zip(resp.raw_output_contents.iter_mut()) {
        if placement.holds_output(&o.name) {
            *raw = Default::default();
        }
    }
}

pub(super) fn system_status(
    core: &Core,
    name: &str,
) -> Result<pb::SystemSharedMemoryStatusResponse> {
    use pb::system_shared_memory_status_response::RegionStatus;
    let regions = core
        .shm()
        .system_status(name)?
        .into_iter()
        .map(|r| {
            let status = RegionStatus {
                name: r.name.clone(),
                key: r.key,
                offset: r.offset,
                byte_size: r.byte_size,
            };
            (r.name, status)
        })
        .collect();
    Ok(pb::SystemSharedMemoryStatusResponse { regions })
}

pub(super) fn cuda_status(core: &Core, name: &str) -> Result<pb::CudaSharedMemoryStatusResponse> {
    use pb::cuda_shared_memory_status_response::RegionStatus;
    let regions = core
        .shm()
        .cuda_status(name)?
        .into_iter()
        .map(|r| {
            let status = RegionStatus {
                name: r.name.clone(),
                device_id: r.device_id,
                byte_size: r.byte_size,
            };
            (r.name, status)
        })
        .collect();
    Ok(pb::CudaSharedMemoryStatusResponse { regions })
}

/// CUDA register. Triton's gRPC front-end answers "GPUs not supported" before it looks at
/// `--allow-client-shm` on a build without GPU support, as this one is.
pub(super) fn cuda_register(r: &pb::CudaSharedMemoryRegisterRequest) -> Error {
    Error::invalid_arg(format!(
        "failed to register CUDA shared memory region: '{}', GPUs not supported",
        r.name
    ))
}
