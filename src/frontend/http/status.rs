//! The HTTP edge of the error vocabulary (http-protocol.md §1.1): every `Error` becomes Triton's
//! status with a `{"error": "<message>"}` body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::{Code, Error, Rejection};

pub(crate) fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unsupported => StatusCode::NOT_IMPLEMENTED,
        Code::InvalidArg | Code::Unknown | Code::AlreadyExists | Code::Cancelled => {
            StatusCode::BAD_REQUEST
        }
    }
}

/// `{"error": "<message>"}` with `Content-Type: application/json` and the given status.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Overload rejections keep Triton's 503 and message and add `Retry-After` (whole seconds,
/// at least 1); the reason rides along as a response extension for `overload_as_429`.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut resp = error_response(http_status(self.code), &self.message);
        if let Some((why, retry)) = self.retry_hint() {
            let secs = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            resp.extensions_mut().insert(why);
        }
        resp
    }
}

/// `--http-overload-status=429`: refusals for load (queue full, shed, deadline, server busy)
/// become 429 Too Many Requests; a draining server or a model that is not ready stays 503.
pub(crate) async fn overload_as_429(mut resp: Response) -> Response {
    let load = matches!(
        resp.extensions().get::<Rejection>(),
        Some(
            Rejection::QueueFull
                | Rejection::ShedByPriority
                | Rejection::DeadlineUnmeetable
                | Rejection::ServerBusy
        )
    );
    if load {
        *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    }
    resp
}

/// An unknown path: 404 `{"error":"Not Found"}`, as Triton.
pub(crate) fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "Not Found")
}

/// A known path with the wrong method: 405 `{"error":"Method Not Allowed"}`, as Triton.
pub(crate) fn method_not_allowed() -> Response {
    error_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_table() {
        let table = [
            (Code::Unknown, 400),
            (Code::Internal, 500),
            (Code::NotFound, 404),
            (Code::InvalidArg, 400),
            (Code::Unavailable, 503),
            (Code::Unsupported, 501),
            (Code::AlreadyExists, 400),
            (Code::Cancelled, 400),
        ];
        for (code, status) in table {
            let resp = Error {
                code,
                message: "m \"quoted\"".into(),
                rejection: None,
            }
            .into_response();
            assert_eq!(resp.status().as_u16(), status, "{code:?}");
            assert_eq!(
                resp.headers()[header::CONTENT_TYPE],
                "application/json",
                "{code:?}"
            );
        }
    }

    #[tokio::test]
    async fn error_body_is_one_string_member() {
        let resp = Error::invalid_arg("bad \"x\"").into_response();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 10)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json, serde_json::json!({"error": "bad \"x\""}));
    }
}
