//! The reference mesh server as a library: [`run`] serves the REST API and
//! the WebSocket on one listener until `shutdown` resolves.
//!
//! `main.rs` only parses flags and calls [`run`]; the integration tests call
//! it on `127.0.0.1:0`.
//!
//! Every connection is admitted by [`conn`] first: capped per client
//! address and in total, and closed when its request header takes too long
//! or it sits idle (see [`ConnLimits`]).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let config = mesh_server_bin::Config::new("./mesh-data");
//! mesh_server_bin::run(listener, config, tokio::signal::ctrl_c()).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use mesh_core::auth::KeyRing;
use mesh_core::service::{Service, ServiceConfig};
use mesh_core::storage::sled::SledStore;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

mod conn;
mod http;
mod web;
mod ws;

pub use conn::ConnLimits;
pub use ws::WsLimits;

use conn::{Activity, Admission, ConnCounter, ConnSlot, IdleIo};

/// Settings of a server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the database (`db/`) and the signing keys (`keys/`) live.
    pub data_dir: PathBuf,
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
}

impl Config {
    /// Defaults, with data kept in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            max_body_bytes: 64 * 1024,
            ws: WsLimits::default(),
            conn: ConnLimits::default(),
            service: ServiceConfig::default(),
            shutdown_grace: Duration::from_secs(5),
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
}

/// Opens the data folder: the sled database and the signing keys.
pub fn open_service(config: &Config) -> anyhow::Result<Service> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data folder {}", config.data_dir.display()))?;
    let store = SledStore::open(config.data_dir.join("db"))
        .with_context(|| format!("opening the database in {}", config.data_dir.display()))?;
    let keys = KeyRing::load_or_generate(&config.data_dir.join("keys"))
        .context("loading the signing keys")?;
    let service = Service::builder()
        .store(store)
        .keys(keys)
        .config(config.service.clone())
        .build()?;
    Ok(service)
}

/// Serves mesh on `listener` until `shutdown` resolves, then closes
/// WebSockets with 1001 and waits (up to [`Config::shutdown_grace`]) for
/// connections to finish.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = impl Sized>,
) -> anyhow::Result<()> {
    let service = open_service(&config)?;
    serve(listener, service, config, shutdown).await
}

/// Like [`run`], with a service built by the caller.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    config: Config,
    shutdown: impl Future<Output = impl Sized>,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (alive_tx, mut all_done) = mpsc::channel::<()>(1);
    let timers = tokio::spawn(service.clone().run_timers());
    let grace = config.shutdown_grace;
    let state = Arc::new(AppState {
        service,
        config,
        shutdown: stop_rx,
        alive: alive_tx,
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
                let slot = match counter.admit(conn::client_key(peer_addr), limits) {
                    Admission::Serve(slot) => slot,
                    Admission::Refuse(slot) => {
                        tracing::debug!(%peer_addr, "too many connections from one address: 503");
                        tokio::spawn(refuse(stream, slot, limits.clone(), state.alive.clone()));
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
    let _ = stop_tx.send(true);
    drop(state);
    if tokio::time::timeout(grace, all_done.recv()).await.is_err() {
        tracing::warn!("connections still open after the grace period");
    }
    timers.abort();
    Ok(())
}

/// One admitted connection: HTTP/1.1 until it ends, is idle too long, or
/// upgrades to a WebSocket (whose task then holds a clone of `slot`).
async fn serve_connection(
    state: Arc<AppState>,
    stream: tokio::net::TcpStream,
    peer_addr: std::net::SocketAddr,
    slot: Arc<ConnSlot>,
) {
    let _alive = state.alive.clone();
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
        let answer = http::handle(state.clone(), peer_addr, req);
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

/// A connection past the per-address cap: one `503` answer, then closed.
/// Bounded in time like any other connection.
async fn refuse(
    stream: tokio::net::TcpStream,
    slot: Arc<ConnSlot>,
    limits: ConnLimits,
    alive: mpsc::Sender<()>,
) {
    let _alive = alive;
    let _slot = slot;
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
