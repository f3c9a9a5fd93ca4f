//! The names most embedders need, in one `use mesh_core::prelude::*;`.
//!
//! A server in a program of its own: [`Service`] over a [`Store`]
//! ([`MemoryStore`], or [`SledStore`] with the `sled` feature), connections
//! through [`Connection`], requests as the [`protocol::http`](crate::protocol::http)
//! bodies. A client: [`Client`] and its [`Event`]s (feature `native-client`).
//! P2P agents: [`P2pEndpoint`] (feature `p2p`). Everything else stays in
//! its module.
//!
//! ```
//! use mesh_core::prelude::*;
//!
//! # #[tokio::main] async fn main() -> Result<(), Error> {
//! let service = Service::builder().store(MemoryStore::new()).build()?;
//! let ada = service
//!     .register(RegisterRequest {
//!         username: "ada".into(),
//!         password: "correct horse battery".into(),
//!         ..Default::default()
//!     })
//!     .await?;
//! assert_eq!(ada.user.username, "ada");
//! # Ok(()) }
//! ```

#[cfg(feature = "server")]
pub use crate::auth::{Authenticator, Identity, KeyRing};
pub use crate::error::{Error, ErrorCode, Failure};
pub use crate::protocol::http::{
    CreateRoomRequest, HistoryPage, HistoryQuery, LoginRequest, RegisterRequest,
};
pub use crate::protocol::{
    ClientRequest, DeviceId, Hello, IncomingFrame, Message, MessageId, OutgoingFrame, PeerId,
    Presence, Role, Room, RoomId, ServerEvent, SessionId, SessionKind, Timestamp, User, UserId,
    Visibility,
};
#[cfg(feature = "server")]
pub use crate::storage::Store;
#[cfg(feature = "server")]
pub use crate::storage::memory::MemoryStore;
#[cfg(feature = "sled")]
pub use crate::storage::sled::SledStore;
#[cfg(feature = "server")]
pub use crate::transport::{
    CloseCode, Connection, Delivery, EncodedFrame, Inbox, SendError, in_process,
};

#[cfg(feature = "native-client")]
pub use crate::client::{Client, ClientError, Event, HttpApi};
#[cfg(feature = "p2p")]
pub use crate::p2p::{P2pEndpoint, PathKind};
#[cfg(feature = "server")]
pub use crate::service::{Service, ServiceConfig};
