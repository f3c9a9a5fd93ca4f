//! [`ClientError`]: everything a client call can fail with.
//!
//! A refusal by the server keeps the contract's [`ErrorCode`] and message
//! ([`ClientError::Server`]), whether it came as an HTTP error body or as a
//! WebSocket `error` event, so an app matches on one code for both.
//! Transport failures (no route, refused, reset) carry the foreign error,
//! shared behind an `Arc` so the error stays `Clone` (events carry it).

use std::sync::Arc;

use crate::error::ErrorCode;
use crate::protocol::ErrorPayload;
use crate::protocol::http::ErrorBody;

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
    }
}
