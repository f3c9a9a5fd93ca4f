//! Errors of P2P sessions, and the error codes of `P2P_ERROR` frames.

use std::fmt;
use std::path::PathBuf;

use super::frame::{FrameError, ReadError};

/// The code of a `P2P_ERROR` frame (a `u16` on the wire).
///
/// Codes below 100 end the session; [`ErrorCode::ReadOnly`] refuses one
/// frame and the session goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 1: a frame that is malformed or not allowed in this state.
    Protocol,
    /// 2: the peer speaks another protocol version.
    UnsupportedVersion,
    /// 10: the session token's signature, algorithm, key or kind is wrong.
    InvalidToken,
    /// 11: the session token has expired.
    TokenExpired,
    /// 12: the token names another session than the hello.
    WrongSession,
    /// 13: the token names another target peer than this agent.
    WrongPeer,
    /// 14: the connecting certificate is not the announced one.
    WrongCertificate,
    /// 15: this agent was not told about the session.
    UnknownSession,
    /// 16: this agent does not accept sessions of that kind, or the frames
    /// do not match the session's kind.
    KindNotAccepted,
    /// 20: a name or path that is not a safe relative path.
    BadPath,
    /// 21: the destination exists and overwriting was not allowed.
    AlreadyExists,
    /// 22: the content does not match its BLAKE3 hash.
    HashMismatch,
    /// 23: larger than the receiver accepts.
    TooLarge,
    /// 24: the receiver could not read or write its disk.
    Io,
    /// 30: terminal input or resize refused: the share is read-only.
    ReadOnly,
    /// 31: the terminal could not be started.
    Terminal,
    /// 99: anything else on the peer's side.
    Internal,
    /// A code this version does not know.
    Unknown(u16),
}

impl ErrorCode {
    /// The wire value.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::Protocol => 1,
            ErrorCode::UnsupportedVersion => 2,
            ErrorCode::InvalidToken => 10,
            ErrorCode::TokenExpired => 11,
            ErrorCode::WrongSession => 12,
            ErrorCode::WrongPeer => 13,
            ErrorCode::WrongCertificate => 14,
            ErrorCode::UnknownSession => 15,
            ErrorCode::KindNotAccepted => 16,
            ErrorCode::BadPath => 20,
            ErrorCode::AlreadyExists => 21,
            ErrorCode::HashMismatch => 22,
            ErrorCode::TooLarge => 23,
            ErrorCode::Io => 24,
            ErrorCode::ReadOnly => 30,
            ErrorCode::Terminal => 31,
            ErrorCode::Internal => 99,
            ErrorCode::Unknown(c) => c,
        }
    }

    /// The code for a wire value.
    pub fn from_u16(code: u16) -> Self {
        match code {
            1 => ErrorCode::Protocol,
            2 => ErrorCode::UnsupportedVersion,
            10 => ErrorCode::InvalidToken,
            11 => ErrorCode::TokenExpired,
            12 => ErrorCode::WrongSession,
            13 => ErrorCode::WrongPeer,
            14 => ErrorCode::WrongCertificate,
            15 => ErrorCode::UnknownSession,
            16 => ErrorCode::KindNotAccepted,
            20 => ErrorCode::BadPath,
            21 => ErrorCode::AlreadyExists,
            22 => ErrorCode::HashMismatch,
            23 => ErrorCode::TooLarge,
            24 => ErrorCode::Io,
            30 => ErrorCode::ReadOnly,
            31 => ErrorCode::Terminal,
            99 => ErrorCode::Internal,
            c => ErrorCode::Unknown(c),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorCode::Protocol => "protocol",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::WrongSession => "wrong_session",
            ErrorCode::WrongPeer => "wrong_peer",
            ErrorCode::WrongCertificate => "wrong_certificate",
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::KindNotAccepted => "kind_not_accepted",
            ErrorCode::BadPath => "bad_path",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::HashMismatch => "hash_mismatch",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Io => "io",
            ErrorCode::ReadOnly => "read_only",
            ErrorCode::Terminal => "terminal",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown(c) => return write!(f, "unknown({c})"),
        };
        f.write_str(name)
    }
}

/// What can go wrong in a P2P session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum P2pError {
    /// This side refused the session or a frame, and told the peer so with
    /// a `P2P_ERROR` frame carrying `code`.
    #[error("refused ({code}): {message}")]
    Refused {
        /// The code sent to the peer.
        code: ErrorCode,
        /// Why.
        message: String,
    },
    /// The peer sent a `P2P_ERROR` frame.
    #[error("the peer refused ({code}): {message}")]
    Remote {
        /// The code the peer sent.
        code: ErrorCode,
        /// The peer's message.
        message: String,
    },
    /// The peer's certificate is not the one announced for it (TLS pinning
    /// failed during the handshake).
    #[error("the peer's certificate fingerprint {got} is not the expected {expected}")]
    FingerprintMismatch {
        /// The announced fingerprint.
        expected: String,
        /// The certificate's fingerprint.
        got: String,
    },
    /// No address answered within the connect timeout.
    #[error(
        "could not reach the peer within {0:?}: no direct path worked and the server's relay did not carry the session (off, or out of reach)"
    )]
    Timeout(std::time::Duration),
    /// Every address failed (or none was usable).
    #[error("could not connect to the peer: {0}")]
    Unreachable(String),
    /// The QUIC connection failed or was closed.
    #[error("connection: {0}")]
    Connection(String),
    /// The peer sent bytes that are not a valid frame.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer sent a valid frame that is not allowed at this point.
    #[error("unexpected {got} frame, wanted {wanted}")]
    Unexpected {
        /// The frame received.
        got: &'static str,
        /// What the state machine expected.
        wanted: &'static str,
    },
    /// The session is of another kind than the operation.
    #[error("this is a {0} session")]
    WrongKind(&'static str),
    /// Reading or writing a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A local path that cannot be sent (not a file, no name, a name that
    /// is not UTF-8...).
    #[error("{0}")]
    BadLocalPath(String),
    /// Certificate generation, loading, or TLS configuration failed.
    #[error("identity / TLS: {0}")]
    Tls(String),
    /// The endpoint was closed.
    #[error("the endpoint is closed")]
    Closed,
    /// Running a terminal failed.
    #[error("terminal: {0}")]
    Terminal(String),
}

impl P2pError {
    /// The wire code, for the errors that carry one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            P2pError::Refused { code, .. } | P2pError::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A short name for what went wrong, for apps and bindings to match
    /// on: the wire code's name (`kind_not_accepted`, `hash_mismatch`, …)
    /// when the session was refused, else `wrong_certificate`, `timeout`,
    /// `unreachable`, `connection`, `protocol`, `io`, `invalid_argument`,
    /// `tls`, `closed` or `terminal`.
    pub fn code_name(&self) -> String {
        let name = match self {
            P2pError::Refused { code, .. } | P2pError::Remote { code, .. } => {
                return code.to_string();
            }
            P2pError::FingerprintMismatch { .. } => "wrong_certificate",
            P2pError::Timeout(_) => "timeout",
            P2pError::Unreachable(_) => "unreachable",
            P2pError::Connection(_) => "connection",
            P2pError::Frame(_) | P2pError::Unexpected { .. } | P2pError::WrongKind(_) => "protocol",
            P2pError::Io { .. } => "io",
            P2pError::BadLocalPath(_) => "invalid_argument",
            P2pError::Tls(_) => "tls",
            P2pError::Closed => "closed",
            P2pError::Terminal(_) => "terminal",
        };
        name.to_owned()
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        P2pError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        P2pError::Refused {
            code,
            message: message.into(),
        }
    }
}

impl From<ReadError> for P2pError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => P2pError::Connection(e.to_string()),
            ReadError::Frame(e) => P2pError::Frame(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in [
            1u16, 2, 10, 11, 12, 13, 14, 15, 16, 20, 21, 22, 23, 24, 30, 31, 99, 7, 65535,
        ] {
            assert_eq!(ErrorCode::from_u16(c).as_u16(), c);
        }
        assert_eq!(ErrorCode::from_u16(7), ErrorCode::Unknown(7));
        assert_eq!(ErrorCode::TokenExpired.to_string(), "token_expired");
    }
}
