//! What other nodes of a deployment tell this engine, and what this engine
//! tells them (see [`crate::cluster`]).
//!
//! A node's engine knows only its own connections. Messages stored by
//! another node come in through [`Engine::message_created`] like local ones
//! (without an origin), and the room's order deduplicates them by `seq`
//! (see `fanout`). Typing and presence of users connected elsewhere come in
//! here: they reach this node's connections, and the user's presence as
//! this node shows it is the local one, or else the one other nodes report.
//! Local presence changes leave as [`Output::Presence`] for the driver to
//! publish.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::protocol::{
    P2pInfo, P2pSession, PeerId, Presence, RelayGrant, RelayParty, RoomId, RtcKind, RtcSignal,
    ServerEvent, SessionId, SessionKind, Timestamp, UserId,
};

use super::{Engine, Output};

/// A user's presence on one node, as nodes tell each other.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodePresence {
    pub user_id: UserId,
    /// `Offline`: no connection on that node (or invisible).
    pub status: Presence,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The rooms the user's connections there are subscribed to: who
    /// should hear about it.
    pub rooms: Vec<RoomId>,
    /// The user's connections there (for signals addressed to a peer).
    #[serde(default)]
    pub peers: Vec<PeerId>,
    /// What the user's agents there announced for P2P sessions, by peer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub p2p: BTreeMap<PeerId, P2pInfo>,
}

impl Engine {
    /// A user connected to other nodes changed presence there (`None`: no
    /// longer online on any other node). `rooms`: where to tell it, the
    /// rooms the user was and is in. Told to this node's connections in
    /// those rooms unless the user is connected here too (then their local
    /// presence stands).
    pub fn remote_presence(
        &mut self,
        _now: Timestamp,
        user: UserId,
        presence: Option<(Presence, Option<String>)>,
        rooms: &[RoomId],
    ) {
        let (status, message) = presence.clone().unwrap_or((Presence::Offline, None));
        let old = match presence {
            Some(now_there) => self.remote.insert(user, now_there),
            None => self.remote.remove(&user),
        };
        let old = old.unwrap_or((Presence::Offline, None));
        if old == (status, message.clone()) || self.users.contains_key(&user) {
            // Nothing new, or connected here too: the local presence stands.
            return;
        }
        if status == Presence::Offline {
            for room in rooms {
                self.end_typing(*room, user);
            }
        }
        let mut to = std::collections::BTreeSet::new();
        for room in rooms {
            if let Some(r) = self.rooms.get(room) {
                to.extend(r.subscribers.iter().copied());
            }
        }
        self.broadcast(
            to.into_iter().collect(),
            ServerEvent::PresenceUpdate {
                user_id: user,
                status,
                message,
            },
        );
    }

    /// `chat.typing` of a user connected to another node: relayed to this
    /// node's other users in the room; a `true` ends by itself after
    /// [`EngineConfig::typing_ttl`](super::EngineConfig::typing_ttl), as a
    /// local one does.
    pub fn remote_typing(&mut self, now: Timestamp, room: RoomId, user: UserId, typing: bool) {
        if self.rooms.contains_key(&room) {
            self.set_typing(now, room, user, typing);
        }
    }

    /// An `rtc.*` signal from a peer on another node (`from_peer_id` and
    /// `from_user_id` filled in there, the sender's room checked there):
    /// delivered if its target is connected here and in the room.
    pub fn remote_rtc(&mut self, kind: RtcKind, signal: RtcSignal) {
        let target = signal.target_peer_id;
        if self.is_subscribed(target, signal.room_id) {
            self.broadcast(vec![target], kind.event(signal));
        }
    }

    /// Checks an `rtc.*` signal from `from`, connected here, to a peer that
    /// is not: the sender must be in the room. The signal with its sender
    /// filled in, for another node to deliver.
    pub fn rtc_to_elsewhere(
        &mut self,
        now: Timestamp,
        from: PeerId,
        mut signal: RtcSignal,
    ) -> Result<RtcSignal, Error> {
        let Some(sender) = self.user_of(from) else {
            return Err(Error::NotFound("sending peer is not connected".into()));
        };
        self.touch(now, from);
        if !self.is_subscribed(from, signal.room_id) {
            return Err(Error::Forbidden(
                "signaling is only allowed between peers in the same room".into(),
            ));
        }
        signal.from_peer_id = Some(from);
        signal.from_user_id = Some(sender);
        Ok(signal)
    }

    /// Checks a P2P session request from `initiator`, connected here, to
    /// `target`, a peer of `target_user` connected to another node (the
    /// driver checked there that it is in the room), and builds the session
    /// as [`Engine::prepare_session`] does.
    pub fn prepare_session_elsewhere(
        &self,
        now: Timestamp,
        id: SessionId,
        initiator: PeerId,
        room: RoomId,
        (target, target_user): (PeerId, UserId),
        kind: SessionKind,
    ) -> Result<P2pSession, Error> {
        let initiator_user = self.check_initiator(initiator, room, target)?;
        Ok(self.new_session(
            now,
            id,
            (initiator, initiator_user),
            room,
            (target, target_user),
            kind,
        ))
    }

    /// Records a session prepared by [`Engine::prepare_session_elsewhere`]
    /// and announces it to the initiator (`target_info`: what the target
    /// announced there). The driver then tells the target's node, which
    /// calls [`Engine::remote_session_opened`].
    pub fn open_session_elsewhere(
        &mut self,
        now: Timestamp,
        session: P2pSession,
        session_token: String,
        request_id: Option<String>,
        target_info: P2pInfo,
    ) {
        let target = session.target_peer_id;
        self.do_open_session(
            now,
            session,
            session_token,
            request_id,
            Some((target, target_info)),
            None,
        );
    }

    /// Another node opened a session whose target may be connected here:
    /// if it is, and in the room, the session is recorded and announced to
    /// it, with `target_relay`, the grant of the other node's relay (which
    /// relays the session). Whether the target is here.
    pub fn remote_session_opened(
        &mut self,
        now: Timestamp,
        session: P2pSession,
        session_token: String,
        initiator_info: P2pInfo,
        target_relay: Option<RelayGrant>,
    ) -> bool {
        let (target, initiator) = (session.target_peer_id, session.initiator_peer_id);
        if !self.is_subscribed(target, session.room_id) {
            return false;
        }
        self.do_open_session(
            now,
            session,
            session_token,
            None,
            Some((initiator, initiator_info)),
            Some(target_relay),
        );
        true
    }

    /// The relay grant for the target of a session opened here whose
    /// target is connected to another node (for that node to hand on):
    /// this node relays the session, so only with its relay's address
    /// ([`EngineConfig::relay_addr`](super::EngineConfig::relay_addr)).
    pub fn relay_grant_elsewhere(&self, id: SessionId) -> Option<RelayGrant> {
        self.relay_grant(id, RelayParty::Target, true)
    }

    /// The node of a session's other party ended it (or that party is
    /// gone): `p2p.session.closed` to the party here.
    pub fn remote_session_closed(&mut self, now: Timestamp, id: SessionId, reason: &str) {
        if self.elsewhere.remove(&id).is_some() {
            self.end_session(now, id, reason);
        }
    }

    /// The live sessions whose other party is connected to another node,
    /// with that party's peer (to end those whose peer is gone).
    pub fn sessions_elsewhere(&self) -> Vec<(SessionId, PeerId)> {
        self.elsewhere
            .iter()
            .map(|(id, peer)| (*id, *peer))
            .collect()
    }

    /// This node is part of a cluster from now on: presence changes come
    /// out as [`Output::Presence`] for the other nodes (a lone node builds
    /// none).
    pub fn join_cluster(&mut self) {
        self.clustered = true;
    }

    /// Every user connected here, with their presence and rooms: what a
    /// node's heartbeat carries.
    pub fn local_presence(&self) -> Vec<NodePresence> {
        self.users
            .keys()
            .map(|user| self.node_presence(*user))
            .collect()
    }

    /// The rooms with connections here and the newest `seq` delivered in
    /// each (`None` before the first): what a node compares with the store
    /// to find messages the bus lost.
    pub fn room_heads(&self) -> Vec<(RoomId, Option<u64>)> {
        self.rooms
            .iter()
            .filter(|(_, r)| !r.subscribers.is_empty())
            .map(|(id, r)| (*id, r.order.last))
            .collect()
    }

    /// The newest `seq` delivered in the room (`None` before the first, or
    /// when no connection here is in it).
    pub fn room_head(&self, room: RoomId) -> Option<u64> {
        self.rooms.get(&room).and_then(|r| r.order.last)
    }

    /// The store says `room` has messages up to `last`, and none was
    /// delivered here yet: `last` becomes the room's baseline (the ones
    /// just before it still count as to come), so that a later gap is seen.
    pub fn observe_room_head(&mut self, room: RoomId, last: u64) {
        if let Some(r) = self.rooms.get_mut(&room)
            && r.order.last.is_none()
        {
            r.order.last = Some(last);
            r.order.skipped = super::fanout::baseline_slack(last);
        }
    }

    /// The user's presence on this node.
    pub(super) fn node_presence(&self, user: UserId) -> NodePresence {
        let Some(state) = self.users.get(&user) else {
            return NodePresence {
                user_id: user,
                status: Presence::Offline,
                message: None,
                rooms: Vec::new(),
                peers: Vec::new(),
                p2p: BTreeMap::new(),
            };
        };
        let mut rooms = std::collections::BTreeSet::new();
        for peer in &state.peers {
            if let Some(p) = self.peers.get(peer) {
                rooms.extend(p.rooms.iter().copied());
            }
        }
        NodePresence {
            user_id: user,
            status: state.visible(),
            message: state.message.clone(),
            rooms: rooms.into_iter().collect(),
            peers: state.peers.iter().copied().collect(),
            p2p: state
                .peers
                .iter()
                .filter_map(|peer| {
                    let info = self.peers.get(peer)?.info.p2p.clone()?;
                    Some((*peer, info))
                })
                .collect(),
        }
    }

    /// Tells the driver the user's presence here changed (for other nodes).
    pub(super) fn presence_changed(&mut self, user: UserId) {
        if !self.clustered {
            // A lone node: nobody to tell, nothing to build per connection.
            return;
        }
        let presence = self.node_presence(user);
        self.outputs.push_back(Output::Presence(presence));
    }

    /// Whether other nodes report the user online.
    pub(super) fn online_elsewhere(&self, user: UserId) -> bool {
        self.remote
            .get(&user)
            .is_some_and(|(s, _)| *s != Presence::Offline)
    }

    /// The user's presence as other nodes report it.
    pub(super) fn remote_presence_of(&self, user: UserId) -> Presence {
        self.remote
            .get(&user)
            .map_or(Presence::Offline, |(s, _)| *s)
    }
}
