//! Sessions across networks, the parts agents and the server share: the
//! relay's frames ([`wire`]), the per-party relay keys ([`grant`]), STUN
//! Binding for address discovery ([`stun`]) and the server's sans-IO relay
//! ([`server`]).
//!
//! One UDP port on the server answers STUN Binding requests (the agent's
//! address as the server saw it: its server-reflexive candidate) and
//! forwards the agents' QUIC datagrams between the two parties of a session
//! when no direct path works. The same relay frames also travel as binary
//! WebSocket messages on `GET /api/p2p/relay`, for agents whose UDP to the
//! server is blocked. The relay never sees plaintext: the agents' pinned TLS
//! 1.3 runs end to end inside the forwarded datagrams. The wire layout is in
//! `docs/p2p.md` ("Across networks").

pub mod grant;
// STUN and the relay itself are for the server and for agents; a chat
// client (the wasm binding) needs only the frames and grants.
#[cfg(any(feature = "server", feature = "p2p"))]
pub mod server;
#[cfg(any(feature = "server", feature = "p2p"))]
pub mod stun;
pub mod wire;

pub use wire::{RefuseCode, RelayFrame};

use crate::protocol::UserId;

/// What one node's relay relayed for a user, as the nodes of a cluster
/// tell each other every second so that per-user budgets hold across
/// them (see [`server::Relay::take_usage`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayUsage {
    pub user_id: UserId,
    /// Relayed sessions the user is a party of there now.
    pub sessions: usize,
    /// Bytes relayed there for the user since the last report.
    pub bytes: u64,
}
