//! [`ClientError`]: everything a client call can fail with.
//!
//! A refusal by the server keeps the contract's [`ErrorCode`] and message
//! ([`ClientError::Server`]), whether it came as an HTTP error body or as a
//! WebSocket `error` event, so an app matches on one code for both.
//! Transport failures (no route, refused, reset) carry the foreign error,
//! shared behind an `Arc` so the error stays `Clone` (events carry it).

use std::sync::Arc;

use crate::protocol::ErrorCode;
use crate::protocol::ErrorPayload;
use crate::protocol::http::{ErrorBody, ErrorResponse};

/// What can go wrong in a client call.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server refused the request with a contract error code.
    #[error("{}: {message}", code.as_str())]
    Server {
        code: ErrorCode,
        message: String,
        /// With [`ErrorCode::RateLimited`]: how long to wait.
        retry_after_ms: Option<u64>,
    },
    /// The request needs a live connection and there is none right now
    /// (only message sends are queued while offline).
    #[error("not connected")]
    NotConnected,
    /// The connection was lost before the server answered; the request may
    /// or may not have taken effect.
    #[error("connection lost before the server answered")]
    Disconnected,
    /// The client was closed (by the app, or for good after a fatal error).
    #[error("the client is closed")]
    Closed,
    /// The server sent something that is not the contract.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A bad server address or argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// TLS failed: the server's certificate is not trusted, or the server
    /// does not speak TLS. The message says which and what to do.
    #[error("TLS: {0}")]
    Tls(crate::Failure),
    /// The network or socket failed.
    #[error("transport: {0}")]
    Transport(#[source] Arc<dyn std::error::Error + Send + Sync + 'static>),
}

impl ClientError {
    /// A server refusal.
    pub fn server(code: ErrorCode, message: impl Into<String>) -> Self {
        ClientError::Server {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// Wraps a foreign transport error.
    pub fn transport(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ClientError::Transport(Arc::new(e))
    }

    /// The contract code, for server refusals.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The code an app matches on: the contract's for a server refusal
    /// (`forbidden`, …), else the client side's (`not_connected`,
    /// `disconnected`, `closed`, `protocol`, `invalid_argument`, `tls`,
    /// `transport`). What the bindings hand to other languages.
    pub fn code_str(&self) -> &'static str {
        match self {
            ClientError::Server { code, .. } => code.as_str(),
            ClientError::NotConnected => "not_connected",
            ClientError::Disconnected => "disconnected",
            ClientError::Closed => "closed",
            ClientError::Protocol(_) => "protocol",
            ClientError::InvalidArgument(_) => "invalid_argument",
            ClientError::Tls(_) => "tls",
            ClientError::Transport(_) => "transport",
        }
    }

    /// A non-2xx HTTP answer with `body`: the contract error the body
    /// carries, or, without one (a proxy in the way, say), the code for the
    /// status.
    pub fn from_http(status: u16, body: &str, retry_after_ms: Option<u64>) -> Self {
        match serde_json::from_str::<ErrorResponse>(body) {
            Ok(body) => ClientError::Server {
                code: body.error.code,
                message: body.error.message,
                retry_after_ms,
            },
            Err(_) => ClientError::Server {
                code: code_for_status(status),
                message: format!("HTTP {status} without an error body"),
                retry_after_ms,
            },
        }
    }

    /// Whether retrying cannot help: the token is refused or the client is
    /// closed. A client stops reconnecting after a fatal error.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ClientError::Closed)
            || matches!(
                self.code(),
                Some(ErrorCode::Unauthorized | ErrorCode::Forbidden)
            )
    }
}

impl From<ErrorPayload> for ClientError {
    fn from(p: ErrorPayload) -> Self {
        ClientError::Server {
            code: p.code,
            message: p.message,
            retry_after_ms: p.retry_after_ms,
        }
    }
}

impl From<ErrorBody> for ClientError {
    fn from(b: ErrorBody) -> Self {
        ClientError::server(b.code, b.message)
    }
}

/// The contract code for an HTTP status, for answers without an error body.
pub(crate) fn code_for_status(status: u16) -> ErrorCode {
    match status {
        400 => ErrorCode::InvalidRequest,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        408 => ErrorCode::Timeout,
        409 => ErrorCode::Conflict,
        413 => ErrorCode::PayloadTooLarge,
        429 => ErrorCode::RateLimited,
        503 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_keep_code_and_message() {
        let e = ClientError::from(ErrorPayload::new(ErrorCode::Forbidden, "not a member"));
        assert_eq!(e.code(), Some(ErrorCode::Forbidden));
        assert_eq!(e.to_string(), "forbidden: not a member");
        assert!(e.is_fatal());
        assert!(!ClientError::Disconnected.is_fatal());
        assert_eq!(ClientError::NotConnected.code(), None);
        assert_eq!(e.code_str(), "forbidden");
        assert_eq!(ClientError::NotConnected.code_str(), "not_connected");
    }

    #[test]
    fn http_answers_keep_their_body_code_or_take_the_status_one() {
        let body = r#"{"error":{"code":"rate_limited","message":"slow down"}}"#;
        let e = ClientError::from_http(429, body, Some(2000));
        assert!(matches!(
            e,
            ClientError::Server { code: ErrorCode::RateLimited, retry_after_ms: Some(2000), ref message }
                if message == "slow down"
        ));
        let e = ClientError::from_http(413, "<html>too big</html>", None);
        assert_eq!(e.code(), Some(ErrorCode::PayloadTooLarge));
        assert_eq!(ClientError::from_http(502, "", None).code_str(), "internal");
    }
}
