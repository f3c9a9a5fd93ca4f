//! Sessions across networks, the agent's side: address discovery (STUN to
//! the server's UDP port), hole punching and the relay through the server.
//!
//! The logic is sans-IO ([`discovery::Discovery`], [`punch::Puncher`],
//! [`bind::Binding`]: state machines fed with datagrams and the time); this
//! module's tasks only move bytes and wait. Everything shares the QUIC
//! endpoint's one UDP socket ([`socket::Mux`]): the mapping the server sees
//! for STUN is the one peers reach, and punches leave from the port QUIC
//! listens on.
//!
//! How a session finds its path (`docs/p2p.md`, "Across networks"):
//!
//! 1. Each agent learns its server-reflexive address by STUN and announces
//!    it beside its host addresses (`p2p.announce`), again when it changes.
//! 2. `p2p.session.created` reaches both agents at once. The target sends
//!    `PUNCH` datagrams to the initiator's candidates; the initiator starts
//!    QUIC handshakes to all of the target's candidates; both bind the
//!    session at the relay in parallel.
//! 3. If no direct handshake completed after [`RELAY_DELAY`] (at once when
//!    every direct attempt failed), the initiator also starts a handshake
//!    over the relay. The first handshake that completes, with the peer's
//!    pinned certificate, carries the session. A relayed session stays
//!    relayed (no later upgrade to a direct path).

pub mod bind;
pub mod discovery;
pub mod punch;
pub mod socket;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use self::bind::{BindOutput, BindState, Binding};
use self::discovery::Discovery;
use self::punch::Puncher;
use self::socket::{Control, Mux};
use crate::protocol::{RelayGrant, RelayParty, SessionId};
use crate::relay::RelayFrame;
use crate::relay::grant::parse_key;

pub use self::punch::DIRECT_DELAY;

/// How long the initiator gives direct paths before it also tries the relay.
pub const RELAY_DELAY: Duration = Duration::from_millis(2000);

/// How long a session's relayed route is kept when no connection uses it.
const ROUTE_LINGER: Duration = Duration::from_secs(60);

/// Which path a session's connection took.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// Straight between the two agents (same network, or hole punched).
    Direct,
    /// Through the server's relay.
    Relay,
}

impl PathKind {
    /// `"direct"` or `"relay"` (the CLI's `--json` `path`).
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Relay => "relay",
        }
    }

    /// Of a connection whose peer is at `remote`.
    pub fn of(remote: SocketAddr) -> Self {
        if socket::is_relay_addr(remote) {
            PathKind::Relay
        } else {
            PathKind::Direct
        }
    }
}

/// A session's QUIC path, for diagnostics: kept by the caller while the
/// session itself is consumed by a transfer (see
/// `OutgoingSession::monitor`).
#[derive(Clone, Debug)]
pub struct PathMonitor(pub(crate) quinn::Connection);

impl PathMonitor {
    /// The path's figures now.
    pub fn stats(&self) -> PathStats {
        let s = self.0.stats();
        PathStats {
            kind: PathKind::of(self.0.remote_address()),
            rtt: s.path.rtt,
            cwnd: s.path.cwnd,
            congestion_events: s.path.congestion_events,
            sent_packets: s.path.sent_packets,
            lost_packets: s.path.lost_packets,
            lost_bytes: s.path.lost_bytes,
            mtu: s.path.current_mtu,
        }
    }
}

/// Figures of a session's QUIC path (QUIC's own estimates).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathStats {
    pub kind: PathKind,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// Times the congestion controller cut the window.
    pub congestion_events: u64,
    pub sent_packets: u64,
    pub lost_packets: u64,
    pub lost_bytes: u64,
    /// The path's current maximum UDP payload.
    pub mtu: u16,
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The relay WebSocket, opened: binary messages out and in.
#[derive(Debug)]
pub struct RelayStream {
    /// Relay frames to send.
    pub tx: mpsc::Sender<Vec<u8>>,
    /// Relay frames received.
    pub rx: mpsc::Receiver<Vec<u8>>,
}

/// Opens the relay WebSocket (`GET /api/p2p/relay` on the server).
pub type StreamOpener =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = io::Result<RelayStream>> + Send>> + Send + Sync>;

/// What the server offers for sessions across networks (its `system.welcome`
/// `p2p`, resolved).
#[derive(Clone, Default)]
pub struct ServerPaths {
    /// The server's UDP port (STUN, and the relay over UDP).
    pub udp: Option<SocketAddr>,
    /// Whether the server relays.
    pub relay: bool,
    /// Opens the relay WebSocket, for when UDP to the server is blocked.
    pub stream: Option<StreamOpener>,
}

impl fmt::Debug for ServerPaths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerPaths")
            .field("udp", &self.udp)
            .field("relay", &self.relay)
            .field("stream", &self.stream.is_some())
            .finish()
    }
}

/// Runs discovery towards `server` until the task is aborted, publishing
/// the mapped address on `mapped`.
pub(crate) async fn run_discovery(
    mux: Arc<Mux>,
    server: SocketAddr,
    mapped: watch::Sender<Option<SocketAddr>>,
) {
    let (tx, mut rx) = mpsc::channel(16);
    mux.set_server(Some(server), Some(tx));
    let mut d = Discovery::new(Instant::now().into_std(), discovery::REFRESH);
    loop {
        let now = Instant::now().into_std();
        while let Some(req) = d.poll_transmit(now) {
            mux.send_raw(server, &req);
        }
        tokio::select! {
            got = rx.recv() => {
                let Some(Control::Stun { tx, mapped: addr }) = got else {
                    if got.is_none() { return; }
                    continue;
                };
                if let Some(new) = d.handle_response(tx, addr, Instant::now().into_std()) {
                    tracing::debug!(mapped = %new, "server-reflexive address");
                    mapped.send_replace(Some(new));
                }
            }
            _ = tokio::time::sleep_until(d.poll_timeout().into()) => {}
        }
    }
}

/// One session's punching and relay binding; dropping it stops both and
/// forgets the relayed route unless a connection claimed it.
#[derive(Debug)]
pub(crate) struct Traversal {
    pub(crate) relay_addr: SocketAddr,
    pub(crate) bound: watch::Receiver<BindState>,
    session: SessionId,
    mux: Arc<Mux>,
    task: tokio::task::JoinHandle<()>,
}

impl Traversal {
    /// Whether punching and binding are over (its route then gone or claimed).
    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for Traversal {
    fn drop(&mut self) {
        self.task.abort();
        self.mux.remove_unclaimed(self.session);
    }
}

/// Starts punching `punch` (may be empty) and, with a grant, binding
/// `session` at the relay. `None` when there is nothing to do.
pub(crate) fn start(
    mux: &Arc<Mux>,
    paths: &ServerPaths,
    session: SessionId,
    token: &str,
    grant: Option<&RelayGrant>,
    punch: Vec<SocketAddr>,
) -> Option<Traversal> {
    // A grant may name the relay to bind at (in a cluster, the node that
    // granted the session): then over UDP there only, as the relay
    // WebSocket leads to the agent's own server.
    let mut paths = paths.clone();
    let mut elsewhere = None;
    if let Some(addr) = grant.and_then(|g| g.addr.as_deref()) {
        match addr.parse::<SocketAddr>() {
            Ok(relay) if Some(relay) != paths.udp => {
                elsewhere = Some(relay);
                paths.udp = Some(relay);
                paths.stream = None;
            }
            Ok(_) => {}
            Err(_) => {
                tracing::debug!(%session, addr, "the grant names a relay that is no IP:port; not relaying");
                paths.relay = false;
            }
        }
    }
    let binding = grant
        .filter(|_| paths.relay && (paths.udp.is_some() || paths.stream.is_some()))
        .and_then(|g| Some((g.party, parse_key(&g.key)?)))
        .map(|(party, key)| bind_frame(session, party, key, token));
    if binding.is_none() && punch.is_empty() {
        return None;
    }
    let (ctl_tx, ctl_rx) = mpsc::channel(8);
    let relay_addr = mux.add_session(session, ctl_tx, elsewhere);
    let (bound_tx, bound_rx) = watch::channel(BindState::Binding);
    let now = Instant::now().into_std();
    let binding = binding.map(|frame| Binding::new(&frame, paths.udp.is_some(), now));
    if binding.is_none() {
        bound_tx.send_replace(BindState::Failed);
    }
    let puncher = Puncher::new(session, punch, now);
    let task = tokio::spawn(drive(
        mux.clone(),
        paths.clone(),
        session,
        puncher,
        binding,
        ctl_rx,
        bound_tx,
    ));
    Some(Traversal {
        relay_addr,
        bound: bound_rx,
        session,
        mux: mux.clone(),
        task,
    })
}

fn bind_frame(session: SessionId, party: RelayParty, key: [u8; 32], token: &str) -> RelayFrame<'_> {
    RelayFrame::Bind {
        session,
        party,
        key,
        token,
    }
}

async fn drive(
    mux: Arc<Mux>,
    paths: ServerPaths,
    session: SessionId,
    mut puncher: Puncher,
    mut binding: Option<Binding>,
    mut control: mpsc::Receiver<Control>,
    bound: watch::Sender<BindState>,
) {
    let started = Instant::now();
    // The first BIND leaves before the TTL goes down for the punches (its
    // retransmissions during the window may not reach the server). With a
    // UDP port, a new binding's first output is that BIND.
    if let (Some(b), Some(server)) = (binding.as_mut(), paths.udp)
        && let Some(BindOutput::SendUdp(frame)) = b.poll(Instant::now().into_std())
    {
        mux.send_raw(server, frame);
    }
    let mut low_ttl = puncher.poll_timeout().map(|_| mux.low_ttl(punch::TTL));
    let mut opening: Option<Pin<Box<dyn Future<Output = io::Result<RelayStream>> + Send>>> = None;
    loop {
        let now = Instant::now().into_std();
        for (to, frame) in puncher.poll_transmit(now) {
            mux.send_raw(to, frame);
        }
        if puncher.poll_timeout().is_none() {
            drop(low_ttl.take());
        }
        if let Some(b) = binding.as_mut() {
            while let Some(out) = b.poll(now) {
                match out {
                    BindOutput::SendUdp(frame) => {
                        if let Some(server) = paths.udp {
                            mux.send_raw(server, frame);
                        }
                    }
                    BindOutput::SendStream(frame) => {
                        mux.send_stream(frame.to_vec());
                    }
                    BindOutput::OpenStream => match (&paths.stream, mux.has_stream()) {
                        (_, true) => b.stream_opened(now),
                        (Some(open), false) => opening = Some(open()),
                        (None, false) => b.stream_failed(),
                    },
                }
            }
            if bound.borrow().clone() != *b.state() {
                bound.send_replace(b.state().clone());
                if let BindState::Bound(carrier) = b.state() {
                    mux.set_carrier(session, *carrier);
                }
            }
        }
        // With nothing left to send, the route stays for a connection
        // that may still use it, then goes (unless one claimed it).
        let linger = started + ROUTE_LINGER;
        if Instant::now() >= linger {
            break;
        }
        let next = [
            puncher.poll_timeout(),
            binding.as_ref().and_then(Binding::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .map(Instant::from_std)
        .min()
        .map_or(linger, |t| t.min(linger));
        tokio::select! {
            got = control.recv() => match got {
                Some(Control::Bound { carrier, .. }) => {
                    if let Some(b) = binding.as_mut() { b.handle_bound(carrier); }
                }
                Some(Control::Refused { code, reason, .. }) => {
                    tracing::info!(%session, code = code.as_str(), %reason, "the relay refused the session");
                    if let Some(b) = binding.as_mut() { b.handle_refused(code, &reason); }
                }
                Some(Control::Stun { .. }) => {}
                None => break,
            },
            opened = async { opening.as_mut().expect("guarded").await }, if opening.is_some() => {
                opening = None;
                let now = Instant::now().into_std();
                match opened {
                    Ok(stream) => {
                        tokio::spawn(pump_stream(mux.clone(), stream));
                        if let Some(b) = binding.as_mut() { b.stream_opened(now); }
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "the relay WebSocket could not be opened");
                        if let Some(b) = binding.as_mut() { b.stream_failed(); }
                    }
                }
            }
            _ = tokio::time::sleep_until(next) => {}
        }
    }
    mux.remove_unclaimed(session);
}

/// Feeds the relay WebSocket's messages to the socket until it closes.
async fn pump_stream(mux: Arc<Mux>, stream: RelayStream) {
    let RelayStream { tx, mut rx } = stream;
    mux.set_stream(Some(tx));
    while let Some(frame) = rx.recv().await {
        mux.handle_stream_frame(&frame);
    }
    mux.set_stream(None);
}
