//! The shapes of the contract: users, rooms, members, messages, P2P sessions.

use serde::{Deserialize, Serialize};

use super::{MessageId, PeerId, RoomId, SessionId, Timestamp, UserId};

/// A person with an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    /// Lower case, 3 to 32 characters of `a-z 0-9 _ . -`.
    pub username: String,
    pub display_name: String,
    pub created_at: Timestamp,
}

/// Who may see and join a room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Listed for everyone; anyone may join.
    #[default]
    Public,
    /// Seen and joined only by members and those they invite.
    Private,
}

impl Visibility {
    /// `Private` when `private`, else `Public`: for the `--private` flags
    /// and `private: bool` arguments of the CLI and the bindings.
    pub fn private_if(private: bool) -> Self {
        if private {
            Visibility::Private
        } else {
            Visibility::Public
        }
    }
}

/// A chat room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    pub id: RoomId,
    pub name: String,
    pub topic: Option<String>,
    pub visibility: Visibility,
    pub created_by: UserId,
    pub created_at: Timestamp,
    pub member_count: u64,
}

/// A member's power in a room. Ordered: `Member < Admin < Owner`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

/// Whether a user is around. Aggregated over all of the user's devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Online,
    Away,
    Busy,
    #[default]
    Offline,
}

/// One member of a room, as `GET /api/rooms/{id}/members` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user: User,
    pub role: Role,
    pub joined_at: Timestamp,
    pub presence: Presence,
}

/// A chat message. `seq` grows by one per room with no gaps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    pub room_id: RoomId,
    pub seq: u64,
    /// The sender as they were when the message was sent.
    pub sender: User,
    pub content: String,
    pub created_at: Timestamp,
    /// The sender's idempotency key, if it gave one.
    pub client_id: Option<String>,
}

/// What a P2P session carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    File,
    Folder,
    Terminal,
}

impl SessionKind {
    /// The wire name (`file`, `folder`, `terminal`).
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::File => "file",
            SessionKind::Folder => "folder",
            SessionKind::Terminal => "terminal",
        }
    }
}

/// Where a P2P session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Authorised by the server; the agents may connect until `expires_at`.
    Pending,
    /// Ended by a party, by expiry, or because a peer went away.
    Closed,
}

/// A peer-to-peer session between two agents, authorised by the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct P2pSession {
    pub id: SessionId,
    pub room_id: RoomId,
    pub kind: SessionKind,
    pub initiator_peer_id: PeerId,
    pub target_peer_id: PeerId,
    pub initiator_user_id: UserId,
    pub target_user_id: UserId,
    pub state: SessionState,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// What an agent announces about itself for direct connections (in
/// `system.hello`'s `p2p`), handed to the other party in `p2p.session.created`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct P2pInfo {
    /// SHA-256 fingerprint of the agent's self-signed certificate, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_fingerprint: Option<String>,
    /// Candidate `host:port` addresses the agent listens on.
    #[serde(default)]
    pub addrs: Vec<String>,
}

/// Extension (`system.welcome`'s `p2p`): what the server offers agents for
/// sessions across networks (see `docs/p2p.md`, "Across networks").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct P2pServerInfo {
    /// The server's UDP port (on the host of its URL) for address discovery
    /// (STUN Binding) and the UDP relay; absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_port: Option<u16>,
    /// Whether the server relays sessions (`p2p.session.created` then
    /// carries a [`RelayGrant`]).
    #[serde(default)]
    pub relay: bool,
}

/// Which side of a session a relay binding speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayParty {
    Initiator,
    Target,
}

impl RelayParty {
    /// The wire byte (`docs/p2p.md`, relay frames).
    pub fn to_byte(self) -> u8 {
        match self {
            RelayParty::Initiator => 0,
            RelayParty::Target => 1,
        }
    }

    /// The party a wire byte stands for.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(RelayParty::Initiator),
            1 => Some(RelayParty::Target),
            _ => None,
        }
    }

    /// The other side.
    pub fn other(self) -> Self {
        match self {
            RelayParty::Initiator => RelayParty::Target,
            RelayParty::Target => RelayParty::Initiator,
        }
    }
}

/// Extension (`p2p.session.created`'s `relay`): this recipient's right to
/// use the server's relay for the session. Each party gets its own `key`
/// (HMAC-SHA256 of the session and party under a server secret, hex), so
/// the session token alone does not let a third party bind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayGrant {
    pub party: RelayParty,
    pub key: String,
    /// Extension: the relay to bind at (`IP:port` of its UDP port) when it
    /// is not the one of the server the agent is connected to: in a
    /// cluster, the node that granted the session relays it. Absent: the
    /// server's own (`system.welcome`'s `p2p.udp_port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn enums_use_the_contract_names() {
        assert_eq!(json!(Visibility::Private), json!("private"));
        assert_eq!(json!(Role::Owner), json!("owner"));
        assert_eq!(json!(Presence::Busy), json!("busy"));
        assert_eq!(json!(SessionKind::Terminal), json!("terminal"));
        assert!(Role::Owner > Role::Admin && Role::Admin > Role::Member);
    }

    #[test]
    fn room_has_every_contract_field() {
        let room = Room {
            id: RoomId::new(),
            name: "general".into(),
            topic: None,
            visibility: Visibility::Public,
            created_by: UserId::new(),
            created_at: Timestamp::from_unix_millis(0),
            member_count: 1,
        };
        let v = json!(room);
        for key in [
            "id",
            "name",
            "topic",
            "visibility",
            "created_by",
            "created_at",
            "member_count",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
    }
}
