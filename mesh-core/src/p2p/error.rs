//! Errors of P2P sessions, and the error codes of `P2P_ERROR` frames.

use std::fmt;
use std::path::PathBuf;

use super::frame::{FrameError, ReadError};
use crate::Failure;

/// The code of a `P2P_ERROR` frame (a `u16` on the wire).
///
/// Codes below 100 end the session; [`P2pErrorCode::ReadOnly`] refuses one
/// frame and the session goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum P2pErrorCode {
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

impl P2pErrorCode {
    /// The wire value.
    pub fn as_u16(self) -> u16 {
        match self {
            P2pErrorCode::Protocol => 1,
            P2pErrorCode::UnsupportedVersion => 2,
            P2pErrorCode::InvalidToken => 10,
            P2pErrorCode::TokenExpired => 11,
            P2pErrorCode::WrongSession => 12,
            P2pErrorCode::WrongPeer => 13,
            P2pErrorCode::WrongCertificate => 14,
            P2pErrorCode::UnknownSession => 15,
            P2pErrorCode::KindNotAccepted => 16,
            P2pErrorCode::BadPath => 20,
            P2pErrorCode::AlreadyExists => 21,
            P2pErrorCode::HashMismatch => 22,
            P2pErrorCode::TooLarge => 23,
            P2pErrorCode::Io => 24,
            P2pErrorCode::ReadOnly => 30,
            P2pErrorCode::Terminal => 31,
            P2pErrorCode::Internal => 99,
            P2pErrorCode::Unknown(c) => c,
        }
    }

    /// The code for a wire value.
    pub fn from_u16(code: u16) -> Self {
        match code {
            1 => P2pErrorCode::Protocol,
            2 => P2pErrorCode::UnsupportedVersion,
            10 => P2pErrorCode::InvalidToken,
            11 => P2pErrorCode::TokenExpired,
            12 => P2pErrorCode::WrongSession,
            13 => P2pErrorCode::WrongPeer,
            14 => P2pErrorCode::WrongCertificate,
            15 => P2pErrorCode::UnknownSession,
            16 => P2pErrorCode::KindNotAccepted,
            20 => P2pErrorCode::BadPath,
            21 => P2pErrorCode::AlreadyExists,
            22 => P2pErrorCode::HashMismatch,
            23 => P2pErrorCode::TooLarge,
            24 => P2pErrorCode::Io,
            30 => P2pErrorCode::ReadOnly,
            31 => P2pErrorCode::Terminal,
            99 => P2pErrorCode::Internal,
            c => P2pErrorCode::Unknown(c),
        }
    }
}

impl fmt::Display for P2pErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            P2pErrorCode::Protocol => "protocol",
            P2pErrorCode::UnsupportedVersion => "unsupported_version",
            P2pErrorCode::InvalidToken => "invalid_token",
            P2pErrorCode::TokenExpired => "token_expired",
            P2pErrorCode::WrongSession => "wrong_session",
            P2pErrorCode::WrongPeer => "wrong_peer",
            P2pErrorCode::WrongCertificate => "wrong_certificate",
            P2pErrorCode::UnknownSession => "unknown_session",
            P2pErrorCode::KindNotAccepted => "kind_not_accepted",
            P2pErrorCode::BadPath => "bad_path",
            P2pErrorCode::AlreadyExists => "already_exists",
            P2pErrorCode::HashMismatch => "hash_mismatch",
            P2pErrorCode::TooLarge => "too_large",
            P2pErrorCode::Io => "io",
            P2pErrorCode::ReadOnly => "read_only",
            P2pErrorCode::Terminal => "terminal",
            P2pErrorCode::Internal => "internal",
            P2pErrorCode::Unknown(c) => return write!(f, "unknown({c})"),
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
        code: P2pErrorCode,
        /// Why.
        message: String,
    },
    /// The peer sent a `P2P_ERROR` frame.
    #[error("the peer refused ({code}): {message}")]
    Remote {
        /// The code the peer sent.
        code: P2pErrorCode,
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
    #[error("could not connect to the peer: {}", join(.0))]
    Unreachable(Vec<Failure>),
    /// The QUIC connection failed or was closed.
    #[error("connection: {0}")]
    Connection(Failure),
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
    Tls(Failure),
    /// The endpoint was closed.
    #[error("the endpoint is closed")]
    Closed,
    /// Running a terminal failed.
    #[error("terminal: {0}")]
    Terminal(String),
}

impl P2pError {
    /// The wire code, for the errors that carry one.
    pub fn code(&self) -> Option<P2pErrorCode> {
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

    pub(crate) fn refused(code: P2pErrorCode, message: impl Into<String>) -> Self {
        P2pError::Refused {
            code,
            message: message.into(),
        }
    }
}

/// Every address's failure, one after the other.
fn join(failures: &[Failure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<ReadError> for P2pError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => P2pError::Connection(Failure::caused_by("", e)),
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
            assert_eq!(P2pErrorCode::from_u16(c).as_u16(), c);
        }
        assert_eq!(P2pErrorCode::from_u16(7), P2pErrorCode::Unknown(7));
        assert_eq!(P2pErrorCode::TokenExpired.to_string(), "token_expired");
    }
}
