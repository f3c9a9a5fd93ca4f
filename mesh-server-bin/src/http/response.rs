//! The answers: JSON bodies, the contract's error body (the one place an
//! [`Error`] becomes a response), and the fixed answers written before or
//! outside hyper.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use mesh_core::protocol::http::{ErrorBody, ErrorResponse};
use mesh_core::{Error, ErrorCode};
use serde::Serialize;

/// Every answer's body.
pub(crate) type Body = Full<Bytes>;

/// The contract's error body with the matching status. Internal errors are
/// logged here and reach the client only as `internal`.
pub(crate) fn error_response(e: &Error) -> Response<Body> {
    let code = e.code();
    if code == ErrorCode::Internal {
        tracing::error!(error = %e, "internal error");
    } else if code == ErrorCode::Unavailable {
        tracing::warn!(error = %e, "storage unavailable");
    }
    let body = ErrorResponse {
        error: ErrorBody {
            code,
            message: e.client_message(),
        },
    };
    let mut r = json_response(
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    );
    if let Some(ms) = e.retry_after_ms() {
        let secs = ms.div_ceil(1000).max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

/// Seconds a client refused for holding too many connections is asked to
/// wait.
const CONNECTIONS_RETRY_AFTER_SECS: u64 = 5;

/// The answer to a connection past the per-address cap: `429` with the
/// contract's error body, code `rate_limited` (whose status is 429 in the
/// contract's table), and `Retry-After`.
pub(crate) fn too_many_connections(max_per_addr: usize) -> Response<Body> {
    let body = ErrorResponse {
        error: ErrorBody {
            code: ErrorCode::RateLimited,
            message: format!(
                "too many connections from your address (at most {max_per_addr}); \
                 close some or retry later"
            ),
        },
    };
    let mut r = json_response(StatusCode::TOO_MANY_REQUESTS, &body);
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(CONNECTIONS_RETRY_AFTER_SECS),
    );
    r
}

/// A JSON answer.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    let bytes = match serde_json::to_vec(body) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "encoding a response failed");
            return Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(Body::from(
                    r#"{"error":{"code":"internal","message":"internal server error"}}"#,
                ))
                .unwrap_or_default();
        }
    };
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// An empty answer.
pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::default());
    *r.status_mut() = status;
    r
}
