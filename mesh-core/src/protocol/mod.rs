//! The mesh wire contract: every shape, frame and error code a client sees.
//!
//! This module is pure data. Names and shapes follow `PROTOCOL.md` (kept in
//! the repository under `docs/`); a client written against that document must
//! be able to use these types, and the other way round.

mod error_code;
mod frame;
pub mod http;
mod ids;
mod model;
mod time;

pub use error_code::ErrorCode;
pub use frame::{
    ClientRequest, ErrorPayload, Hello, IncomingFrame, MAX_REQUEST_ID_LEN, OutgoingFrame, RtcKind,
    RtcSignal, ServerEvent, UnknownRtcKind, parse_client_frame,
};
pub use http::Scope;
pub use ids::{DeviceId, MessageId, PeerId, RoomId, SessionId, UserId};
pub use model::{
    Member, Message, P2pInfo, P2pServerInfo, P2pSession, Presence, RelayGrant, RelayParty, Role,
    Room, SessionKind, SessionState, User, Visibility,
};
pub use time::Timestamp;
