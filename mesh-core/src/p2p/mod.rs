//! Direct agent-to-agent sessions over QUIC: a file, a folder, or a terminal.
//!
//! The server only authorises a session: it signs a short-lived Ed25519
//! session token naming the session, its kind and both peers, and hands both
//! agents each other's [`P2pInfo`](crate::protocol::P2pInfo) (certificate
//! fingerprint and addresses) in `p2p.session.created`. Everything else
//! happens here, between the two agents:
//!
//! - **AgentIdentity** ([`AgentIdentity`]): each agent has its own self-signed
//!   certificate; its SHA-256 fingerprint is what it announces.
//! - **Transport**: QUIC (quinn) with TLS 1.3 both ways and certificate
//!   *pinning*: the initiator checks the target's certificate against the
//!   announced fingerprint, and presents its own, which the target checks
//!   against the initiator's announced fingerprint. No CA is involved and
//!   nobody in between can pose as a peer (see [`tls`]).
//! - **Authorisation**: the first frame is `P2P_HELLO` with the session
//!   token; the target verifies it offline with a
//!   [`TokenVerifier`](crate::auth::TokenVerifier) before any data moves
//!   ([`P2pEndpoint::accept`]).
//! - **Payloads**: files with resume and BLAKE3 verification
//!   ([`OutgoingSession::send_file`], [`IncomingSession::receive_file`]),
//!   folders with a checked manifest, and terminals on a real PTY, read-only
//!   unless the sharer passes a [`TerminalPolicy`] allowing control.
//!
//! The frame layout is in [`frame`] and `docs/p2p.md`. Connections are
//! direct where the network allows (loopback, LAN, a routable address, or
//! through NATs after hole punching) and otherwise go through the server's
//! relay, still end-to-end encrypted ([`traversal`],
//! [`P2pEndpoint::use_server`]). An unreachable peer is a
//! [`P2pError::Timeout`] after the endpoint's connect timeout.
//!
//! ```no_run
//! # async fn demo(
//! #     verifier: mesh_core::auth::TokenVerifier,
//! #     me: mesh_core::protocol::PeerId,
//! #     session: mesh_core::protocol::P2pSession,
//! #     initiator: mesh_core::protocol::P2pInfo,
//! # ) -> Result<(), mesh_core::p2p::P2pError> {
//! use mesh_core::p2p::{ExpectedSession, AgentIdentity, P2pEndpoint, ReceiveOptions};
//!
//! // The target: listen, expect the session the server announced, receive.
//! let endpoint = P2pEndpoint::builder(AgentIdentity::generate()?)
//!     .accept_sessions(verifier)
//!     .peer_id(me)
//!     .bind("0.0.0.0:0".parse().expect("addr"))?;
//! endpoint.expect_session(ExpectedSession::from_announcement(&session, &initiator)?);
//! if let Some(incoming) = endpoint.accept().await {
//!     let report = incoming?
//!         .receive_file("/tmp/inbox".as_ref(), &ReceiveOptions::default(), |p| {
//!             println!("{}/{}", p.done, p.total)
//!         })
//!         .await?;
//!     println!("received {}", report.path.display());
//! }
//! # Ok(())
//! # }
//! ```

mod endpoint;
mod error;
mod file;
mod folder;
pub mod frame;
mod identity;
pub mod path;
mod terminal;
pub mod tls;
mod transfer;
pub mod traversal;

pub use endpoint::{
    ExpectedSession, IncomingSession, OutgoingSession, P2pEndpoint, P2pEndpointBuilder,
};
pub use error::{P2pError, P2pErrorCode};
pub use file::{FileReport, Progress, ReceiveOptions, SendOptions};
pub use folder::{FolderReport, MAX_ENTRIES, validate_manifest};
pub use identity::{AgentIdentity, fingerprint_of};
pub use terminal::{
    TerminalCommand, TerminalEvent, TerminalPolicy, TerminalReader, TerminalViewer, TerminalWriter,
};
pub use traversal::{PathKind, PathMonitor, PathStats, RelayStream, ServerPaths, StreamOpener};
