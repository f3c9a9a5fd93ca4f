//! The P2P agent for desktop targets: a connection that announces a QUIC
//! endpoint, sends files and folders to other agents, and receives the ones
//! sent to it into a chosen folder, with progress callbacks.
//!
//! The data goes straight between the agents over QUIC, pinned to the
//! certificates the server announced and authorised by the session token it
//! signed (see `docs/p2p.md`); the server never sees it.
//!
//! ```python
//! agent = await mesh.start_agent(server, token, mesh.AgentConfig(
//!     identity_dir="~/.mesh/identity", receive_dir="~/Downloads",
//!     overwrite=False, bind=None, announce=[], device_name="laptop"),
//!     listener, transfers)
//! report = await agent.send_file(room_id, bob_peer_id, "/tmp/report.pdf", transfers)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::auth::TokenVerifier;
use mesh_core::client::{Client, Event};
use mesh_core::p2p::{
    AgentIdentity, FileReport, FolderReport, IncomingSession, OutgoingSession, P2pEndpoint,
    P2pError, PathKind, Progress, ReceiveOptions, SendOptions,
};
use mesh_core::protocol::{PeerId, SessionId, SessionKind};

use crate::{MeshClient, MeshError, MeshListener, on_runtime, parse_id, parse_room};

/// Progress callbacks are at most this frequent (the last one always comes).
const PROGRESS_EVERY: Duration = Duration::from_millis(50);

/// How long connecting to a peer may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl From<P2pError> for MeshError {
    fn from(e: P2pError) -> Self {
        MeshError::P2p {
            code: e.code_name(),
            reason: e.to_string(),
        }
    }
}

// ----- records and the listener -----

/// How to run the agent.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct AgentConfig {
    /// Where this machine's P2P certificate and key live (created on first
    /// use). Keep it: peers pin the certificate.
    pub identity_dir: String,
    /// The only folder received files and folders go into (created if
    /// missing). `None`: file and folder sessions are refused.
    pub receive_dir: Option<String>,
    /// Replace files that already exist in `receive_dir` (default: refuse).
    pub overwrite: bool,
    /// The UDP address to listen on (default `0.0.0.0:0`).
    pub bind: Option<String>,
    /// Addresses (`host:port`) peers can reach this agent at; empty: the
    /// bound address, or for a wildcard bind loopback and this machine's
    /// outgoing (LAN) address.
    pub announce: Vec<String>,
    /// Shown to the user in their device list.
    pub device_name: Option<String>,
    /// PEM text of the only CA to trust for an `https://` server (a private
    /// CA); none: the platform's roots.
    #[uniffi(default = None)]
    pub ca_cert_pem: Option<String>,
    /// Never use the server's relay: only direct paths (same network, or
    /// NATs that can be punched). Default false.
    #[uniffi(default = false)]
    pub no_relay: bool,
}

/// How far a transfer is.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct TransferProgress {
    pub session_id: String,
    /// `send` or `receive`.
    pub direction: String,
    /// The file being transferred (its path inside a folder).
    pub name: String,
    /// Bytes done so far (resumed bytes included), of `total`.
    pub done: u64,
    pub total: u64,
}

/// A finished transfer.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct TransferReport {
    pub session_id: String,
    /// `file` or `folder`.
    pub kind: String,
    /// Receiver: where the file or folder now is. Sender: what was sent.
    pub path: String,
    /// Bytes of content (all files of a folder).
    pub size: u64,
    pub files: u64,
    /// The file's BLAKE3 hash (hex), checked by the receiver; empty for a
    /// folder (each file is checked).
    pub blake3: String,
    /// Where a file transfer resumed from (0: from the start).
    pub resumed_from: u64,
    /// How the session travelled: `direct` (between the agents) or
    /// `relay` (through the server's relay, still end-to-end encrypted).
    pub via: String,
}

impl TransferReport {
    fn file(session: SessionId, r: &FileReport, via: PathKind) -> Self {
        Self {
            session_id: session.to_string(),
            kind: SessionKind::File.as_str().into(),
            path: r.path.display().to_string(),
            size: r.size,
            files: 1,
            blake3: r.blake3.to_hex().to_string(),
            resumed_from: r.resumed_from,
            via: via.as_str().into(),
        }
    }

    fn folder(session: SessionId, r: &FolderReport, via: PathKind) -> Self {
        Self {
            session_id: session.to_string(),
            kind: SessionKind::Folder.as_str().into(),
            path: r.root.display().to_string(),
            size: r.files.iter().map(|f| f.size).sum(),
            files: r.files.len() as u64,
            blake3: String::new(),
            resumed_from: 0,
            via: via.as_str().into(),
        }
    }
}

/// Implemented by the app: hears how transfers go, on a thread of the
/// library's runtime (do not block for long).
#[uniffi::export(with_foreign)]
pub trait TransferListener: Send + Sync {
    /// A transfer moved on (at most every 50 ms, and once at the end).
    fn on_progress(&self, progress: TransferProgress);
    /// A file or folder sent to this agent arrived, verified, in place.
    fn on_received(&self, report: TransferReport);
    /// A transfer to this agent failed; nothing partial is visible (a
    /// resumable part file may stay hidden next to the destination).
    fn on_failed(&self, session_id: String, error: MeshError);
}

/// Calls `listener.on_progress` at most every [`PROGRESS_EVERY`].
fn throttled(
    listener: Arc<dyn TransferListener>,
    session: SessionId,
    direction: &'static str,
) -> impl FnMut(Progress) + Send {
    let mut last: Option<Instant> = None;
    move |p: Progress| {
        let now = Instant::now();
        let due = last.is_none_or(|t| now.duration_since(t) >= PROGRESS_EVERY);
        if due || p.done == p.total {
            last = Some(now);
            listener.on_progress(TransferProgress {
                session_id: session.to_string(),
                direction: direction.into(),
                name: p.name,
                done: p.done,
                total: p.total,
            });
        }
    }
}

// ----- the agent -----

/// A connected P2P agent (see [`start_agent`]).
#[derive(Debug, uniffi::Object)]
pub struct MeshAgent {
    client: Client,
    endpoint: Arc<P2pEndpoint>,
    addrs: Vec<String>,
}

/// Binds a QUIC endpoint, connects to `server` with `token` announcing it,
/// and starts accepting the sessions the server announces for this
/// connection: files and folders go into `config.receive_dir`, and
/// `transfers` hears how they go. `listener` hears every chat event, as
/// with [`connect`](crate::connect).
#[uniffi::export]
pub async fn start_agent(
    server: String,
    token: String,
    config: AgentConfig,
    listener: Arc<dyn MeshListener>,
    transfers: Arc<dyn TransferListener>,
) -> Result<Arc<MeshAgent>, MeshError> {
    on_runtime(async move {
        let bind: SocketAddr = config
            .bind
            .as_deref()
            .unwrap_or("0.0.0.0:0")
            .parse()
            .map_err(|_| MeshError::invalid(format!("not a UDP address: {:?}", config.bind)))?;
        let receive_dir = match &config.receive_dir {
            Some(dir) => Some(prepare_dir(Path::new(dir))?),
            None => None,
        };
        let identity = AgentIdentity::load_or_generate(Path::new(&config.identity_dir))?;
        let tls = crate::tls_for(&server, config.ca_cert_pem.as_deref())?;
        let http = mesh_core::client::HttpApi::with_tls(&server, tls.clone())?;
        let verifier =
            TokenVerifier::from_jwks(&http.keys().await?).map_err(|e| MeshError::Client {
                code: "protocol".into(),
                reason: format!("the server's signing keys: {e}"),
            })?;
        let kinds = if receive_dir.is_some() {
            vec![SessionKind::File, SessionKind::Folder]
        } else {
            Vec::new()
        };
        let endpoint = P2pEndpoint::builder(identity)
            .accept_sessions(verifier)
            .accept_kinds(kinds)
            .connect_timeout(CONNECT_TIMEOUT)
            .bind(bind)?;
        let info = endpoint.p2p_info(config.announce.clone());
        let addrs = info.addrs.clone();
        let mut builder = Client::builder()
            .server(server)
            .token(token)
            .tls(tls)
            .p2p(info);
        if let Some(name) = config.device_name {
            builder = builder.device_name(name);
        }
        let client = builder.connect().await?;
        let (me, _) = client.me().ok_or_else(|| MeshError::Client {
            code: "protocol".into(),
            reason: "the server did not welcome the agent".into(),
        })?;
        endpoint.set_peer_id(me);
        let endpoint = Arc::new(endpoint);
        // Re-announces on its own; it ends with the endpoint.
        drop(
            client
                .attach_p2p(&endpoint, &config.announce, !config.no_relay)
                .await,
        );
        let state = Arc::new(Receiving {
            dir: receive_dir,
            opts: ReceiveOptions::default().overwrite(config.overwrite),
            transfers,
        });
        if let Some(events) = client.events() {
            tokio::spawn(pump(events, endpoint.clone(), listener));
        }
        tokio::spawn(accept(endpoint.clone(), state));
        Ok(Arc::new(MeshAgent {
            client,
            endpoint,
            addrs,
        }))
    })
    .await
}

fn prepare_dir(dir: &Path) -> Result<PathBuf, MeshError> {
    let io = |e: std::io::Error| MeshError::P2p {
        code: "io".into(),
        reason: format!("{}: {e}", dir.display()),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    dir.canonicalize().map_err(io)
}

/// What the receiving side shares.
struct Receiving {
    dir: Option<PathBuf>,
    opts: ReceiveOptions,
    transfers: Arc<dyn TransferListener>,
}

/// Hands chat events to the app, and tells the endpoint which sessions to
/// accept and which peer id it is.
async fn pump(
    mut events: mesh_core::client::EventStream,
    endpoint: Arc<P2pEndpoint>,
    listener: Arc<dyn MeshListener>,
) {
    while let Some(event) = events.next().await {
        match &event {
            // A new connection is a new peer id.
            Event::Connected { peer_id, .. } => endpoint.set_peer_id(*peer_id),
            Event::P2pSessionCreated(grant) => {
                // One it cannot pin (no fingerprint announced) is refused
                // when its initiator comes.
                let _ = endpoint.expect_announced(
                    &grant.session,
                    &grant.initiator,
                    &grant.session_token,
                    grant.relay.as_ref(),
                );
            }
            Event::P2pSessionClosed { session_id, .. } => endpoint.forget_session(*session_id),
            _ => {}
        }
        listener.on_event(event.into());
    }
}

/// Accepts sessions until the endpoint closes; each runs on its own task.
async fn accept(endpoint: Arc<P2pEndpoint>, state: Arc<Receiving>) {
    while let Some(incoming) = endpoint.accept().await {
        // A refused connection was told why; keep accepting.
        if let Ok(session) = incoming {
            tokio::spawn(receive(session, state.clone()));
        }
    }
}

async fn receive(session: IncomingSession, state: Arc<Receiving>) {
    let id = session.session_id();
    let via = session.path();
    let Some(dir) = &state.dir else {
        // Refused by the endpoint already (no kinds accepted).
        return;
    };
    let progress = throttled(state.transfers.clone(), id, "receive");
    let result = match session.kind() {
        SessionKind::File => session
            .receive_file(dir, &state.opts, progress)
            .await
            .map(|r| TransferReport::file(id, &r, via)),
        SessionKind::Folder => session
            .receive_folder(dir, &state.opts, progress)
            .await
            .map(|r| TransferReport::folder(id, &r, via)),
        _ => return,
    };
    match result {
        Ok(report) => state.transfers.on_received(report),
        Err(e) => state.transfers.on_failed(id.to_string(), e.into()),
    }
}

#[uniffi::export]
impl MeshAgent {
    /// The chat client on the agent's connection.
    pub fn client(&self) -> Arc<MeshClient> {
        Arc::new(MeshClient {
            client: self.client.clone(),
        })
    }

    /// This agent's peer id (what another agent's `send_file` targets).
    pub fn peer_id(&self) -> Option<String> {
        self.client.me().map(|(peer, _)| peer.to_string())
    }

    /// The addresses this agent announced.
    pub fn addresses(&self) -> Vec<String> {
        self.addrs.clone()
    }

    /// This agent's certificate fingerprint (what peers pin).
    pub fn fingerprint(&self) -> String {
        self.endpoint.fingerprint().to_owned()
    }

    /// Sends the file at `path` to the agent `target_peer_id` in a room
    /// both users are in, resuming where an earlier broken transfer to it
    /// ended; `progress` hears how it goes. Returns once the receiver has
    /// checked the file's hash and put it in place.
    pub async fn send_file(
        &self,
        room_id: String,
        target_peer_id: String,
        path: String,
        progress: Arc<dyn TransferListener>,
    ) -> Result<TransferReport, MeshError> {
        self.send(SessionKind::File, room_id, target_peer_id, path, progress)
            .await
    }

    /// Sends the folder at `path` (and everything under it) to the agent
    /// `target_peer_id`; it arrives as `<receive_dir>/<folder name>/`.
    pub async fn send_folder(
        &self,
        room_id: String,
        target_peer_id: String,
        path: String,
        progress: Arc<dyn TransferListener>,
    ) -> Result<TransferReport, MeshError> {
        self.send(SessionKind::Folder, room_id, target_peer_id, path, progress)
            .await
    }

    /// Disconnects from the server and closes the endpoint (transfers in
    /// flight end).
    pub async fn shutdown(&self) -> Result<(), MeshError> {
        let (client, endpoint) = (self.client.clone(), self.endpoint.clone());
        on_runtime(async move {
            client.close().await;
            endpoint.close();
            Ok(())
        })
        .await
    }
}

impl MeshAgent {
    /// A `file` or `folder` session to `target_peer_id`, sending `path`.
    async fn send(
        &self,
        kind: SessionKind,
        room_id: String,
        target_peer_id: String,
        path: String,
        progress: Arc<dyn TransferListener>,
    ) -> Result<TransferReport, MeshError> {
        let (room, target) = (parse_room(&room_id)?, parse_id("peer", &target_peer_id)?);
        let (client, endpoint) = (self.client.clone(), self.endpoint.clone());
        on_runtime(async move {
            let (session, id) = open(&client, &endpoint, room, target, kind).await?;
            let via = session.path();
            let (path, opts) = (Path::new(&path), SendOptions::default());
            let progress = throttled(progress, id, "send");
            let report = match kind {
                SessionKind::Folder => session
                    .send_folder(path, &opts, progress)
                    .await
                    .map(|r| TransferReport::folder(id, &r, via)),
                _ => session
                    .send_file(path, &opts, progress)
                    .await
                    .map(|r| TransferReport::file(id, &r, via)),
            };
            client.close_p2p_session(id);
            Ok(report?)
        })
        .await
    }
}

/// Asks the server for a session and connects to the peer it announced.
async fn open(
    client: &Client,
    endpoint: &P2pEndpoint,
    room: mesh_core::protocol::RoomId,
    target: PeerId,
    kind: SessionKind,
) -> Result<(OutgoingSession, SessionId), MeshError> {
    let grant = client.request_p2p_session(room, target, kind).await?;
    let id = grant.session.id;
    match endpoint
        .connect_announced(
            &grant.target,
            id,
            &grant.session_token,
            grant.relay.as_ref(),
        )
        .await
    {
        Ok(session) => Ok((session, id)),
        Err(e) => {
            client.close_p2p_session(id);
            Err(e.into())
        }
    }
}
