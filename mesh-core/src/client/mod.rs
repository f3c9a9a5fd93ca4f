//! The mesh client SDK: connect with a token, chat, presence, history and
//! P2P session requests, with reconnects that lose and duplicate nothing.
//!
//! Two layers, so that every platform drives the same logic:
//!
//! - [`ClientState`] (feature `client`) is **sans-IO**: it takes frames, the
//!   time and a random seed, and returns frames to write, [`Event`]s for the
//!   app and [`Completion`]s of requests. It owns no socket, reads no clock
//!   and needs no runtime, so the wasm binding drives it from a browser
//!   WebSocket and the tests drive it with a virtual clock. Reconnect
//!   backoff with jitter ([`Backoff`]), resume with `since`, dedupe by
//!   `(room, seq)`, the offline send queue and heartbeats all live there;
//!   see its [module docs](state) for the guarantees.
//! - [`Client`] (feature `native-client`) is the tokio driver around it: a
//!   tokio-tungstenite WebSocket, a task that feeds the state machine, async
//!   methods that wait for the server's answers, and [`HttpApi`] (reqwest)
//!   for the REST half of the contract (register, login, rooms, history,
//!   P2P sessions).
//!
//! ```no_run
//! # #[cfg(feature = "native-client")]
//! # async fn demo() -> Result<(), mesh_core::client::ClientError> {
//! use mesh_core::client::{Client, Event, HttpApi};
//! use mesh_core::protocol::http::LoginRequest;
//!
//! let server = "http://127.0.0.1:8000";
//! let auth = HttpApi::new(server)?
//!     .login(&LoginRequest {
//!         username: "alice".into(),
//!         password: "correct horse battery".into(),
//!         device_name: None,
//!     })
//!     .await?;
//! let client = Client::builder()
//!     .server(server)
//!     .token(auth.token)
//!     .device_name("laptop")
//!     .connect()
//!     .await?;
//! let mut events = client.events().expect("taken once");
//! while let Some(event) = events.next().await {
//!     if let Event::Message(m) = event {
//!         println!("#{} {}: {}", m.seq, m.sender.username, m.content);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! **TLS.** The native client speaks `https://` and `wss://` as well as
//! plain `http://`/`ws://`: reqwest and tokio-tungstenite share one rustls
//! configuration on the ring provider (the workspace's only one), trusting
//! the platform's roots or only a given CA ([`TlsConfig`]).

mod backoff;
mod error;
#[cfg(feature = "native-client")]
mod http;
#[cfg(feature = "native-client")]
mod native;
#[cfg(all(feature = "native-client", feature = "p2p"))]
mod relay;
pub mod state;
#[cfg(feature = "native-client")]
mod tls;

pub use backoff::{Backoff, BackoffConfig, Rng};
pub use error::ClientError;
#[cfg(feature = "native-client")]
pub use http::HttpApi;
#[cfg(feature = "native-client")]
pub use native::{Client, ClientBuilder, EventStream};
pub use state::{
    ClientConfig, ClientState, Completion, ConnectionStatus, Event, P2pSessionGrant, Reply,
    RequestId, SendRate,
};
#[cfg(feature = "native-client")]
pub use tls::TlsConfig;

// One way to ask for a page of history, from the app to the store: the
// query is wire vocabulary and lives in `protocol`.
pub use crate::protocol::http::{HistoryPage, HistoryQuery};

#[cfg(test)]
mod tests;
