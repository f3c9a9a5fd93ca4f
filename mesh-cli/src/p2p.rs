//! What the P2P commands share: opening a session to a peer (the sending
//! side), listening for sessions (the agent side), addresses to announce,
//! and errors a person can act on.
//!
//! Opening a session: bind a QUIC endpoint with this machine's certificate
//! (kept in the config folder), connect to the server announcing it, find
//! the peer, ask the server for a session (`p2p.session.request`), then
//! connect straight to the peer's announced addresses, pinning its
//! certificate. The server never sees the data.
//!
//! Listening: the endpoint is bound first, so the connect can announce its
//! address; it accepts sessions once it knows the peer id the server
//! assigned in its welcome (and the new one after each reconnect).
//!
//! Across networks (both sides): after the welcome, the endpoint learns its
//! address as the server sees it (STUN on the server's UDP port) and
//! announces it beside its local ones (`p2p.announce`), again whenever it
//! changes; sessions punch through NATs and fall back to the server's relay
//! unless `--no-relay` (see `mesh_core::p2p::traversal`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use mesh_core::auth::TokenVerifier;
use mesh_core::client::{Client, EventStream};
use mesh_core::p2p::{AgentIdentity, OutgoingSession, P2pEndpoint, P2pError, PathKind};
use mesh_core::protocol::http::Peer;
use mesh_core::protocol::{PeerId, SessionId, SessionKind};

use crate::config::Ctx;
use crate::resolve;

/// How long connecting to a peer may take before it counts as unreachable
/// (the agent side; the sending side takes `--connect-timeout`).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The options every P2P command shares.
#[derive(Clone, Copy, Debug, Default, Args)]
pub(crate) struct PathArgs {
    /// Never use the server's relay: only direct paths (same network, or
    /// through NATs that can be punched).
    #[arg(long)]
    pub(crate) no_relay: bool,
}

/// `direct` or `relayed`, as a person reads it.
pub(crate) fn path_word(path: PathKind) -> &'static str {
    match path {
        PathKind::Direct => "direct",
        PathKind::Relay => "relayed through the server",
    }
}

/// `--connect-timeout SECS` as a duration.
pub(crate) fn timeout(secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow!("--connect-timeout must be a positive number of seconds"))
}

/// This machine's P2P identity, created in the config folder on first use.
pub(crate) fn identity(ctx: &Ctx) -> anyhow::Result<AgentIdentity> {
    let dir = ctx.identity_dir();
    AgentIdentity::load_or_generate(&dir)
        .with_context(|| format!("loading the P2P certificate in {}", dir.display()))
}

/// Turns a P2P failure into a message saying what happened and what to do.
pub(crate) fn explain(e: P2pError, peer: &str, addrs: &[String]) -> anyhow::Error {
    let at = addrs.join(", ");
    match e {
        P2pError::Timeout(d) => anyhow!(
            "could not reach {peer}'s agent at {at} within {:.1} s: no direct path worked \
             (NATs that cannot be punched, or a firewall blocking UDP) and the server's relay \
             did not carry the session either (turned off with --no-relay or on the server, or \
             the server unreachable). `mesh agent --announce HOST:PORT` publishes an address \
             the sender can reach",
            d.as_secs_f64()
        ),
        P2pError::Unreachable(why) => anyhow!(
            "could not reach {peer}'s agent at {at}: {}. No direct path worked and the \
             server's relay did not carry the session",
            why.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        P2pError::FingerprintMismatch { expected, got } => anyhow!(
            "the machine at {at} is not {peer}'s agent: its certificate is {got}, the server \
             announced {expected}. Nothing was sent"
        ),
        P2pError::Remote { message, .. } => anyhow!("{peer}'s agent refused: {message}"),
        other => anyhow::Error::new(other).context(format!("session with {peer}")),
    }
}

/// An open session to a peer.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) session: OutgoingSession,
    pub(crate) peer: Peer,
    /// From asking the server for the session until the peer's agent
    /// answered over the chosen path (QUIC and TLS handshake, hello): the
    /// time to the first byte, less one round trip.
    pub(crate) connect_time: Duration,
    /// Must stay alive while the session runs.
    pub(crate) link: Link,
}

/// The server connection and the endpoint behind an open session.
#[derive(Debug)]
pub(crate) struct Link {
    client: Client,
    endpoint: Arc<P2pEndpoint>,
    announcer: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Tells the server the session is over, disconnects, closes the endpoint.
    pub(crate) async fn finish(self, session: SessionId) {
        self.announcer.abort();
        self.client.close_p2p_session(session);
        self.client.close().await;
        self.endpoint.close();
    }
}

/// Opens a `kind` session to the agent `peer_arg` stands for.
pub(crate) async fn open(
    ctx: &Ctx,
    peer_arg: &str,
    room_arg: Option<&str>,
    kind: SessionKind,
    connect_timeout: Duration,
    opts: PathArgs,
) -> anyhow::Result<Opened> {
    let endpoint = P2pEndpoint::builder(identity(ctx)?)
        .connect_timeout(connect_timeout)
        .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
        .context("binding a UDP socket for QUIC")?;
    let endpoint = Arc::new(endpoint);
    let info = endpoint.p2p_info(Vec::new());
    let (client, _events) = ctx.connect("mesh-cli", Some(info)).await?;
    // Before the request: the target punches towards what we announced.
    let announcer = client.attach_p2p(&endpoint, &[], !opts.no_relay).await;
    let result = async {
        let (me, _) = client
            .me()
            .ok_or_else(|| anyhow!("the server did not welcome us"))?;
        let (room, peer) = resolve::peer(client.http(), peer_arg, room_arg, me).await?;
        let asked = std::time::Instant::now();
        let grant = client
            .request_p2p_session(room, peer.peer_id, kind)
            .await
            .with_context(|| format!("asking the server for a session with {peer_arg}"))?;
        let target = &grant.target;
        let session = endpoint
            .connect_announced(
                target,
                grant.session.id,
                &grant.session_token,
                grant.relay.as_ref(),
            )
            .await
            .map_err(|e| {
                client.close_p2p_session(grant.session.id);
                explain(e, &peer.user.username, &target.addrs)
            })?;
        Ok::<_, anyhow::Error>((session, peer, asked.elapsed()))
    }
    .await;
    match result {
        Ok((session, peer, connect_time)) => Ok(Opened {
            session,
            peer,
            connect_time,
            link: Link {
                client,
                endpoint,
                announcer,
            },
        }),
        Err(e) => {
            announcer.abort();
            client.close().await;
            endpoint.close();
            Err(e)
        }
    }
}

/// The listening side: connected to the server, announcing an endpoint
/// that accepts the sessions the server tells us about.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) client: Client,
    pub(crate) events: EventStream,
    pub(crate) endpoint: Arc<P2pEndpoint>,
    pub(crate) addrs: Vec<String>,
    announce: Vec<String>,
    opts: PathArgs,
    announcer: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.announcer.abort();
    }
}

impl Listener {
    /// Binds the endpoint, then connects announcing it, then tells the
    /// endpoint the peer id the server assigned.
    pub(crate) async fn start(
        ctx: &Ctx,
        device: &str,
        bind: SocketAddr,
        announce: &[String],
        kinds: Vec<SessionKind>,
        opts: PathArgs,
    ) -> anyhow::Result<Self> {
        let jwks = ctx
            .api()?
            .keys()
            .await
            .context("fetching the server's signing keys")?;
        let verifier = TokenVerifier::from_jwks(&jwks).context("the server's signing keys")?;
        let endpoint = P2pEndpoint::builder(identity(ctx)?)
            .accept_sessions(verifier)
            .accept_kinds(kinds)
            .connect_timeout(CONNECT_TIMEOUT)
            .bind(bind)
            .with_context(|| format!("listening on UDP {bind}"))?;
        let info = endpoint.p2p_info(announce.to_vec());
        let (client, events) = ctx.connect(device, Some(info)).await?;
        let (me, _) = client
            .me()
            .ok_or_else(|| anyhow!("the server did not welcome us"))?;
        endpoint.set_peer_id(me);
        let endpoint = Arc::new(endpoint);
        let announcer = client.attach_p2p(&endpoint, announce, !opts.no_relay).await;
        let addrs = endpoint.p2p_info(announce.to_vec()).addrs;
        Ok(Self {
            client,
            events,
            endpoint,
            addrs,
            announce: announce.to_vec(),
            opts,
            announcer,
        })
    }

    /// After a reconnect: the server may have restarted with other ports.
    pub(crate) async fn reconnected(&mut self, me: PeerId) {
        self.endpoint.set_peer_id(me);
        self.announcer.abort();
        self.announcer = self
            .client
            .attach_p2p(&self.endpoint, &self.announce, !self.opts.no_relay)
            .await;
    }

    /// Starts expecting a session the server announced, when it is ours.
    pub(crate) fn expect(
        &self,
        grant: &mesh_core::client::P2pSessionGrant,
    ) -> Result<bool, P2pError> {
        self.endpoint.expect_announced(
            &grant.session,
            &grant.initiator,
            &grant.session_token,
            grant.relay.as_ref(),
        )
    }

    /// This connection's peer id (what senders target).
    pub(crate) fn me(&self) -> Option<PeerId> {
        self.endpoint.peer_id()
    }
}
