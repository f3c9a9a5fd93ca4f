//! The WebSocket endpoint: the upgrade, and the two tasks of a connection.
//!
//! A connection is a reader (frames into the service, one at a time) and a
//! writer (the bounded outgoing queue onto the socket, plus pings). The
//! queue is bounded in frames and in bytes; a client that falls behind
//! either bound is closed with 1013 and resumes with `since`, so the server
//! never buffers without bound. tungstenite's own buffers are set
//! explicitly: its defaults are a 128 KiB read buffer per connection and an
//! unbounded write buffer.
//!
//! A frame that breaks RFC 6455 ends the connection with the code section
//! 7.4.1 gives it (1002 for the protocol, 1007 for text that is not UTF-8,
//! 1009 for size): see [`close_for`]. The client may still be sending, so
//! after such a close the socket is shut for writing and drained until the
//! client closes it too; closing a socket with unread data would reset it,
//! and the client could lose the close frame.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_core::protocol::{OutgoingFrame, ServerEvent};
use mesh_core::service::{Flow, PeerConnection};
use mesh_core::transport::{CloseCode, Connection, EncodedFrame, SendError};
use mesh_core::{Error, ErrorCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Notify, mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use super::request::authenticate;
use super::response::{Body, too_many_connections};
use crate::AppState;

/// Most queued frames the writer sends per flush before it looks at the
/// close signal and the ping timer again.
const WRITE_BATCH: usize = 64;

/// Limits of WebSocket connections.
#[derive(Clone, Debug)]
pub struct WsLimits {
    /// Largest frame and message accepted; larger closes with 1009.
    pub max_message_bytes: usize,
    /// Most frames queued for one client before it is closed with 1013
    /// (at least 1: 0 counts as 1).
    pub queue_frames: usize,
    /// Most bytes queued for one client before it is closed with 1013.
    pub queue_bytes: usize,
    /// tungstenite's read buffer (allocated per connection).
    pub read_buffer_bytes: usize,
    /// tungstenite's write buffer: written out once it holds this much.
    pub write_buffer_bytes: usize,
}

impl Default for WsLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            queue_frames: 1000,
            queue_bytes: 1024 * 1024,
            read_buffer_bytes: 4 * 1024,
            write_buffer_bytes: 8 * 1024,
        }
    }
}

impl WsLimits {
    pub(crate) fn tungstenite_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_bytes)
            .write_buffer_size(self.write_buffer_bytes)
            // Room for the write buffer plus one largest message; the real
            // bound on what we queue is the outgoing queue above.
            .max_write_buffer_size(self.write_buffer_bytes + self.max_message_bytes + 1024)
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_message_bytes))
    }
}

/// Why and how the writer should close, set once.
#[derive(Debug, Default)]
struct CloseSignal {
    request: Mutex<Option<(CloseCode, String)>>,
    notify: Notify,
}

/// The service's handle on a WebSocket: the outgoing queue.
#[derive(Debug)]
struct WsConnection {
    tx: mpsc::Sender<EncodedFrame>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    close: Arc<CloseSignal>,
}

impl Connection for WsConnection {
    fn send(&self, frame: EncodedFrame) -> Result<(), SendError> {
        let len = frame.len();
        if self.queued_bytes.load(Ordering::Relaxed) + len > self.max_bytes {
            return Err(SendError::Full);
        }
        match self.tx.try_send(frame) {
            Ok(()) => {
                self.queued_bytes.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(SendError::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    fn close(&self, code: CloseCode, reason: &str) {
        let mut slot = self.close.request.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some((code, reason.to_owned()));
            self.close.notify.notify_one();
        }
    }

    fn capacity(&self) -> usize {
        self.tx.capacity()
    }
}

fn bad_upgrade(msg: &str) -> Error {
    Error::InvalidRequest(format!("not a WebSocket upgrade: {msg}"))
}

/// Checks a WebSocket upgrade request's headers; the `Sec-WebSocket-Accept`
/// value.
pub(crate) fn check_handshake(headers: &http::HeaderMap) -> Result<String, Error> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(header::UPGRADE, "websocket") {
        return Err(bad_upgrade("missing `Upgrade: websocket`"));
    }
    if !has_token(header::CONNECTION, "upgrade") {
        return Err(bad_upgrade("missing `Connection: upgrade`"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(bad_upgrade("Sec-WebSocket-Version must be 13"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| bad_upgrade("missing Sec-WebSocket-Key"))?;
    Ok(derive_accept_key(key.as_bytes()))
}

/// What a WebSocket holds in the connection caps while it is open.
pub(crate) type Slots = (
    Option<Arc<crate::conn::ConnSlot>>,
    Option<Arc<crate::conn::ConnSlot>>,
);

/// The connection's slot in the connection caps: a WebSocket counts for as
/// long as it is open, after the HTTP connection task has ended. Through a
/// trusted proxy it also counts against its real client: `None` past the
/// per-address cap (answer [`crate::http::too_many_connections`] then).
pub(crate) fn hold_slots<B>(
    state: &AppState,
    client: std::net::IpAddr,
    req: &Request<B>,
) -> Option<Slots> {
    let slot = req
        .extensions()
        .get::<Arc<crate::conn::ConnSlot>>()
        .cloned();
    let client_slot = match &slot {
        Some(slot) => match slot.client_slot(client, &state.config.conn) {
            Ok(s) => s,
            Err(()) => {
                tracing::debug!(%client, "too many connections from one client behind the proxy: 429");
                return None;
            }
        },
        None => None,
    };
    Some((slot, client_slot))
}

/// The `101` answer completing a WebSocket handshake.
pub(crate) fn switching_protocols(accept: &str) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    response
}

/// `GET /ws`: checks the token (401 before the upgrade) and upgrades.
pub(crate) async fn upgrade(
    state: &AppState,
    client: std::net::IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Error> {
    let accept = check_handshake(req.headers())?;
    let identity = authenticate(state, &req, true).await?;
    let Some((slot, client_slot)) = hold_slots(state, client, &req) else {
        return Ok(too_many_connections(state.config.conn.max_per_addr));
    };

    let limits = state.config.ws.clone();
    let (tx, rx) = mpsc::channel(limits.queue_frames.max(1));
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let close = Arc::new(CloseSignal::default());
    let conn = Arc::new(WsConnection {
        tx,
        queued_bytes: queued_bytes.clone(),
        max_bytes: limits.queue_bytes,
        close: close.clone(),
    });
    let peer = state
        .service
        .open_connection(identity, conn.clone())
        .await?;
    let heartbeat = state.service.config().engine.heartbeat_interval;
    let shutdown = state.shutdown.clone();
    Ok(finish_upgrade(
        state,
        req,
        &accept,
        &limits,
        (slot, client_slot),
        move |ws| run_connection(ws, peer, conn, rx, queued_bytes, close, heartbeat, shutdown),
    ))
}

/// A server-side WebSocket over a hyper upgrade.
pub(crate) type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Completes a checked WebSocket handshake: returns the `101` answer and,
/// in a task of its own, waits for hyper's upgrade and runs `serve` on the
/// socket (with `limits`). `hold` (the connection's slots) and the
/// server's shutdown wait are held until `serve` returns.
pub(crate) fn finish_upgrade<H, F, Fut>(
    state: &AppState,
    req: Request<Incoming>,
    accept: &str,
    limits: &crate::WsLimits,
    hold: H,
    serve: F,
) -> Response<Body>
where
    H: Send + 'static,
    F: FnOnce(Ws) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let alive = state.alive.clone();
    let config = limits.tungstenite_config();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let _alive = alive;
        let _hold = hold;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        serve(ws).await;
    });
    switching_protocols(accept)
}
type WsSink = futures_util::stream::SplitSink<Ws, Message>;

/// The close frame owed to a client whose frame tungstenite refused, or
/// `None` when the connection is already gone (I/O error, reset) and
/// nothing can be sent. tungstenite ends the stream at the first error, so
/// every `Some` closes the connection.
pub(crate) fn close_for(e: &tungstenite::Error) -> Option<(CloseCode, String)> {
    use tungstenite::error::ProtocolError as P;
    match e {
        tungstenite::Error::Capacity(_) => Some((
            CloseCode::TooBig,
            "frame or message larger than the limit".into(),
        )),
        // A text message, or a close frame's reason, that is not UTF-8.
        tungstenite::Error::Utf8(_) => {
            Some((CloseCode::InvalidPayload, "text is not valid UTF-8".into()))
        }
        tungstenite::Error::Protocol(P::ResetWithoutClosingHandshake) => None,
        // Unmasked frames, reserved bits or opcodes, stray continuations,
        // fragmented or oversized control frames, a 1-byte close payload.
        // (A close frame with a code that may not be sent, such as 1005,
        // is answered with 1002 by tungstenite itself.)
        tungstenite::Error::Protocol(p) => Some((CloseCode::ProtocolError, close_reason(p))),
        _ => None,
    }
}

/// A close reason from an error's text, within the 123 bytes a close
/// frame allows.
fn close_reason(e: &impl std::fmt::Display) -> String {
    let mut text = e.to_string();
    let mut end = text.len().min(123);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

#[allow(clippy::too_many_arguments)]
async fn run_connection(
    ws: Ws,
    mut peer: PeerConnection,
    conn: Arc<WsConnection>,
    rx: mpsc::Receiver<EncodedFrame>,
    queued_bytes: Arc<AtomicUsize>,
    close: Arc<CloseSignal>,
    heartbeat: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer_id = peer.peer_id();
    let (sink, mut stream) = ws.split();
    let writer = tokio::spawn(write_loop(sink, rx, queued_bytes, close.clone(), heartbeat));
    // Whether the client ended the connection; otherwise we close it.
    let mut client_closed = false;
    // Whether the client broke the protocol (the stream has ended).
    let mut failed = false;
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if let Flow::Close(code, reason) = peer.handle_text(text.as_str()).await {
                        conn.close(code, &reason);
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let frame = OutgoingFrame::event(ServerEvent::error(
                        ErrorCode::InvalidRequest,
                        "binary frames are not part of the protocol; send JSON text frames",
                    ));
                    let _ = conn.send(Bytes::from(frame.to_json()));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => peer.heard(),
                Some(Ok(Message::Close(_))) | None => {
                    client_closed = true;
                    break;
                }
                Some(Ok(Message::Frame(_))) => {}
                Some(Err(e)) => {
                    match close_for(&e) {
                        Some((code, reason)) => {
                            tracing::debug!(peer = %peer_id, error = %e, code = code.code(), "refused a frame");
                            conn.close(code, &reason);
                            failed = true;
                        }
                        None => {
                            tracing::debug!(peer = %peer_id, error = %e, "websocket read failed");
                            client_closed = true;
                        }
                    }
                    break;
                }
            },
            _ = shutdown.changed() => {
                conn.close(CloseCode::GoingAway, "server shutting down");
                break;
            }
        }
    }
    // The engine learns the peer is gone right away, not when the writer ends.
    drop(peer);
    conn.close(CloseCode::Normal, "bye");
    let finish = async {
        if failed {
            // The stream ended at the error; what the client still sends is
            // read raw and dropped until it closes its side.
            if let Ok(sink) = writer.await
                && let Ok(ws) = stream.reunite(sink)
            {
                linger(ws.into_inner()).await;
            }
            return;
        }
        if !client_closed {
            // The closing handshake: read (and drop) what the client still
            // sends until its close frame. Dropping the socket with unread
            // data would reset it, and the client would never see our close
            // code.
            while let Some(Ok(message)) = stream.next().await {
                if message.is_close() {
                    break;
                }
            }
        }
        let _ = writer.await;
    };
    if tokio::time::timeout(Duration::from_secs(5), finish)
        .await
        .is_err()
    {
        tracing::debug!(peer = %peer_id, "closing handshake did not finish in time");
    }
}

/// After a close frame for a broken protocol: shuts the socket for writing,
/// then reads and drops what arrives until the client closes (the caller
/// bounds the time).
async fn linger(mut io: TokioIo<hyper::upgrade::Upgraded>) {
    if io.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 1024];
    while let Ok(n) = io.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// The writer task: sends queued frames and pings until closed, then the
/// close frame. Returns the sink so that a failed connection can be
/// drained raw.
async fn write_loop(
    mut sink: WsSink,
    rx: mpsc::Receiver<EncodedFrame>,
    queued_bytes: Arc<AtomicUsize>,
    close: Arc<CloseSignal>,
    heartbeat: Duration,
) -> WsSink {
    // A write error means the socket is gone; `close` still flushes what
    // tungstenite owes the client (such as its reply to a close frame).
    let _ = write_frames(&mut sink, rx, queued_bytes, close, heartbeat).await;
    let _ = sink.close().await;
    sink
}

async fn write_frames(
    sink: &mut WsSink,
    mut rx: mpsc::Receiver<EncodedFrame>,
    queued_bytes: Arc<AtomicUsize>,
    close: Arc<CloseSignal>,
    heartbeat: Duration,
) -> Result<(), tungstenite::Error> {
    let mut ping = tokio::time::interval(heartbeat);
    ping.tick().await;
    let text = |frame: EncodedFrame| -> Option<Message> {
        queued_bytes.fetch_sub(frame.len(), Ordering::Relaxed);
        Utf8Bytes::try_from(frame).ok().map(Message::Text)
    };
    // Registered once for the whole loop, not re-created (and re-queued on
    // the `Notify`) at every wake-up; `notify_one` before the first poll
    // leaves a permit, so no close is missed.
    let closed = close.notify.notified();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            biased;
            _ = &mut closed => break,
            // Before the queue (the select is biased), so pings go out on
            // time even to a connection written to constantly: its pongs
            // are how the engine hears from a client that only listens.
            _ = ping.tick() => {
                sink.send(Message::Ping(Bytes::new())).await?;
            }
            frame = rx.recv() => {
                let Some(frame) = frame else { break };
                let Some(first) = text(frame) else { continue };
                sink.feed(first).await?;
                // Write out what else is queued, up to a batch, in one
                // flush; then the loop looks at the close and the ping
                // again. (Not `recv_many`: its buffer would stay allocated
                // in every idle connection, 2 KiB each for 64 frames, for
                // no measurable gain.)
                for _ in 1..WRITE_BATCH {
                    let Ok(frame) = rx.try_recv() else { break };
                    if let Some(m) = text(frame) {
                        sink.feed(m).await?;
                    }
                }
                sink.flush().await?;
            }
        }
    }
    // Frames queued before the close go out first, then the close frame.
    while let Ok(frame) = rx.try_recv() {
        if let Some(m) = text(frame) {
            sink.feed(m).await?;
        }
    }
    let request = close
        .request
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let (code, reason) = request.unwrap_or((CloseCode::Normal, String::new()));
    let frame = CloseFrame {
        code: WsCloseCode::from(code.code()),
        reason: reason.into(),
    };
    sink.send(Message::Close(Some(frame))).await
}

#[cfg(test)]
mod tests {
    use tungstenite::error::{CapacityError, ProtocolError as P};

    use super::*;

    fn code(e: tungstenite::Error) -> Option<u16> {
        close_for(&e).map(|(code, reason)| {
            assert!(reason.len() <= 123, "{reason}");
            code.code()
        })
    }

    #[test]
    fn errors_map_to_rfc_6455_close_codes() {
        for p in [
            P::UnmaskedFrameFromClient,
            P::NonZeroReservedBits,
            P::UnknownDataFrameType(3),
            P::UnknownControlFrameType(11),
            P::UnexpectedContinueFrame,
            P::FragmentedControlFrame,
            P::ControlFrameTooBig,
            P::InvalidCloseSequence,
        ] {
            assert_eq!(code(tungstenite::Error::Protocol(p)), Some(1002));
        }
        assert_eq!(code(tungstenite::Error::Utf8("bad".into())), Some(1007));
        let big = CapacityError::MessageTooLong {
            size: 2,
            max_size: 1,
        };
        assert_eq!(code(tungstenite::Error::Capacity(big)), Some(1009));
        // Gone: nothing can be sent.
        let reset = P::ResetWithoutClosingHandshake;
        assert_eq!(code(tungstenite::Error::Protocol(reset)), None);
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(code(tungstenite::Error::Io(io)), None);
        assert_eq!(code(tungstenite::Error::ConnectionClosed), None);
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = "é".repeat(100);
        let reason = close_reason(&long);
        assert!(reason.len() <= 123);
        assert_eq!(reason, "é".repeat(61));
        assert_eq!(close_reason(&"short"), "short");
    }
}
