//! [`Client`]: the tokio driver around [`ClientState`].
//!
//! One task owns the WebSocket. It feeds frames, socket failures and timer
//! ticks into the state machine and writes out what it asks; the app's
//! calls change the state machine directly (under a lock) and wake the
//! task. Answers reach the waiting calls through oneshot channels keyed by
//! [`RequestId`] or `client_id`; events reach the app through an
//! unbounded channel ([`EventStream`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use super::error::code_for_status;
use super::state::{ClientConfig, ClientState, Completion, ConnectionStatus, Event, Reply};
use super::{
    BackoffConfig, ClientError, HistoryQuery, HttpApi, P2pSessionGrant, RequestId, SendRate,
    TlsConfig,
};
use crate::protocol::RtcKind;
use crate::protocol::http::{
    CreateRoomRequest, ErrorResponse, MessagesResponse, P2pSessionRequest, P2pSessionResponse,
};
use crate::protocol::{
    Member, Message, P2pInfo, PeerId, Presence, Role, Room, RoomId, RtcSignal, SessionId,
    SessionKind, Timestamp, User, UserId,
};

/// Configures and connects a [`Client`] (see [`Client::builder`]).
#[derive(Debug, Default)]
pub struct ClientBuilder {
    server: Option<String>,
    token: Option<String>,
    config: ClientConfig,
    seed: Option<u64>,
    tls: Option<TlsConfig>,
}

impl ClientBuilder {
    /// The server's base URL, e.g. `http://127.0.0.1:8000`. The WebSocket
    /// is `/ws` on it.
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.server = Some(url.into());
        self
    }

    /// The access token from register or login.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The device name sent in `system.hello`.
    pub fn device_name(mut self, name: impl Into<String>) -> Self {
        self.config.device_name = Some(name.into());
        self
    }

    /// This agent's direct-connection details, for P2P sessions.
    pub fn p2p(mut self, info: P2pInfo) -> Self {
        self.config.p2p = Some(info);
        self
    }

    /// Resume from cursors the app kept (see [`Client::cursors`]): messages
    /// after each `seq` are replayed on connect.
    pub fn since(mut self, cursors: HashMap<RoomId, u64>) -> Self {
        self.config.since = cursors;
        self
    }

    /// How reconnect delays grow.
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// How fast message sends go out (by default under the contract's
    /// minimum rate limit).
    pub fn send_rate(mut self, rate: SendRate) -> Self {
        self.config.send_rate = rate;
        self
    }

    /// How long opening a socket plus the hello/welcome exchange may take.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// A fixed seed for the jitter and the generated `client_id`s. Only for
    /// tests: by default each client takes one from the OS.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Which servers to trust over `https://` and `wss://` (by default the
    /// platform's roots, see [`TlsConfig`]).
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Connects and waits for `system.welcome`. Fails if this first attempt
    /// fails (a refused token is [`ErrorCode::Unauthorized`](crate::ErrorCode));
    /// after it, the client reconnects on its own.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let server = self
            .server
            .ok_or_else(|| ClientError::InvalidArgument("no server URL given".into()))?;
        let token = self
            .token
            .ok_or_else(|| ClientError::InvalidArgument("no token given".into()))?;
        let tls = match self.tls {
            Some(tls) => tls,
            None => TlsConfig::default_for(&server)?,
        };
        let http = HttpApi::with_tls(&server, tls)?.with_token(token.clone());
        let ws_url = ws_url(http.server());
        let seed = match self.seed {
            Some(seed) => seed,
            None => getrandom::u64()
                .map_err(|e| ClientError::Protocol(format!("no OS randomness: {e}")))?,
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (first_tx, first_rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            driven: Mutex::new(Driven {
                state: ClientState::new(self.config, Timestamp::now(), seed),
                waiters: HashMap::new(),
                send_waiters: HashMap::new(),
                events: Some(events_tx),
                first: Some(first_tx),
            }),
            wake: Notify::new(),
        });
        let task = tokio::spawn(drive(shared.clone(), ws_url, token, http.tls().clone()));
        let client = Client {
            inner: Arc::new(Inner {
                shared,
                http,
                events: Mutex::new(Some(events_rx)),
                task: Mutex::new(Some(task)),
            }),
        };
        match first_rx.await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }
}

/// `http://h:p` -> `ws://h:p/ws` (and https -> wss).
fn ws_url(server: &str) -> String {
    let rest = server
        .strip_prefix("https://")
        .map(|r| format!("wss://{r}"))
        .or_else(|| server.strip_prefix("http://").map(|r| format!("ws://{r}")))
        .unwrap_or_else(|| server.to_owned());
    format!("{rest}/ws")
}

/// A connected mesh client. Cheap to clone; the connection closes when the
/// last clone is dropped or [`close`](Client::close) is called.
///
/// ```no_run
/// # async fn demo(token: String, room: mesh_core::protocol::RoomId) -> Result<(), mesh_core::client::ClientError> {
/// use mesh_core::client::{Client, HistoryQuery};
///
/// let client = Client::builder()
///     .server("http://127.0.0.1:8000")
///     .token(token)
///     .connect()
///     .await?;
/// client.join_room(room).await?;
/// let message = client.send_message(room, "hello").await?;
/// let page = client.history(room, HistoryQuery::latest(20)).await?;
/// assert_eq!(page.messages.last().map(|m| m.seq), Some(message.seq));
/// client.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    http: HttpApi,
    events: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut driven = self.shared.lock();
        driven.state.close();
        driven.drain();
        drop(driven);
        self.shared.wake.notify_one();
    }
}

/// What the app's calls and the driver task share.
#[derive(Debug)]
struct Shared {
    // A std mutex: it is held only for a few state-machine calls, never
    // across an await, so an async mutex would only add overhead.
    driven: Mutex<Driven>,
    /// Wakes the driver after the app queued frames.
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Driven> {
        self.driven.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
struct Driven {
    state: ClientState,
    waiters: HashMap<RequestId, oneshot::Sender<Result<Reply, ClientError>>>,
    send_waiters: HashMap<String, oneshot::Sender<Result<Message, ClientError>>>,
    /// Dropped after [`Event::Closed`], which ends the app's stream.
    events: Option<mpsc::UnboundedSender<Event>>,
    /// Until the first welcome: how `connect` learns the outcome.
    first: Option<oneshot::Sender<Result<(), ClientError>>>,
}

impl Driven {
    /// Hands completions to the calls waiting for them and events to the app.
    fn drain(&mut self) {
        while let Some(c) = self.state.poll_completion() {
            match c {
                Completion::Request { id, result } => {
                    if let Some(tx) = self.waiters.remove(&id) {
                        let _ = tx.send(result);
                    }
                }
                Completion::Send { client_id, result } => {
                    if let Some(tx) = self.send_waiters.remove(&client_id) {
                        let _ = tx.send(result);
                    }
                }
            }
        }
        while let Some(event) = self.state.poll_event() {
            if let Some(first) = self.first.take() {
                match &event {
                    Event::Connected { .. } => {
                        let _ = first.send(Ok(()));
                    }
                    Event::Closed { error } => {
                        let _ = first.send(Err(error.clone().unwrap_or(ClientError::Closed)));
                    }
                    Event::Disconnected { reason, .. } => {
                        // The first attempt failed after the socket opened:
                        // report it instead of retrying behind the caller's back.
                        let _ = first.send(Err(ClientError::Protocol(reason.clone())));
                        self.state.close();
                    }
                    _ => self.first = Some(first),
                }
            }
            let closed = matches!(event, Event::Closed { .. });
            if let Some(tx) = &self.events {
                // The app may have dropped its stream; events then go nowhere.
                let _ = tx.send(event);
            }
            if closed {
                self.events = None;
            }
        }
    }

    /// Registers a waiter for request `id` (which may already be complete).
    fn wait(&mut self, id: RequestId) -> oneshot::Receiver<Result<Reply, ClientError>> {
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(id, tx);
        self.drain();
        rx
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long until `deadline` on the wall clock.
fn until(deadline: Option<Timestamp>) -> Duration {
    deadline.map_or(Duration::from_secs(3600), |d| d.since(Timestamp::now()))
}

/// The driver task: connect, pump frames, reconnect, until closed.
async fn drive(shared: Arc<Shared>, url: String, token: String, tls: TlsConfig) {
    loop {
        // Wait until the state machine wants a socket (or is closed).
        let wait = {
            let mut d = shared.lock();
            let now = Timestamp::now();
            d.state.handle_timeout(now);
            d.drain();
            if matches!(d.state.status(), ConnectionStatus::Closed) {
                return;
            }
            if d.state.poll_connect(now) {
                None
            } else {
                Some(until(d.state.poll_timeout()))
            }
        };
        if let Some(wait) = wait {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shared.wake.notified() => {}
            }
            continue;
        }
        let deadline = tokio::time::sleep(until(shared.lock().state.poll_timeout()));
        let opening = open(&url, &token, &tls);
        tokio::pin!(deadline, opening);
        let opened = loop {
            tokio::select! {
                r = &mut opening => break Some(r),
                _ = &mut deadline => break None,
                // The app closed the client: stop waiting for the socket.
                _ = shared.wake.notified() => {
                    if matches!(shared.lock().state.status(), ConnectionStatus::Closed) {
                        break None;
                    }
                }
            }
        };
        let ws = {
            let mut d = shared.lock();
            let now = Timestamp::now();
            match opened {
                None => {
                    // The handshake deadline passed; the state gives up on it.
                    d.state.handle_timeout(now);
                    d.state.poll_close();
                    d.drain();
                    None
                }
                Some(Err(e)) => {
                    if let Some(first) = d.first.take() {
                        // No retries behind the back of `connect`.
                        let _ = first.send(Err(e));
                        d.state.close();
                    } else {
                        d.state.connect_failed(now, e);
                    }
                    d.drain();
                    None
                }
                Some(Ok(ws)) => {
                    d.state.connected(now);
                    d.drain();
                    Some(ws)
                }
            }
        };
        let Some(ws) = ws else { continue };
        run_socket(&shared, ws).await;
    }
}

/// Opens the WebSocket; the token rides in the `Authorization` header so it
/// stays out of URLs and logs.
async fn open(url: &str, token: &str, tls: &TlsConfig) -> Result<Socket, ClientError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| ClientError::InvalidArgument(format!("bad WebSocket URL {url}: {e}")))?;
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| ClientError::InvalidArgument("the token is not a valid header".into()))?;
    request
        .headers_mut()
        .insert(tungstenite::http::header::AUTHORIZATION, bearer);
    let connector = url.starts_with("wss://").then(|| tls.connector());
    match tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<ErrorResponse>(b).ok());
            Err(match body {
                Some(b) => b.error.into(),
                None => ClientError::server(
                    code_for_status(status),
                    format!("the WebSocket upgrade was refused with HTTP {status}"),
                ),
            })
        }
        Err(e) => Err(tls.explain(ClientError::transport(e))),
    }
}

/// Pumps one socket until it closes or the state machine gives it up.
async fn run_socket(shared: &Shared, ws: Socket) {
    let (mut sink, mut stream) = ws.split();
    loop {
        let (frames, close, wait) = {
            let mut d = shared.lock();
            let frames: Vec<String> = std::iter::from_fn(|| d.state.poll_transmit()).collect();
            let close = d.state.poll_close();
            (frames, close, until(d.state.poll_timeout()))
        };
        for frame in frames {
            if let Err(e) = sink.send(WsMessage::Text(frame.into())).await {
                let mut d = shared.lock();
                d.state
                    .disconnected(Timestamp::now(), format!("write failed: {e}"));
                d.drain();
                return;
            }
        }
        if close {
            // Best effort: the state machine has already moved on.
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
            return;
        }
        tokio::select! {
            message = stream.next() => {
                let mut d = shared.lock();
                let now = Timestamp::now();
                match message {
                    Some(Ok(WsMessage::Text(text))) => d.state.frame_received(text.as_str(), now),
                    Some(Ok(WsMessage::Close(frame))) => {
                        let reason = frame.map_or_else(
                            || "closed by the server".to_owned(),
                            |f| format!("closed by the server ({}): {}", u16::from(f.code), f.reason),
                        );
                        d.state.disconnected(now, reason);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => d.state.disconnected(now, format!("read failed: {e}")),
                    None => d.state.disconnected(now, "the connection ended"),
                }
                d.drain();
                // Gone: the socket is done. (Closed by a frame, say a refused
                // hello, goes round once more so `poll_close` closes it.)
                if matches!(d.state.status(), ConnectionStatus::Disconnected { .. }) {
                    return;
                }
            }
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {
                let mut d = shared.lock();
                d.state.handle_timeout(Timestamp::now());
                d.drain();
            }
        }
    }
}

impl Client {
    /// Starts configuring a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The app's stream of [`Event`]s. The first call takes it; later calls
    /// get `None`. Events are kept from the moment of connecting, so none
    /// is missed by taking the stream late (they queue up meanwhile).
    pub fn events(&self) -> Option<EventStream> {
        let mut slot = self.inner.events.lock().unwrap_or_else(|e| e.into_inner());
        slot.take().map(|rx| EventStream { rx })
    }

    /// The HTTP API, authenticated with this client's token.
    pub fn http(&self) -> &HttpApi {
        &self.inner.http
    }

    /// Where the connection is.
    pub fn status(&self) -> ConnectionStatus {
        self.inner.shared.lock().state.status()
    }

    /// This connection's peer id and user (from the latest welcome).
    pub fn me(&self) -> Option<(PeerId, User)> {
        let d = self.inner.shared.lock();
        d.state.me().map(|(p, u)| (p, u.clone()))
    }

    /// The last `seq` known per room: keep them to resume a later run with
    /// [`ClientBuilder::since`].
    pub fn cursors(&self) -> HashMap<RoomId, u64> {
        self.inner.shared.lock().state.cursors()
    }

    /// The `client_id`s of the messages still waiting for the server, in
    /// the order they were queued.
    pub fn queued(&self) -> Vec<String> {
        let d = self.inner.shared.lock();
        d.state.queued().map(str::to_owned).collect()
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut Driven) -> T) -> T {
        let out = {
            let mut d = self.inner.shared.lock();
            let out = f(&mut d);
            d.drain();
            out
        };
        self.inner.shared.wake.notify_one();
        out
    }

    async fn request(
        &self,
        f: impl FnOnce(&mut ClientState) -> RequestId,
    ) -> Result<Reply, ClientError> {
        let rx = self.with_state(|d| {
            let id = f(&mut d.state);
            d.wait(id)
        });
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Sends a message and waits until the server stored it. Works offline:
    /// the message is queued and sent (under one `client_id`, so at most
    /// once) when the connection is back.
    pub async fn send_message(
        &self,
        room: RoomId,
        content: impl Into<String>,
    ) -> Result<Message, ClientError> {
        let content = content.into();
        let rx = self.with_state(|d| {
            let (tx, rx) = oneshot::channel();
            // The id is made first so the waiter is in place before any answer.
            let now = Timestamp::now();
            let client_id = d.state.send_message(room, content, now);
            d.send_waiters.insert(client_id, tx);
            rx
        });
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Queues a message without waiting; returns its `client_id`. The
    /// outcome arrives as [`Event::Message`] (with that `client_id`) or
    /// [`Event::SendFailed`].
    pub fn queue_message(&self, room: RoomId, content: impl Into<String>) -> String {
        let content = content.into();
        self.with_state(|d| d.state.send_message(room, content, Timestamp::now()))
    }

    /// Joins a room (`room.join`) and returns its members. The room's
    /// current `seq` is then looked up over HTTP, so that a reconnect
    /// replays whatever is sent to it while offline.
    pub async fn join_room(&self, room: RoomId) -> Result<Vec<Member>, ClientError> {
        let reply = self.request(|s| s.join_room(room)).await?;
        let Reply::Joined { members, .. } = reply else {
            return Err(ClientError::Protocol(format!(
                "join answered with {reply:?}"
            )));
        };
        // Best effort: without it the room is only resumed once a message
        // from it has been seen.
        if let Ok(page) = self
            .inner
            .http
            .messages(room, HistoryQuery::latest(1))
            .await
        {
            let seq = page.messages.last().map_or(0, |m| m.seq);
            self.with_state(|d| d.state.observe_seq(room, seq));
        }
        Ok(members)
    }

    /// Leaves a room (`room.leave`).
    pub async fn leave_room(&self, room: RoomId) -> Result<(), ClientError> {
        self.request(|s| s.leave_room(room)).await.map(drop)
    }

    /// `chat.typing`; dropped while offline.
    pub fn set_typing(&self, room: RoomId, typing: bool) {
        self.with_state(|d| d.state.set_typing(room, typing));
    }

    /// Sets this user's presence; kept across reconnects.
    pub async fn set_presence(
        &self,
        status: Presence,
        message: Option<String>,
    ) -> Result<(), ClientError> {
        self.request(|s| s.set_presence(status, message))
            .await
            .map(drop)
    }

    /// Asks for a P2P session over the WebSocket (`p2p.session.request`).
    /// Both peers also get [`Event::P2pSessionCreated`].
    pub async fn request_p2p_session(
        &self,
        room: RoomId,
        target: PeerId,
        kind: SessionKind,
    ) -> Result<P2pSessionGrant, ClientError> {
        match self
            .request(|s| s.request_p2p_session(room, target, kind))
            .await?
        {
            Reply::P2pSession(grant) => Ok(*grant),
            other => Err(ClientError::Protocol(format!(
                "p2p.session.request answered with {other:?}"
            ))),
        }
    }

    /// Asks for a P2P session over HTTP (`POST /api/p2p/session`).
    pub async fn create_p2p_session(
        &self,
        room: RoomId,
        target: PeerId,
        kind: SessionKind,
    ) -> Result<P2pSessionResponse, ClientError> {
        let req = P2pSessionRequest {
            room_id: room,
            target_peer_id: target,
            kind,
            initiator_peer_id: self.me().map(|(peer, _)| peer),
        };
        self.inner.http.create_p2p_session(&req).await
    }

    /// Makes `user` an `admin` or a plain `member` of `room` (the owner
    /// only); see [`HttpApi::set_role`].
    pub async fn set_role(
        &self,
        room: RoomId,
        user: UserId,
        role: Role,
    ) -> Result<Member, ClientError> {
        self.inner.http.set_role(room, user, role).await
    }

    /// Closes a P2P session (`p2p.session.close`); fire and forget.
    pub fn close_p2p_session(&self, session: SessionId) {
        self.with_state(|d| d.state.close_p2p_session(session));
    }

    /// `p2p.announce`: replaces this agent's announced direct-connection
    /// details (now, and in the hello of every reconnect).
    pub fn announce_p2p(&self, info: P2pInfo) {
        self.with_state(|d| d.state.announce_p2p(info));
    }

    /// What the server offers for sessions across networks (from its last
    /// welcome): its UDP port and whether it relays.
    pub fn server_p2p(&self) -> Option<crate::protocol::P2pServerInfo> {
        self.inner.shared.lock().state.server_p2p().cloned()
    }

    /// Sends a WebRTC signal to another peer; dropped while offline.
    pub fn send_rtc(&self, kind: RtcKind, signal: RtcSignal) {
        self.with_state(|d| d.state.send_rtc(kind, signal));
    }

    /// One page of a room's history over HTTP. Its newest `seq` also
    /// becomes the room's resume point.
    pub async fn history(
        &self,
        room: RoomId,
        query: HistoryQuery,
    ) -> Result<MessagesResponse, ClientError> {
        let page = self.inner.http.messages(room, query).await?;
        if let Some(last) = page.messages.last() {
            let seq = last.seq;
            self.with_state(|d| d.state.observe_seq(room, seq));
        }
        Ok(page)
    }

    /// Creates a room over HTTP (this user owns it and is subscribed at
    /// once). Its resume point starts at 0, so nothing sent to it is missed.
    pub async fn create_room(&self, req: &CreateRoomRequest) -> Result<Room, ClientError> {
        let room = self.inner.http.create_room(req).await?;
        let id = room.id;
        self.with_state(|d| d.state.observe_seq(id, 0));
        Ok(room)
    }

    /// The rooms this user can see (`GET /api/rooms`).
    pub async fn rooms(&self) -> Result<Vec<Room>, ClientError> {
        self.inner.http.rooms().await
    }

    /// A room's members (`GET /api/rooms/{id}/members`).
    pub async fn members(&self, room: RoomId) -> Result<Vec<Member>, ClientError> {
        self.inner.http.members(room).await
    }

    /// Closes the connection for good and waits for the driver to finish.
    /// Queued sends fail with [`ClientError::Closed`].
    pub async fn close(&self) {
        self.with_state(|d| d.state.close());
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// The app's [`Event`]s (see [`Client::events`]). Ends after
/// [`Event::Closed`].
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl EventStream {
    /// The next event.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::ws_url;

    #[test]
    fn ws_url_follows_the_scheme() {
        assert_eq!(ws_url("http://127.0.0.1:8000"), "ws://127.0.0.1:8000/ws");
        assert_eq!(ws_url("https://chat.example"), "wss://chat.example/ws");
    }
}
