//! HTTP: routing, bodies, and the one place errors become responses.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use mesh_core::auth::Identity;
use mesh_core::protocol::http::{ErrorBody, ErrorResponse};
use mesh_core::{Error, ErrorCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::AppState;

mod api;

pub(crate) type Body = Full<Bytes>;

/// Answers one request from `client` (the TCP peer, or the address a
/// trusted proxy forwarded). Never fails: every error becomes a JSON answer.
pub(crate) async fn handle(
    state: Arc<AppState>,
    client: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut response = if method == Method::OPTIONS {
        preflight()
    } else if let Some(page) = crate::web::serve(&method, &path) {
        page
    } else {
        match api::route(&state, client, req).await {
            Ok(response) => response,
            Err(e) => error_response(&e),
        }
    };
    if path.starts_with("/api/") {
        // Tokens travel in headers, never cookies, so any origin may call.
        response.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    tracing::debug!(%client, %method, %path, status = response.status().as_u16(), "request");
    Ok(response)
}

fn preflight() -> Response<Body> {
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    r
}

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

/// The whole `408` answer [`crate::conn`] writes straight to the socket
/// when a request header stalls: hyper's connection is abandoned at that
/// point, so the bytes are made here rather than by hyper. Built once.
pub(crate) fn request_timeout_answer() -> &'static [u8] {
    static ANSWER: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let body = ErrorResponse {
            error: ErrorBody {
                code: ErrorCode::Timeout,
                message: "the request header took too long; send it on a new connection".into(),
            },
        };
        // A struct of two strings always encodes; the fallback is the same text.
        let body = serde_json::to_string(&body).unwrap_or_else(|_| {
            r#"{"error":{"code":"timeout","message":"request header timeout"}}"#.into()
        });
        format!(
            "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    });
    &ANSWER
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

/// Reads a JSON body of at most `max` bytes.
pub(crate) async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    max: usize,
) -> Result<T, Error> {
    let too_large = || Error::PayloadTooLarge(format!("request body is larger than {max} bytes"));
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH)
        && len
            .to_str()
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .is_some_and(|n| n > max)
    {
        return Err(too_large());
    }
    let bytes = match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(Error::InvalidRequest(format!(
                "could not read the body: {e}"
            )));
        }
    };
    if bytes.is_empty() {
        return Err(Error::InvalidRequest("a JSON body is required".into()));
    }
    serde_json::from_slice(&bytes).map_err(|e| Error::InvalidRequest(format!("bad JSON body: {e}")))
}

/// The bearer token of a request: `Authorization: Bearer …`, or for
/// WebSocket upgrades also `?token=…`.
pub(crate) fn bearer_token<B>(req: &Request<B>, allow_query: bool) -> Option<String> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION)
        && let Ok(value) = value.to_str()
    {
        let mut parts = value.splitn(2, ' ');
        if let (Some(scheme), Some(token)) = (parts.next(), parts.next())
            && scheme.eq_ignore_ascii_case("bearer")
        {
            return Some(token.trim().to_owned());
        }
    }
    if allow_query {
        return query_param(req.uri().query(), "token");
    }
    None
}

/// One query parameter, percent-decoded.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url_params(query?)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn url_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Authenticates a request.
pub(crate) async fn authenticate<B>(
    state: &AppState,
    req: &Request<B>,
    allow_query: bool,
) -> Result<Identity, Error> {
    let token = bearer_token(req, allow_query)
        .ok_or_else(|| Error::Unauthorized("missing bearer token".into()))?;
    state.service.authenticate(&token).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_decode() {
        assert_eq!(
            query_param(Some("a=1&token=x%2By+z"), "token").as_deref(),
            Some("x+y z")
        );
        assert_eq!(
            query_param(Some("token=%zz"), "token").as_deref(),
            Some("%zz")
        );
        assert_eq!(
            query_param(Some("token=%4"), "token").as_deref(),
            Some("%4")
        );
        assert_eq!(query_param(None, "token"), None);
    }
}
