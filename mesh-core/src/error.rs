//! The crate's error type and the contract's error codes.
//!
//! Every failure a client can see becomes an [`Error`] with an [`ErrorCode`];
//! the server maps the code to an HTTP status in one place
//! ([`ErrorCode::http_status`]) and never shows internals: an
//! [`Error::Internal`] reaches the client as `internal` with a fixed message,
//! while the cause goes to the log.

#[cfg(any(feature = "server", feature = "p2p"))]
use crate::auth::AuthError;
#[cfg(feature = "server")]
use crate::storage::StoreError;

use std::fmt;
use std::sync::Arc;

// The contract's error codes are wire vocabulary: they live in `protocol`.
pub use crate::protocol::ErrorCode;

/// What can go wrong in a mesh operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed or breaks a limit.
    #[error("{0}")]
    InvalidRequest(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The route exists, but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Too many requests; retry after the given time.
    #[error("too many requests, retry in {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    /// The storage backend failed.
    #[cfg(feature = "server")]
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing or key handling failed (not a bad token: that is `Unauthorized`).
    #[cfg(any(feature = "server", feature = "p2p"))]
    #[error("auth backend: {0}")]
    Auth(AuthError),
    /// Anything else that is our fault.
    #[error("internal: {0}")]
    Internal(Failure),
}

impl Error {
    /// The contract code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Error::Unauthorized(_) => ErrorCode::Unauthorized,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Error::RateLimited { .. } => ErrorCode::RateLimited,
            Error::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            #[cfg(feature = "server")]
            Error::Store(StoreError::Unavailable(_)) => ErrorCode::Unavailable,
            #[cfg(feature = "server")]
            Error::Store(_) => ErrorCode::Internal,
            #[cfg(any(feature = "server", feature = "p2p"))]
            Error::Auth(_) => ErrorCode::Internal,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The message a client may see: our own words for client errors, a fixed
    /// text for internal ones (whose detail belongs in the log only).
    pub fn client_message(&self) -> String {
        match self.code() {
            ErrorCode::Internal => "internal server error".to_owned(),
            // The cause (a path, an OS error) stays in the log.
            ErrorCode::Unavailable => {
                "the server's storage is unavailable (disk full or database unreachable); \
                 nothing was stored, try again later"
                    .to_owned()
            }
            _ => self.to_string(),
        }
    }

    /// `Retry-After` in milliseconds, for `rate_limited`.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Error::RateLimited { retry_after_ms } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// The error as the payload of a WebSocket `error` event.
    pub fn to_payload(&self) -> crate::protocol::ErrorPayload {
        crate::protocol::ErrorPayload {
            code: self.code(),
            message: self.client_message(),
            retry_after_ms: self.retry_after_ms(),
        }
    }
}

impl From<crate::protocol::UnknownRtcKind> for Error {
    fn from(e: crate::protocol::UnknownRtcKind) -> Self {
        Error::InvalidRequest(e.to_string())
    }
}

#[cfg(any(feature = "server", feature = "p2p"))]
impl From<AuthError> for Error {
    fn from(e: AuthError) -> Self {
        if e.is_credential_error() {
            Error::Unauthorized(e.to_string())
        } else {
            Error::Auth(e)
        }
    }
}

/// A failure in our own words, and the error that caused it when another
/// one did: the cause is kept, typed ([`Failure::cause`], to downcast),
/// rather than flattened into text.
///
/// Its display is the words, then `": "` and the cause's display, as the
/// messages read before the cause was kept; `"words".into()` makes one
/// without a cause. Cheap to clone, so errors that carry one stay `Clone`.
#[derive(Clone, Debug)]
pub struct Failure {
    what: String,
    cause: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Failure {
    /// A failure with no other error behind it.
    pub fn new(what: impl Into<String>) -> Self {
        Failure {
            what: what.into(),
            cause: None,
        }
    }

    /// `what` failed because of `cause`.
    pub fn caused_by(
        what: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Failure {
            what: what.into(),
            cause: Some(Arc::new(cause)),
        }
    }

    /// What failed, in our words, without the cause.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The error that caused this one, if another did.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.cause, self.what.is_empty()) {
            (None, _) => f.write_str(&self.what),
            (Some(cause), true) => write!(f, "{cause}"),
            (Some(cause), false) => write!(f, "{}: {cause}", self.what),
        }
    }
}

// `source()` stays `None`: the display already ends with the cause, and
// error reports that walk the chain (anyhow's `{:#}`) would print it twice.
// The cause is there, typed, through `Failure::cause`.
impl std::error::Error for Failure {}

impl From<String> for Failure {
    fn from(what: String) -> Self {
        Failure::new(what)
    }
}

impl From<&str> for Failure {
    fn from(what: &str) -> Self {
        Failure::new(what)
    }
}

/// Shorthand for results of mesh operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak() {
        let e = Error::Internal("disk on fire at /var/secret".into());
        assert_eq!(e.code(), ErrorCode::Internal);
        assert!(!e.client_message().contains("secret"));
        assert_eq!(e.code().http_status(), 500);
    }

    #[cfg(feature = "server")]
    #[test]
    fn a_full_disk_is_503_unavailable_without_details() {
        let io = std::io::Error::other("No space left on device at /var/secret");
        let e = Error::Store(StoreError::Unavailable(Box::new(io)));
        assert_eq!(e.code(), ErrorCode::Unavailable);
        assert_eq!(e.code().http_status(), 503);
        assert_eq!(e.code().as_str(), "unavailable");
        assert!(e.client_message().contains("disk full"));
        assert!(!e.client_message().contains("secret"));
    }

    #[test]
    fn a_failure_keeps_its_cause() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Failure::caused_by("loading the key", io);
        assert_eq!(e.to_string(), "loading the key: no such file");
        assert_eq!(e.what(), "loading the key");
        let cause = e.cause().expect("the cause is kept");
        let io = cause.downcast_ref::<std::io::Error>().expect("as its type");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        // Not also a source: a chain printer would show it twice.
        assert!(e.source().is_none());
        let plain = Failure::from("no key loaded");
        assert!(plain.cause().is_none());
        assert_eq!(plain.to_string(), "no key loaded");
        // The crate's error keeps it too, and reads as it did.
        let e = Error::Internal(Failure::caused_by("a task", std::fmt::Error));
        assert_eq!(
            e.to_string(),
            format!("internal: a task: {}", std::fmt::Error)
        );
        match e {
            Error::Internal(f) => assert!(f.cause().is_some()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn codes_serialize_snake_case() {
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::PayloadTooLarge,
            ErrorCode::RateLimited,
            ErrorCode::Unavailable,
            ErrorCode::Timeout,
        ] {
            assert_eq!(serde_json::json!(code), serde_json::json!(code.as_str()));
        }
    }
}
