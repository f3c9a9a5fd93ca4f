//! A deterministic multi-peer test network for the engine (after quinn's
//! `Pair`): one [`Engine`], a virtual clock, and an inbox per peer filled by
//! expanding every [`Output::Send`] to its recipients.
//!
//! [`Harness::advance`] moves the clock to each due deadline in turn and
//! fires it, exactly as a driver would after sleeping until
//! [`Engine::poll_timeout`], so timer-driven behaviour (heartbeats, typing,
//! session expiry, reorder windows) is tested to the millisecond.
//!
//! Optional per-peer latency and drops model the network between the
//! engine and a client: a frame to a lossy peer may vanish, a frame to a
//! slow peer lands in its inbox only once the clock passes its arrival.
//! The engine is not affected either way; this is what its clients see.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::engine::{Engine, EngineConfig, NodePresence, Output, PeerInfo};
use crate::protocol::{
    DeviceId, Message, MessageId, OutgoingFrame, PeerId, RoomId, ServerEvent, SessionId, Timestamp,
    User, UserId,
};
use crate::transport::CloseCode;

/// A frame on its way to a peer with a link delay.
#[derive(Debug)]
struct InFlight {
    arrives: Timestamp,
    frame: OutgoingFrame,
}

/// Network conditions towards one peer.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Link {
    pub(super) latency: Duration,
    /// Drop every n-th frame (0: none). Deterministic on purpose.
    pub(super) drop_every: u32,
}

#[derive(Debug)]
pub(super) struct Harness {
    pub(super) engine: Engine,
    pub(super) now: Timestamp,
    inboxes: BTreeMap<PeerId, Vec<OutgoingFrame>>,
    in_flight: BTreeMap<PeerId, Vec<InFlight>>,
    links: HashMap<PeerId, (Link, u32)>,
    pub(super) closed: Vec<(PeerId, CloseCode, String)>,
    pub(super) ended: Vec<SessionId>,
    /// `Output::RemoteSessionEnded`s: for another node.
    pub(super) ended_elsewhere: Vec<(SessionId, String)>,
    /// `Output::Presence`s: what other nodes would be told.
    pub(super) node_presence: Vec<NodePresence>,
    /// `Output::RoomInterest`s.
    pub(super) interest: Vec<(RoomId, bool)>,
    /// Every `Output::Send` as emitted, for counting frames.
    pub(super) sends: Vec<(Vec<PeerId>, OutgoingFrame)>,
}

pub(super) fn user(name: &str) -> User {
    User {
        id: UserId::new(),
        username: name.to_owned(),
        display_name: name.to_owned(),
        created_at: Timestamp::EPOCH,
    }
}

pub(super) fn message(room: RoomId, seq: u64, sender: &User) -> Message {
    Message {
        id: MessageId::new(),
        room_id: room,
        seq,
        sender: sender.clone(),
        content: format!("message {seq}"),
        created_at: Timestamp::EPOCH,
        client_id: None,
    }
}

impl Harness {
    pub(super) fn new() -> Self {
        Self::with_config(EngineConfig::default())
    }

    pub(super) fn with_config(config: EngineConfig) -> Self {
        Self {
            engine: Engine::new(config),
            now: Timestamp::from_unix_millis(1_790_000_000_000),
            inboxes: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            links: HashMap::new(),
            closed: Vec::new(),
            ended: Vec::new(),
            ended_elsewhere: Vec::new(),
            node_presence: Vec::new(),
            interest: Vec::new(),
            sends: Vec::new(),
        }
    }

    /// Connects a new device of `user`, subscribed to `rooms`; the welcome
    /// is consumed.
    pub(super) fn connect(&mut self, user: &User, rooms: &[RoomId]) -> PeerId {
        self.connect_with(user, DeviceId::new(), rooms, HashMap::new())
    }

    pub(super) fn connect_with(
        &mut self,
        user: &User,
        device: DeviceId,
        rooms: &[RoomId],
        since: HashMap<RoomId, u64>,
    ) -> PeerId {
        let peer = PeerId::new();
        let info = PeerInfo {
            peer_id: peer,
            user: user.clone(),
            device_id: device,
            p2p: None,
        };
        self.engine
            .connect(self.now, info, rooms.to_vec(), since, Some("hello".into()));
        self.drain();
        let welcome = self.take(peer);
        assert!(
            matches!(
                welcome.first().map(|f| &f.event),
                Some(ServerEvent::Welcome { .. })
            ),
            "no welcome: {welcome:?}"
        );
        peer
    }

    pub(super) fn set_link(&mut self, peer: PeerId, link: Link) {
        self.links.insert(peer, (link, 0));
    }

    /// Collects the engine's outputs into inboxes.
    pub(super) fn drain(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Send { to, frame } => {
                    for peer in &to {
                        self.deliver(*peer, frame.clone());
                    }
                    self.sends.push((to, frame));
                }
                Output::Close { peer, code, reason } => self.closed.push((peer, code, reason)),
                Output::SessionEnded { session_id } => self.ended.push(session_id),
                Output::RemoteSessionEnded { session_id, reason } => {
                    self.ended_elsewhere.push((session_id, reason));
                }
                Output::Presence(p) => self.node_presence.push(p),
                Output::RoomInterest { room_id, live } => self.interest.push((room_id, live)),
            }
        }
        self.land();
    }

    fn deliver(&mut self, peer: PeerId, frame: OutgoingFrame) {
        let Some((link, count)) = self.links.get_mut(&peer) else {
            self.inboxes.entry(peer).or_default().push(frame);
            return;
        };
        *count += 1;
        if link.drop_every != 0 && *count % link.drop_every == 0 {
            return;
        }
        let arrives = self.now.saturating_add(link.latency);
        self.in_flight
            .entry(peer)
            .or_default()
            .push(InFlight { arrives, frame });
    }

    /// Moves frames whose link delay has passed into the inboxes.
    fn land(&mut self) {
        let now = self.now;
        for (peer, flights) in &mut self.in_flight {
            let (arrived, rest): (Vec<_>, Vec<_>) =
                flights.drain(..).partition(|f| f.arrives <= now);
            *flights = rest;
            self.inboxes
                .entry(*peer)
                .or_default()
                .extend(arrived.into_iter().map(|f| f.frame));
        }
    }

    /// Moves the clock forward by `d`, firing each deadline at its time.
    pub(super) fn advance(&mut self, d: Duration) {
        let target = self.now.saturating_add(d);
        while let Some(at) = self.engine.poll_timeout() {
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            self.engine.handle_timeout(self.now);
            self.drain();
        }
        self.now = target;
        self.land();
    }

    /// Takes everything `peer` received so far.
    pub(super) fn take(&mut self, peer: PeerId) -> Vec<OutgoingFrame> {
        self.inboxes.remove(&peer).unwrap_or_default()
    }

    /// Takes the events `peer` received so far.
    pub(super) fn events(&mut self, peer: PeerId) -> Vec<ServerEvent> {
        self.take(peer).into_iter().map(|f| f.event).collect()
    }

    /// Takes the message seqs `peer` received, ignoring other events.
    pub(super) fn seqs(&mut self, peer: PeerId) -> Vec<u64> {
        self.events(peer)
            .into_iter()
            .filter_map(|e| match e {
                ServerEvent::MessageCreated { message } => Some(message.seq),
                _ => None,
            })
            .collect()
    }

    /// Empties every inbox.
    pub(super) fn clear(&mut self) {
        self.inboxes.clear();
        self.sends.clear();
    }
}
