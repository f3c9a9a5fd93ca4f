//! mesh-core: the library behind every mesh server and client.
//!
//! The crate is layered so that each piece can be replaced or driven on its own:
//!
//! - [`protocol`]: the wire contract (shapes, frames, error codes) shared by
//!   servers and clients. Pure data, no I/O.
//! - `storage` (feature `server`): the `storage::Store` trait with the in-memory and sled
//!   backends, and the conformance suite every backend passes.
//! - `auth` (features `server`, and `p2p` for verifying only): password
//!   hashing (argon2id), signed tokens (EdDSA / Ed25519), the published key
//!   set, capability and P2P session tokens, behind the `Authenticator`
//!   trait so an embedding app can bring its own.
//! - `engine` (feature `server`): the sans-IO engine. It owns rooms' subscriptions, presence,
//!   typing, signaling and P2P session orchestration, takes inputs and the
//!   current time, and returns what to send to whom. No sockets, no clock.
//! - `transport` (feature `server`): what the engine's output is delivered through: a
//!   connection receives frames and can be closed.
//! - `service` (feature `server`): the async layer that ties storage, auth and the engine
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
//!
//! # Features: what a client compiles
//!
//! `protocol`, `relay`'s frames, `validate` and `error` always build. The
//! server's half (`engine`, `storage`, `auth`'s hashing and signing,
//! `transport`, `service`) is feature `server`; the client SDK is `client`
//! (sans-IO, wasm too) and `native-client`; agents are `p2p`, which verifies
//! session tokens offline (jsonwebtoken) but signs nothing. So a chat client,
//! native or wasm, compiles none of argon2, jsonwebtoken, ed25519-dalek or
//! sled; `scripts/test.sh` checks every client feature set alone.
//!
//! This is one crate with strict features rather than a leaf crate of
//! shared types beside it (as `iroh-base` beside `iroh`): the shared part
//! (`protocol`) already imports nothing of the rest, so a second crate
//! would add a version to keep in step without removing a dependency from
//! any build, and embedders keep a single dependency to name.

// Agents verify P2P session tokens; only a server signs them.
#[cfg(any(feature = "server", feature = "p2p"))]
pub mod auth;
#[cfg(feature = "server")]
mod bounded_map;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod engine;
pub mod error;
#[cfg(feature = "p2p")]
pub mod p2p;
pub mod prelude;
pub mod protocol;
pub mod relay;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod storage;
#[cfg(feature = "server")]
pub mod transport;
pub mod validate;

pub use error::{Error, ErrorCode, Failure};
