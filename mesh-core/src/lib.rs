//! mesh-core: the library behind every mesh server and client.
//!
//! The crate is layered so that each piece can be replaced or driven on its own:
//!
//! - [`protocol`]: the wire contract (shapes, frames, error codes) shared by
//!   servers and clients. Pure data, no I/O.
//! - [`storage`]: the [`storage::Store`] trait with the in-memory and sled
//!   backends, and the conformance suite every backend passes.
//! - [`auth`]: password hashing (argon2id), signed tokens (EdDSA / Ed25519),
//!   the published key set, capability and P2P session tokens, behind the
//!   [`auth::Authenticator`] trait so an embedding app can bring its own.
//! - [`engine`]: the sans-IO engine. It owns rooms' subscriptions, presence,
//!   typing, signaling and P2P session orchestration, takes inputs and the
//!   current time, and returns what to send to whom. No sockets, no clock.
//! - [`transport`]: what the engine's output is delivered through: a
//!   connection receives frames and can be closed.
//! - [`service`]: the async layer that ties storage, auth and the engine
//!   together. The reference server (`mesh-server`) is a thin HTTP/WebSocket
//!   shell around it, and so is any app that embeds mesh.
//! - [`client`] (features `client` and `native-client`): the client SDK, a
//!   sans-IO state machine (reconnects, resume, dedupe, offline queue) and
//!   a tokio + reqwest driver around it.
//! - `p2p` (feature `p2p`): direct agent-to-agent sessions over QUIC with
//!   pinned TLS 1.3: files, folders and terminals, authorised by session
//!   tokens checked offline. For agents, not the server.
//! - [`relay`]: sessions across networks, what agents and the server share:
//!   the relay's frames and keys, STUN Binding, the server's sans-IO relay.
//! - [`validate`]: the limits every server honours (usernames, passwords,
//!   room names, message content).
//! - [`prelude`]: the names most embedders need, in one `use`.

pub mod auth;
mod bounded_map;
#[cfg(feature = "client")]
pub mod client;
pub mod engine;
pub mod error;
#[cfg(feature = "p2p")]
pub mod p2p;
pub mod prelude;
pub mod protocol;
pub mod relay;
#[cfg(feature = "server")]
pub mod service;
pub mod storage;
pub mod transport;
pub mod validate;

pub use error::{Error, ErrorCode};
