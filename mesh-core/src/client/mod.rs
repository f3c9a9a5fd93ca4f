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

/// Which page of a room's history to fetch
/// (`GET /api/rooms/{id}/messages`). Pages are in ascending `seq`.
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
    /// use mesh_core::client::HistoryQuery;
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
mod tests;
