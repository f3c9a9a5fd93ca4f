//! The QUIC endpoint of an agent: accepts sessions (after checking
//! `P2P_HELLO`) and opens them.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout, timeout_at};

use super::file::{self, FileReport, Progress, ReceiveOptions, SendOptions, Wire, unexpected};
use super::folder::{self, FolderReport};
use super::frame::{Frame, PROTOCOL_VERSION, SessionHello, SessionWelcome};
use super::identity::{fingerprint_of, normalise_fingerprint};
use super::terminal::{self, TerminalCommand, TerminalPolicy, TerminalViewer};
use super::traversal::bind::BindState;
use super::traversal::socket::Mux;
use super::traversal::{
    self, DIRECT_DELAY, PathKind, PathMonitor, RELAY_DELAY, ServerPaths, Traversal,
};
use super::{AgentIdentity, P2pError, P2pErrorCode, tls};
use crate::Failure;
use crate::auth::{AuthError, SessionClaims, TokenVerifier};
use crate::protocol::{P2pInfo, P2pSession, PeerId, RelayGrant, SessionId, SessionKind, Timestamp};

type Stream = Wire<quinn::RecvStream, quinn::SendStream>;
/// Handshakes racing: each ends with the connection, or the address, the
/// error and the certificate fingerprint that did not match (if that was it).
type Attempts =
    JoinSet<Result<quinn::Connection, (SocketAddr, quinn::ConnectionError, Option<String>)>>;
type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// How long a side that sent the last frame waits for the peer to close
/// the connection (which tells it the frame arrived) before closing itself.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// At most this many incoming handshakes run at once; more are refused.
const MAX_HANDSHAKES: usize = 32;

/// How many times [`P2pEndpoint::connect_announced`] tries a target that
/// does not know the session yet.
const ANNOUNCE_ATTEMPTS: u32 = 5;

/// QUIC application close codes.
const CLOSE_DONE: u32 = 0;
const CLOSE_ERROR: u32 = 1;

/// A session this agent was told about (in `p2p.session.created`) and will
/// accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedSession {
    session_id: SessionId,
    kind: SessionKind,
    initiator_peer_id: PeerId,
    initiator_fingerprint: Option<String>,
}

impl ExpectedSession {
    /// Expects `session` from `initiator_peer_id`, without pinning its
    /// certificate (see [`Self::initiator_fingerprint`]).
    pub fn new(session_id: SessionId, kind: SessionKind, initiator_peer_id: PeerId) -> Self {
        Self {
            session_id,
            kind,
            initiator_peer_id,
            initiator_fingerprint: None,
        }
    }

    /// Only a connection presenting a certificate with this SHA-256
    /// fingerprint may open the session.
    pub fn initiator_fingerprint(mut self, fingerprint: impl AsRef<str>) -> Self {
        self.initiator_fingerprint = Some(normalise_fingerprint(fingerprint.as_ref()));
        self
    }

    /// From a `p2p.session.created` announcement: the session and the
    /// initiator's [`P2pInfo`], whose fingerprint is required.
    pub fn from_announcement(session: &P2pSession, initiator: &P2pInfo) -> Result<Self, P2pError> {
        let fp = initiator.cert_fingerprint.as_deref().ok_or_else(|| {
            P2pError::Tls("the initiator announced no certificate fingerprint".into())
        })?;
        Ok(
            Self::new(session.id, session.kind, session.initiator_peer_id)
                .initiator_fingerprint(fp),
        )
    }

    /// The session.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }
}

/// Configures a [`P2pEndpoint`]: `P2pEndpoint::builder(identity)…bind(addr)`.
pub struct P2pEndpointBuilder {
    identity: AgentIdentity,
    acceptor: Option<TokenVerifier>,
    peer_id: Option<PeerId>,
    kinds: Vec<SessionKind>,
    allow_unexpected: bool,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    clock: Clock,
}

impl fmt::Debug for P2pEndpointBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("P2pEndpointBuilder")
            .field("identity", &self.identity)
            .field("accepts", &self.acceptor.is_some())
            .field("peer_id", &self.peer_id)
            .field("kinds", &self.kinds)
            .field("allow_unexpected", &self.allow_unexpected)
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl P2pEndpointBuilder {
    /// Accept incoming sessions whose token `verifier` checks (built from
    /// the server's JWK Set) and that name this agent's peer id as their
    /// target. Without this, the endpoint only connects out.
    ///
    /// The peer id is the server's to assign, on connect, while the connect
    /// already announces this endpoint's address: give it with
    /// [`Self::peer_id`] if known, or later with
    /// [`P2pEndpoint::set_peer_id`]. Until then every session is refused.
    pub fn accept_sessions(mut self, verifier: TokenVerifier) -> Self {
        self.acceptor = Some(verifier);
        self
    }

    /// This agent's peer id, the target accepted sessions must name (see
    /// [`Self::accept_sessions`]; without it, the peer id is ignored).
    pub fn peer_id(mut self, me: PeerId) -> Self {
        self.peer_id = Some(me);
        self
    }

    /// The session kinds accepted (default: all).
    pub fn accept_kinds(mut self, kinds: impl IntoIterator<Item = SessionKind>) -> Self {
        self.kinds = kinds.into_iter().collect();
        self
    }

    /// Accept sessions with a valid token even if they were not registered
    /// with [`P2pEndpoint::expect_session`] (default false). The
    /// initiator's certificate is then not pinned: anyone holding the token
    /// may open the session.
    pub fn allow_unexpected_sessions(mut self, allow: bool) -> Self {
        self.allow_unexpected = allow;
        self
    }

    /// How long [`P2pEndpoint::connect`] tries before
    /// [`P2pError::Timeout`] (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long the TLS handshake plus `P2P_HELLO`/`P2P_WELCOME` may take,
    /// on either side (default 10 s).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// A connection silent this long is dead (default 30 s; keep-alives go
    /// every quarter of it).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// The clock session tokens are checked against (default: the system
    /// clock). For tests.
    pub fn clock(mut self, clock: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Binds the UDP socket (port 0 picks one) and starts accepting. Must
    /// run inside a tokio runtime.
    pub fn bind(self, addr: SocketAddr) -> Result<P2pEndpoint, P2pError> {
        let server = tls::server_config(&self.identity, self.idle_timeout)?;
        let failed = |e: std::io::Error| {
            P2pError::Connection(Failure::caused_by(format!("binding {addr}"), e))
        };
        let socket = std::net::UdpSocket::bind(addr).map_err(failed)?;
        socket.set_nonblocking(true).map_err(failed)?;
        let mux = Mux::new(socket).map_err(failed)?;
        let mut config = quinn::EndpointConfig::default();
        // QUIC's fixed bit stays set, so the socket can tell QUIC from
        // STUN and relay frames by the first byte (see `traversal::socket`).
        config.grease_quic_bit(false);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            config,
            Some(server),
            mux.socket(),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(failed)?;
        let (mapped, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            endpoint,
            mux,
            paths: Mutex::default(),
            mapped,
            discovery: Mutex::default(),
            traversals: Mutex::default(),
            identity: self.identity,
            acceptor: self.acceptor.map(|verifier| Acceptor {
                verifier,
                me: Mutex::new(self.peer_id),
                kinds: self.kinds,
                allow_unexpected: self.allow_unexpected,
            }),
            expected: Mutex::default(),
            connect_timeout: self.connect_timeout,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            clock: self.clock,
        });
        let (tx, rx) = mpsc::channel(16);
        let accept_task = tokio::spawn(accept_loop(shared.clone(), tx));
        Ok(P2pEndpoint {
            shared,
            incoming: tokio::sync::Mutex::new(rx),
            accept_task,
        })
    }
}

struct Acceptor {
    verifier: TokenVerifier,
    /// This agent's peer id (none until the server assigned one).
    me: Mutex<Option<PeerId>>,
    kinds: Vec<SessionKind>,
    allow_unexpected: bool,
}

struct Shared {
    endpoint: quinn::Endpoint,
    /// The socket under `endpoint`, shared with the traversal tasks.
    mux: Arc<Mux>,
    /// What the server offers (see [`P2pEndpoint::use_server`]).
    paths: Mutex<ServerPaths>,
    /// The server-reflexive address, once discovered.
    mapped: watch::Sender<Option<SocketAddr>>,
    discovery: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Punching and relay binding of sessions this agent expects.
    traversals: Mutex<HashMap<SessionId, Traversal>>,
    identity: AgentIdentity,
    acceptor: Option<Acceptor>,
    expected: Mutex<HashMap<SessionId, ExpectedSession>>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    clock: Clock,
}

/// An agent's P2P endpoint: one UDP socket that accepts sessions from
/// peers and connects to them.
///
/// ```no_run
/// # async fn demo(peer: mesh_core::protocol::P2pInfo, session: mesh_core::protocol::SessionId,
/// #               token: String) -> Result<(), mesh_core::p2p::P2pError> {
/// use mesh_core::p2p::{AgentIdentity, P2pEndpoint, SendOptions};
///
/// let endpoint = P2pEndpoint::builder(AgentIdentity::generate()?)
///     .bind("0.0.0.0:0".parse().expect("addr"))?;
/// let outgoing = endpoint.connect_to(&peer, session, &token).await?;
/// let report = outgoing
///     .send_file("notes.txt".as_ref(), &SendOptions::default(), |p| {
///         eprint!("\r{}/{}", p.done, p.total)
///     })
///     .await?;
/// println!("sent {} bytes", report.transferred);
/// # Ok(())
/// # }
/// ```
pub struct P2pEndpoint {
    shared: Arc<Shared>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Result<IncomingSession, P2pError>>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for P2pEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("P2pEndpoint")
            .field("local_addr", &self.shared.endpoint.local_addr().ok())
            .field("fingerprint", &self.shared.identity.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Drop for P2pEndpoint {
    fn drop(&mut self) {
        self.accept_task.abort();
        if let Ok(mut d) = self.shared.discovery.lock()
            && let Some(task) = d.take()
        {
            task.abort();
        }
    }
}

impl P2pEndpoint {
    /// Starts configuring an endpoint for `identity`.
    pub fn builder(identity: AgentIdentity) -> P2pEndpointBuilder {
        P2pEndpointBuilder {
            identity,
            acceptor: None,
            peer_id: None,
            kinds: vec![
                SessionKind::File,
                SessionKind::Folder,
                SessionKind::Terminal,
            ],
            allow_unexpected: false,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            clock: Arc::new(Timestamp::now),
        }
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr, P2pError> {
        self.shared
            .endpoint
            .local_addr()
            .map_err(|e| P2pError::Connection(Failure::caused_by("", e)))
    }

    /// This agent's certificate fingerprint.
    pub fn fingerprint(&self) -> &str {
        self.shared.identity.fingerprint()
    }

    /// The addresses peers can try to reach this endpoint at: for an
    /// endpoint bound to a wildcard address (`0.0.0.0`, `::`), loopback plus
    /// the address this machine would use to reach other networks (its LAN
    /// address behind a router); otherwise the bound address.
    pub fn reachable_addrs(&self) -> Vec<String> {
        let Ok(bound) = self.local_addr() else {
            return Vec::new();
        };
        if !bound.ip().is_unspecified() {
            return vec![bound.to_string()];
        }
        let port = bound.port();
        let loopback: std::net::IpAddr = if bound.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        let mut addrs = vec![SocketAddr::new(loopback, port).to_string()];
        if let Some(ip) = outgoing_ip(bound.is_ipv4()) {
            addrs.push(SocketAddr::new(ip, port).to_string());
        }
        addrs
    }

    /// What to announce to the server (`system.hello`'s `p2p`): the
    /// fingerprint and `addrs`; if `addrs` is empty, [`Self::reachable_addrs`]
    /// and the server-reflexive address once known ([`Self::mapped_addr`]).
    /// Addresses given explicitly replace all of these.
    pub fn p2p_info(&self, addrs: Vec<String>) -> P2pInfo {
        if !addrs.is_empty() {
            return P2pInfo {
                cert_fingerprint: Some(self.fingerprint().to_owned()),
                addrs,
            };
        }
        let mut addrs = self.reachable_addrs();
        if let Some(mapped) = *self.shared.mapped.borrow() {
            let mapped = mapped.to_string();
            if !addrs.contains(&mapped) {
                addrs.push(mapped);
            }
        }
        P2pInfo {
            cert_fingerprint: Some(self.fingerprint().to_owned()),
            addrs,
        }
    }

    /// Uses what the server offers for sessions across networks (from its
    /// welcome): discovers this endpoint's server-reflexive address by STUN
    /// (see [`Self::mapped_addr`]) and relays sessions that find no direct
    /// path. Call again after a reconnect; `ServerPaths::default()` turns
    /// both off.
    pub fn use_server(&self, paths: ServerPaths) {
        let udp = paths.udp;
        if let Ok(mut p) = self.shared.paths.lock() {
            *p = paths;
        }
        self.shared.mux.set_server(udp, None);
        if let Ok(mut d) = self.shared.discovery.lock() {
            if let Some(old) = d.take() {
                old.abort();
            }
            if let Some(server) = udp {
                *d = Some(tokio::spawn(traversal::run_discovery(
                    self.shared.mux.clone(),
                    server,
                    self.shared.mapped.clone(),
                )));
            }
        }
    }

    /// This endpoint's address as the server sees it (its server-reflexive
    /// candidate), updated when the mapping changes: announce it with
    /// [`Self::p2p_info`], which includes it.
    pub fn mapped_addr(&self) -> watch::Receiver<Option<SocketAddr>> {
        self.shared.mapped.subscribe()
    }

    /// Side-traffic counters of the socket (relayed datagrams, punches).
    pub fn socket_stats(&self) -> traversal::socket::Stats {
        self.shared.mux.stats()
    }

    /// Sets this agent's peer id, the target accepted sessions must name:
    /// after connecting to the server, and again after each reconnect (the
    /// server assigns a new peer id per connection; sessions naming the old
    /// one are refused from then on). The endpoint keeps its socket, so the
    /// announced address stays valid. Ignored by an endpoint built without
    /// [`P2pEndpointBuilder::accept_sessions`].
    pub fn set_peer_id(&self, me: PeerId) {
        if let Some(acceptor) = &self.shared.acceptor
            && let Ok(mut slot) = acceptor.me.lock()
        {
            *slot = Some(me);
        }
    }

    /// This agent's peer id, once known (see [`Self::set_peer_id`]); `None`
    /// for an endpoint that only connects out.
    pub fn peer_id(&self) -> Option<PeerId> {
        let acceptor = self.shared.acceptor.as_ref()?;
        acceptor.me.lock().ok().and_then(|m| *m)
    }

    /// Accepts a session the server announced (`p2p.session.created`) if
    /// this agent is its target: `Ok(true)`; `Ok(false)` when it names
    /// another peer (this agent is the initiator, or the announcement is
    /// for an earlier connection). The initiator's announced certificate
    /// is pinned.
    ///
    /// It also opens the paths the initiator may come by: `PUNCH` datagrams
    /// to the initiator's candidates, and, with a `relay` grant and a server
    /// that relays (see [`Self::use_server`]), a binding at the relay with
    /// the session `token`.
    pub fn expect_announced(
        &self,
        session: &P2pSession,
        initiator: &P2pInfo,
        token: &str,
        relay: Option<&RelayGrant>,
    ) -> Result<bool, P2pError> {
        if self.peer_id() != Some(session.target_peer_id) {
            return Ok(false);
        }
        self.expect_session(ExpectedSession::from_announcement(session, initiator)?);
        let paths = self.paths();
        if let Some(t) = traversal::start(
            &self.shared.mux,
            &paths,
            session.id,
            token,
            relay,
            socket_addrs(&initiator.addrs),
        ) && let Ok(mut map) = self.shared.traversals.lock()
        {
            map.retain(|_, t| !t.is_finished());
            map.insert(session.id, t);
        }
        Ok(true)
    }

    fn paths(&self) -> ServerPaths {
        self.shared
            .paths
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// Accept `session` when its initiator connects.
    pub fn expect_session(&self, session: ExpectedSession) {
        if let Ok(mut map) = self.shared.expected.lock() {
            map.insert(session.session_id, session);
        }
    }

    /// Stop accepting `session` (closed or expired).
    pub fn forget_session(&self, session: SessionId) {
        if let Ok(mut map) = self.shared.expected.lock() {
            map.remove(&session);
        }
        let gone = self
            .shared
            .traversals
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&session));
        drop(gone);
    }

    /// The next incoming connection, once its `P2P_HELLO` is checked.
    ///
    /// `Ok`: a session the peer is authorised to open. `Err`: a connection
    /// that was refused (the peer was told why with a `P2P_ERROR` before any
    /// data moved) or that failed its handshake; keep accepting. `None`:
    /// the endpoint is closed, or it was built without
    /// [`P2pEndpointBuilder::accept_sessions`].
    pub async fn accept(&self) -> Option<Result<IncomingSession, P2pError>> {
        self.shared.acceptor.as_ref()?;
        self.incoming.lock().await.recv().await
    }

    /// Opens session `session_id` to the peer at `addrs` (`host:port`,
    /// tried at once, the first to complete the handshake wins), whose
    /// certificate must have `expected_fingerprint`, presenting `token`.
    ///
    /// Errors: [`P2pError::FingerprintMismatch`] when the peer's certificate
    /// is not the pinned one, [`P2pError::Timeout`] when nothing answered in
    /// time, [`P2pError::Remote`] when the peer refused the session (its
    /// code says why), [`P2pError::Unreachable`] otherwise.
    pub async fn connect(
        &self,
        addrs: &[impl AsRef<str>],
        expected_fingerprint: &str,
        session_id: SessionId,
        token: &str,
    ) -> Result<OutgoingSession, P2pError> {
        self.connect_via(addrs, expected_fingerprint, session_id, token, None)
            .await
    }

    /// [`Self::connect`], and with a `relay` grant (and a server that
    /// relays, see [`Self::use_server`]) through the server's relay when no
    /// direct address completed its handshake within [`RELAY_DELAY`] (at
    /// once when every direct attempt failed). The relay is bound in
    /// parallel from the start. The first handshake to complete wins; the
    /// session's [`OutgoingSession::path`] says which.
    pub async fn connect_via(
        &self,
        addrs: &[impl AsRef<str>],
        expected_fingerprint: &str,
        session_id: SessionId,
        token: &str,
        relay: Option<&RelayGrant>,
    ) -> Result<OutgoingSession, P2pError> {
        let started = Instant::now();
        let deadline = started + self.shared.connect_timeout;
        let (targets, errors) = resolve(addrs, deadline)
            .await
            .ok_or(P2pError::Timeout(self.shared.connect_timeout))?;
        // The initiator sends no PUNCH: its handshake packets open its NAT.
        let paths = self.paths();
        let relayed = traversal::start(
            &self.shared.mux,
            &paths,
            session_id,
            token,
            relay,
            Vec::new(),
        );
        let race = Race {
            expected_fingerprint,
            session_id,
            started,
            deadline,
            errors,
            mismatch: None,
        };
        let conn = self.race(race, targets, relayed.as_ref()).await?;
        keep_route_while_open(&self.shared.mux, &conn);
        drop(relayed);
        self.greet(conn, session_id, token).await
    }

    /// Races handshakes to the `targets` (local ones at once, public ones
    /// after [`DIRECT_DELAY`]) and, once bound, through the relay (after
    /// [`RELAY_DELAY`], or at once when nothing direct is left). The first
    /// to complete wins; the losers are abandoned.
    async fn race(
        &self,
        mut race: Race<'_>,
        targets: Vec<SocketAddr>,
        relayed: Option<&traversal::Traversal>,
    ) -> Result<quinn::Connection, P2pError> {
        let mut bound = relayed.map(|t| t.bound.clone());
        // Local candidates at once; public ones once the target's punches
        // opened its NAT (see `traversal::punch`).
        let (now, later): (Vec<SocketAddr>, Vec<SocketAddr>) =
            targets.into_iter().partition(|sa| is_local(sa.ip()));
        let mut later = Some(later).filter(|l| !l.is_empty());
        let direct_at = race.started + DIRECT_DELAY;
        let relay_at = race.started + RELAY_DELAY;
        let fingerprint = race.expected_fingerprint;
        let mut attempts = JoinSet::new();
        for sa in now {
            self.attempt(&mut attempts, sa, fingerprint, &mut race.errors)?;
        }
        let mut relay_tried = false;
        loop {
            let state = bound.as_ref().map(|b| b.borrow().clone());
            if !relay_tried
                && let (Some(t), Some(BindState::Bound(_))) = (relayed, &state)
                && (attempts.is_empty() || Instant::now() >= relay_at)
            {
                relay_tried = true;
                tracing::debug!(session = %race.session_id, "trying the relay");
                self.attempt(&mut attempts, t.relay_addr, fingerprint, &mut race.errors)?;
            }
            let relay_pending =
                !relay_tried && matches!(state, Some(BindState::Binding | BindState::Bound(_)));
            if let Some(BindState::Refused(code, why)) = &state
                && !relay_tried
            {
                race.errors
                    .push(format!("relay: {} ({why})", code.as_str()).into());
                relay_tried = true;
            }
            if attempts.is_empty() && !relay_pending && later.is_none() {
                return Err(race.lost(None));
            }
            tokio::select! {
                _ = tokio::time::sleep_until(race.deadline) => {
                    return Err(race.lost(Some(self.shared.connect_timeout)));
                }
                joined = attempts.join_next(), if !attempts.is_empty() => match joined {
                    Some(Ok(Ok(conn))) => return Ok(conn),
                    Some(Ok(Err((sa, e, m)))) => {
                        race.mismatch = race.mismatch.or(m);
                        race.errors.push(Failure::caused_by(sa.to_string(), e));
                    }
                    Some(Err(e)) => race.errors.push(Failure::caused_by("a connection attempt", e)),
                    None => {}
                },
                changed = async { bound.as_mut().expect("guarded").changed().await },
                    if relay_pending && bound.is_some() =>
                {
                    if changed.is_err() {
                        bound = None;
                    }
                }
                _ = tokio::time::sleep_until(relay_at), if relay_pending && Instant::now() < relay_at => {}
                _ = tokio::time::sleep_until(direct_at), if later.is_some() => {
                    for sa in later.take().unwrap_or_default() {
                        self.attempt(&mut attempts, sa, fingerprint, &mut race.errors)?;
                    }
                }
            }
        }
    }

    /// Opens the session's stream on `conn` and says hello with the
    /// session token; the target's `P2P_WELCOME` makes the session.
    async fn greet(
        &self,
        conn: quinn::Connection,
        session_id: SessionId,
        token: &str,
    ) -> Result<OutgoingSession, P2pError> {
        let hs = self.shared.handshake_timeout;
        let (w, r) = match timeout(hs, conn.open_bi()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(P2pError::Connection(Failure::caused_by("", e))),
            Err(_) => return Err(P2pError::Timeout(hs)),
        };
        let mut wire = Wire { r, w };
        let hello = Frame::Hello(SessionHello {
            version: PROTOCOL_VERSION,
            session_id,
            session_token: token.to_owned(),
        });
        let answer = async {
            wire.send(&hello).await?;
            wire.recv().await
        };
        let (err, why) = match timeout(hs, answer).await {
            Ok(Ok(Frame::Welcome(w))) if w.session_id == session_id => {
                let session = Session {
                    conn,
                    wire,
                    kind: w.kind,
                    _shared: self.shared.clone(),
                };
                return Ok(OutgoingSession {
                    session,
                    session_id,
                });
            }
            Ok(Ok(other)) => {
                let err = unexpected(&other, "P2P_WELCOME for this session");
                (wire.fail(err).await, &b"protocol"[..])
            }
            Ok(Err(e)) => (e, &b"refused"[..]),
            Err(_) => (P2pError::Timeout(hs), &b"timeout"[..]),
        };
        conn.close(CLOSE_ERROR.into(), why);
        Err(err)
    }

    /// Starts one handshake to `sa` in `attempts`.
    fn attempt(
        &self,
        attempts: &mut Attempts,
        sa: SocketAddr,
        expected_fingerprint: &str,
        errors: &mut Vec<Failure>,
    ) -> Result<(), P2pError> {
        let shared = &self.shared;
        let (config, verifier) =
            tls::client_config(&shared.identity, expected_fingerprint, shared.idle_timeout)?;
        match shared.endpoint.connect_with(config, sa, tls::SERVER_NAME) {
            Ok(connecting) => {
                attempts.spawn(async move {
                    connecting.await.map_err(|e| (sa, e, verifier.mismatch()))
                });
            }
            Err(e) => errors.push(Failure::caused_by(sa.to_string(), e)),
        }
        Ok(())
    }

    /// [`Self::connect`] to a peer as announced in `p2p.session.created`.
    pub async fn connect_to(
        &self,
        peer: &P2pInfo,
        session_id: SessionId,
        token: &str,
    ) -> Result<OutgoingSession, P2pError> {
        self.connect_to_via(peer, session_id, token, None).await
    }

    /// [`Self::connect_via`] to a peer as announced in `p2p.session.created`.
    pub async fn connect_to_via(
        &self,
        peer: &P2pInfo,
        session_id: SessionId,
        token: &str,
        relay: Option<&RelayGrant>,
    ) -> Result<OutgoingSession, P2pError> {
        let fp = peer
            .cert_fingerprint
            .as_deref()
            .ok_or_else(|| P2pError::Tls("the peer announced no certificate fingerprint".into()))?;
        self.connect_via(&peer.addrs, fp, session_id, token, relay)
            .await
    }

    /// [`Self::connect_to`] right after the server granted the session: the
    /// target hears of it over its own connection to the server, maybe a
    /// moment after the initiator, and refuses it as `unknown_session`
    /// until then; this tries again a few times over about a second.
    ///
    /// With a `relay` grant, the relay is the fallback (see
    /// [`Self::connect_via`]).
    pub async fn connect_announced(
        &self,
        peer: &P2pInfo,
        session_id: SessionId,
        token: &str,
        relay: Option<&RelayGrant>,
    ) -> Result<OutgoingSession, P2pError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.connect_to_via(peer, session_id, token, relay).await {
                Err(P2pError::Remote {
                    code: P2pErrorCode::UnknownSession,
                    ..
                }) if attempt < ANNOUNCE_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                other => return other,
            }
        }
    }

    /// Closes the endpoint and every connection on it.
    pub fn close(&self) {
        self.accept_task.abort();
        self.shared.endpoint.close(CLOSE_DONE.into(), b"closing");
    }
}

/// The local address the system would use to reach another network (no
/// packet is sent: connecting a UDP socket only picks a route). `None` when
/// there is no route, or only loopback.
fn outgoing_ip(v4: bool) -> Option<std::net::IpAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};
    // Documentation addresses (RFC 5737, RFC 3849): routed, never answered.
    let (bind, probe): (SocketAddr, SocketAddr) = if v4 {
        (
            (Ipv4Addr::UNSPECIFIED, 0).into(),
            (Ipv4Addr::new(192, 0, 2, 1), 9).into(),
        )
    } else {
        (
            (Ipv6Addr::UNSPECIFIED, 0).into(),
            (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9).into(),
        )
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(probe).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

async fn accept_loop(shared: Arc<Shared>, tx: mpsc::Sender<Result<IncomingSession, P2pError>>) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    while let Some(incoming) = shared.endpoint.accept().await {
        if shared.acceptor.is_none() {
            incoming.refuse();
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), "too many handshakes at once; refusing");
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let result = handshake(&shared, incoming).await;
            if let Err(e) = &result {
                tracing::info!(error = %e, "refused an incoming P2P connection");
            }
            drop(permit);
            let _ = tx.send(result).await;
        });
    }
}

/// Whether `ip` is on this machine or a local network (no NAT to punch).
fn is_local(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
        }
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local()
        }
    }
}

/// The candidates among `addrs` that are socket addresses (names are not
/// punched).
fn socket_addrs(addrs: &[String]) -> Vec<SocketAddr> {
    addrs.iter().filter_map(|a| a.parse().ok()).collect()
}

/// How long a closed relayed connection keeps its route: QUIC's closing
/// state, in which it repeats its `CONNECTION_CLOSE` to the peer.
const ROUTE_DRAIN: Duration = Duration::from_secs(3);

/// A connection over the relay keeps its route until it closed (and its
/// goodbye had time to reach the peer).
/// What [`P2pEndpoint::race`] learns while it runs.
struct Race<'a> {
    expected_fingerprint: &'a str,
    session_id: SessionId,
    started: Instant,
    deadline: Instant,
    /// Why each address failed, for [`P2pError::Unreachable`].
    errors: Vec<Failure>,
    /// The certificate fingerprint an address presented instead of the
    /// expected one: the most telling failure, reported first.
    mismatch: Option<String>,
}

impl Race<'_> {
    /// Why nothing connected: a wrong certificate if one was seen, else the
    /// time-out (when `timed_out` gives it) or every address's failure.
    fn lost(self, timed_out: Option<Duration>) -> P2pError {
        if let Some(got) = self.mismatch {
            return P2pError::FingerprintMismatch {
                expected: normalise_fingerprint(self.expected_fingerprint),
                got,
            };
        }
        if let Some(t) = timed_out {
            return P2pError::Timeout(t);
        }
        let mut errors = self.errors;
        if errors.is_empty() {
            errors.push("no usable address".into());
        }
        P2pError::Unreachable(errors)
    }
}

/// The socket addresses of `addrs` (names looked up by the system), and
/// why each one that did not resolve failed; `None` past `deadline`.
async fn resolve(
    addrs: &[impl AsRef<str>],
    deadline: Instant,
) -> Option<(Vec<SocketAddr>, Vec<Failure>)> {
    let mut errors = Vec::new();
    let mut targets = Vec::new();
    for a in addrs {
        let a = a.as_ref();
        match a.parse::<SocketAddr>() {
            Ok(sa) => targets.push(sa),
            Err(_) => match timeout_at(deadline, tokio::net::lookup_host(a)).await {
                Ok(Ok(found)) => targets.extend(found),
                Ok(Err(e)) => errors.push(Failure::caused_by(a, e)),
                Err(_) => return None,
            },
        }
    }
    Some((targets, errors))
}

fn keep_route_while_open(mux: &Arc<Mux>, conn: &quinn::Connection) {
    if let Some(session) = mux.claim_addr(conn.remote_address()) {
        let (mux, conn) = (mux.clone(), conn.clone());
        tokio::spawn(async move {
            conn.closed().await;
            tokio::time::sleep(ROUTE_DRAIN).await;
            mux.remove_session(session);
        });
    }
}

fn peer_fingerprint(conn: &quinn::Connection) -> Result<String, P2pError> {
    conn.peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.first().map(|c| fingerprint_of(c)))
        .ok_or_else(|| P2pError::Tls("the peer presented no certificate".into()))
}

/// The target side of the handshake: TLS, then `P2P_HELLO`, checked.
async fn handshake(
    shared: &Arc<Shared>,
    incoming: quinn::Incoming,
) -> Result<IncomingSession, P2pError> {
    let Some(acceptor) = &shared.acceptor else {
        return Err(P2pError::Closed);
    };
    let hs = shared.handshake_timeout;
    let conn = match timeout(hs, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(P2pError::Connection(Failure::caused_by("", e))),
        Err(_) => return Err(P2pError::Timeout(hs)),
    };
    keep_route_while_open(&shared.mux, &conn);
    let fingerprint = peer_fingerprint(&conn)?;
    let (w, r) = match timeout(hs, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(P2pError::Connection(Failure::caused_by("", e))),
        Err(_) => {
            conn.close(CLOSE_ERROR.into(), b"no hello");
            return Err(P2pError::Timeout(hs));
        }
    };
    let mut wire = Wire { r, w };
    let checked = match timeout(hs, wire.recv()).await {
        Ok(Ok(Frame::Hello(hello))) => check_hello(shared, acceptor, &hello, &fingerprint),
        Ok(Ok(other)) => Err(P2pError::refused(
            P2pErrorCode::Protocol,
            format!("{} before P2P_HELLO", other.name()),
        )),
        Ok(Err(e @ P2pError::Frame(_))) => {
            Err(P2pError::refused(P2pErrorCode::Protocol, e.to_string()))
        }
        Ok(Err(e)) => {
            conn.close(CLOSE_ERROR.into(), b"no hello");
            return Err(e);
        }
        Err(_) => {
            conn.close(CLOSE_ERROR.into(), b"no hello");
            return Err(P2pError::Timeout(hs));
        }
    };
    match checked {
        Ok(claims) => {
            wire.send(&Frame::Welcome(SessionWelcome {
                version: PROTOCOL_VERSION,
                session_id: claims.sid,
                kind: claims.kind,
            }))
            .await?;
            Ok(IncomingSession {
                session: Session {
                    conn,
                    wire,
                    kind: claims.kind,
                    _shared: shared.clone(),
                },
                claims,
                peer_fingerprint: fingerprint,
            })
        }
        Err(e) => {
            let e = wire.fail(e).await;
            tokio::spawn(wait_then_close(conn, wire.w));
            Err(e)
        }
    }
}

fn check_hello(
    shared: &Shared,
    acceptor: &Acceptor,
    hello: &SessionHello,
    fingerprint: &str,
) -> Result<SessionClaims, P2pError> {
    use P2pErrorCode as C;
    if hello.version != PROTOCOL_VERSION {
        return Err(P2pError::refused(
            C::UnsupportedVersion,
            format!(
                "version {} (this agent speaks {PROTOCOL_VERSION})",
                hello.version
            ),
        ));
    }
    let claims = acceptor
        .verifier
        .verify_session(&hello.session_token, (shared.clock)())
        .map_err(|e| match e {
            AuthError::Expired => {
                P2pError::refused(C::TokenExpired, "the session token has expired")
            }
            other => P2pError::refused(C::InvalidToken, other.to_string()),
        })?;
    if claims.sid != hello.session_id {
        return Err(P2pError::refused(
            C::WrongSession,
            "the token is for another session",
        ));
    }
    let me = acceptor.me.lock().ok().and_then(|m| *m);
    if me.is_none() {
        return Err(P2pError::refused(
            C::WrongPeer,
            "this agent is not connected to its server yet",
        ));
    }
    if Some(claims.target_peer_id) != me {
        return Err(P2pError::refused(
            C::WrongPeer,
            "the token names another target peer",
        ));
    }
    let expected = shared
        .expected
        .lock()
        .ok()
        .and_then(|m| m.get(&claims.sid).cloned());
    match expected {
        Some(x) => {
            if x.kind != claims.kind || x.initiator_peer_id != claims.initiator_peer_id {
                return Err(P2pError::refused(
                    C::WrongSession,
                    "the token does not match the announced session",
                ));
            }
            if let Some(fp) = &x.initiator_fingerprint
                && *fp != fingerprint
            {
                return Err(P2pError::refused(
                    C::WrongCertificate,
                    "the certificate is not the one the initiator announced",
                ));
            }
        }
        None if !acceptor.allow_unexpected => {
            return Err(P2pError::refused(
                C::UnknownSession,
                "this agent was not told about the session",
            ));
        }
        None => {}
    }
    if !acceptor.kinds.contains(&claims.kind) {
        return Err(P2pError::refused(
            C::KindNotAccepted,
            format!(
                "this agent does not accept {} sessions",
                claims.kind.as_str()
            ),
        ));
    }
    Ok(claims)
}

/// After sending a final frame: finish the stream, give the peer time to
/// read it and close, then close.
async fn wait_then_close(conn: quinn::Connection, mut w: quinn::SendStream) {
    let _ = w.finish();
    let _ = timeout(CLOSE_WAIT, conn.closed()).await;
    conn.close(CLOSE_DONE.into(), b"done");
}

/// What both ends of a session hold.
struct Session {
    conn: quinn::Connection,
    wire: Stream,
    kind: SessionKind,
    /// Keeps the endpoint's socket alive as long as the session.
    _shared: Arc<Shared>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("remote", &self.conn.remote_address())
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Session {
    async fn require(&mut self, kind: SessionKind) -> Result<(), P2pError> {
        if self.kind == kind {
            return Ok(());
        }
        let err = self
            .wire
            .fail(P2pError::refused(
                P2pErrorCode::KindNotAccepted,
                format!(
                    "this is a {} session, not {}",
                    self.kind.as_str(),
                    kind.as_str()
                ),
            ))
            .await;
        Err(err)
    }

    /// Does `work` on the session's stream if the session is of `kind`,
    /// then ends it (`sent_last`: whether this side sends the last frame).
    async fn run<T>(
        mut self,
        kind: SessionKind,
        sent_last: bool,
        work: impl AsyncFnOnce(&mut Stream) -> Result<T, P2pError>,
    ) -> Result<T, P2pError> {
        let result = match self.require(kind).await {
            Ok(()) => work(&mut self.wire).await,
            Err(e) => Err(e),
        };
        self.end(result, sent_last).await
    }

    async fn view_terminal(mut self) -> Result<TerminalViewer, P2pError> {
        if let Err(e) = self.require(SessionKind::Terminal).await {
            return self.end(Err(e), false).await;
        }
        let Session { conn, wire, .. } = self;
        Ok(TerminalViewer::new(wire, conn))
    }

    async fn share_terminal(
        mut self,
        cmd: TerminalCommand,
        policy: TerminalPolicy,
    ) -> Result<Option<u32>, P2pError> {
        if let Err(e) = self.require(SessionKind::Terminal).await {
            return self.end(Err(e), false).await;
        }
        let Session { conn, wire, .. } = self;
        let result = terminal::share(wire, cmd, policy).await;
        // TERM_EXIT (or an error) was the last frame: let the viewer close.
        let _ = timeout(CLOSE_WAIT, conn.closed()).await;
        conn.close(CLOSE_DONE.into(), b"done");
        result
    }

    /// Ends the session after `result`: the side that received the last
    /// frame closes now; the side that sent it waits for that close.
    async fn end<T>(self, result: Result<T, P2pError>, sent_last: bool) -> Result<T, P2pError> {
        let Session { conn, wire, .. } = self;
        match &result {
            Ok(_) if sent_last => wait_then_close(conn, wire.w).await,
            Ok(_) => conn.close(CLOSE_DONE.into(), b"done"),
            // They told us, or the connection is gone: nothing to deliver.
            Err(P2pError::Remote { .. } | P2pError::Connection(_)) => {
                conn.close(CLOSE_ERROR.into(), b"error")
            }
            // We (may have) told them: let the P2P_ERROR arrive.
            Err(_) => {
                let _ = timeout(CLOSE_WAIT, async {
                    let mut w = wire.w;
                    let _ = w.finish();
                    conn.closed().await
                })
                .await;
                conn.close(CLOSE_ERROR.into(), b"error");
            }
        }
        result
    }
}

/// A session a peer opened to this agent, its `P2P_HELLO` checked.
#[derive(Debug)]
pub struct IncomingSession {
    session: Session,
    claims: SessionClaims,
    peer_fingerprint: String,
}

impl IncomingSession {
    /// The verified token's claims (session, kind, both peers and users).
    pub fn claims(&self) -> &SessionClaims {
        &self.claims
    }

    /// The session.
    pub fn session_id(&self) -> SessionId {
        self.claims.sid
    }

    /// The initiator's certificate fingerprint.
    pub fn peer_fingerprint(&self) -> &str {
        &self.peer_fingerprint
    }

    /// Receives the file of a `file` session into `dest_dir` (and nowhere
    /// else), calling `progress` as bytes arrive.
    pub async fn receive_file<F>(
        self,
        dest_dir: &Path,
        opts: &ReceiveOptions,
        progress: F,
    ) -> Result<FileReport, P2pError>
    where
        F: FnMut(Progress) + Send,
    {
        let work =
            async |wire: &mut Stream| file::receive_file(wire, dest_dir, opts, progress).await;
        self.session.run(SessionKind::File, true, work).await
    }

    /// Receives the folder of a `folder` session into
    /// `dest_dir/<folder name>/`.
    pub async fn receive_folder<F>(
        self,
        dest_dir: &Path,
        opts: &ReceiveOptions,
        progress: F,
    ) -> Result<FolderReport, P2pError>
    where
        F: FnMut(Progress) + Send,
    {
        let work =
            async |wire: &mut Stream| folder::receive_folder(wire, dest_dir, opts, progress).await;
        self.session.run(SessionKind::Folder, true, work).await
    }
}

/// The methods both ends of a session have, written once for
/// [`IncomingSession`] and [`OutgoingSession`].
macro_rules! session_methods {
    ($t:ty) => {
        impl $t {
            /// What the session carries (as the token says).
            pub fn kind(&self) -> SessionKind {
                self.session.kind
            }

            /// The peer's address.
            pub fn remote_address(&self) -> SocketAddr {
                self.session.conn.remote_address()
            }

            /// The session's QUIC path figures, also after a transfer consumed it.
            pub fn monitor(&self) -> PathMonitor {
                PathMonitor(self.session.conn.clone())
            }

            /// Whether the session runs straight between the agents or through the
            /// server's relay (then [`Self::remote_address`] is a synthetic one).
            pub fn path(&self) -> PathKind {
                PathKind::of(self.session.conn.remote_address())
            }

            /// Runs `cmd` on a PTY and shares it with the peer (a `terminal`
            /// session) until it exits (its exit code) or the viewer leaves (the
            /// program is killed; `None`). `policy` says whether the viewer may
            /// type: there is no default, the caller decides.
            pub async fn share_terminal(
                self,
                cmd: TerminalCommand,
                policy: TerminalPolicy,
            ) -> Result<Option<u32>, P2pError> {
                self.session.share_terminal(cmd, policy).await
            }

            /// Watches the terminal the peer shares.
            pub async fn view_terminal(self) -> Result<TerminalViewer, P2pError> {
                self.session.view_terminal().await
            }
        }
    };
}

session_methods!(IncomingSession);
session_methods!(OutgoingSession);

/// A session this agent opened to a peer, welcomed by it.
#[derive(Debug)]
pub struct OutgoingSession {
    session: Session,
    session_id: SessionId,
}

impl OutgoingSession {
    /// The session.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// Sends the file at `path` (a `file` session), resuming where the
    /// receiver's verified part file ends, calling `progress` per chunk.
    pub async fn send_file<F>(
        self,
        path: &Path,
        opts: &SendOptions,
        progress: F,
    ) -> Result<FileReport, P2pError>
    where
        F: FnMut(Progress) + Send,
    {
        let work = async |wire: &mut Stream| file::send_file(wire, path, opts, progress).await;
        self.session.run(SessionKind::File, false, work).await
    }

    /// Sends the folder at `dir` (a `folder` session).
    pub async fn send_folder<F>(
        self,
        dir: &Path,
        opts: &SendOptions,
        progress: F,
    ) -> Result<FolderReport, P2pError>
    where
        F: FnMut(Progress) + Send,
    {
        let work = async |wire: &mut Stream| folder::send_folder(wire, dir, opts, progress).await;
        self.session.run(SessionKind::Folder, false, work).await
    }
}
