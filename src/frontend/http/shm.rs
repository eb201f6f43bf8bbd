//! HTTP's side of client shared memory: the `/v2/systemsharedmemory` and `/v2/cudasharedmemory`
//! routes and the `shared_memory_*` parameters as JSON carries them (shared-memory.md §3, §8).

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Map, Value, json};

use super::json::{as_object, as_str, as_u64, parse_json};
use super::{Http, Reply, json, ok_empty, read_body};
use crate::error::{Error, Result};
use crate::shm::ShmRef;

/// Where `params` place a tensor: `shared_memory_region` (a string) with
/// `shared_memory_offset` and `shared_memory_byte_size` (unsigned, 0 when absent). Offset and
/// size without a region are ignored, as Triton's HTTP front-end does.
pub(super) fn tensor_ref(params: Option<&Map<String, Value>>) -> Result<Option<ShmRef>> {
    let Some(region) = params.and_then(|p| p.get("shared_memory_region")) else {
        return Ok(None);
    };
    let region = as_str(region, "shared_memory_region")?.to_string();
    let int = |k: &str| {
        params
            .and_then(|p| p.get(k))
            .map_or(Ok(0), |v| as_u64(v, k))
    };
    Ok(Some(ShmRef {
        region,
        offset: int("shared_memory_offset")?,
        byte_size: int("shared_memory_byte_size")?,
    }))
}

/// The shared-memory routes of both kinds.
pub(super) fn routes(r: Router<Http>) -> Router<Http> {
    r.route("/v2/systemsharedmemory/status", get(system_status_all))
        .route(
            "/v2/systemsharedmemory/region/{region}/status",
            get(system_status),
        )
        .route(
            "/v2/systemsharedmemory/register",
            post(system_register_unnamed),
        )
        .route(
            "/v2/systemsharedmemory/region/{region}/register",
            post(system_register),
        )
        .route(
            "/v2/systemsharedmemory/unregister",
            post(system_unregister_all),
        )
        .route(
            "/v2/systemsharedmemory/region/{region}/unregister",
            post(system_unregister),
        )
        .route("/v2/cudasharedmemory/status", get(cuda_status_all))
        .route(
            "/v2/cudasharedmemory/region/{region}/status",
            get(cuda_status),
        )
        .route("/v2/cudasharedmemory/register", post(cuda_register_unnamed))
        .route(
            "/v2/cudasharedmemory/region/{region}/register",
            post(cuda_register),
        )
        .route("/v2/cudasharedmemory/unregister", post(cuda_unregister_all))
        .route(
            "/v2/cudasharedmemory/region/{region}/unregister",
            post(cuda_unregister),
        )
}

fn system_json(s: &Http, name: &str) -> Reply {
    let rows: Vec<Value> = s
        .core
        .shm()
        .system_status(name)?
        .into_iter()
        .map(
            |r| json!({"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}),
        )
        .collect();
    Ok(json(&Value::Array(rows)))
}

fn cuda_json(s: &Http, name: &str) -> Reply {
    let rows: Vec<Value> = s
        .core
        .shm()
        .cuda_status(name)?
        .into_iter()
        .map(|r| json!({"name": r.name, "device_id": r.device_id, "byte_size": r.byte_size}))
        .collect();
    Ok(json(&Value::Array(rows)))
}

async fn system_status_all(State(s): State<Http>) -> Reply {
    system_json(&s, "")
}

async fn system_status(State(s): State<Http>, Path(region): Path<String>) -> Reply {
    system_json(&s, &region)
}

async fn cuda_status_all(State(s): State<Http>) -> Reply {
    cuda_json(&s, "")
}

async fn cuda_status(State(s): State<Http>, Path(region): Path<String>) -> Reply {
    cuda_json(&s, &region)
}

async fn system_register_unnamed() -> Reply {
    Err(
        Error::invalid_arg("'region name' is necessary to register system shared memory region")
            .into(),
    )
}

async fn cuda_register_unnamed() -> Reply {
    Err(
        Error::invalid_arg("'region name' is necessary to register cuda shared memory region")
            .into(),
    )
}

/// The register body as a JSON object; `member` reads a required member with Triton's text.
fn register_body(body: &[u8]) -> Result<Map<String, Value>> {
    let doc = parse_json(body)?;
    Ok(as_object(&doc, "register")?.clone())
}

fn missing(field: &str) -> Error {
    Error::invalid_arg(format!(
        "Shared memory register request has no '{field}' field"
    ))
}

async fn system_register(
    State(s): State<Http>,
    Path(region): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    s.core.shm().check_allowed()?;
    let body = read_body(body, &headers, &s, "JSON ").await?;
    let b = register_body(&body)?;
    let key = as_str(b.get("key").ok_or_else(|| missing("key"))?, "key")?;
    let byte_size = as_u64(
        b.get("byte_size").ok_or_else(|| missing("byte_size"))?,
        "byte_size",
    )?;
    let offset = b.get("offset").map_or(Ok(0), |v| as_u64(v, "offset"))?;
    s.core
        .shm()
        .register_system(&region, key, offset, byte_size)?;
    Ok(ok_empty())
}

/// CUDA register: the body is checked as Triton checks it, then this build (no GPU support)
/// refuses it as Triton built without GPU support does.
async fn cuda_register(
    State(s): State<Http>,
    Path(region): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    s.core.shm().check_allowed()?;
    let body = read_body(body, &headers, &s, "JSON ").await?;
    let b = register_body(&body)?;
    let absent = |m: &str| {
        Error::internal(format!(
            "attempt to access non-existing object member '{m}'"
        ))
    };
    let handle = b.get("raw_handle").ok_or_else(|| missing("raw_handle"))?;
    let b64 = handle
        .as_object()
        .and_then(|h| h.get("b64"))
        .ok_or_else(|| absent("b64"))?;
    let b64 = as_str(b64, "b64")?;
    let byte_size = as_u64(
        b.get("byte_size").ok_or_else(|| absent("byte_size"))?,
        "byte_size",
    )?;
    let device_id = as_u64(
        b.get("device_id").ok_or_else(|| absent("device_id"))?,
        "device_id",
    )?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .filter(|h| h.len() == 64);
    if raw.is_none() {
        return Err(Error::invalid_arg(
            "'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t",
        )
        .into());
    }
    let device_id = i64::try_from(device_id).unwrap_or(i64::MAX);
    s.core.shm().register_cuda(&region, device_id, byte_size)?;
    Ok(ok_empty())
}

async fn system_unregister_all(State(s): State<Http>) -> Reply {
    s.core.shm().unregister_system("")?;
    Ok(ok_empty())
}

async fn system_unregister(State(s): State<Http>, Path(region): Path<String>) -> Reply {
    s.core.shm().unregister_system(&region)?;
    Ok(ok_empty())
}

async fn cuda_unregister_all(State(s): State<Http>) -> Reply {
    s.core.shm().unregister_cuda("")?;
    Ok(ok_empty())
}

async fn cuda_unregister(State(s): State<Http>, Path(region): Path<String>) -> Reply {
    s.core.shm().unregister_cuda(&region)?;
    Ok(ok_empty())
}
