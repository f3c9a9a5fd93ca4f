//! What the engine's output is delivered through.
//!
//! The engine does not know about WebSockets. A [`Connection`] is anything
//! that accepts encoded frames and can be closed: the server wraps a
//! WebSocket's bounded outgoing queue, tests wrap a `Vec`, a future broker
//! bridge could wrap a NATS subject.

use std::fmt;
use std::sync::Arc;

/// A frame ready to send: the bytes of a JSON text (always valid UTF-8),
/// shared between all recipients of a broadcast so it is encoded once.
pub type EncodedFrame = bytes::Bytes;

/// WebSocket close codes the engine and server use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// 1000: done.
    Normal,
    /// 1001: the server is going down.
    GoingAway,
    /// 1002: the client broke the WebSocket protocol (RFC 6455 7.4.1):
    /// an unmasked frame, reserved bits or opcodes, a stray continuation,
    /// a bad control or close frame.
    ProtocolError,
    /// 1007: data not of its message's type: a text frame (or close reason)
    /// that is not UTF-8.
    InvalidPayload,
    /// 1008: policy violation (flooding past the rate limit, revoked device).
    Policy,
    /// 1009: a frame or message past the size limit.
    TooBig,
    /// 1011: the server failed.
    InternalError,
    /// 1013: try again later (the client fell too far behind).
    TryAgainLater,
}

impl CloseCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::TryAgainLater => 1013,
        }
    }
}

/// Why a send did not go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection's outgoing queue is full: the client is too slow.
    #[error("outgoing queue full")]
    Full,
    /// The connection is gone.
    #[error("connection closed")]
    Closed,
}

/// One client connection as the service sees it.
///
/// Implementations must not block: `send` only enqueues.
pub trait Connection: Send + Sync + fmt::Debug {
    /// Queues a frame. On [`SendError::Full`] the service closes the
    /// connection with [`CloseCode::TryAgainLater`]: the client reconnects and
    /// resumes with `since`, so nothing is lost.
    fn send(&self, frame: EncodedFrame) -> Result<(), SendError>;

    /// Closes the connection after the frames already queued.
    fn close(&self, code: CloseCode, reason: &str);

    /// How many more frames the queue takes before [`SendError::Full`]. The
    /// service paces long backlogs (resuming with `since`) by it.
    fn capacity(&self) -> usize {
        usize::MAX
    }
}

/// Shared handle to a connection.
pub type DynConnection = Arc<dyn Connection>;
