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

/// What an [`Inbox`] hands the program: a frame the service sent, or the
/// end of the connection.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    /// A frame, as the client would read it off the wire.
    Frame(Box<crate::protocol::OutgoingFrame>),
    /// The service closed the connection.
    Closed {
        /// Why, as a WebSocket close code.
        code: CloseCode,
        /// In words.
        reason: String,
    },
}

/// The receiving end of [`in_process`]: the frames the service sends to
/// one connection, typed.
#[derive(Debug)]
pub struct Inbox {
    rx: tokio::sync::mpsc::Receiver<Queued>,
}

impl Inbox {
    /// The next delivery; `None` once the connection is gone and drained.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await.map(Queued::deliver)
    }

    /// The next delivery if one is already queued.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.rx.try_recv().ok().map(Queued::deliver)
    }
}

#[derive(Debug)]
enum Queued {
    Frame(EncodedFrame),
    Closed(CloseCode, String),
}

impl Queued {
    fn deliver(self) -> Delivery {
        match self {
            Queued::Frame(bytes) => match serde_json::from_slice(&bytes) {
                Ok(frame) => Delivery::Frame(Box::new(frame)),
                // The service encodes only `OutgoingFrame`s; should one not
                // read back, the program learns it instead of a panic.
                Err(e) => Delivery::Closed {
                    code: CloseCode::InternalError,
                    reason: format!("a frame that does not decode: {e}"),
                },
            },
            Queued::Closed(code, reason) => Delivery::Closed { code, reason },
        }
    }
}

/// The sending end of [`in_process`], handed to
/// [`Service::open_connection`](crate::service::Service::open_connection).
#[derive(Debug)]
struct InProcess {
    tx: tokio::sync::mpsc::Sender<Queued>,
}

impl Connection for InProcess {
    fn send(&self, frame: EncodedFrame) -> Result<(), SendError> {
        use tokio::sync::mpsc::error::TrySendError;
        self.tx.try_send(Queued::Frame(frame)).map_err(|e| match e {
            TrySendError::Full(_) => SendError::Full,
            TrySendError::Closed(_) => SendError::Closed,
        })
    }

    fn close(&self, code: CloseCode, reason: &str) {
        // A full queue loses the notice, not the frames before it: the
        // channel closes when the service drops this end either way.
        let _ = self.tx.try_send(Queued::Closed(code, reason.to_owned()));
    }

    fn capacity(&self) -> usize {
        self.tx.capacity()
    }
}

/// A connection inside this process, for embedders and tests: give the
/// first half to [`Service::open_connection`](crate::service::Service::open_connection),
/// send typed frames with
/// [`PeerConnection::handle`](crate::service::PeerConnection::handle), and
/// read the answers, typed, from the [`Inbox`]. No JSON by hand.
///
/// `capacity` bounds the queue as a WebSocket's outgoing queue is bounded:
/// a program that stops reading is treated as a slow client (closed with
/// [`CloseCode::TryAgainLater`]), never buffered without limit.
pub fn in_process(capacity: usize) -> (DynConnection, Inbox) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    (Arc::new(InProcess { tx }), Inbox { rx })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{OutgoingFrame, ServerEvent, Timestamp};

    #[tokio::test]
    async fn in_process_frames_arrive_typed_and_the_queue_is_bounded() {
        let (conn, mut inbox) = in_process(2);
        let pong = OutgoingFrame {
            event: ServerEvent::Pong {
                server_time: Timestamp::now(),
            },
            id: Some("p".into()),
        };
        let bytes = EncodedFrame::from(serde_json::to_vec(&pong).expect("encode"));
        conn.send(bytes.clone()).expect("room");
        assert_eq!(conn.capacity(), 1);
        conn.send(bytes.clone()).expect("room");
        assert_eq!(conn.send(bytes), Err(SendError::Full));
        assert_eq!(
            inbox.recv().await,
            Some(Delivery::Frame(Box::new(pong.clone())))
        );
        conn.close(CloseCode::Policy, "bye");
        assert_eq!(inbox.try_recv(), Some(Delivery::Frame(Box::new(pong))));
        assert_eq!(
            inbox.recv().await,
            Some(Delivery::Closed {
                code: CloseCode::Policy,
                reason: "bye".into()
            })
        );
        drop(conn);
        assert_eq!(inbox.recv().await, None);
    }

    #[test]
    fn a_frame_that_does_not_decode_is_reported_not_a_panic() {
        let (conn, mut inbox) = in_process(1);
        conn.send(EncodedFrame::from_static(b"{\"type\":"))
            .expect("room");
        assert!(matches!(
            inbox.try_recv(),
            Some(Delivery::Closed {
                code: CloseCode::InternalError,
                ..
            })
        ));
    }
}
