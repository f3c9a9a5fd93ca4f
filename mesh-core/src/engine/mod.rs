//! The sans-IO engine: rooms' live subscriptions, presence, typing, WebRTC
//! signaling relay, message fan-out and P2P session orchestration.
//!
//! The engine owns no socket and reads no clock. Every method takes the
//! current time as a [`Timestamp`]; what the engine wants done comes out of
//! [`Engine::poll_output`] as [`Output`]s: frames to send to peers and
//! connections to close. Timers (heartbeats, typing, session expiry) fire when
//! the driver calls [`Engine::handle_timeout`] at or after
//! [`Engine::poll_timeout`]. This is what lets the tests drive many peers
//! with a virtual clock, and what lets a broker (NATS, ...) later replace the
//! local fan-out: every frame leaves through `poll_output`.
//!
//! The engine trusts its caller: the service has already authenticated the
//! peer and checked and persisted what needed persisting (memberships,
//! messages) before telling the engine.
//!
//! The work is split by concern: `presence` (connections,
//! heartbeats, aggregated presence), `typing`, `fanout` (per-room ordering,
//! catch-up with `since`), `rooms`, `signaling` (WebRTC relay and P2P
//! sessions), with the shared bookkeeping and the timer set in `state`. The
//! public methods below are thin: they name the contract, the submodules
//! hold the logic.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

mod cluster;
mod fanout;
mod presence;
mod rooms;
mod signaling;
mod state;
#[cfg(test)]
mod tests;
mod typing;

pub use cluster::NodePresence;
use state::{PeerState, RoomState, Timer, UserState};

use crate::error::Error;
use crate::protocol::{
    DeviceId, Member, Message, OutgoingFrame, P2pInfo, P2pSession, PeerId, Presence, Role, Room,
    RoomId, RtcKind, RtcSignal, ServerEvent, SessionId, SessionKind, Timestamp, User, UserId,
};
use crate::transport::CloseCode;

/// Timings of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Announced in `system.welcome`: how often clients should ping.
    pub heartbeat_interval: Duration,
    /// A peer not heard from for this long is closed and counted gone.
    pub heartbeat_timeout: Duration,
    /// A typing indicator not renewed for this long turns itself off.
    pub typing_ttl: Duration,
    /// How long a P2P session lives (180 s in the contract).
    pub session_ttl: Duration,
    /// How long a message waits for an earlier `seq` still being stored
    /// before it is delivered anyway (the client fills the hole from history).
    pub reorder_window: Duration,
    /// Most live messages held back for a peer that is still catching up
    /// with `since`; past it the peer is closed with 1013.
    pub max_backlog: usize,
    /// Announced in `system.welcome`'s `p2p`: the server's UDP port for
    /// address discovery and relaying, and whether it relays.
    pub p2p_server: Option<crate::protocol::P2pServerInfo>,
    /// With it, `p2p.session.created` gives each party its relay key.
    pub relay_secret: Option<crate::relay::grant::RelaySecret>,
    /// This node's relay as agents reach it (`IP:port`), named in every
    /// relay grant: in a cluster the node that grants a session relays it,
    /// and an agent connected to another node binds here. Without it, a
    /// party connected to another node gets no relay grant.
    pub relay_addr: Option<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(45),
            typing_ttl: Duration::from_secs(6),
            session_ttl: Duration::from_secs(180),
            reorder_window: Duration::from_secs(2),
            max_backlog: 1000,
            p2p_server: None,
            relay_secret: None,
            relay_addr: None,
        }
    }
}

/// What the engine wants done.
// `Send` is much larger than the other variants, but nearly every output is
// a `Send` and outputs are drained at once, so boxing the frame would cost an
// allocation per output to save memory that is never held.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send `frame` to each of `to` (encode it once).
    Send {
        to: Vec<PeerId>,
        frame: OutgoingFrame,
    },
    /// Close a peer's connection. The engine has already forgotten the
    /// peer (as if [`Engine::disconnect`] had been called); calling
    /// `disconnect` for it again when the socket ends is harmless.
    Close {
        peer: PeerId,
        code: CloseCode,
        reason: String,
    },
    /// A P2P session ended (closed, expired, or a peer left): the service
    /// removes it from the store.
    SessionEnded { session_id: SessionId },
    /// A user's presence on this node changed (connected, gone, or chose a
    /// status): for the other nodes of a cluster, once
    /// [`Engine::join_cluster`] said there are any.
    Presence(NodePresence),
    /// A P2P session whose other party is connected to another node ended
    /// here (closed, expired, or the party here left): for that node, which
    /// tells its party (see [`Engine::remote_session_closed`]). Comes
    /// beside [`Output::SessionEnded`].
    RemoteSessionEnded {
        session_id: SessionId,
        reason: String,
    },
    /// A room got its first subscriber here (`live`) or lost its last: a
    /// node of a cluster listens to a room's events only while it is live
    /// there. Ignored by a lone node.
    RoomInterest { room_id: RoomId, live: bool },
}

/// What the engine knows of a connected peer.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub user: User,
    pub device_id: DeviceId,
    pub p2p: Option<P2pInfo>,
}

/// The engine. See the [module docs](self).
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    peers: HashMap<PeerId, PeerState>,
    /// Users with at least one connection.
    users: HashMap<UserId, UserState>,
    devices: HashMap<DeviceId, BTreeSet<PeerId>>,
    rooms: HashMap<RoomId, RoomState>,
    sessions: BTreeMap<SessionId, P2pSession>,
    /// The sessions whose other party is connected to another node, and
    /// that party's peer (see `cluster`).
    elsewhere: BTreeMap<SessionId, PeerId>,
    /// Every pending deadline, earliest first (see `state`).
    timers: BTreeSet<(Timestamp, Timer)>,
    outputs: VecDeque<Output>,
    /// Presence of users online on other nodes only (see `cluster`).
    remote: HashMap<UserId, (Presence, Option<String>)>,
    /// Whether other nodes listen ([`Engine::join_cluster`]): only then is
    /// a presence change worth an [`Output::Presence`].
    clustered: bool,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            peers: HashMap::new(),
            users: HashMap::new(),
            devices: HashMap::new(),
            rooms: HashMap::new(),
            sessions: BTreeMap::new(),
            elsewhere: BTreeMap::new(),
            timers: BTreeSet::new(),
            outputs: VecDeque::new(),
            remote: HashMap::new(),
            clustered: false,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// A connection authenticated and said `system.hello`. Subscribes it to
    /// `rooms` (every room its user belongs to), answers `system.welcome`
    /// (with `request_id`), and tells co-members the user is online if this
    /// is the user's first connection. Rooms named in `since` are marked as
    /// catching up: live messages for them are held until
    /// [`Engine::backfill`] says the backlog is delivered.
    pub fn connect(
        &mut self,
        now: Timestamp,
        peer: PeerInfo,
        rooms: Vec<RoomId>,
        since: HashMap<RoomId, u64>,
        request_id: Option<String>,
    ) {
        self.do_connect(now, peer, rooms, since, request_id);
    }

    /// Delivers a page of missed messages to a catching-up peer, in `seq`
    /// order. With `done`, the held live messages newer than the last one
    /// delivered follow and the room is live for the peer.
    pub fn backfill(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        room: RoomId,
        messages: Vec<Message>,
        done: bool,
    ) {
        self.do_backfill(now, peer, room, messages, done);
    }

    /// The connection is gone (closed, errored, or timed out). The user goes
    /// offline if it was their last connection; their typing stops; P2P
    /// sessions of this peer close.
    pub fn disconnect(&mut self, now: Timestamp, peer: PeerId) {
        self.do_disconnect(now, peer);
    }

    /// Any frame from the peer (or a WebSocket pong): it is alive.
    pub fn heard_from(&mut self, now: Timestamp, peer: PeerId) {
        self.touch(now, peer);
    }

    /// `system.ping`: answers `system.pong`.
    pub fn ping(&mut self, now: Timestamp, peer: PeerId, request_id: Option<String>) {
        if self.peers.contains_key(&peer) {
            self.touch(now, peer);
            self.reply(peer, request_id, ServerEvent::Pong { server_time: now });
        }
    }

    /// The user of `peer` was added to `room` in the store (or already was a
    /// member). Subscribes all the user's connections; `peer` gets
    /// `room.joined` with `members` (and `request_id`), the room's other
    /// connections get `room.joined` without members.
    pub fn join_room(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        room: RoomId,
        members: Vec<Member>,
        request_id: Option<String>,
    ) {
        self.do_join_room(now, peer, room, members, request_id);
    }

    /// `user` was added to `room` by someone else (an invitation): their
    /// connections are subscribed and the room gets `room.joined`.
    pub fn member_added(&mut self, now: Timestamp, room: RoomId, user: &User) {
        self.do_member_added(now, room, user);
    }

    /// `user` left or was removed from `room` in the store. The room (the
    /// user's own connections included) gets `room.left`, then the user's
    /// connections are unsubscribed. `reply` names the connection and
    /// request id to answer, if the user asked.
    pub fn leave_room(
        &mut self,
        now: Timestamp,
        room: RoomId,
        user: UserId,
        reply: Option<(PeerId, Option<String>)>,
    ) {
        self.do_leave_room(now, room, user, reply);
    }

    /// A room's name, topic or visibility changed: `room.updated` to it.
    pub fn room_updated(&mut self, _now: Timestamp, room: &Room) {
        let to = self.subscribers(room.id);
        self.broadcast(to, ServerEvent::RoomUpdated { room: room.clone() });
    }

    /// A room was deleted: `room.deleted` to it, then nobody is subscribed.
    pub fn room_deleted(&mut self, now: Timestamp, room: RoomId) {
        self.do_room_deleted(now, room);
    }

    /// A member's role changed: `room.member.updated` to the room.
    pub fn role_changed(&mut self, _now: Timestamp, room: RoomId, user: UserId, role: Role) {
        let to = self.subscribers(room);
        self.broadcast(
            to,
            ServerEvent::MemberUpdated {
                room_id: room,
                user_id: user,
                role,
            },
        );
    }

    /// A message was stored: `chat.message.created` to every connection
    /// subscribed to its room, the sender's included; `origin` (the sending
    /// connection and its request id) gets the copy carrying the id.
    /// Messages leave in `seq` order per room: one that arrives ahead of a
    /// missing `seq` waits up to [`EngineConfig::reorder_window`]. Also ends
    /// the sender's typing indicator in the room.
    pub fn message_created(
        &mut self,
        now: Timestamp,
        message: Message,
        origin: Option<(PeerId, Option<String>)>,
    ) {
        self.do_message_created(now, message, origin);
    }

    /// `chat.typing` from `peer`: relayed to the other users' connections in
    /// the room; a `true` expires by itself after
    /// [`EngineConfig::typing_ttl`]. Forbidden unless subscribed.
    pub fn typing(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        room: RoomId,
        typing: bool,
    ) -> Result<(), Error> {
        self.do_typing(now, peer, room, typing)
    }

    /// `presence.update` from `peer`: sets the user's chosen status (all
    /// devices) and tells everyone who shares a room with the user, the
    /// user's own connections included; `request_id` rides on the copy to
    /// `peer`. `Offline` as a chosen status means invisible.
    pub fn set_presence(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        status: Presence,
        message: Option<String>,
        request_id: Option<String>,
    ) {
        self.do_set_presence(now, peer, status, message, request_id);
    }

    /// The user's presence as others see it: `Offline` with no connection,
    /// else the chosen status (`Online` by default).
    pub fn presence_of(&self, user: UserId) -> Presence {
        match self.users.get(&user) {
            Some(state) => state.visible(),
            None => self.remote_presence_of(user),
        }
    }

    /// Relays an `rtc.*` signal to its target peer only, with `from_peer_id`
    /// and `from_user_id` filled in. `NotFound` if the target is not
    /// connected, `Forbidden` unless both peers are subscribed to the room
    /// (the sender's subscription is checked first).
    pub fn relay_rtc(
        &mut self,
        now: Timestamp,
        from: PeerId,
        kind: RtcKind,
        signal: RtcSignal,
    ) -> Result<(), Error> {
        self.do_relay_rtc(now, from, kind, signal)
    }

    /// Checks a P2P session request and builds the session (state
    /// `pending`, expiring after [`EngineConfig::session_ttl`]), without
    /// announcing it: the service signs its token, then calls
    /// [`Engine::open_session`]. `Forbidden` unless both users are
    /// subscribed to the room (the initiator checked before anything about
    /// the target); `NotFound` if the target peer is not connected;
    /// `InvalidRequest` for a session with oneself.
    pub fn prepare_session(
        &self,
        now: Timestamp,
        id: SessionId,
        initiator: PeerId,
        room: RoomId,
        target: PeerId,
        kind: SessionKind,
    ) -> Result<P2pSession, Error> {
        self.do_prepare_session(now, id, initiator, room, target, kind)
    }

    /// Records a prepared session and sends `p2p.session.created` (with the
    /// token and both peers' [`P2pInfo`]) to both peers; the initiator's copy
    /// carries `request_id` when it asked over the WebSocket.
    pub fn open_session(
        &mut self,
        now: Timestamp,
        session: P2pSession,
        session_token: String,
        request_id: Option<String>,
    ) {
        self.do_open_session(now, session, session_token, request_id, None, None);
    }

    /// Replaces `peer`'s announced [`P2pInfo`] (`p2p.announce`); sessions
    /// created later carry the new one.
    pub fn announce_p2p(&mut self, peer: PeerId, info: P2pInfo) -> Result<(), Error> {
        let info = crate::validate::p2p_info(info)?;
        match self.peers.get_mut(&peer) {
            Some(p) => {
                p.info.p2p = Some(info);
                let user = p.info.user.id;
                // Other nodes learn it with the user's presence: sessions
                // they open to this peer carry it.
                self.presence_changed(user);
                Ok(())
            }
            None => Err(Error::InvalidRequest("say system.hello first".into())),
        }
    }

    /// Closes a session at a party's request: `p2p.session.closed` to both
    /// peers. `NotFound` if there is no such live session or `by` is not a
    /// party to it (outsiders cannot tell the two apart).
    pub fn close_session(
        &mut self,
        now: Timestamp,
        session: SessionId,
        by: UserId,
        reason: &str,
    ) -> Result<(), Error> {
        self.do_close_session(now, session, by, reason)
    }

    /// The live sessions `user` is a party to.
    pub fn sessions_of(&self, user: UserId) -> Vec<P2pSession> {
        self.do_sessions_of(user)
    }

    /// Closes every connection of a revoked device (1008).
    pub fn revoke_device(&mut self, now: Timestamp, device: DeviceId) {
        let peers: Vec<PeerId> = self
            .devices
            .get(&device)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default();
        for peer in peers {
            self.close_peer(now, peer, CloseCode::Policy, "device revoked");
        }
    }

    /// Whether `peer` is subscribed to `room` (i.e. its user is a member).
    pub fn is_subscribed(&self, peer: PeerId, room: RoomId) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|p| p.rooms.contains(&room))
    }

    /// The connected peer, if any.
    pub fn peer(&self, peer: PeerId) -> Option<&PeerInfo> {
        self.peers.get(&peer).map(|p| &p.info)
    }

    /// The earliest time [`Engine::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Fires due timers: closes peers past the heartbeat time-out, ends
    /// typing indicators, expires P2P sessions (both peers get
    /// `p2p.session.closed` with reason `expired`), releases held messages.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, timer));
            match timer {
                Timer::Heartbeat(peer) => self.heartbeat_expired(now, peer, at),
                Timer::Typing(room, user) => self.typing_expired(now, room, user, at),
                Timer::Session(id) => self.session_expired(now, id, at),
                Timer::Reorder(room) => self.reorder_due(now, room, at),
            }
        }
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }
}
