//! Several mesh-server nodes, one deployment: what crosses between nodes.
//!
//! Each node owns its connections and runs its own [`Engine`]; the records
//! are in one shared store (PostgreSQL). Between the nodes runs a [`Bus`]:
//! publish/subscribe on subjects, NATS in production ([`nats::NatsBus`],
//! feature `nats`), [`LocalBus`] inside one process (tests, embedding).
//!
//! What travels ([`ClusterEvent`], JSON in an [`Envelope`] naming the
//! sending node):
//! - on `PREFIX.room.<room id>`: messages after they are committed, typing,
//!   members leaving and room changes, WebRTC signals and P2P sessions
//!   opened between peers on two nodes. A node listens to a room's subject
//!   only while it has connections in the room (interest, as Centrifugo's
//!   NATS broker does), so a message costs nothing on the nodes without;
//! - on `PREFIX.nodes`, which every node listens to: presence deltas and
//!   heartbeats (with what agents announced for P2P), new members (their
//!   connections on another node must be subscribed), device revocations,
//!   such sessions' ends, what each relay did for each user (per-user relay
//!   budgets), ACME answers, a node leaving.
//!
//! **Nothing is acknowledged on the bus's word.** A message is acknowledged
//! to its sender once the store has committed it; the bus only makes the
//! other nodes hear of it sooner. A node that misses one (NATS restarting,
//! a dropped publication) finds it by comparing, every
//! [`ClusterConfig::sweep_interval`], the newest `seq` it delivered in each
//! room with live connections against the store's, and fills the gap from
//! the store; a gap seen in the live stream is filled at once. The engine
//! delivers each `seq` of a room once, whichever copy comes first.
//!
//! **Presence** is Phoenix Tracker style: each node publishes its users'
//! presence when it changes and all of it every
//! [`ClusterConfig::heartbeat`]; a node not heard from for
//! [`ClusterConfig::node_timeout`] is gone, and its users with it (unless
//! connected to another node too). Why not a NATS key-value bucket with
//! TTLs: per-key TTLs need nats-server 2.11, and a bucket's TTL would expire
//! each user's key separately, so a node's death would come out as many
//! small timeouts instead of one. Heartbeats need nothing but core NATS.
//!
//! [`Engine`]: crate::engine::Engine

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::NodePresence;
use crate::protocol::{
    DeviceId, Message, P2pInfo, P2pSession, RelayGrant, Role, Room, RoomId, RtcKind, RtcSignal,
    SessionId, User, UserId,
};
use crate::relay::RelayUsage;

pub mod bus;
pub(crate) mod directory;
#[cfg(feature = "nats")]
pub mod nats;

pub use bus::{Bus, BusError, BusMessage, LocalBus};

/// The name of a node, unique within a deployment (`--node-id`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    /// 1 to 64 characters of `A-Z a-z 0-9 - _ .`.
    pub fn new(name: &str) -> Result<Self, crate::error::Error> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(crate::error::Error::InvalidRequest(format!(
                "a node id is 1 to 64 characters of A-Z a-z 0-9 - _ . (got {name:?})"
            )));
        }
        Ok(Self(name.to_owned()))
    }

    /// A fresh random id (`node-` and 8 hex digits).
    pub fn random() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self(format!("node-{}", &id[..8]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a node takes part in a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    /// Subjects start with it (default `mesh`): deployments sharing one
    /// NATS keep apart by prefix.
    pub subject_prefix: String,
    /// How often a node publishes all of its presence (default 5 s).
    pub heartbeat: Duration,
    /// A node not heard from for this long is gone (default 15 s): its
    /// users go offline everywhere within this plus one
    /// [`ClusterConfig::sweep_interval`].
    pub node_timeout: Duration,
    /// How often a node checks the store for messages the bus did not
    /// bring (default 1 s): the longest a message lost on the bus stays
    /// unseen by live clients, plus one store query.
    pub sweep_interval: Duration,
}

impl ClusterConfig {
    /// The defaults, for a node named `node_id`.
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            subject_prefix: "mesh".to_owned(),
            heartbeat: Duration::from_secs(5),
            node_timeout: Duration::from_secs(15),
            sweep_interval: Duration::from_secs(1),
        }
    }

    /// Every subject of this deployment.
    pub fn all_subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }

    /// What every node listens to: presence, sessions' ends, memberships.
    pub fn nodes_subject(&self) -> String {
        format!("{}.nodes", self.subject_prefix)
    }

    /// `room`'s events, which a node listens to while it has connections
    /// in the room.
    pub fn room_subject(&self, room: RoomId) -> String {
        format!("{}.room.{room}", self.subject_prefix)
    }

    /// The subject `event` is published on. A new member goes to every
    /// node: its connections elsewhere are not in the room yet, so their
    /// node may not listen to it.
    pub fn subject_of(&self, event: &ClusterEvent) -> String {
        match event {
            ClusterEvent::MemberJoined { .. } => self.nodes_subject(),
            _ => match event.room() {
                Some(room) => self.room_subject(room),
                None => self.nodes_subject(),
            },
        }
    }
}

/// What one node tells the others.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClusterEvent {
    /// A message was committed to the store.
    MessageCreated {
        message: Message,
    },
    /// `chat.typing` of a user connected to the sending node.
    Typing {
        room_id: RoomId,
        user_id: UserId,
        typing: bool,
    },
    /// A user became a member of a room (joined, invited, created it).
    MemberJoined {
        room_id: RoomId,
        user: User,
    },
    /// A user left or was removed from a room.
    MemberLeft {
        room_id: RoomId,
        user_id: UserId,
    },
    RoomUpdated {
        room: Room,
    },
    RoomDeleted {
        room_id: RoomId,
    },
    RoleChanged {
        room_id: RoomId,
        user_id: UserId,
        role: Role,
    },
    /// A WebRTC signal for a peer connected to another node.
    Rtc {
        kind: RtcKind,
        signal: RtcSignal,
    },
    /// A P2P session from a peer connected to the sending node to a peer
    /// connected to another: that node announces it to its peer.
    SessionOpened {
        session: P2pSession,
        session_token: String,
        /// What the initiator announced.
        initiator: P2pInfo,
        /// The target's grant for the sending node's relay, which relays
        /// the session (none when that relay's address is not configured).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_relay: Option<RelayGrant>,
    },
    /// A session with a party on another node ended on the sending node
    /// (closed, expired, its party there left).
    SessionClosed {
        session_id: SessionId,
        reason: String,
    },
    /// What the sending node's relay did for each user in the last second
    /// (per-user relay budgets hold across nodes).
    RelayUsage {
        users: Vec<RelayUsage>,
    },
    /// An ACME HTTP-01 challenge answer of the node ordering a certificate
    /// for the names the nodes share (`None`: the order is over, the
    /// certificate is in the shared cache): every node answers it, whichever
    /// one the certificate authority's check reaches.
    AcmeChallenge {
        token: String,
        key_authorization: Option<String>,
    },
    /// The sending node serves the answer of an [`ClusterEvent::AcmeChallenge`]
    /// now: the ordering node waits for every node's before it asks the
    /// certificate authority to check.
    AcmeChallengeHeld {
        token: String,
    },
    /// A device was revoked: its connections close on every node.
    DeviceRevoked {
        device_id: DeviceId,
    },
    /// A user's presence on the sending node changed.
    Presence {
        presence: NodePresence,
    },
    /// All of the sending node's presence, every heartbeat.
    Heartbeat {
        users: Vec<NodePresence>,
    },
    /// The sending node is shutting down: its users are gone from it now.
    NodeLeft,
}

impl ClusterEvent {
    /// The room the event is about, if it is about one.
    pub fn room(&self) -> Option<RoomId> {
        match self {
            ClusterEvent::MessageCreated { message } => Some(message.room_id),
            ClusterEvent::Typing { room_id, .. }
            | ClusterEvent::MemberJoined { room_id, .. }
            | ClusterEvent::MemberLeft { room_id, .. }
            | ClusterEvent::RoomDeleted { room_id }
            | ClusterEvent::RoleChanged { room_id, .. } => Some(*room_id),
            ClusterEvent::RoomUpdated { room } => Some(room.id),
            ClusterEvent::Rtc { signal, .. } => Some(signal.room_id),
            ClusterEvent::SessionOpened { session, .. } => Some(session.room_id),
            ClusterEvent::DeviceRevoked { .. }
            | ClusterEvent::SessionClosed { .. }
            | ClusterEvent::RelayUsage { .. }
            | ClusterEvent::AcmeChallenge { .. }
            | ClusterEvent::AcmeChallengeHeld { .. }
            | ClusterEvent::Presence { .. }
            | ClusterEvent::Heartbeat { .. }
            | ClusterEvent::NodeLeft => None,
        }
    }
}

/// An event and the node it comes from, as it travels on the bus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub node: NodeId,
    pub event: ClusterEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked() {
        assert!(NodeId::new("node-1.eu_west").is_ok());
        for bad in ["", "a b", "a*", "a>b", &"x".repeat(65)] {
            assert!(NodeId::new(bad).is_err(), "{bad:?}");
        }
        assert!(NodeId::new(NodeId::random().as_str()).is_ok());
    }

    #[test]
    fn room_events_go_to_the_room_subject() {
        let config = ClusterConfig::new(NodeId::random());
        let room = RoomId::new();
        let event = ClusterEvent::RoomDeleted { room_id: room };
        assert_eq!(config.subject_of(&event), format!("mesh.room.{room}"));
        assert_eq!(config.subject_of(&ClusterEvent::NodeLeft), "mesh.nodes");
        let envelope = Envelope {
            node: config.node_id.clone(),
            event,
        };
        let json = serde_json::to_string(&envelope).expect("encode");
        let back: Envelope = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, envelope);
    }
}
