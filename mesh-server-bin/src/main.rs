//! `mesh-server`: the reference mesh server.
//!
//! ```text
//! mesh-server --listen 127.0.0.1:8000 --data ./mesh-data
//! mesh-server check --data ./mesh-data    # verify a stopped server's data folder
//! ```
//!
//! The rate, queue and connection limits have flags (and `MESH_*` variables) for load
//! tests and unusual deployments; left out, each keeps the default that
//! `docs/protocol.md` documents.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mesh_server_bin::tls::acme::Challenges;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// The reference mesh server: accounts, rooms, chat, presence, calls
/// signaling and P2P session orchestration on one port.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Something other than serving (none: serve).
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on.
    #[arg(long, env = "MESH_LISTEN", default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Folder for the signing keys, the TURN secret and the embedded
    /// database (created if missing).
    #[arg(long, env = "MESH_DATA", default_value = "./mesh-data")]
    data: PathBuf,
    /// Where records live: `sled` (in --data; one node) or a PostgreSQL URL,
    /// `postgres://user:password@host:port/database`, shared by every node
    /// of a deployment (docs/deploy.md) [default: sled].
    #[arg(long, env = "MESH_STORE", value_name = "sled|URL")]
    store: Option<String>,
    /// The bus to the other nodes of a deployment, `nats://host:4222`
    /// (several comma-separated); needs a PostgreSQL --store (docs/deploy.md).
    #[arg(long, env = "MESH_BUS", value_name = "URL")]
    bus: Option<String>,
    /// This node's name in the cluster, unique per node [default: random].
    #[arg(long, env = "MESH_NODE_ID")]
    node_id: Option<String>,
    /// Subjects on the bus start with this; deployments sharing one NATS
    /// keep apart by prefix [default: mesh].
    #[arg(long, env = "MESH_BUS_PREFIX")]
    bus_prefix: Option<String>,
    /// Milliseconds between this node's presence heartbeats [default: 5000].
    #[arg(long, env = "MESH_CLUSTER_HEARTBEAT_MS")]
    cluster_heartbeat_ms: Option<u64>,
    /// Milliseconds after which a silent node counts as gone, its users
    /// offline [default: 15000].
    #[arg(long, env = "MESH_CLUSTER_NODE_TIMEOUT_MS")]
    cluster_node_timeout_ms: Option<u64>,
    /// Connections to PostgreSQL this node opens at most [default: 16].
    #[arg(long, env = "MESH_STORE_CONNECTIONS")]
    store_connections: Option<usize>,
    /// Frames a WebSocket connection may send in a burst [default: 60].
    #[arg(long, env = "MESH_FRAME_BURST")]
    frame_burst: Option<u32>,
    /// Frames per second a WebSocket connection may send, sustained [default: 25].
    #[arg(long, env = "MESH_FRAME_RATE")]
    frame_rate: Option<f64>,
    /// Login and registration attempts per client address in a burst [default: 30].
    #[arg(long, env = "MESH_LOGIN_ADDR_BURST")]
    login_addr_burst: Option<u32>,
    /// Milliseconds until an address gets one more attempt [default: 2000].
    #[arg(long, env = "MESH_LOGIN_ADDR_REFILL_MS")]
    login_addr_refill_ms: Option<u64>,
    /// Failed logins per username in a burst [default: 10].
    #[arg(long, env = "MESH_LOGIN_USER_BURST")]
    login_user_burst: Option<u32>,
    /// Seconds until a username gets one more failed login [default: 30].
    #[arg(long, env = "MESH_LOGIN_USER_REFILL_SECS")]
    login_user_refill_secs: Option<u64>,
    /// Frames queued for one WebSocket client before it is closed with 1013 [default: 1000].
    #[arg(long, env = "MESH_WS_QUEUE_FRAMES")]
    ws_queue_frames: Option<usize>,
    /// Bytes queued for one WebSocket client before it is closed with 1013 [default: 1048576].
    #[arg(long, env = "MESH_WS_QUEUE_BYTES")]
    ws_queue_bytes: Option<usize>,
    /// Open connections (WebSockets included) per client address, IPv6 per /64;
    /// past it a connection gets 429 with Retry-After [default: 1000].
    #[arg(long, env = "MESH_MAX_CONNECTIONS_PER_ADDR")]
    max_connections_per_addr: Option<usize>,
    /// Open connections in all; past it new ones are closed unanswered. Keep it
    /// below `ulimit -n` less about a hundred for the database [default: 10000].
    #[arg(long, env = "MESH_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Milliseconds a request header may take, counted from when the server
    /// starts waiting for it (so also the longest idle wait between requests on
    /// a keep-alive connection); then a started header is answered 408 and the
    /// connection closed, a silent one closed unanswered [default: 10000].
    #[arg(long, env = "MESH_HEADER_TIMEOUT_MS")]
    header_timeout_ms: Option<u64>,
    /// Seconds an HTTP connection may go without a byte read or written (a
    /// stalled body, an unread answer) before it is closed; WebSockets have
    /// their own heartbeat [default: 60].
    #[arg(long, env = "MESH_IDLE_TIMEOUT_SECS")]
    idle_timeout_secs: Option<u64>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first). Reloaded
    /// without a restart when the file changes or on SIGHUP.
    #[arg(long, env = "MESH_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "MESH_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How often --tls-cert and --tls-key are checked for a change, in
    /// seconds (SIGHUP reloads them at once) [default: 10].
    #[arg(long, env = "MESH_TLS_RELOAD_SECS", value_name = "SECS")]
    tls_reload_secs: Option<u64>,
    /// Serve HTTPS with a certificate from ACME (Let's Encrypt by default)
    /// for this public DNS name; repeat for more names. Needs
    /// --http-listen reachable on port 80 of the names (HTTP-01).
    #[arg(
        long = "acme-domain",
        env = "MESH_ACME_DOMAINS",
        value_delimiter = ',',
        value_name = "NAME",
        conflicts_with = "tls_cert"
    )]
    acme_domains: Vec<String>,
    /// The ACME directory URL.
    #[arg(long, env = "MESH_ACME_DIRECTORY", default_value = mesh_server_bin::tls::acme::LETS_ENCRYPT)]
    acme_directory: String,
    /// A contact e-mail for the ACME account (expiry notices); repeatable.
    #[arg(
        long,
        env = "MESH_ACME_CONTACT",
        value_delimiter = ',',
        value_name = "EMAIL"
    )]
    acme_contact: Vec<String>,
    /// Where the ACME account and certificate are kept [default: DATA/acme];
    /// nodes of a cluster can share one folder.
    #[arg(long, env = "MESH_ACME_CACHE", value_name = "DIR")]
    acme_cache: Option<PathBuf>,
    /// Trust only this CA for the ACME server's own HTTPS (a private or test
    /// ACME server); default: the system's roots.
    #[arg(long, env = "MESH_ACME_DIRECTORY_CA", value_name = "FILE")]
    acme_directory_ca: Option<PathBuf>,
    /// With HTTPS: also listen for plain HTTP here, redirect it to HTTPS and
    /// answer ACME challenges (e.g. 0.0.0.0:80).
    #[arg(long, env = "MESH_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// A reverse proxy (CIDR, or one address) whose `X-Forwarded-For` /
    /// `Forwarded` header names the client; repeatable (comma-separated in
    /// the variable). Only the proxy's own address is trusted: from any
    /// other peer the headers are ignored. Its connections are exempt from
    /// the per-address cap; the client it names gets the per-address rate
    /// limits. See docs/operations.md [default: none].
    #[arg(
        long = "trusted-proxy",
        env = "MESH_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    trusted_proxy: Vec<mesh_server_bin::ProxyNet>,
    /// A STUN URL handed to callers (repeatable; with MESH_STUN_URL, comma-separated),
    /// e.g. `stun:turn.example.org:3478`.
    #[arg(long = "stun-url", env = "MESH_STUN_URL", value_delimiter = ',')]
    stun_urls: Vec<String>,
    /// A TURN URL handed to callers with time-limited credentials (repeatable;
    /// with MESH_TURN_URL, comma-separated), e.g.
    /// `turn:turn.example.org:3478?transport=udp`, `turns:turn.example.org:5349?transport=tcp`.
    #[arg(long = "turn-url", env = "MESH_TURN_URL", value_delimiter = ',')]
    turn_urls: Vec<String>,
    /// The secret shared with the TURN server (coturn `static-auth-secret`);
    /// created (0600, random) when TURN URLs are given and it is missing
    /// [default: DATA/turn.secret].
    #[arg(long, env = "MESH_TURN_SECRET_FILE")]
    turn_secret_file: Option<PathBuf>,
    /// Seconds a TURN credential stays valid [default: 3600].
    #[arg(long, env = "MESH_TURN_TTL_SECS")]
    turn_ttl_secs: Option<u64>,
    /// UDP address for address discovery (STUN Binding) and the P2P relay;
    /// announced to agents in the welcome [default: the IP of --listen and the port number TCP bound].
    #[arg(long, env = "MESH_UDP_LISTEN", value_name = "ADDR")]
    udp_listen: Option<SocketAddr>,
    /// Do not relay P2P sessions (STUN is still answered; relay binds are
    /// refused `disabled`, and agents are told the server does not relay).
    #[arg(
        long,
        env = "MESH_NO_RELAY",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    no_relay: bool,
    /// Seconds a relayed session may go without traffic before it ends [default: 30].
    #[arg(long, env = "MESH_RELAY_IDLE_SECS", value_name = "SECS")]
    relay_idle_secs: Option<u64>,
    /// MiB per second one relayed session may move, both ways together;
    /// more is dropped [default: 64].
    #[arg(long, env = "MESH_RELAY_SESSION_MIBPS", value_name = "MIB")]
    relay_session_mibps: Option<u64>,
    /// MiB per second one user may relay across all its sessions [default: 128].
    #[arg(long, env = "MESH_RELAY_USER_MIBPS", value_name = "MIB")]
    relay_user_mibps: Option<u64>,
    /// GiB one relayed session may move in all; past it the session ends
    /// [default: 8].
    #[arg(long, env = "MESH_RELAY_SESSION_GIB", value_name = "GIB")]
    relay_session_gib: Option<u64>,
    /// Relayed sessions one user may be a party of at once, across all the
    /// nodes of a cluster [default: 16].
    #[arg(long, env = "MESH_RELAY_USER_SESSIONS", value_name = "N")]
    relay_user_sessions: Option<usize>,
    /// The address at which agents reach this node's UDP port (STUN and
    /// the relay), as an IP with an optional port (default: the UDP port
    /// bound). In a cluster, set it on every node: a session is relayed by
    /// the node that granted it, and its grant names this address, so both
    /// agents meet there wherever they are connected.
    #[arg(long, env = "MESH_RELAY_PUBLIC_ADDR", value_name = "IP[:PORT]")]
    relay_public_addr: Option<String>,
    /// Seconds a P2P session grant (its token) stays valid for connecting;
    /// a connected session outlives it [default: 180].
    #[arg(long, env = "MESH_P2P_SESSION_TTL_SECS", value_name = "SECS")]
    p2p_session_ttl_secs: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify a stopped server's data folder and print what it holds.
    ///
    /// Checks the database as a start would (on a copy; nothing in the
    /// folder is changed). Exit code 0 when the server would serve it, 1
    /// when it would refuse it, 2 when it cannot be checked (e.g. a server
    /// is running on it). See docs/operations.md.
    Check {
        /// The data folder to check.
        #[arg(long, env = "MESH_DATA", default_value = "./mesh-data")]
        data: PathBuf,
    },
}

impl Args {
    /// The server's settings: the defaults, overridden by the flags given.
    fn config(&self) -> anyhow::Result<mesh_server_bin::Config> {
        let mut config = mesh_server_bin::Config::new(self.data.clone());
        if let Some(store) = &self.store {
            config.store = mesh_server_bin::StoreChoice::parse(store)?;
        }
        if let Some(bus) = &self.bus {
            let node_id = match &self.node_id {
                Some(id) => mesh_core::cluster::NodeId::new(id)?,
                None => mesh_core::cluster::NodeId::random(),
            };
            let mut cluster = mesh_core::cluster::ClusterConfig::new(node_id);
            if let Some(prefix) = &self.bus_prefix {
                anyhow::ensure!(
                    !prefix.is_empty()
                        && prefix
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                    "--bus-prefix is letters, digits, _ and -"
                );
                cluster.subject_prefix = prefix.clone();
            }
            if let Some(ms) = self.cluster_heartbeat_ms {
                anyhow::ensure!(ms >= 10, "--cluster-heartbeat-ms must be at least 10");
                cluster.heartbeat = Duration::from_millis(ms);
            }
            if let Some(ms) = self.cluster_node_timeout_ms {
                cluster.node_timeout = Duration::from_millis(ms);
            }
            anyhow::ensure!(
                cluster.node_timeout > cluster.heartbeat * 2,
                "--cluster-node-timeout-ms must be more than two heartbeats"
            );
            config.cluster = Some(mesh_server_bin::ClusterChoice {
                bus_url: bus.clone(),
                config: cluster,
            });
        } else {
            anyhow::ensure!(
                self.node_id.is_none() && self.bus_prefix.is_none(),
                "--node-id and --bus-prefix are for a cluster: give --bus too"
            );
        }
        if let Some(n) = self.store_connections {
            anyhow::ensure!(n >= 1, "--store-connections must be at least 1");
            match &mut config.store {
                mesh_server_bin::StoreChoice::Postgres { options, .. } => {
                    options.max_connections = n
                }
                mesh_server_bin::StoreChoice::Embedded => {
                    anyhow::bail!("--store-connections is for a PostgreSQL --store")
                }
            }
        }
        let frame = &mut config.service.frame_rate;
        if let Some(burst) = self.frame_burst {
            anyhow::ensure!(burst >= 1, "--frame-burst must be at least 1");
            frame.burst = burst;
        }
        if let Some(rate) = self.frame_rate {
            anyhow::ensure!(
                rate.is_finite() && rate > 0.0,
                "--frame-rate must be a positive number"
            );
            frame.per_second = rate;
        }
        let login = &mut config.service.login_rate;
        if let Some(burst) = self.login_addr_burst {
            login.per_addr_burst = burst;
        }
        if let Some(ms) = self.login_addr_refill_ms {
            login.per_addr_refill = Duration::from_millis(ms.max(1));
        }
        if let Some(burst) = self.login_user_burst {
            login.per_user_burst = burst;
        }
        if let Some(secs) = self.login_user_refill_secs {
            login.per_user_refill = Duration::from_secs(secs.max(1));
        }
        if let Some(frames) = self.ws_queue_frames {
            anyhow::ensure!(frames >= 1, "--ws-queue-frames must be at least 1");
            config.ws.queue_frames = frames;
        }
        if let Some(bytes) = self.ws_queue_bytes {
            config.ws.queue_bytes = bytes;
        }
        let conn = &mut config.conn;
        if let Some(n) = self.max_connections_per_addr {
            anyhow::ensure!(n >= 1, "--max-connections-per-addr must be at least 1");
            conn.max_per_addr = n;
        }
        if let Some(n) = self.max_connections {
            anyhow::ensure!(n >= 1, "--max-connections must be at least 1");
            conn.max_connections = n;
        }
        if let Some(ms) = self.header_timeout_ms {
            anyhow::ensure!(ms >= 1, "--header-timeout-ms must be at least 1");
            conn.header_timeout = Duration::from_millis(ms);
        }
        if let Some(secs) = self.idle_timeout_secs {
            anyhow::ensure!(secs >= 1, "--idle-timeout-secs must be at least 1");
            conn.idle_timeout = Duration::from_secs(secs);
        }
        config.trusted_proxies =
            mesh_server_bin::TrustedProxies::new(self.trusted_proxy.iter().copied());
        config.ice.stun_urls = self.stun_urls.clone();
        config.ice.turn_urls = self.turn_urls.clone();
        if let Some(secs) = self.turn_ttl_secs {
            anyhow::ensure!(secs >= 1, "--turn-ttl-secs must be at least 1");
            config.ice.turn_ttl = Duration::from_secs(secs);
        }
        config.p2p.relay = !self.no_relay;
        if let Some(secs) = self.relay_idle_secs {
            anyhow::ensure!(secs >= 1, "--relay-idle-secs must be at least 1");
            config.p2p.limits.idle_timeout = Duration::from_secs(secs);
        }
        const MIB: u64 = 1 << 20;
        if let Some(mib) = self.relay_session_mibps {
            anyhow::ensure!(
                (1..=1 << 20).contains(&mib),
                "--relay-session-mibps must be between 1 and 1048576"
            );
            config.p2p.limits.session_rate = mib * MIB;
        }
        if let Some(mib) = self.relay_user_mibps {
            anyhow::ensure!(
                (1..=1 << 20).contains(&mib),
                "--relay-user-mibps must be between 1 and 1048576"
            );
            config.p2p.limits.user_rate = mib * MIB;
        }
        if let Some(gib) = self.relay_session_gib {
            anyhow::ensure!(
                (1..=1 << 20).contains(&gib),
                "--relay-session-gib must be between 1 and 1048576"
            );
            config.p2p.limits.session_bytes = gib << 30;
        }
        if let Some(addr) = &self.relay_public_addr {
            config.p2p.public_addr = Some(
                mesh_server_bin::relay_public_addr(addr)
                    .map_err(|e| anyhow::anyhow!("--relay-public-addr: {e}"))?,
            );
        }
        if let Some(n) = self.relay_user_sessions {
            anyhow::ensure!(
                (1..=65_536).contains(&n),
                "--relay-user-sessions must be between 1 and 65536"
            );
            config.p2p.limits.user_sessions = n;
        }
        if let Some(secs) = self.p2p_session_ttl_secs {
            let max = mesh_core::auth::tokens::MAX_CAPABILITY_TTL.as_secs();
            anyhow::ensure!(
                (5..=max).contains(&secs),
                "--p2p-session-ttl-secs must be between 5 and {max}"
            );
            config.service.engine.session_ttl = Duration::from_secs(secs);
        }
        if !config.ice.turn_urls.is_empty() {
            let file = self
                .turn_secret_file
                .clone()
                .unwrap_or_else(|| self.data.join("turn.secret"));
            config.ice.turn_secret = mesh_server_bin::load_or_create_turn_secret(&file)?;
        }
        Ok(config)
    }
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    init_logging();
    match &args.command {
        Some(Command::Check { data }) => Ok(check(data)),
        None => {
            serve(args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `mesh-server check`: prints the report; the exit code tells the verdict.
fn check(data: &Path) -> ExitCode {
    let report = match mesh_server_bin::check_data(data) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot check {}: {e:#}", data.display());
            return ExitCode::from(2);
        }
    };
    print!("{report}");
    if report.is_whole() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[tokio::main]
async fn serve(args: Args) -> anyhow::Result<()> {
    let mut config = args.config()?;
    // The ports before the service, whose welcome announces the UDP port
    // (by default the TCP port's number, known once TCP is bound). TCP is
    // bound but not listening yet: a server that refuses its data still
    // never accepts a connection.
    let tcp = if args.listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }?;
    #[cfg(unix)]
    tcp.set_reuseaddr(true)?;
    tcp.bind(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    let udp_addr = match args.udp_listen {
        Some(addr) => addr,
        None => tcp.local_addr()?,
    };
    let udp = match tokio::net::UdpSocket::bind(udp_addr).await {
        Ok(udp) => udp,
        // `--listen HOST:0` picked a free TCP port whose number is taken
        // for UDP: any free UDP port will do (the welcome announces it).
        Err(_) if args.udp_listen.is_none() && args.listen.port() == 0 => {
            let any = SocketAddr::new(udp_addr.ip(), 0);
            tokio::net::UdpSocket::bind(any)
                .await
                .with_context(|| format!("binding UDP {any}"))?
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("binding UDP {udp_addr} (--udp-listen)"))
            );
        }
    };
    config.p2p.udp_port = Some(udp.local_addr()?.port());
    // The data folder first: a server that refuses its data never listens.
    let service = mesh_server_bin::open_service(&config).await?;
    let challenges = tls_setup(&args, &mut config, &service)?;
    let listener = tcp
        .listen(1024)
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if !args.trusted_proxy.is_empty() {
        let nets: Vec<String> = args.trusted_proxy.iter().map(ToString::to_string).collect();
        tracing::info!(
            "trusting the client address forwarded by {}",
            nets.join(", ")
        );
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!("listening on {addr} ({scheme})");
    if config.tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            "serving plain HTTP on {addr}: passwords and tokens cross the network in clear. \
             Use --tls-cert/--tls-key or --acme-domain, or a reverse proxy that speaks HTTPS \
             (see docs/operations.md, \"On the internet\")"
        );
    }
    if let Some(http_addr) = args.http_listen {
        let http = tokio::net::TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("binding {http_addr} (--http-listen)"))?;
        tracing::info!("redirecting plain HTTP on {} to HTTPS", http.local_addr()?);
        tokio::spawn(mesh_server_bin::serve_redirect(
            http,
            addr.port(),
            challenges,
            std::future::pending::<()>(),
        ));
    }
    let listeners = mesh_server_bin::Listeners {
        tcp: listener,
        udp: Some(udp),
    };
    mesh_server_bin::serve(listeners, service, config, shutdown_signal()).await
}

/// HTTPS from the flags: the certificate files (watched for changes), or
/// ACME (ordering in the background). Returns the ACME challenges the
/// HTTP listener answers.
fn tls_setup(
    args: &Args,
    config: &mut mesh_server_bin::Config,
    service: &mesh_core::service::Service,
) -> anyhow::Result<Option<Arc<Challenges>>> {
    use mesh_server_bin::tls::{CertStore, ServerTls, acme, files};
    let store = CertStore::new();
    let mut challenges = None;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let mut files = files::Config::new(cert, key);
        if let Some(secs) = args.tls_reload_secs {
            anyhow::ensure!(secs >= 1, "--tls-reload-secs must be at least 1");
            files.reload_every = Duration::from_secs(secs);
        }
        let watcher = files::watch(files, store.clone())?;
        tokio::spawn(watcher);
    } else if !args.acme_domains.is_empty() {
        anyhow::ensure!(
            args.http_listen.is_some(),
            "--acme-domain needs --http-listen (the ACME server checks the name over plain \
             HTTP on port 80)"
        );
        let acme = acme::Config {
            domains: args.acme_domains.clone(),
            directory: args.acme_directory.clone(),
            contact: args
                .acme_contact
                .iter()
                .map(|c| match c.strip_prefix("mailto:") {
                    Some(_) => c.clone(),
                    None => format!("mailto:{c}"),
                })
                .collect(),
            cache: args
                .acme_cache
                .clone()
                .unwrap_or_else(|| args.data.join("acme")),
            directory_ca: args.acme_directory_ca.clone(),
        };
        let c = acme::Challenges::new();
        // In a cluster the nodes share the order (see `acme`).
        let cluster = service.cluster_nodes().map(|_| service.clone());
        tokio::spawn(acme::run(acme, store.clone(), c.clone(), cluster));
        challenges = Some(c);
    } else {
        anyhow::ensure!(
            args.http_listen.is_none(),
            "--http-listen redirects to HTTPS: it needs --tls-cert/--tls-key or --acme-domain"
        );
        return Ok(None);
    }
    config.tls = Some(ServerTls::new(store)?);
    Ok(challenges)
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
