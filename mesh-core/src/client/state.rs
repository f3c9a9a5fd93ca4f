//! [`ClientState`]: the sans-IO client. Frames in, frames out, no sockets,
//! no clock, no runtime.
//!
//! A driver owns the socket and the timer and feeds the state machine:
//!
//! 1. [`ClientState::poll_connect`] says when to open a WebSocket; the driver
//!    reports [`connected`](ClientState::connected) or
//!    [`connect_failed`](ClientState::connect_failed).
//! 2. Every text frame read goes to [`frame_received`](ClientState::frame_received);
//!    a closed or broken socket to [`disconnected`](ClientState::disconnected).
//! 3. After each input the driver drains [`poll_transmit`](ClientState::poll_transmit)
//!    (frames to write), [`poll_event`](ClientState::poll_event) (what the app
//!    sees), [`poll_completion`](ClientState::poll_completion) (answers to the
//!    app's requests) and [`poll_close`](ClientState::poll_close) (drop the
//!    socket), then sleeps until [`poll_timeout`](ClientState::poll_timeout)
//!    and calls [`handle_timeout`](ClientState::handle_timeout).
//!
//! Time comes in as [`Timestamp`]s and randomness from a seed, so a test can
//! replay any schedule of frames, failures and clock jumps exactly.
//!
//! # What the state machine guarantees
//!
//! - **Resume.** It remembers, per room, the last `seq` it delivered (or was
//!   told about with [`observe_seq`](ClientState::observe_seq)), and every
//!   `system.hello` carries those as `since`, so the server replays what was
//!   missed while offline.
//! - **Dedupe.** Within a room the server delivers in `seq` order, so a
//!   message at or below the last delivered `seq` is a replay (a resume that
//!   overlaps, or the answer to a retried send) and is dropped:
//!   [`Event::Message`] fires once per `(room, seq)`.
//! - **Offline queue.** [`send_message`](ClientState::send_message) works
//!   offline. Queued messages are sent after the next `system.welcome` and
//!   re-sent after every reconnect until the server answers, always under
//!   the same `client_id`; the server answers a repeated `client_id` with the
//!   message it already stored, so a retry never makes a second message.
//!   Each queued send completes exactly once.
//! - **Liveness.** After `system.welcome` it sends `system.ping` every
//!   `heartbeat_ms` and gives a connection up (asking the driver to close
//!   it) when nothing was heard for [`ClientConfig::dead_after`] heartbeats.
//!
//! A room's messages are only replayed if the client knows a `seq` for it:
//! one it delivered, [`ClientConfig::since`], or
//! [`observe_seq`](ClientState::observe_seq) (the native client calls it
//! after joining or creating a room). A room the client never heard of gets
//! no replay; page its history over HTTP instead.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::Map;

use super::backoff::{Backoff, BackoffConfig, Rng};
use super::error::ClientError;
use crate::protocol::RtcKind;
use crate::protocol::{
    ClientRequest, Hello, Member, Message, OutgoingFrame, P2pInfo, P2pSession, PeerId, Presence,
    Role, Room, RoomId, RtcSignal, ServerEvent, SessionId, SessionKind, Timestamp, User, UserId,
};

/// Settings of a [`ClientState`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Sent in `system.hello`; names this device's logins.
    pub device_name: Option<String>,
    /// This agent's direct-connection details, for P2P sessions.
    pub p2p: Option<P2pInfo>,
    /// Known cursors to resume from: the last `seq` the app has per room
    /// (e.g. persisted by a previous run).
    pub since: HashMap<RoomId, u64>,
    /// How reconnect delays grow.
    pub backoff: BackoffConfig,
    /// How long opening a socket plus the hello/welcome exchange may take.
    pub handshake_timeout: Duration,
    /// A connection silent for this many heartbeats is given up.
    pub dead_after: u32,
    /// How fast message sends go out (see [`SendRate`]).
    pub send_rate: SendRate,
}

/// Client-side pacing of `chat.message.send`: a token bucket that keeps a
/// flushed offline queue (or an app sending in a loop) under the server's
/// frame limit, which the contract puts at no less than 20 frames per second
/// in bursts of 50. The defaults leave room for pings and typing next to
/// the sends, so a paced client never sees `rate_limited` from a server that
/// honours the contract.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SendRate {
    /// Sends allowed back to back.
    pub burst: u32,
    /// Sends per second after the burst.
    pub per_second: f64,
}

impl Default for SendRate {
    fn default() -> Self {
        Self {
            burst: 40,
            per_second: 16.0,
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            device_name: None,
            p2p: None,
            since: HashMap::new(),
            backoff: BackoffConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            dead_after: 3,
            send_rate: SendRate::default(),
        }
    }
}

/// Names a request made through [`ClientState`]; its answer comes back as a
/// [`Completion::Request`] with the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Where the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionStatus {
    /// No socket; the next attempt is due at `retry_at`.
    Disconnected { retry_at: Timestamp },
    /// The driver is opening a socket, or `system.hello` is on its way.
    Connecting,
    /// `system.welcome` arrived: requests and sends go out at once.
    Connected,
    /// Closed for good (by the app, or after a fatal error).
    Closed,
}

/// What the app hears: the server's events, typed, deduplicated, plus the
/// connection's ups and downs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// `system.welcome`: the connection is up (again). Queued sends go out
    /// now; the messages missed since the last cursor follow as
    /// [`Event::Message`].
    Connected {
        peer_id: PeerId,
        user: User,
        server_time: Timestamp,
        heartbeat_ms: u64,
        /// Whether this is a reconnect rather than the first connection.
        resumed: bool,
    },
    /// The connection was lost; the next attempt is at `retry_at`.
    Disconnected { reason: String, retry_at: Timestamp },
    /// The client stopped for good: closed by the app (`error: None`) or
    /// because reconnecting cannot help (a refused token).
    Closed { error: Option<ClientError> },
    /// A new message (once per `(room, seq)`), the app's own included.
    Message(Message),
    /// A queued send failed for good (the server refused it, or the client
    /// closed). It was not stored.
    SendFailed {
        client_id: String,
        room_id: RoomId,
        error: ClientError,
    },
    /// Someone joined a room; `members` is set when it was this client.
    RoomJoined {
        room_id: RoomId,
        user: User,
        peer_id: PeerId,
        members: Option<Vec<Member>>,
    },
    /// Someone left a room (this client included).
    RoomLeft { room_id: RoomId, user_id: UserId },
    /// A room's name, topic or visibility changed.
    RoomUpdated(Room),
    /// A room was deleted.
    RoomDeleted { room_id: RoomId },
    /// A member's role changed.
    MemberUpdated {
        room_id: RoomId,
        user_id: UserId,
        role: Role,
    },
    /// Someone started or stopped typing.
    Typing {
        room_id: RoomId,
        user_id: UserId,
        typing: bool,
    },
    /// A user's presence changed.
    Presence {
        user_id: UserId,
        status: Presence,
        message: Option<String>,
    },
    /// A WebRTC signal for this peer.
    Rtc { kind: RtcKind, signal: RtcSignal },
    /// A P2P session this peer is a party to was authorised.
    P2pSessionCreated(Box<P2pSessionGrant>),
    /// A P2P session ended.
    P2pSessionClosed {
        session_id: SessionId,
        reason: String,
    },
    /// An `error` from the server that answers no request of this client.
    ServerError(ClientError),
}

/// `p2p.session.created`: the session, the token the initiator presents to
/// the target, and both agents' direct-connection details.
#[derive(Clone, Debug, PartialEq)]
pub struct P2pSessionGrant {
    pub session: P2pSession,
    pub session_token: String,
    pub initiator: P2pInfo,
    pub target: P2pInfo,
    /// Extension: this agent's right to the server's relay for the session.
    pub relay: Option<crate::protocol::RelayGrant>,
}

/// The successful answer to a request.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// `room.join`: the room's members, this client included.
    Joined {
        room_id: RoomId,
        members: Vec<Member>,
    },
    /// `room.leave`.
    Left { room_id: RoomId },
    /// `presence.update` took effect.
    Presence { status: Presence },
    /// `p2p.session.request`.
    P2pSession(Box<P2pSessionGrant>),
}

/// The outcome of a request or of a queued send.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Completion {
    /// The answer to the request `id`.
    Request {
        id: RequestId,
        result: Result<Reply, ClientError>,
    },
    /// A queued message was stored (`Ok`, the same message every retry
    /// returns) or refused for good.
    Send {
        client_id: String,
        result: Result<Message, ClientError>,
    },
}

/// What a request id on the wire stands for.
#[derive(Clone, Debug)]
enum Pending {
    Hello,
    Ping,
    Request(RequestId, RequestKind),
    Send(String),
}

#[derive(Clone, Copy, Debug)]
enum RequestKind {
    Join,
    Leave,
    Presence(Presence),
    P2p,
}

#[derive(Clone, Copy, Debug)]
enum Link {
    Disconnected {
        retry_at: Timestamp,
    },
    /// Socket being opened (`hello_sent == false`) or hello sent.
    Connecting {
        deadline: Timestamp,
        hello_sent: bool,
    },
    Ready {
        heartbeat: Duration,
        next_ping: Timestamp,
        last_heard: Timestamp,
    },
    Closed,
}

/// A message waiting for the server's answer.
#[derive(Clone, Debug)]
struct QueuedSend {
    client_id: String,
    room_id: RoomId,
    content: String,
    /// The wire id of the copy in flight on the current connection.
    in_flight: Option<String>,
    /// Held back until then (after `rate_limited`).
    not_before: Option<Timestamp>,
}

/// The token bucket of [`SendRate`].
#[derive(Clone, Copy, Debug)]
struct Pacer {
    rate: SendRate,
    tokens: f64,
    last: Timestamp,
}

impl Pacer {
    fn new(rate: SendRate, now: Timestamp) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst.max(1)),
            last: now,
        }
    }

    /// Takes a token, or says when the next one is there.
    fn take(&mut self, now: Timestamp) -> Result<(), Timestamp> {
        let per_second = self.rate.per_second.max(0.001);
        let elapsed = now.since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(f64::from(self.rate.burst.max(1)));
        self.last = now.max(self.last);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / per_second);
            // Round up to the next millisecond, or the retry comes too early.
            Err(now.saturating_add(wait + Duration::from_millis(1)))
        }
    }
}

/// What the client knows of a room.
#[derive(Clone, Copy, Debug, Default)]
struct Cursor {
    /// The last `seq` delivered as an [`Event::Message`]: replays at or
    /// below it are dropped.
    delivered: Option<u64>,
    /// What `since` says for this room on the next hello: the last `seq`
    /// delivered or observed.
    since: Option<u64>,
}

/// The sans-IO client. See the [module docs](self).
///
/// Driving it by hand, as a browser binding or a test does:
///
/// ```
/// use mesh_core::client::{ClientConfig, ClientState, Event};
/// use mesh_core::protocol::{OutgoingFrame, PeerId, RoomId, ServerEvent, Timestamp, User, UserId};
///
/// let now = Timestamp::from_unix_millis(1_000);
/// let mut client = ClientState::new(ClientConfig::default(), now, 7);
/// let room = RoomId::new();
/// // Works offline: queued until the welcome.
/// let client_id = client.send_message(room, "hi", now);
///
/// assert!(client.poll_connect(now)); // the driver opens a WebSocket...
/// client.connected(now); // ...and reports it open
/// let hello: serde_json::Value = serde_json::from_str(&client.poll_transmit().unwrap()).unwrap();
/// assert_eq!(hello["type"], "system.hello");
///
/// let me = User {
///     id: UserId::new(),
///     username: "alice".into(),
///     display_name: "Alice".into(),
///     created_at: now,
/// };
/// let welcome = ServerEvent::Welcome {
///     peer_id: PeerId::new(),
///     user: me,
///     server_time: now,
///     heartbeat_ms: 15_000,
///     p2p: None,
/// };
/// let frame = OutgoingFrame::reply(hello["id"].as_str().map(String::from), welcome);
/// client.frame_received(&frame.to_json(), now);
/// assert!(matches!(client.poll_event(), Some(Event::Connected { resumed: false, .. })));
///
/// // The queued message goes out now, under its client_id.
/// let send: serde_json::Value = serde_json::from_str(&client.poll_transmit().unwrap()).unwrap();
/// assert_eq!(send["type"], "chat.message.send");
/// assert_eq!(send["payload"]["client_id"], client_id.as_str());
/// // Next: a ping after `heartbeat_ms`.
/// assert_eq!(client.poll_timeout(), Some(Timestamp::from_unix_millis(16_000)));
/// ```
#[derive(Debug)]
pub struct ClientState {
    config: ClientConfig,
    rng: Rng,
    backoff: Backoff,
    link: Link,
    /// Wire request id -> what it was.
    pending: HashMap<String, Pending>,
    next_wire_id: u64,
    next_request: u64,
    /// In the order they were queued.
    sends: VecDeque<QueuedSend>,
    rooms: HashMap<RoomId, Cursor>,
    /// The status the app chose, re-applied after every reconnect.
    presence: Option<(Presence, Option<String>)>,
    me: Option<(PeerId, User)>,
    server_p2p: Option<crate::protocol::P2pServerInfo>,
    welcomed: bool,
    close_requested: bool,
    pacer: Pacer,
    /// When the pacer has a token for the next queued send.
    paced_until: Option<Timestamp>,
    transmit: VecDeque<String>,
    events: VecDeque<Event>,
    completions: VecDeque<Completion>,
}

impl ClientState {
    /// A client that wants to connect at once. `seed` drives the reconnect
    /// jitter and the generated `client_id`s: give each client (and each run
    /// of an app) a random one, since equal seeds make equal ids.
    pub fn new(config: ClientConfig, now: Timestamp, seed: u64) -> Self {
        let rooms = config
            .since
            .iter()
            .map(|(room, seq)| {
                let cursor = Cursor {
                    delivered: Some(*seq),
                    since: Some(*seq),
                };
                (*room, cursor)
            })
            .collect();
        let pacer = Pacer::new(config.send_rate, now);
        Self {
            backoff: Backoff::new(config.backoff),
            config,
            rng: Rng::new(seed),
            link: Link::Disconnected { retry_at: now },
            pending: HashMap::new(),
            next_wire_id: 0,
            next_request: 0,
            sends: VecDeque::new(),
            rooms,
            presence: None,
            me: None,
            server_p2p: None,
            welcomed: false,
            close_requested: false,
            pacer,
            paced_until: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            completions: VecDeque::new(),
        }
    }

    // ----- what the driver asks -----

    /// Where the connection is.
    pub fn status(&self) -> ConnectionStatus {
        match self.link {
            Link::Disconnected { retry_at } => ConnectionStatus::Disconnected { retry_at },
            Link::Connecting { .. } => ConnectionStatus::Connecting,
            Link::Ready { .. } => ConnectionStatus::Connected,
            Link::Closed => ConnectionStatus::Closed,
        }
    }

    /// This connection's peer and user, once welcomed.
    pub fn me(&self) -> Option<(PeerId, &User)> {
        self.me.as_ref().map(|(p, u)| (*p, u))
    }

    /// What the server offers agents for sessions across networks (its UDP
    /// port, whether it relays), from the last `system.welcome`.
    pub fn server_p2p(&self) -> Option<&crate::protocol::P2pServerInfo> {
        self.server_p2p.as_ref()
    }

    /// The resume cursors: the `since` the next hello will carry.
    pub fn cursors(&self) -> HashMap<RoomId, u64> {
        self.rooms
            .iter()
            .filter_map(|(room, c)| c.since.map(|s| (*room, s)))
            .collect()
    }

    /// The `client_id`s of the messages still waiting for the server.
    pub fn queued(&self) -> impl Iterator<Item = &str> {
        self.sends.iter().map(|s| s.client_id.as_str())
    }

    /// Whether the driver should open a socket now. Returns `true` once per
    /// attempt; the driver answers with [`connected`](Self::connected) or
    /// [`connect_failed`](Self::connect_failed).
    pub fn poll_connect(&mut self, now: Timestamp) -> bool {
        match self.link {
            Link::Disconnected { retry_at } if retry_at <= now => {
                self.link = Link::Connecting {
                    deadline: now.saturating_add(self.config.handshake_timeout),
                    hello_sent: false,
                };
                true
            }
            _ => false,
        }
    }

    /// The next frame to write to the socket.
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.transmit.pop_front()
    }

    /// The next event for the app.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next answer to a request or queued send.
    pub fn poll_completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    /// `true` once when the driver should close the current socket (the
    /// connection went silent, the handshake took too long, or the app
    /// closed the client). The state has already moved on; the driver need
    /// not report [`disconnected`](Self::disconnected) for it.
    pub fn poll_close(&mut self) -> bool {
        std::mem::take(&mut self.close_requested)
    }

    /// When [`handle_timeout`](Self::handle_timeout) (or
    /// [`poll_connect`](Self::poll_connect)) next has something to do.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match self.link {
            Link::Disconnected { retry_at } => Some(retry_at),
            Link::Connecting { deadline, .. } => Some(deadline),
            Link::Ready {
                heartbeat,
                next_ping,
                last_heard,
            } => {
                let dead = last_heard.saturating_add(heartbeat * self.config.dead_after);
                let resend = self
                    .sends
                    .iter()
                    .filter_map(|s| s.not_before)
                    .chain(self.paced_until)
                    .min();
                Some(resend.map_or(next_ping.min(dead), |r| r.min(next_ping).min(dead)))
            }
            Link::Closed => None,
        }
    }

    // ----- what the driver reports -----

    /// The socket is open: the state queues `system.hello`.
    pub fn connected(&mut self, now: Timestamp) {
        match self.link {
            Link::Closed => {
                self.close_requested = true;
                return;
            }
            Link::Ready { .. } => self.lose(now, "a new socket replaced the old one".into()),
            _ => {}
        }
        self.link = Link::Connecting {
            deadline: now.saturating_add(self.config.handshake_timeout),
            hello_sent: true,
        };
        let since = self.cursors();
        let hello = Hello {
            device_name: self.config.device_name.clone(),
            since: (!since.is_empty()).then_some(since),
            p2p: self.config.p2p.clone(),
        };
        self.send_frame(&ClientRequest::Hello(hello), Pending::Hello);
    }

    /// Opening the socket failed. A fatal error (a refused token) stops the
    /// client; anything else schedules another attempt.
    pub fn connect_failed(&mut self, now: Timestamp, error: ClientError) {
        if matches!(self.link, Link::Closed) {
            return;
        }
        if error.is_fatal() {
            self.shut(Some(error));
        } else {
            self.lose(now, error.to_string());
        }
    }

    /// The socket closed or broke.
    pub fn disconnected(&mut self, now: Timestamp, reason: impl Into<String>) {
        if matches!(self.link, Link::Connecting { .. } | Link::Ready { .. }) {
            self.lose(now, reason.into());
        }
    }

    /// A text frame from the server.
    pub fn frame_received(&mut self, text: &str, now: Timestamp) {
        if let Link::Ready { last_heard, .. } = &mut self.link {
            *last_heard = now;
        }
        let frame: OutgoingFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                let error = ClientError::Protocol(format!("unreadable frame: {e}"));
                self.events.push_back(Event::ServerError(error));
                return;
            }
        };
        let pending = frame.id.as_ref().and_then(|id| self.pending.remove(id));
        match pending {
            Some(p) => self.answer(now, p, frame.event),
            None => self.broadcast(now, frame.event),
        }
    }

    /// Fires what is due: reconnect attempts become due (see
    /// [`poll_connect`](Self::poll_connect)), pings go out, silent
    /// connections and slow handshakes are given up, rate-limited sends are
    /// retried.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        match self.link {
            Link::Connecting { deadline, .. } if deadline <= now => {
                self.close_requested = true;
                self.lose(now, "handshake timed out".into());
            }
            Link::Ready {
                heartbeat,
                next_ping,
                last_heard,
            } => {
                if last_heard.saturating_add(heartbeat * self.config.dead_after) <= now {
                    self.close_requested = true;
                    self.lose(now, "the server went silent".into());
                    return;
                }
                if next_ping <= now {
                    self.link = Link::Ready {
                        heartbeat,
                        next_ping: now.saturating_add(heartbeat),
                        last_heard,
                    };
                    self.send_frame(&ClientRequest::Ping(Map::new()), Pending::Ping);
                }
                self.flush_sends(now);
            }
            _ => {}
        }
    }

    // ----- what the app asks -----

    /// Queues a message and returns its `client_id`. Sent at once when
    /// connected, else after the next welcome; see the
    /// [module docs](self) on retries.
    pub fn send_message(
        &mut self,
        room_id: RoomId,
        content: impl Into<String>,
        now: Timestamp,
    ) -> String {
        let client_id = format!("{:016x}{:016x}", self.rng.next_u64(), self.rng.next_u64());
        self.send_message_with_id(room_id, content, client_id.clone(), now);
        client_id
    }

    /// [`send_message`](Self::send_message) under an id of the app's choice
    /// (1 to 128 printable characters, unique per sender and room).
    pub fn send_message_with_id(
        &mut self,
        room_id: RoomId,
        content: impl Into<String>,
        client_id: String,
        now: Timestamp,
    ) {
        if matches!(self.link, Link::Closed) {
            self.fail_send(room_id, client_id, ClientError::Closed);
            return;
        }
        self.sends.push_back(QueuedSend {
            client_id,
            room_id,
            content: content.into(),
            in_flight: None,
            not_before: None,
        });
        self.flush_sends(now);
    }

    /// `room.join`; answered with [`Reply::Joined`].
    pub fn join_room(&mut self, room_id: RoomId) -> RequestId {
        self.request(ClientRequest::RoomJoin { room_id }, RequestKind::Join)
    }

    /// `room.leave`; answered with [`Reply::Left`].
    pub fn leave_room(&mut self, room_id: RoomId) -> RequestId {
        self.request(ClientRequest::RoomLeave { room_id }, RequestKind::Leave)
    }

    /// `presence.update`; answered with [`Reply::Presence`]. The status is
    /// remembered and set again after every reconnect.
    pub fn set_presence(&mut self, status: Presence, message: Option<String>) -> RequestId {
        self.presence = Some((status, message.clone()));
        self.request(
            ClientRequest::PresenceUpdate { status, message },
            RequestKind::Presence(status),
        )
    }

    /// `p2p.session.request`; answered with [`Reply::P2pSession`].
    pub fn request_p2p_session(
        &mut self,
        room_id: RoomId,
        target_peer_id: PeerId,
        kind: SessionKind,
    ) -> RequestId {
        let frame = ClientRequest::P2pRequest {
            room_id,
            target_peer_id,
            kind,
        };
        self.request(frame, RequestKind::P2p)
    }

    /// `chat.typing`. Fire and forget; dropped while offline (it would be
    /// stale by the time it arrived).
    pub fn set_typing(&mut self, room_id: RoomId, typing: bool) {
        if matches!(self.link, Link::Ready { .. }) {
            self.push_frame(&ClientRequest::Typing { room_id, typing }, None);
        }
    }

    /// An `rtc.*` signal to another peer. Fire and forget; dropped while
    /// offline. `from_*` fields are filled in by the server.
    pub fn send_rtc(&mut self, kind: RtcKind, signal: RtcSignal) {
        if matches!(self.link, Link::Ready { .. }) {
            let frame = match kind {
                RtcKind::Offer => ClientRequest::RtcOffer(signal),
                RtcKind::Answer => ClientRequest::RtcAnswer(signal),
                RtcKind::Ice => ClientRequest::RtcIce(signal),
                RtcKind::Hangup => ClientRequest::RtcHangup(signal),
            };
            self.push_frame(&frame, None);
        }
    }

    /// Closes a P2P session this peer is a party to (`p2p.session.close`).
    /// Fire and forget; the server announces `p2p.session.closed`.
    pub fn close_p2p_session(&mut self, session_id: SessionId) {
        if matches!(self.link, Link::Ready { .. }) {
            self.push_frame(&ClientRequest::P2pClose { session_id }, None);
        }
    }

    /// `p2p.announce`: from now on (and in every later `system.hello`) this
    /// agent's direct-connection details are `info`. Fire and forget; sent
    /// with the next hello when offline.
    pub fn announce_p2p(&mut self, info: P2pInfo) {
        self.config.p2p = Some(info.clone());
        if matches!(self.link, Link::Ready { .. }) {
            self.push_frame(&ClientRequest::P2pAnnounce { p2p: info }, None);
        }
    }

    /// Tells the client about `seq` in `room` learned elsewhere (a history
    /// page, a room just created): resuming starts after it. Messages that
    /// still arrive at or below it are delivered, not dropped.
    pub fn observe_seq(&mut self, room_id: RoomId, seq: u64) {
        let cursor = self.rooms.entry(room_id).or_default();
        cursor.since = Some(cursor.since.map_or(seq, |s| s.max(seq)));
    }

    /// Closes the client for good: pending requests and queued sends fail
    /// with [`ClientError::Closed`], and the driver is asked to close.
    pub fn close(&mut self) {
        if !matches!(self.link, Link::Closed) {
            self.shut(None);
        }
    }

    // ----- internals -----

    fn wire_id(&mut self, prefix: char) -> String {
        self.next_wire_id += 1;
        format!("{prefix}{}", self.next_wire_id)
    }

    fn push_frame(&mut self, frame: &ClientRequest, id: Option<String>) {
        let mut value = match serde_json::to_value(frame) {
            Ok(v) => v,
            // Our own frames always serialize (string keys only).
            Err(_) => return,
        };
        if let (Some(id), Some(obj)) = (id, value.as_object_mut()) {
            obj.insert("id".into(), serde_json::Value::String(id));
        }
        self.transmit.push_back(value.to_string());
    }

    fn send_frame(&mut self, frame: &ClientRequest, pending: Pending) -> String {
        let prefix = match pending {
            Pending::Hello => 'h',
            Pending::Ping => 'p',
            Pending::Request(..) => 'r',
            Pending::Send(_) => 's',
        };
        let id = self.wire_id(prefix);
        self.pending.insert(id.clone(), pending);
        self.push_frame(frame, Some(id.clone()));
        id
    }

    fn request(&mut self, frame: ClientRequest, kind: RequestKind) -> RequestId {
        self.next_request += 1;
        let id = RequestId(self.next_request);
        match self.link {
            Link::Ready { .. } => {
                self.send_frame(&frame, Pending::Request(id, kind));
            }
            Link::Closed => self.complete(id, Err(ClientError::Closed)),
            _ => self.complete(id, Err(ClientError::NotConnected)),
        }
        id
    }

    fn complete(&mut self, id: RequestId, result: Result<Reply, ClientError>) {
        self.completions
            .push_back(Completion::Request { id, result });
    }

    /// Sends every queued message that is not in flight and not held back.
    fn flush_sends(&mut self, now: Timestamp) {
        if !matches!(self.link, Link::Ready { .. }) {
            return;
        }
        self.paced_until = None;
        for i in 0..self.sends.len() {
            let s = &self.sends[i];
            if s.in_flight.is_some() || s.not_before.is_some_and(|t| t > now) {
                continue;
            }
            if let Err(next) = self.pacer.take(now) {
                // In queue order: later sends wait for this one's token.
                self.paced_until = Some(next);
                return;
            }
            let s = &self.sends[i];
            let frame = ClientRequest::MessageSend {
                room_id: s.room_id,
                content: s.content.clone(),
                client_id: Some(s.client_id.clone()),
            };
            let pending = Pending::Send(s.client_id.clone());
            let id = self.send_frame(&frame, pending);
            let s = &mut self.sends[i];
            s.in_flight = Some(id);
            s.not_before = None;
        }
    }

    /// The connection is gone (not for good): fail what cannot be replayed,
    /// keep the send queue, schedule the next attempt.
    fn lose(&mut self, now: Timestamp, reason: String) {
        self.fail_pending(ClientError::Disconnected);
        let delay = self.backoff.next_delay(&mut self.rng);
        let retry_at = now.saturating_add(delay);
        self.link = Link::Disconnected { retry_at };
        self.events
            .push_back(Event::Disconnected { reason, retry_at });
    }

    /// Closed for good.
    fn shut(&mut self, error: Option<ClientError>) {
        let was_open = matches!(self.link, Link::Connecting { .. } | Link::Ready { .. });
        self.close_requested |= was_open;
        self.link = Link::Closed;
        self.fail_pending(ClientError::Closed);
        for s in std::mem::take(&mut self.sends) {
            self.fail_send(s.room_id, s.client_id, ClientError::Closed);
        }
        self.events.push_back(Event::Closed { error });
    }

    fn fail_pending(&mut self, error: ClientError) {
        let mut requests: Vec<RequestId> = Vec::new();
        for (_, pending) in self.pending.drain() {
            if let Pending::Request(id, _) = pending {
                requests.push(id);
            }
        }
        requests.sort();
        for id in requests {
            self.complete(id, Err(error.clone()));
        }
        for s in &mut self.sends {
            s.in_flight = None;
        }
    }

    fn fail_send(&mut self, room_id: RoomId, client_id: String, error: ClientError) {
        self.completions.push_back(Completion::Send {
            client_id: client_id.clone(),
            result: Err(error.clone()),
        });
        self.events.push_back(Event::SendFailed {
            client_id,
            room_id,
            error,
        });
    }

    fn welcome(
        &mut self,
        now: Timestamp,
        peer_id: PeerId,
        user: User,
        server_time: Timestamp,
        heartbeat_ms: u64,
    ) {
        let heartbeat = Duration::from_millis(heartbeat_ms.max(1));
        self.link = Link::Ready {
            heartbeat,
            next_ping: now.saturating_add(heartbeat),
            last_heard: now,
        };
        self.backoff.reset();
        self.me = Some((peer_id, user.clone()));
        let resumed = std::mem::replace(&mut self.welcomed, true);
        self.events.push_back(Event::Connected {
            peer_id,
            user,
            server_time,
            heartbeat_ms,
            resumed,
        });
        if resumed && let Some((status, message)) = self.presence.clone() {
            let frame = ClientRequest::PresenceUpdate { status, message };
            self.push_frame(&frame, None);
        }
        self.flush_sends(now);
    }

    /// A frame answering one of our requests.
    fn answer(&mut self, now: Timestamp, pending: Pending, event: ServerEvent) {
        match (pending, event) {
            (
                Pending::Hello,
                ServerEvent::Welcome {
                    peer_id,
                    user,
                    server_time,
                    heartbeat_ms,
                    p2p,
                },
            ) => {
                self.server_p2p = p2p;
                self.welcome(now, peer_id, user, server_time, heartbeat_ms)
            }
            (Pending::Hello, ServerEvent::Error(e)) => {
                // The server refused the hello itself: no retry can fix it.
                self.shut(Some(e.into()));
            }
            (Pending::Ping, ServerEvent::Pong { .. }) => {}
            (Pending::Send(client_id), ServerEvent::MessageCreated { message }) => {
                self.resolve_send(&client_id, &message);
                self.deliver(message);
            }
            (Pending::Send(client_id), ServerEvent::Error(e)) => {
                self.send_refused(now, &client_id, e.into())
            }
            (Pending::Request(id, kind), event) => self.answer_request(now, id, kind, event),
            (_, event) => self.broadcast(now, event),
        }
    }

    fn answer_request(
        &mut self,
        now: Timestamp,
        id: RequestId,
        kind: RequestKind,
        event: ServerEvent,
    ) {
        let result = match (kind, event) {
            (_, ServerEvent::Error(e)) => Err(e.into()),
            (
                RequestKind::Join,
                ServerEvent::RoomJoined {
                    room_id,
                    user,
                    peer_id,
                    members,
                },
            ) => {
                self.rooms.entry(room_id).or_default();
                let members = members.unwrap_or_default();
                self.events.push_back(Event::RoomJoined {
                    room_id,
                    user,
                    peer_id,
                    members: Some(members.clone()),
                });
                Ok(Reply::Joined { room_id, members })
            }
            (RequestKind::Leave, ServerEvent::RoomLeft { room_id, user_id }) => {
                self.rooms.remove(&room_id);
                self.events.push_back(Event::RoomLeft { room_id, user_id });
                Ok(Reply::Left { room_id })
            }
            (RequestKind::Presence(status), event @ ServerEvent::PresenceUpdate { .. }) => {
                self.broadcast(now, event);
                Ok(Reply::Presence { status })
            }
            (
                RequestKind::P2p,
                ServerEvent::P2pSessionCreated {
                    session,
                    session_token,
                    initiator,
                    target,
                    relay,
                },
            ) => {
                let grant = Box::new(P2pSessionGrant {
                    session,
                    session_token,
                    initiator,
                    target,
                    relay,
                });
                self.events
                    .push_back(Event::P2pSessionCreated(grant.clone()));
                Ok(Reply::P2pSession(grant))
            }
            (kind, event) => {
                let what = format!("{kind:?} answered with {event:?}");
                self.broadcast(now, event);
                Err(ClientError::Protocol(what))
            }
        };
        self.complete(id, result);
    }

    /// The server stored the queued message `client_id` (now or earlier).
    fn resolve_send(&mut self, client_id: &str, message: &Message) {
        if let Some(i) = self.sends.iter().position(|s| s.client_id == client_id) {
            // A retry still in flight keeps its pending entry: its answer
            // (the same message, or an error) then finds nothing to resolve.
            self.sends.remove(i);
            self.completions.push_back(Completion::Send {
                client_id: client_id.to_owned(),
                result: Ok(message.clone()),
            });
        }
    }

    fn send_refused(&mut self, now: Timestamp, client_id: &str, error: ClientError) {
        let Some(i) = self.sends.iter().position(|s| s.client_id == client_id) else {
            return;
        };
        if let ClientError::Server {
            code: crate::ErrorCode::RateLimited,
            retry_after_ms,
            ..
        } = &error
        {
            let wait = Duration::from_millis(retry_after_ms.unwrap_or(1000).max(1));
            let s = &mut self.sends[i];
            s.in_flight = None;
            s.not_before = Some(now.saturating_add(wait));
            return;
        }
        if let Some(s) = self.sends.remove(i) {
            self.fail_send(s.room_id, s.client_id, error);
        }
    }

    /// Delivers a message unless it is a replay.
    fn deliver(&mut self, message: Message) {
        let cursor = self.rooms.entry(message.room_id).or_default();
        if cursor.delivered.is_some_and(|d| message.seq <= d) {
            return;
        }
        cursor.delivered = Some(message.seq);
        cursor.since = Some(cursor.since.map_or(message.seq, |s| s.max(message.seq)));
        self.events.push_back(Event::Message(message));
    }

    /// A frame that answers no request of ours.
    fn broadcast(&mut self, now: Timestamp, event: ServerEvent) {
        match event {
            ServerEvent::MessageCreated { message } => {
                // Our own message, stored before a reconnect and replayed by
                // `since`: it resolves the queued send it came from.
                let mine = self
                    .me
                    .as_ref()
                    .is_some_and(|(_, me)| me.id == message.sender.id);
                if mine && let Some(client_id) = message.client_id.clone() {
                    self.resolve_send(&client_id, &message);
                }
                self.deliver(message);
            }
            ServerEvent::Welcome {
                peer_id,
                user,
                server_time,
                heartbeat_ms,
                p2p,
            } => {
                if matches!(
                    self.link,
                    Link::Connecting {
                        hello_sent: true,
                        ..
                    }
                ) {
                    self.server_p2p = p2p;
                    self.welcome(now, peer_id, user, server_time, heartbeat_ms);
                }
            }
            ServerEvent::RoomLeft { room_id, user_id } => {
                if self.me.as_ref().is_some_and(|(_, me)| me.id == user_id) {
                    self.rooms.remove(&room_id);
                }
                self.events.push_back(Event::RoomLeft { room_id, user_id });
            }
            ServerEvent::RoomDeleted { room_id } => {
                self.rooms.remove(&room_id);
                self.events.push_back(Event::RoomDeleted { room_id });
            }
            // The rest changes no state of ours: it is only told to the app.
            other => self.events.extend(app_event(other)),
        }
    }
}

/// What the app is told of a server event that changes no client state.
/// Every variant is named, so a new one must be decided here; those
/// [`ClientState::broadcast`] handles itself tell nothing more.
fn app_event(event: ServerEvent) -> Option<Event> {
    let rtc = |kind, signal| Event::Rtc { kind, signal };
    Some(match event {
        ServerEvent::RoomJoined {
            room_id,
            user,
            peer_id,
            members,
        } => Event::RoomJoined {
            room_id,
            user,
            peer_id,
            members,
        },
        ServerEvent::RoomUpdated { room } => Event::RoomUpdated(room),
        ServerEvent::MemberUpdated {
            room_id,
            user_id,
            role,
        } => Event::MemberUpdated {
            room_id,
            user_id,
            role,
        },
        ServerEvent::Typing {
            room_id,
            user_id,
            typing,
        } => Event::Typing {
            room_id,
            user_id,
            typing,
        },
        ServerEvent::PresenceUpdate {
            user_id,
            status,
            message,
        } => Event::Presence {
            user_id,
            status,
            message,
        },
        ServerEvent::RtcOffer(signal) => rtc(RtcKind::Offer, signal),
        ServerEvent::RtcAnswer(signal) => rtc(RtcKind::Answer, signal),
        ServerEvent::RtcIce(signal) => rtc(RtcKind::Ice, signal),
        ServerEvent::RtcHangup(signal) => rtc(RtcKind::Hangup, signal),
        ServerEvent::P2pSessionCreated {
            session,
            session_token,
            initiator,
            target,
            relay,
        } => Event::P2pSessionCreated(Box::new(P2pSessionGrant {
            session,
            session_token,
            initiator,
            target,
            relay,
        })),
        ServerEvent::P2pSessionClosed { session_id, reason } => {
            Event::P2pSessionClosed { session_id, reason }
        }
        ServerEvent::Error(e) => Event::ServerError(e.into()),
        // Handled by `broadcast`, or (a pong, the acknowledgement of a
        // fire-and-forget request) nothing to tell.
        ServerEvent::MessageCreated { .. }
        | ServerEvent::Welcome { .. }
        | ServerEvent::RoomLeft { .. }
        | ServerEvent::RoomDeleted { .. }
        | ServerEvent::Pong { .. }
        | ServerEvent::Ack { .. } => return None,
    })
}
