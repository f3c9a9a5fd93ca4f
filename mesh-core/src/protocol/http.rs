//! Bodies of the HTTP API: what clients send and what servers answer.
//!
//! The server deserializes requests into these types and the client SDK
//! serializes them, so both sides share one definition.

use serde::{Deserialize, Serialize};

use super::ErrorCode;
use super::{Member, Message, P2pSession, PeerId, Role, Room, RoomId, SessionKind, User, UserId};
use super::{Timestamp, Visibility};

/// What a capability token allows (`scope` of `POST /api/auth/token`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// List and read rooms and their members.
    #[serde(rename = "rooms:read")]
    RoomsRead,
    /// Read message history.
    #[serde(rename = "messages:read")]
    MessagesRead,
    /// Connect over WebSocket and send messages.
    #[serde(rename = "messages:write")]
    MessagesWrite,
    /// Request and list P2P sessions.
    #[serde(rename = "p2p")]
    P2p,
}

impl Scope {
    /// The wire name (`rooms:read`, `messages:read`, `messages:write`, `p2p`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::RoomsRead => "rooms:read",
            Scope::MessagesRead => "messages:read",
            Scope::MessagesWrite => "messages:write",
            Scope::P2p => "p2p",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /api/auth/register`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub username: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Extension: names the device the registration logs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
}

/// `POST /api/auth/login`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
}

/// The answer to register and login: `{"user", "token"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthResponse {
    pub user: User,
    pub token: String,
    /// Extension: when `token` expires.
    pub expires_at: Timestamp,
    /// Extension: the device this login made (to revoke it later).
    pub device_id: super::DeviceId,
}

/// `POST /api/auth/capability`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityRequest {
    pub scope: Vec<Scope>,
    /// Lifetime in seconds; default 300, at most 900.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// The answer to `POST /api/auth/capability`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityResponse {
    pub capability_token: String,
    pub expires_at: Timestamp,
}

/// A device as `GET /api/auth/devices` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: super::DeviceId,
    pub name: String,
    pub created_at: Timestamp,
    pub revoked: bool,
    /// Whether this is the device making the request.
    pub current: bool,
}

/// `POST /api/rooms`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRoomRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
}

/// `PATCH /api/rooms/{id}`: fields left out stay as they are; a `topic` of
/// `null` or `""` clears it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRoomRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub topic: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
}

/// `POST /api/rooms/{id}/members`: invite by id or by username.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// `PATCH /api/rooms/{id}/members/{user_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRequest {
    pub role: Role,
}

/// `{"room"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomResponse {
    pub room: Room,
}

/// `{"rooms"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsResponse {
    pub rooms: Vec<Room>,
}

/// `{"members"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersResponse {
    pub members: Vec<Member>,
}

/// `{"member"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberResponse {
    pub member: Member,
}

/// `{"messages", "has_more"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagesResponse {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// A connected peer in a room, as `GET /api/rooms/{id}/peers` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub peer_id: PeerId,
    pub user: User,
    /// What the peer announced for direct connections, if it is an agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p2p: Option<super::P2pInfo>,
}

/// `{"peers"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersResponse {
    pub peers: Vec<Peer>,
}

/// `{"user"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserResponse {
    pub user: User,
}

/// `POST /api/p2p/session`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct P2pSessionRequest {
    pub room_id: RoomId,
    pub target_peer_id: PeerId,
    pub kind: SessionKind,
    /// Extension: which of the caller's connected peers initiates; by
    /// default the one on the caller's device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator_peer_id: Option<PeerId>,
}

/// The answer to `POST /api/p2p/session`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct P2pSessionResponse {
    pub session: P2pSession,
    pub session_token: String,
}

/// `{"sessions"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct P2pSessionsResponse {
    pub sessions: Vec<P2pSession>,
}

/// The body of every HTTP error: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

/// The inside of [`ErrorResponse`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// Tells a missing field (`None`) from an explicit `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// Which page of a room's history to read: the query of
/// `GET /api/rooms/{id}/messages`, what the service answers it with, and
/// (its [`HistoryPage`]) what the store is asked. Pages are in ascending
/// `seq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Where the page sits.
    pub page: HistoryPage,
    /// At most this many messages (the server caps it at 100, default 50).
    pub limit: Option<u32>,
}

/// Where a [`HistoryQuery`] page sits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HistoryPage {
    /// The newest messages; `has_more` tells whether older ones exist.
    #[default]
    Latest,
    /// The page just older than this `seq`.
    Before(u64),
    /// The page just newer than this `seq`; `has_more` tells whether newer
    /// ones exist.
    After(u64),
}

impl HistoryPage {
    /// The page the `before` and `after` bounds of a request ask for; `None`
    /// when both are given (a page sits on one side of a `seq` only).
    pub fn from_bounds(before: Option<u64>, after: Option<u64>) -> Option<Self> {
        match (before, after) {
            (None, None) => Some(HistoryPage::Latest),
            (Some(seq), None) => Some(HistoryPage::Before(seq)),
            (None, Some(seq)) => Some(HistoryPage::After(seq)),
            (Some(_), Some(_)) => None,
        }
    }
}

impl HistoryQuery {
    /// The newest page.
    pub fn latest(limit: u32) -> Self {
        Self {
            page: HistoryPage::Latest,
            limit: Some(limit),
        }
    }

    /// The page just older than `seq`.
    pub fn before(seq: u64, limit: u32) -> Self {
        Self {
            page: HistoryPage::Before(seq),
            limit: Some(limit),
        }
    }

    /// The page just newer than `seq`.
    pub fn after(seq: u64, limit: u32) -> Self {
        Self {
            page: HistoryPage::After(seq),
            limit: Some(limit),
        }
    }

    /// The query string, without `?` (empty for the default page).
    ///
    /// ```
    /// use mesh_core::protocol::http::HistoryQuery;
    /// assert_eq!(HistoryQuery::before(40, 20).to_query(), "before=40&limit=20");
    /// assert_eq!(HistoryQuery::default().to_query(), "");
    /// ```
    pub fn to_query(&self) -> String {
        let mut parts = Vec::with_capacity(2);
        match self.page {
            HistoryPage::Latest => {}
            HistoryPage::Before(seq) => parts.push(format!("before={seq}")),
            HistoryPage::After(seq) => parts.push(format!("after={seq}")),
        }
        if let Some(limit) = self.limit {
            parts.push(format!("limit={limit}"));
        }
        parts.join("&")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_null_differs_from_absent() {
        let absent: UpdateRoomRequest = serde_json::from_str("{}").expect("parse");
        assert_eq!(absent.topic, None);
        let null: UpdateRoomRequest = serde_json::from_str(r#"{"topic":null}"#).expect("parse");
        assert_eq!(null.topic, Some(None));
        let set: UpdateRoomRequest = serde_json::from_str(r#"{"topic":"t"}"#).expect("parse");
        assert_eq!(set.topic, Some(Some("t".into())));
    }
}

/// One entry of [`IceServersResponse`], shaped like WebRTC's `RTCIceServer`
/// so a browser can pass it to `RTCPeerConnection` as it came.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN only: `<expiry unix seconds>:<user id>` (the TURN REST scheme).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN only: base64 of HMAC-SHA1(shared secret, `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Extension: `GET /api/rtc/ice-servers`, the ICE servers for calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServersResponse {
    pub ice_servers: Vec<IceServer>,
    /// When the TURN credentials stop working (a client fetches new ones
    /// for a call that starts later).
    pub expires_at: Timestamp,
}
