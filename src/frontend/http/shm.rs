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

/// Which of the two route families a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    System,
    Cuda,
}

impl Kind {
    fn segment(self) -> &'static str {
        match self {
            Kind::System => "systemsharedmemory",
            Kind::Cuda => "cudasharedmemory",
        }
    }
}

/// The shared-memory routes of both kinds: status, register and unregister, each for all
/// regions and for one named region.
pub(super) fn routes(mut r: Router<Http>) -> Router<Http> {
    for kind in [Kind::System, Kind::Cuda] {
        let base = format!("/v2/{}", kind.segment());
        r = r
            .route(
                &format!("{base}/status"),
                get(move |State(s): State<Http>| async move { status(&s, kind, "") }),
            )
            .route(
                &format!("{base}/region/{{region}}/status"),
                get(
                    move |State(s): State<Http>, Path(region): Path<String>| async move {
                        status(&s, kind, &region)
                    },
                ),
            )
            .route(
                &format!("{base}/register"),
                post(move || async move { register_unnamed(kind) }),
            )
            .route(
                &format!("{base}/region/{{region}}/register"),
                post(
                    move |State(s): State<Http>,
                          Path(region): Path<String>,
                          headers: HeaderMap,
                          body: Body| async move {
                        register(&s, kind, &region, &headers, body).await
                    },
                ),
            )
            .route(
                &format!("{base}/unregister"),
                post(move |State(s): State<Http>| async move { unregister(&s, kind, "") }),
            )
            .route(
                &format!("{base}/region/{{region}}/unregister"),
                post(
                    move |State(s): State<Http>, Path(region): Path<String>| async move {
                        unregister(&s, kind, &region)
                    },
                ),
            );
    }
    r
}

/// Status as a JSON array (`[]` when none).
fn status(s: &Http, kind: Kind, name: &str) -> Reply {
    let shm = s.core.shm();
    let rows: Vec<Value> = match kind {
        Kind::System => shm
            .system_status(name)?
            .into_iter()
            .map(|r| json!({"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}))
            .collect(),
        Kind::Cuda => shm
            .cuda_status(name)?
            .into_iter()
            .map(|r| json!({"name": r.name, "device_id": r.device_id, "byte_size": r.byte_size}))
            .collect(),
    };
    Ok(json(&Value::Array(rows)))
}

fn register_unnamed(kind: Kind) -> Reply {
    let what = match kind {
        Kind::System => "system",
        Kind::Cuda => "cuda",
    };
    Err(Error::invalid_arg(format!(
        "'region name' is necessary to register {what} shared memory region"
    ))
    .into())
}

fn unregister(s: &Http, kind: Kind, name: &str) -> Reply {
    match kind {
        Kind::System => s.core.shm().unregister_system(name)?,
        Kind::Cuda => s.core.shm().unregister_cuda(name)?,
    }
    Ok(ok_empty())
}

/// Register: refused first when client shared memory is off, then the body is read and
/// checked as Triton checks it.
async fn register(s: &Http, kind: Kind, region: &str, headers: &HeaderMap, body: Body) -> Reply {
    s.core.shm().check_allowed()?;
    let body = read_body(body, headers, s, "JSON ").await?;
    let b = register_body(&body)?;
    match kind {
        Kind::System => register_system(s, region, &b),
        Kind::Cuda => register_cuda(s, region, &b),
    }
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

fn register_system(s: &Http, region: &str, b: &Map<String, Value>) -> Reply {
    let key = as_str(b.get("key").ok_or_else(|| missing("key"))?, "key")?;
    let byte_size = as_u64(
        b.get("byte_size").ok_or_else(|| missing("byte_size"))?,
        "byte_size",
    )?;
    let offset = b.get("offset").map_or(Ok(0), |v| as_u64(v, "offset"))?;
    s.core
        .shm()
        .register_system(region, key, offset, byte_size)?;
    Ok(ok_empty())
}

/// CUDA register: the body checked as Triton checks it, then refused as Triton built without
/// GPU support refuses it (`SharedMemory::register_cuda`).
fn register_cuda(s: &Http, region: &str, b: &Map<String, Value>) -> Reply {
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
    let handle = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .filter(|h| h.len() == 64);
    if handle.is_none() {
        return Err(Error::invalid_arg(
            "'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t",
        )
        .into());
    }
    let device_id = i64::try_from(device_id).unwrap_or(i64::MAX);
    s.core.shm().register_cuda(region, device_id, byte_size)?;
    Ok(ok_empty())
}
