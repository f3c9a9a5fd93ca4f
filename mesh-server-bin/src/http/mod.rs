//! HTTP: the router and everything behind it.
//!
//! - [`handle`]: one request, routed to the web client's pages ([`web`]),
//!   the REST API ([`api`]), or a WebSocket upgrade ([`ws`] for chat,
//!   [`relay_ws`] for the P2P relay);
//! - [`response`]: the answers, and the one place errors become responses;
//! - [`request`]: bodies, bearer tokens, query parameters.
//!
//! `response` and `request` import nothing else of this module: the routes
//! use them, never the other way round.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::AppState;

mod api;
mod relay_ws;
mod request;
mod response;
mod web;
pub(crate) mod ws;

pub(crate) use response::{Body, error_response, too_many_connections};
pub use ws::WsLimits;

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
    } else if let Some(page) = web::serve(&method, &path) {
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
    for (name, value) in [
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        (
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "GET, POST, PATCH, DELETE, OPTIONS",
        ),
        (
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "authorization, content-type",
        ),
        (header::ACCESS_CONTROL_MAX_AGE, "600"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}
