//! The KServe v2 HTTP/REST front-end with Triton's extensions (http-protocol.md): routes,
//! request bodies (size limit, compression) and replies. It calls the same `Core` as gRPC;
//! `convert` does the JSON/binary ↔ core translation and `status` the error mapping.

pub(crate) mod compress;
pub(crate) mod convert;
mod json;
mod params;
#[cfg(test)]
mod proptests;
pub(crate) mod settings;
pub(crate) mod shapes;
mod shm;
pub(crate) mod status;
pub(crate) mod tensor_json;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::StreamExt;

use self::compress::Encoding;
use crate::core::Core;
use crate::error::Error;
use crate::frontend::listen::{Http1Options, Listener};
use crate::frontend::restrict::{self, Restrictions};
use crate::model::config_json;
use crate::request::{Origin, Protocol};
use crate::telemetry::spans;

/// Triton's default `--http-max-input-size` (64 MiB).
pub(crate) const DEFAULT_MAX_INPUT_SIZE: usize = 64 << 20;

/// The binary tensor extension's header (http-protocol.md §6.2).
pub(crate) const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// How much of an over-limit body is read and thrown away, after the 400 is sent, so that the
/// client, still sending, reads the 400 instead of a reset connection. Past this the
/// connection is simply closed.
const DRAIN_LIMIT: usize = 1 << 30;
/// How long the rest of a refused body is drained: a client that dribbles it cannot hold the
/// connection longer than this (the idle timer cannot close a connection mid-body).
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone)]
struct Http {
    core: Arc<Core>,
    max_input_size: usize,
    /// `--http-body-timeout-secs`: the whole body must arrive within it.
    body_timeout: std::time::Duration,
}

/// Serves the routes on `listener` until `stop` turns true, then lets in-flight requests
/// finish (the caller bounds that wait with the exit timeout). `restrictions` gate their
/// groups' routes before anything else (outermost layer: no body is read for a refusal).
pub(crate) async fn serve(
    listener: Listener,
    core: Arc<Core>,
    max_input_size: usize,
    overload_429: bool,
    restrictions: Restrictions,
    http1: Http1Options,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut app = router(core, max_input_size, http1.body_timeout);
    if overload_429 {
        app = app.layer(axum::middleware::map_response(status::overload_as_429));
    }
    if !restrictions.is_empty() {
        app = app.layer(axum::middleware::from_fn_with_state(
            Arc::new(restrictions),
            restricted,
        ));
    }
    listener.serve_http1(app, http1, stop).await
}

/// `--http-restricted-api`: a request on a restricted group's route without the group's
/// header (or with another value) gets Triton's 403.
async fn restricted(
    State(rules): State<Arc<Restrictions>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let refused = restrict::http_group(req.uri().path())
        .map(|g| rules.check(g, req.headers()))
        .and_then(Result::err);
    match refused {
        Some(message) => status::error_response(StatusCode::FORBIDDEN, &message),
        None => next.run(req).await,
    }
}

/// Every route of http-protocol.md §2 that this server implements or answers with an error.
pub(crate) fn router(
    core: Arc<Core>,
    max_input_size: usize,
    body_timeout: std::time::Duration,
) -> Router {
    let model_routes = |r: Router<Http>, base: &str| {
        r.route(base, get(model_metadata))
            .route(&format!("{base}/ready"), get(model_ready))
            .route(&format!("{base}/infer"), post(infer))
            .route(&format!("{base}/config"), get(model_config))
            .route(&format!("{base}/stats"), get(model_stats))
    };
    let mut r = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/stats", get(all_stats));
    r = model_routes(r, "/v2/models/{model}");
    r = model_routes(r, "/v2/models/{model}/versions/{version}");
    r = r
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/{repo}/index", post(repository_name))
        .route("/v2/repository/models/{model}/load", post(load))
        .route("/v2/repository/models/{model}/unload", post(unload))
        .route(
            "/v2/repository/{repo}/models/{model}/load",
            post(repository_name),
        )
        .route(
            "/v2/repository/{repo}/models/{model}/unload",
            post(repository_name),
        );
    r = shm::routes(r);
    r.route("/v2/trace/setting", get(global_trace).post(global_trace))
        .route(
            "/v2/models/{model}/trace/setting",
            get(model_trace).post(model_trace),
        )
        .route("/v2/logging", get(logging).post(logging))
        .fallback(|| async { status::not_found() })
        .method_not_allowed_fallback(|| async { status::method_not_allowed() })
        .layer(DefaultBodyLimit::disable())
        .with_state(Http {
            core,
            max_input_size,
            body_timeout,
        })
}

/// A handler's failure: a core error (mapped by `status`) or a ready-made reply.
enum Failure {
    Error(Error),
    Reply(Box<Response>),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Error(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Error(e) => e.into_response(),
            Failure::Reply(r) => *r,
        }
    }
}

type Reply = Result<Response, Failure>;
type Params = Result<Path<HashMap<String, String>>, PathRejection>;

fn json(v: &Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// 200 with an empty body (health, model ready, load/unload).
fn ok_empty() -> Response {
    StatusCode::OK.into_response()
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `{model}` (and optional `{version}`) path segments. The version must be digits, as
/// Triton's route pattern: anything else is not a route (404).
fn model_path(params: Params) -> Result<(String, String), Failure> {
    let Path(mut p) =
        params.map_err(|e| Error::invalid_arg(format!("invalid request path: {e}")))?;
    let model = p.remove("model").unwrap_or_default();
    let version = p.remove("version").unwrap_or_default();
    if !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Failure::Reply(Box::new(status::not_found())));
    }
    Ok((model, version))
}

fn too_large(size: Option<u64>, limit: usize, what: &str) -> Error {
    let size = size.map(|n| format!(" of {n} bytes")).unwrap_or_default();
    Error::invalid_arg(format!(
        "Request {what}size{size} exceeds the maximum allowed value of {limit} bytes. Use --http-max-input-size to increase the limit."
    ))
}

/// Reads the whole body, refusing more than `limit` bytes. `what` names it in the message
/// ("JSON " when the body is all JSON).
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    s: &Http,
    what: &str,
) -> Result<Bytes, Failure> {
    let (limit, within) = (s.max_input_size, s.body_timeout);
    let declared = header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    let over = |size| {
        let mut resp = too_large(size, limit, what).into_response();
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Failure::Reply(Box::new(resp))
    };
    // Refused at once, while the client may still be sending: the rest of the body is read
    // and thrown away beside the reply (`Connection: close` ends the connection after it).
    if declared.is_some_and(|n| n > limit as u64) {
        tokio::spawn(drain(stream));
        return Err(over(declared));
    }
    let mut buf = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    // The whole body must arrive within `within`: a client that sends it a byte at a time
    // cannot hold the request (and its connection) open for longer.
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let next = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(next) => next,
            Err(_) => return Err(body_too_slow(within)),
        };
        let Some(chunk) = next else { break };
        let chunk = chunk
            .map_err(|e| Error::invalid_arg(format!("failed to read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            let seen = (buf.len() as u64).saturating_add(chunk.len() as u64);
            tokio::spawn(drain(stream));
            return Err(over(declared.or(Some(seen)).filter(|&n| n > limit as u64)));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// 408 for a body that did not arrive in time; the connection is closed after the reply.
fn body_too_slow(within: std::time::Duration) -> Failure {
    let mut resp = status::error_response(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        &format!(
            "the request body did not arrive within {} s (--http-body-timeout-secs)",
            within.as_secs()
        ),
    );
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Failure::Reply(Box::new(resp))
}

/// Reads and discards what the client still sends, up to `DRAIN_LIMIT` bytes or `DRAIN_TIME`;
/// dropping the stream then ends the connection (the reply said `Connection: close`).
async fn drain(mut stream: axum::body::BodyDataStream) {
    let read = async {
        let mut seen = 0usize;
        while let Some(Ok(chunk)) = stream.next().await {
            seen = seen.saturating_add(chunk.len());
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

async fn live(State(s): State<Http>) -> Reply {
    Ok(health(s.core.live()?))
}

async fn ready(State(s): State<Http>) -> Reply {
    Ok(health(s.core.ready()?))
}

/// 200 or 400, both with an empty body (http-protocol.md §3).
fn health(ok: bool) -> Response {
    if ok {
        ok_empty()
    } else {
        StatusCode::BAD_REQUEST.into_response()
    }
}

async fn server_metadata(State(s): State<Http>) -> Reply {
    Ok(json(&shapes::server_metadata(s.core.server_metadata())))
}

async fn model_metadata(State(s): State<Http>, params: Params) -> Reply {
    let (model, version) = model_path(params)?;
    Ok(json(&shapes::model_metadata(
        s.core.model_metadata(&model, &version)?,
    )))
}

async fn model_ready(State(s): State<Http>, params: Params) -> Reply {
    let (model, version) = model_path(params)?;
    if s.core.model_ready(&model, &version)? {
        Ok(ok_empty())
    } else {
        Err(Error::invalid_arg("Model version not ready").into())
    }
}

async fn model_config(State(s): State<Http>, params: Params) -> Reply {
    let (model, version) = model_path(params)?;
    let config = s.core.model_config(&model, &version)?;
    Ok(json(&config_json::to_json(&config)))
}

async fn all_stats(State(s): State<Http>) -> Reply {
    Ok(json(&shapes::model_statistics(s.core.statistics("", "")?)))
}

async fn model_stats(State(s): State<Http>, params: Params) -> Reply {
    let (model, version) = model_path(params)?;
    Ok(json(&shapes::model_statistics(
        s.core.statistics(&model, &version)?,
    )))
}

async fn repository_index(State(s): State<Http>, headers: HeaderMap, body: Body) -> Reply {
    let body = read_body(body, &headers, &s, "JSON ").await?;
    let ready = shapes::index_request(&body)?;
    Ok(json(&shapes::repository_index(
        s.core.repository_index(ready).await?,
    )))
}

/// Index/load/unload naming a repository (behaviour.md E40).
async fn repository_name() -> Reply {
    Err(Error::unsupported("'repository_name' specification is not supported").into())
}

async fn load(State(s): State<Http>, params: Params, headers: HeaderMap, body: Body) -> Reply {
    let (model, _) = model_path(params)?;
    let body = read_body(body, &headers, &s, "JSON ").await?;
    let req = shapes::load_request(&body)?;
    s.core.load_model(&model, req).await?;
    Ok(ok_empty())
}

async fn unload(State(s): State<Http>, params: Params, headers: HeaderMap, body: Body) -> Reply {
    let (model, _) = model_path(params)?;
    let body = read_body(body, &headers, &s, "JSON ").await?;
    let unload_dependents = shapes::unload_request(&body)?;
    s.core.unload_model(&model, unload_dependents).await?;
    Ok(ok_empty())
}

/// GET or POST `/v2/trace/setting`: the global trace settings.
async fn global_trace(
    State(s): State<Http>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    trace(&s, "", method, &headers, body).await
}

/// GET or POST `/v2/models/{model}/trace/setting`: a model's trace settings.
async fn model_trace(
    State(s): State<Http>,
    method: Method,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let (model, _) = model_path(params)?;
    trace(&s, &model, method, &headers, body).await
}

/// POST updates the keys its body names first. Either way the reply is every setting after
/// the call.
async fn trace(s: &Http, model: &str, method: Method, headers: &HeaderMap, body: Body) -> Reply {
    let current = if method == Method::POST {
        let body = read_body(body, headers, s, "JSON ").await?;
        let pairs = settings::trace_update(&body)?;
        let pairs = pairs.iter().map(|(k, v)| (k.as_str(), v.clone()));
        s.core.update_trace_settings(model, pairs)?
    } else {
        s.core.trace_settings(model)?
    };
    Ok(json(&settings::trace_json(current)))
}

/// GET or POST the log settings; POST updates the keys its body names first.
async fn logging(State(s): State<Http>, method: Method, headers: HeaderMap, body: Body) -> Reply {
    let current = if method == Method::POST {
        let body = read_body(body, &headers, &s, "JSON ").await?;
        s.core.update_log_settings(&settings::log_update(&body)?)?
    } else {
        s.core.log_settings()
    };
    Ok(json(&settings::log_json(current)))
}

/// POST `.../infer`: JSON, JSON + binary tensors, or a raw binary body; gzip/deflate both
/// ways (http-protocol.md §1.2, §5, §6). The request is opened (span, client deadline, W3C
/// trace context) before its body is read, as a gRPC call is before its message is decoded.
async fn infer(State(s): State<Http>, params: Params, headers: HeaderMap, body: Body) -> Reply {
    let arrival = Instant::now();
    let (model, version) = model_path(params)?;
    let origin = Origin {
        protocol: Protocol::Http,
        arrival,
        deadline: request_deadline(&headers, arrival)?,
        trace: super::trace_context(&headers),
    };
    let ctx = s.core.open_request(origin, &model, &version);
    let span = ctx.span().clone();
    let (body, header_len) = infer_body(&s, &model, &version, &headers, body)
        .await
        .inspect_err(|f| {
            if let Failure::Error(e) = f {
                spans::record_error(&span, &e.message);
            }
        })?;
    let (req, format, placement) = s.core.receive(&ctx, || {
        let (mut req, format) = if header_len == Some(0) {
            let spec = s.core.model_spec(&model, &version)?;
            convert::raw_infer_request(&spec, &version, body)?
        } else {
            convert::infer_request(&model, &version, body, header_len)?
        };
        let placement = s.core.shm().place(&mut req, &format.shm)?;
        Ok((req, format, placement))
    })?;
    let resp = s.core.submit(req, ctx)?.await?;
    placement.write_outputs(&resp)?;
    let _send = spans::send(&span).entered();
    let (body, header_len) = convert::infer_response(resp, &format)?;
    let encoding = compress::response_encoding(header_str(&headers, header::ACCEPT_ENCODING));
    Ok(infer_reply(body, header_len, encoding))
}

/// An infer request's body, read and decompressed, with where its JSON header ends
/// (`convert::header_length`).
async fn infer_body(
    s: &Http,
    model: &str,
    version: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, Option<usize>), Failure> {
    let header_value = header_str(headers, INFERENCE_HEADER_CONTENT_LENGTH);
    let what = if header_value.is_none() { "JSON " } else { "" };
    let body = read_body(body, headers, s, what).await?;
    // Triton looks the model up before it looks at the body.
    s.core.model_spec(model, version)?;
    let body = match compress::request_encoding(header_str(headers, header::CONTENT_ENCODING)) {
        Some(Encoding::Identity) => body,
        Some(enc) => compress::decompress(enc, &body, s.max_input_size)?
            .ok_or_else(|| too_large(None, s.max_input_size, what))?
            .into(),
        None => {
            let mut resp = Error::unsupported("Unsupported compression type").into_response();
            resp.headers_mut().insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("gzip, deflate"),
            );
            return Err(Failure::Reply(Box::new(resp)));
        }
    };
    let header_len = convert::header_length(header_value, body.len())?;
    Ok((body, header_len))
}

/// The client's deadline, from the `Request-Timeout-Ms` header (milliseconds from now).
fn request_deadline(headers: &HeaderMap, arrival: Instant) -> Result<Option<Instant>, Failure> {
    let Some(v) = header_str(headers, REQUEST_TIMEOUT_MS) else {
        return Ok(None);
    };
    let ms: u64 = v.trim().parse().map_err(|_| {
        Error::invalid_arg(format!(
            "header '{REQUEST_TIMEOUT_MS}' must be a whole number of milliseconds, got '{v}'"
        ))
    })?;
    // Past what the clock can represent is no deadline at all.
    Ok(arrival.checked_add(std::time::Duration::from_millis(ms)))
}

/// Header carrying an HTTP client's deadline in milliseconds.
pub(crate) const REQUEST_TIMEOUT_MS: &str = "request-timeout-ms";

fn infer_reply(body: Bytes, header_len: Option<usize>, encoding: Encoding) -> Response {
    let (body, encoding) = match compress::compress(encoding, &body) {
        Some(packed) => (Bytes::from(packed), encoding),
        None => (body, Encoding::Identity),
    };
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    match header_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(
                HeaderName::from_static(INFERENCE_HEADER_CONTENT_LENGTH),
                HeaderValue::from(n),
            );
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    if encoding != Encoding::Identity {
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(encoding.as_str()),
        );
    }
    resp
}
