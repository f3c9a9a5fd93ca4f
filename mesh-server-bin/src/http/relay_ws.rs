//! `GET /api/p2p/relay`: the relay's WebSocket, for agents whose UDP to
//! the server is blocked. One relay frame per binary message, into and out
//! of the same [`RelayHub`] the UDP socket drives (`crate::relay`).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use mesh_core::Error;
use mesh_core::relay::server::Sink;
use mesh_core::relay::wire;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

use super::response::{Body, too_many_connections};
use super::ws::{self, Ws};
use crate::AppState;
use crate::relay::RelayHub;

/// `GET /api/p2p/relay`: upgrades to a relay WebSocket. No bearer token:
/// every `BIND` carries its session token and party key.
pub(crate) async fn upgrade(
    state: &AppState,
    client: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Error> {
    let Some(hub) = state.relay.clone() else {
        return Err(Error::NotFound("this server has no relay".into()));
    };
    let accept = ws::check_handshake(req.headers())?;
    let Some(slots) = ws::hold_slots(state, client, &req) else {
        return Ok(too_many_connections(state.config.conn.max_per_addr));
    };
    let mut limits = state.config.ws.clone();
    // One relay frame per message: a UDP datagram's worth.
    limits.max_message_bytes = wire::MAX_FRAME;
    let heartbeat = state.service.config().engine.heartbeat_interval;
    let shutdown = state.shutdown.clone();
    Ok(ws::finish_upgrade(
        state,
        req,
        &accept,
        &limits,
        slots,
        move |ws| async move {
            let (id, rx, queued) = hub.open_stream();
            run_stream(ws, &hub, id, (rx, queued), heartbeat, shutdown).await;
            hub.close_stream(id);
        },
    ))
}

/// One relay WebSocket: binary messages into the relay, queued frames out,
/// pings every `heartbeat`; closed after three heartbeats without a word
/// from the client.
async fn run_stream(
    ws: Ws,
    hub: &RelayHub,
    id: u64,
    (mut rx, queued): (mpsc::Receiver<Bytes>, Arc<AtomicUsize>),
    heartbeat: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let (mut sink, mut stream) = ws.split();
    let mut ping = tokio::time::interval(heartbeat);
    ping.tick().await;
    let mut heard = Instant::now();
    let close: (WsCloseCode, String) = loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Binary(b))) => {
                    heard = Instant::now();
                    hub.handle(Sink::Stream(id), &b, Some(&b));
                }
                Some(Ok(Message::Text(_))) => break (
                    WsCloseCode::Unsupported,
                    "relay frames are binary messages".into(),
                ),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                    heard = Instant::now();
                }
                Some(Ok(Message::Close(_))) | None => {
                    // tungstenite answers the close itself; flush it.
                    let _ = sink.close().await;
                    return;
                }
                Some(Err(e)) => match ws::close_for(&e) {
                    Some((code, reason)) => break (WsCloseCode::from(code.code()), reason),
                    None => return,
                },
            },
            frame = rx.recv() => {
                let Some(frame) = frame else { break (WsCloseCode::Normal, String::new()) };
                queued.fetch_sub(frame.len(), Ordering::Relaxed);
                if sink.feed(Message::Binary(frame)).await.is_err() {
                    return;
                }
                while let Ok(frame) = rx.try_recv() {
                    queued.fetch_sub(frame.len(), Ordering::Relaxed);
                    if sink.feed(Message::Binary(frame)).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() > heartbeat * 3 {
                    break (WsCloseCode::Away, "no word from the client".into());
                }
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
            _ = shutdown.changed() => break (WsCloseCode::Away, "server shutting down".into()),
        }
    };
    tracing::debug!(stream = id, code = u16::from(close.0), reason = %close.1, "closing a relay WebSocket");
    let frame = CloseFrame {
        code: close.0,
        reason: close.1.into(),
    };
    let finish = async {
        let _ = sink.send(Message::Close(Some(frame))).await;
        // Read (and drop) what the client still sends until its close:
        // dropping the socket with unread data would reset it, and the
        // client could lose our close frame.
        while let Some(Ok(message)) = stream.next().await {
            if message.is_close() {
                break;
            }
        }
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), finish).await;
}
