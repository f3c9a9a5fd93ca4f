//! The reference mesh server as a library: [`run`] serves the REST API and
//! the WebSocket on one listener until `shutdown` resolves.
//!
//! `main.rs` only parses flags and calls [`run`]; the integration tests call
//! it on `127.0.0.1:0`.
//!
//! Every connection is admitted by [`conn`] first: capped per client
//! address and in total, and closed when its request header takes too long
//! or it sits idle (see [`ConnLimits`]). Behind a reverse proxy listed in
//! [`Config::trusted_proxies`], the client address is the one the proxy
//! forwards (see [`TrustedProxies`]).
//!
//! With a UDP socket too ([`Listeners`]), the server answers STUN Binding
//! requests and relays P2P sessions on it, and on `GET /api/p2p/relay`
//! (see [`P2pConfig`] and `docs/p2p.md`, "Across networks: the relay").
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let config = mesh_server_bin::Config::new("./mesh-data");
//! mesh_server_bin::run(listener, config, tokio::signal::ctrl_c()).await?;
//!
//! // HTTP and WebSockets, plus STUN and the relay on a UDP port.
//! let listeners = mesh_server_bin::Listeners::bind("127.0.0.1:0".parse()?, None).await?;
//! let config = mesh_server_bin::Config::new("./mesh-data");
//! mesh_server_bin::run(listeners, config, tokio::signal::ctrl_c()).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use mesh_core::auth::turn::IceConfig;
use mesh_core::auth::{KeyRing, TokenVerifier};
use mesh_core::cluster::ClusterConfig;
use mesh_core::cluster::nats::NatsBus;
use mesh_core::protocol::P2pServerInfo;
use mesh_core::relay::grant::RelaySecret;
use mesh_core::relay::server::Relay;
use mesh_core::service::{Service, ServiceConfig};
use mesh_core::storage::IntoDynStore;
use mesh_core::storage::postgres::{PgOptions, PgStore};
use mesh_core::storage::sled::{CheckReport, SledStore, SledStoreError};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};

mod conn;
mod http;
mod proxy;
mod redirect;
mod relay;
pub mod tls;

pub use conn::ConnLimits;
pub use http::WsLimits;
pub use proxy::{BadCidr, ProxyNet, TrustedProxies};
pub use redirect::serve_redirect;
pub use relay::{P2pConfig, parse_public_addr as relay_public_addr};
pub use tls::ServerTls;

use conn::{Activity, Admission, ConnCounter, ConnSlot, IdleIo};

/// Where a server keeps its records.
#[derive(Clone, Default)]
pub enum StoreChoice {
    /// sled in the data folder (`db/`): one node, nothing else to run.
    #[default]
    Embedded,
    /// PostgreSQL: the system of record shared by every node of a
    /// deployment. See docs/deploy.md.
    Postgres {
        /// `postgres://user:password@host:port/database`.
        url: String,
        options: PgOptions,
    },
}

impl StoreChoice {
    /// The store named by `--store`: `sled` (the data folder's), or a
    /// `postgres://` / `postgresql://` URL.
    pub fn parse(value: &str) -> anyhow::Result<Self> {
        if value == "sled" {
            return Ok(StoreChoice::Embedded);
        }
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            return Ok(StoreChoice::Postgres {
                url: value.to_owned(),
                options: PgOptions::default(),
            });
        }
        anyhow::bail!("--store is `sled` or a postgres:// URL")
    }
}

impl fmt::Debug for StoreChoice {
    // The URL may hold a password: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreChoice::Embedded => f.write_str("Embedded"),
            StoreChoice::Postgres { options, .. } => f
                .debug_struct("Postgres")
                .field("url", &"(not shown)")
                .field("options", options)
                .finish(),
        }
    }
}

/// How a node joins the other nodes of a deployment.
#[derive(Clone, Debug)]
pub struct ClusterChoice {
    /// The NATS server(s): `nats://host:4222` (comma-separated for several).
    pub bus_url: String,
    pub config: ClusterConfig,
}

/// Settings of a server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the signing keys (`keys/`), the TURN secret and, with the
    /// embedded store, the database (`db/`) live.
    pub data_dir: PathBuf,
    /// The database: sled in `data_dir` (the default) or PostgreSQL.
    pub store: StoreChoice,
    /// Other nodes to serve the same deployment with (PostgreSQL store
    /// only); `None`: this node alone.
    pub cluster: Option<ClusterChoice>,
    /// Largest HTTP request body; larger gets 413.
    pub max_body_bytes: usize,
    /// WebSocket limits.
    pub ws: WsLimits,
    /// Connection caps and time-outs.
    pub conn: ConnLimits,
    /// The service's settings (engine timings, rate limits).
    pub service: ServiceConfig,
    /// How long shutdown waits for connections to finish.
    pub shutdown_grace: Duration,
    /// HTTPS on the listener; `None`: plain HTTP.
    pub tls: Option<ServerTls>,
    /// Reverse proxies whose forwarded client address is believed; their
    /// own connections are exempt from the per-address cap.
    pub trusted_proxies: TrustedProxies,
    /// The ICE servers `GET /api/rtc/ice-servers` hands out, and the TURN
    /// secret (see [`load_or_create_turn_secret`]).
    pub ice: IceConfig,
    /// The UDP port (STUN, relay) and the relay's budgets.
    pub p2p: P2pConfig,
}

impl Config {
    /// Defaults, with data kept in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            store: StoreChoice::Embedded,
            cluster: None,
            max_body_bytes: 64 * 1024,
            ws: WsLimits::default(),
            conn: ConnLimits::default(),
            service: ServiceConfig::default(),
            shutdown_grace: Duration::from_secs(5),
            tls: None,
            trusted_proxies: TrustedProxies::default(),
            ice: IceConfig {
                turn_ttl: Duration::from_secs(3600),
                ..IceConfig::default()
            },
            p2p: P2pConfig::default(),
        }
    }
}

/// Shared by every connection.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) service: Service,
    pub(crate) config: Config,
    /// Flips to `true` when the server shuts down; WebSocket tasks close with 1001.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Held by every connection task; shutdown waits until all are dropped
    /// (the mini-redis `shutdown_complete` pattern).
    pub(crate) alive: mpsc::Sender<()>,
    /// The relay, when the server has a UDP socket.
    pub(crate) relay: Option<Arc<relay::RelayHub>>,
}

/// The sockets a server serves on: TCP for HTTP and WebSockets, and
/// optionally UDP for STUN Binding and the relay.
#[derive(Debug)]
pub struct Listeners {
    pub tcp: TcpListener,
    pub udp: Option<UdpSocket>,
}

impl Listeners {
    /// Binds `tcp`, then UDP on `udp`, by default on the TCP listener's IP
    /// and bound port number (so with port 0 both get the same number when
    /// it is free for UDP too).
    pub async fn bind(tcp: SocketAddr, udp: Option<SocketAddr>) -> anyhow::Result<Self> {
        let tcp_listener = TcpListener::bind(tcp)
            .await
            .with_context(|| format!("binding {tcp}"))?;
        let udp = match udp {
            Some(addr) => UdpSocket::bind(addr)
                .await
                .with_context(|| format!("binding UDP {addr}"))?,
            None => {
                let same = tcp_listener.local_addr()?;
                match UdpSocket::bind(same).await {
                    Ok(udp) => udp,
                    // Port 0 picked a TCP port whose number is taken for
                    // UDP: any free UDP port will do.
                    Err(_) if tcp.port() == 0 => {
                        let any = SocketAddr::new(same.ip(), 0);
                        UdpSocket::bind(any)
                            .await
                            .with_context(|| format!("binding UDP {any}"))?
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(format!("binding UDP {same}")));
                    }
                }
            }
        };
        Ok(Self {
            tcp: tcp_listener,
            udp: Some(udp),
        })
    }

    /// The UDP socket's bound port.
    pub fn udp_port(&self) -> Option<u16> {
        self.udp
            .as_ref()
            .and_then(|u| u.local_addr().ok())
            .map(|a| a.port())
    }
}

impl From<TcpListener> for Listeners {
    fn from(tcp: TcpListener) -> Self {
        Self { tcp, udp: None }
    }
}

/// Opens the store (the data folder's sled database, or PostgreSQL) and
/// the signing keys.
///
/// A sled database that cannot be trusted (see `mesh_core::storage::sled`,
/// "Integrity at open") is refused with an error that names the folder and
/// says what to do; nothing on disk is changed then. PostgreSQL's schema is
/// brought up to date (see `mesh_core::storage::postgres`).
pub async fn open_service(config: &Config) -> anyhow::Result<Service> {
    let data = &config.data_dir;
    std::fs::create_dir_all(data)
        .with_context(|| format!("creating the data folder {}", data.display()))?;
    let store = match &config.store {
        StoreChoice::Embedded => open_sled(data)?.into_dyn(),
        StoreChoice::Postgres { url, options } => {
            let store = PgStore::connect(url, options.clone())
                .await
                .context("opening the PostgreSQL store (--store)")?;
            tracing::info!("records in PostgreSQL ({store:?})");
            store.into_dyn()
        }
    };
    let keys = KeyRing::load_or_generate(&config.data_dir.join("keys"))
        .context("loading the signing keys")?;
    let mut service_config = config.service.clone();
    if let Some(port) = config.p2p.udp_port {
        let engine = &mut service_config.engine;
        engine.p2p_server = Some(P2pServerInfo {
            udp_port: Some(port),
            relay: config.p2p.relay,
        });
        engine.relay_addr = config
            .p2p
            .relay_addr()
            .filter(|_| config.p2p.relay)
            .map(|a| a.to_string());
        engine.relay_secret = if config.p2p.relay {
            Some(RelaySecret::generate().map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?)
        } else {
            None
        };
    }
    let service = Service::builder()
        .dyn_store(store)
        .keys(keys)
        .config(service_config)
        .build()?;
    if let Some(cluster) = &config.cluster {
        anyhow::ensure!(
            matches!(config.store, StoreChoice::Postgres { .. }),
            "a cluster (--bus) needs the store every node shares: a PostgreSQL --store"
        );
        let node = &cluster.config.node_id;
        let bus = NatsBus::connect(&cluster.bus_url, node.as_str())
            .await
            .context("connecting to the bus (--bus)")?;
        service
            .join_cluster(Arc::new(bus), cluster.config.clone())
            .await
            .context("joining the cluster")?;
        tracing::info!("node {node} of a cluster, bus on NATS");
    }
    Ok(service)
}

/// Reads the TURN shared secret from `path`, creating it (mode 0600, 32
/// random bytes as hex) when it is missing. The file is the secret coturn's
/// `static-auth-secret` must repeat; several nodes may share it.
pub fn load_or_create_turn_secret(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let secret = text.trim().to_owned();
            anyhow::ensure!(
                !secret.is_empty(),
                "the TURN secret file {} is empty",
                path.display()
            );
            return Ok(secret);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("reading the TURN secret {}", path.display())));
        }
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the folder of {}", path.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating the TURN secret {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{secret}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing the TURN secret {}", path.display()))?;
    Ok(secret)
}

/// The data folder's sled database, refused with advice when it cannot be
/// trusted.
fn open_sled(data: &Path) -> anyhow::Result<SledStore> {
    match SledStore::open(data.join("db")) {
        Ok(store) => Ok(store),
        Err(e @ (SledStoreError::Refused { .. } | SledStoreError::NewerSchema { .. })) => {
            Err(anyhow::Error::new(e).context(refusal_advice(data)))
        }
        Err(e) => {
            Err(anyhow::Error::new(e)
                .context(format!("opening the database in {}", data.display())))
        }
    }
}

/// What an operator reads when the database is refused.
fn refusal_advice(data: &Path) -> String {
    format!(
        "the data folder {data} cannot be served as it is: the database holds less than \
         the server acknowledged, or is damaged or not a mesh database. The server did not \
         start and changed no file.\n\
         What to do: stop here and restore the data folder from a backup (all of it together: \
         db/, db.integrity and keys/); run `mesh-server check --data {data}` to see what it \
         holds. Only to start anyway with what is left, move {record} away: the next start \
         checks the database and records it as it is.",
        data = data.display(),
        record = data.join("db.integrity").display(),
    )
}

/// What `mesh-server check` found; `Display` prints it for an operator.
#[derive(Debug)]
pub struct CheckOutput {
    data: PathBuf,
    report: CheckReport,
}

impl CheckOutput {
    /// Whether the server would serve the folder.
    pub fn is_whole(&self) -> bool {
        self.report.is_whole()
    }
}

impl fmt::Display for CheckOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        writeln!(f, "data folder: {}", self.data.display())?;
        writeln!(f, "database:    {}", r.folder.display())?;
        match r.recorded_generation {
            Some(g) => writeln!(
                f,
                "record:      generation {g}, closed cleanly: {}{}",
                if r.closed_cleanly { "yes" } else { "no" },
                match r.unchanged_since_clean_close {
                    Some(true) => ", files unchanged since",
                    Some(false) => ", files CHANGED since",
                    None => "",
                }
            )?,
            None => writeln!(f, "record:      none")?,
        }
        match &r.contents {
            Some(c) => {
                writeln!(
                    f,
                    "found:       generation {}, schema {}",
                    c.generation,
                    c.schema
                        .map_or("none (an earlier mesh)".to_owned(), |s| s.to_string())
                )?;
                writeln!(
                    f,
                    "contents:    {} users, {} devices, {} rooms, {} memberships, {} messages, {} P2P sessions",
                    c.users, c.devices, c.rooms, c.memberships, c.messages, c.sessions
                )?;
                for p in &c.problems {
                    writeln!(f, "problem:     {p}")?;
                }
                if c.problem_count > c.problems.len() as u64 {
                    writeln!(f, "             ... {} problems in all", c.problem_count)?;
                }
            }
            None => writeln!(f, "found:       no database")?,
        }
        match &r.refusal {
            None => writeln!(f, "OK: the server will serve it"),
            Some(why) => {
                writeln!(f, "NOT OK: {why}")?;
                writeln!(f, "{}", refusal_advice(&self.data))
            }
        }
    }
}

/// Checks the data folder `data` offline (`mesh-server check`): the
/// database, on a copy, as a start would. Errors only when it cannot be
/// checked (a server is running on it, I/O).
pub fn check_data(data: &Path) -> anyhow::Result<CheckOutput> {
    let report = mesh_core::storage::sled::check(data.join("db"))
        .with_context(|| format!("checking the database in {}", data.display()))?;
    Ok(CheckOutput {
        data: data.to_owned(),
        report,
    })
}

/// Serves mesh on `listeners` (a `TcpListener`, or [`Listeners`] with a
/// UDP socket for STUN and the relay) until `shutdown` resolves, then closes
/// WebSockets with 1001 and waits (up to [`Config::shutdown_grace`]) for
/// connections to finish.
///
/// The welcome announces the UDP socket's bound port
/// ([`P2pConfig::udp_port`] is set here).
pub async fn run(
    listeners: impl Into<Listeners>,
    mut config: Config,
    shutdown: impl Future<Output = impl Sized>,
) -> anyhow::Result<()> {
    let listeners = listeners.into();
    config.p2p.udp_port = listeners.udp_port();
    let service = open_service(&config).await?;
    serve(listeners, service, config, shutdown).await
}

/// Like [`run`], with a service built by the caller (with [`open_service`]
/// after setting [`P2pConfig::udp_port`] to the UDP socket's port, so that
/// the welcome announces it and the relay keys are handed out).
pub async fn serve(
    listeners: impl Into<Listeners>,
    service: Service,
    config: Config,
    shutdown: impl Future<Output = impl Sized>,
) -> anyhow::Result<()> {
    let Listeners { tcp: listener, udp } = listeners.into();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (alive_tx, mut all_done) = mpsc::channel::<()>(1);
    let grace = config.shutdown_grace;
    let relay = match udp {
        Some(udp) => {
            let verifier =
                TokenVerifier::from_jwks(&service.keys()).context("the relay's token verifier")?;
            let secret = service.config().engine.relay_secret.clone();
            if let Ok(addr) = udp.local_addr() {
                tracing::info!(
                    "STUN {} on UDP {addr}",
                    if secret.is_some() {
                        "and relay"
                    } else {
                        "(relay off)"
                    }
                );
            }
            let relay = Relay::new(secret, verifier, config.p2p.limits.clone(), Instant::now());
            let hub = Arc::new(relay::RelayHub::new(relay, Arc::new(udp), &config.p2p));
            tokio::spawn(relay::udp_loop(hub.clone(), stop_rx.clone()));
            if let Some(reports) = service.relay_usage_reports() {
                let (hub, service, stop) = (hub.clone(), service.clone(), stop_rx.clone());
                tokio::spawn(relay::share_usage(hub, service, reports, stop));
            }
            Some(hub)
        }
        None => None,
    };
    let state = Arc::new(AppState {
        service,
        config,
        shutdown: stop_rx,
        alive: alive_tx,
        relay,
    });
    tracing::debug!(addr = ?listener.local_addr(), "serving");
    let counter = Arc::new(ConnCounter::default());
    // When the server last said it is full: said at most every 10 s.
    let mut full_warned: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer_addr) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, don't spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let limits = &state.config.conn;
                // A trusted proxy's connection carries many clients: it
                // counts only towards the total (see `conn`).
                let key = (!state.config.trusted_proxies.contains(peer_addr.ip()))
                    .then(|| conn::client_key(peer_addr.ip()));
                let slot = match counter.admit(key, limits) {
                    Admission::Serve(slot) => slot,
                    Admission::Refuse(slot) => {
                        tracing::debug!(%peer_addr, "too many connections from one address: 429");
                        tokio::spawn(refuse(
                            stream,
                            slot,
                            limits.clone(),
                            state.config.tls.clone(),
                            state.alive.clone(),
                        ));
                        continue;
                    }
                    Admission::Drop => {
                        if full_warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                            tracing::warn!(
                                max = limits.max_connections,
                                "connection limit reached: closing new connections unanswered"
                            );
                            full_warned = Some(Instant::now());
                        }
                        drop(stream);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(state.clone(), stream, peer_addr, slot));
            }
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down");
    drop(listener);
    state.service.leave_cluster().await;
    let _ = stop_tx.send(true);
    drop(state);
    if tokio::time::timeout(grace, all_done.recv()).await.is_err() {
        tracing::warn!("connections still open after the grace period");
    }
    Ok(())
}

/// One admitted connection: the TLS handshake first on an HTTPS server,
/// then HTTP/1.1.
async fn serve_connection(
    state: Arc<AppState>,
    stream: tokio::net::TcpStream,
    peer_addr: std::net::SocketAddr,
    slot: Arc<ConnSlot>,
) {
    let _alive = state.alive.clone();
    match &state.config.tls {
        None => serve_http(state, stream, peer_addr, slot).await,
        Some(tls) => {
            let timeout = state.config.conn.header_timeout;
            if let Some(stream) = tls.accept(stream, timeout).await {
                serve_http(state, stream, peer_addr, slot).await;
            }
        }
    }
}

/// HTTP/1.1 until the connection ends, is idle too long, or upgrades to a
/// WebSocket (whose task then holds a clone of `slot`).
async fn serve_http<S>(
    state: Arc<AppState>,
    stream: S,
    peer_addr: std::net::SocketAddr,
    slot: Arc<ConnSlot>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut stop = state.shutdown.clone();
    let limits = state.config.conn.clone();
    let activity = Activity::new();
    // The header time-out is timed by `IdleIo`, not hyper, so that a
    // stalled header can be answered `408` (hyper closes unanswered).
    let io = TokioIo::new(IdleIo::new(stream, activity.clone(), limits.header_timeout));
    let ws_slot = slot.clone();
    let requests = activity.clone();
    let svc = hyper::service::service_fn(move |mut req| {
        req.extensions_mut().insert(ws_slot.clone());
        let in_flight = requests.request();
        let client = state
            .config
            .trusted_proxies
            .client_addr(peer_addr, req.headers());
        let answer = http::handle(state.clone(), client, req);
        async move {
            let answer = answer.await;
            drop(in_flight);
            answer
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => {
            // An upgrade ends `conn`; the WebSocket keeps the stream.
            activity.end_http();
            result
        }
        // Only while HTTP is spoken: an upgrade ends `conn`, and with it
        // this watch.
        _ = activity.idle_for(limits.idle_timeout) => {
            tracing::debug!(%peer_addr, "closing an idle connection");
            return;
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer_addr, error = %e, "http connection ended with an error");
    }
}

/// A connection past the per-address cap: one `429` answer (over TLS on an
/// HTTPS server), then closed. Bounded in time like any other connection.
async fn refuse(
    stream: tokio::net::TcpStream,
    slot: Arc<ConnSlot>,
    limits: ConnLimits,
    tls: Option<ServerTls>,
    alive: mpsc::Sender<()>,
) {
    let _alive = alive;
    let _slot = slot;
    match tls {
        None => answer_429(stream, limits).await,
        Some(tls) => {
            if let Some(stream) = tls.accept(stream, limits.header_timeout).await {
                answer_429(stream, limits).await;
            }
        }
    }
}

async fn answer_429<S>(stream: S, limits: ConnLimits)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let max = limits.max_per_addr;
    let svc = hyper::service::service_fn(move |_req| async move {
        Ok::<_, std::convert::Infallible>(http::too_many_connections(max))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(limits.header_timeout + limits.idle_timeout, conn).await;
}
