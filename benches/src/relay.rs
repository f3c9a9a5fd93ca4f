//! Figure 12, P2P through the relay: file bytes per second between two mesh
//! agents through mesh-server's relay (UDP) on loopback, against the direct
//! path in the same run (same file, same agents, same server-granted
//! sessions); the CPU both cost per GiB; and the time to the first byte of
//! each path.
//!
//! The server is mesh-server's library in a child process of this binary
//! (`mesh-load relay-server`: `mesh_server_bin::run` on `127.0.0.1:0`, its
//! UDP port on the same port number), so that its CPU time is its own
//! (`/proc/<pid>/stat`). The relay's per-session and per-user budgets (64
//! and 128 MiB/s by default, more is dropped) are lifted there, since the
//! figure is what the relay can carry, not what it lets one session have;
//! one more transfer against a stock-budget server shows that cap.
//!
//! The agents are in this process, wired as the CLI wires them: each a
//! `mesh_core::client::Client` announcing its `P2pEndpoint`, the endpoint
//! told the server's paths (`Client::p2p_paths` → `use_server`: STUN, the
//! relay over UDP). The target expects the sessions the server announces
//! (`expect_announced`, which also binds it at the relay); the initiator
//! asks for a session (`request_p2p_session`) and connects with
//! `connect_announced` and the relay grant. Which path a session takes is
//! chosen by the candidates the initiator is given (checked with
//! `OutgoingSession::path` on both sides):
//!
//! - direct: the target's announced addresses (loopback);
//! - relay at once: none, so there is no direct attempt and the relay is
//!   tried as soon as it is bound;
//! - relay after the grace: only a loopback UDP port that nobody reads
//!   (silent, no ICMP), so the relay is tried after `RELAY_DELAY` (2 s).
//!   A documentation address (`192.0.2.1:9`) does not do it here: from a
//!   socket bound to 127.0.0.1 the send fails at once, so the relay is
//!   tried at once.
//!
//! Throughput: each transfer a fresh session, timed from
//! `request_p2p_session` until the receiver holds every byte (verified,
//! synced, renamed), as in figure 7; rounds alternate direct and relay at
//! once; ratios are the medians of the rounds' ratios. Time to first byte:
//! a 64 KiB file, from `request_p2p_session` to the target's first progress
//! callback with bytes in it (the first file byte received and written at
//! the target); also to the end of the handshake (`connect_announced`
//! returned: QUIC handshake and `P2P_HELLO`/`P2P_WELCOME`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use mesh_core::auth::TokenVerifier;
use mesh_core::client::{Client, Event, HttpApi};
use mesh_core::p2p::{
    IncomingSession, OutgoingSession, P2pEndpoint, PathKind, PathStats, ReceiveOptions, SendOptions,
};
use mesh_core::protocol::http::{CreateRoomRequest, RegisterRequest};
use mesh_core::protocol::{P2pInfo, PeerId, RoomId, SessionKind};
use tokio::sync::{Mutex, mpsc};

use crate::ctx::{CpuMeter, Ctx, cpu_secs, median};
use crate::p2p::{on_every_core, scratch, write_file};
use crate::proc::{Server, ServerKind};
use crate::report::Figure;

const MIB: usize = 1024 * 1024;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
/// The file of the time-to-first-byte runs.
const SMALL: usize = 64 * 1024;
/// No transfer may take longer (the stock-budget one is the slow one).
const TRANSFER_LIMIT: Duration = Duration::from_secs(180);

/// The server for the figure: `mesh-load relay-server`.
pub(crate) fn serve(data: PathBuf, stock_limits: bool) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let mut config = mesh_server_bin::Config::new(data);
            if !stock_limits {
                let l = &mut config.p2p.limits;
                l.session_rate = 1 << 40;
                l.user_rate = 1 << 40;
                l.session_bytes = 1 << 50;
                l.user_sessions = 10_000;
            }
            // A few dozen sessions are asked for in a row.
            config.service.frame_rate.burst = 1_000_000;
            config.service.frame_rate.per_second = 1_000_000.0;
            let any: SocketAddr = "127.0.0.1:0".parse()?;
            let listeners = mesh_server_bin::Listeners::bind(any, None).await?;
            let addr = listeners.tcp.local_addr()?;
            let udp = listeners.udp_port();
            eprintln!("listening on {addr} (udp port {udp:?})");
            mesh_server_bin::run(listeners, config, std::future::pending::<()>()).await
        })
}

/// Which path a session is made to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    RelayAtOnce,
    RelayAfterGrace,
}

impl Mode {
    fn candidates(self, announced: &[String], silent: SocketAddr) -> Vec<String> {
        match self {
            Mode::Direct => announced.to_vec(),
            Mode::RelayAtOnce => Vec::new(),
            Mode::RelayAfterGrace => vec![silent.to_string()],
        }
    }

    fn path(self) -> PathKind {
        match self {
            Mode::Direct => PathKind::Direct,
            _ => PathKind::Relay,
        }
    }
}

/// One session: times from `request_p2p_session`, CPU deltas over it.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Until the receiver held every byte.
    secs: f64,
    /// Until `connect_announced` returned.
    handshake: f64,
    /// Until the target's first progress with bytes in it.
    first_byte: f64,
    /// This process (both agents and their server connections).
    agents_cpu: f64,
    /// The server process.
    server_cpu: f64,
    /// The sender's QUIC path at the end.
    quic: PathStats,
}

/// A user's agent: its server connection and its endpoint.
struct Agent {
    client: Client,
    endpoint: Arc<P2pEndpoint>,
    me: PeerId,
}

/// Two agents in a room of a server: a target accepting file sessions the
/// server announces, and an initiator.
struct Pair {
    initiator: Agent,
    target: Agent,
    room: RoomId,
    incoming: Mutex<mpsc::Receiver<IncomingSession>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    server_pid: u32,
    /// A loopback UDP port nobody reads: a direct candidate that stays
    /// silent (no ICMP either). A documentation address such as
    /// 192.0.2.1 fails at once from a socket bound to 127.0.0.1.
    silent: std::net::UdpSocket,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.initiator.endpoint.close();
        self.target.endpoint.close();
    }
}

async fn agent(
    url: &str,
    api: &HttpApi,
    name: &str,
    verifier: Option<TokenVerifier>,
) -> anyhow::Result<(Agent, mesh_core::client::EventStream)> {
    let auth = api
        .register(&RegisterRequest {
            username: name.into(),
            password: "correct horse battery".into(),
            ..RegisterRequest::default()
        })
        .await
        .with_context(|| format!("registering {name}"))?;
    let mut builder = P2pEndpoint::builder(mesh_core::p2p::AgentIdentity::generate()?)
        .connect_timeout(Duration::from_secs(20));
    if let Some(v) = verifier {
        builder = builder.accept_sessions(v).accept_kinds([SessionKind::File]);
    }
    let endpoint = Arc::new(builder.bind("127.0.0.1:0".parse()?)?);
    let client = Client::builder()
        .server(url.to_owned())
        .token(auth.token)
        .device_name(format!("{name}-agent"))
        .p2p(endpoint.p2p_info(Vec::new()))
        .connect()
        .await
        .with_context(|| format!("{name} connects"))?;
    let events = client.events().context("the event stream")?;
    let (me, _) = client.me().context("not welcomed")?;
    endpoint.set_peer_id(me);
    // As `mesh-cli`'s `use_server`: STUN and the relay.
    let paths = client.p2p_paths(true).await;
    ensure!(
        paths.relay && paths.udp.is_some(),
        "the server offers no UDP relay: {paths:?}"
    );
    endpoint.use_server(paths);
    Ok((
        Agent {
            client,
            endpoint,
            me,
        },
        events,
    ))
}

impl Pair {
    async fn new(server: &Server) -> anyhow::Result<Self> {
        let url = format!("http://{}", server.addr);
        let api = HttpApi::new(&url)?;
        let jwks = api.keys().await.context("GET /api/auth/keys")?;
        let verifier = TokenVerifier::from_jwks(&jwks)?;
        let (target, mut target_events) = agent(&url, &api, "relay-target", Some(verifier)).await?;
        let (initiator, _events) = agent(&url, &api, "relay-sender", None).await?;
        let room = initiator
            .client
            .create_room(&CreateRoomRequest {
                name: "relay-bench".into(),
                ..CreateRoomRequest::default()
            })
            .await
            .context("creating the room")?
            .id;
        target.client.join_room(room).await.context("joining")?;

        let mut tasks = Vec::new();
        // The target's agent loop: expect what the server announces.
        let endpoint = target.endpoint.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(event) = target_events.next().await {
                if let Event::P2pSessionCreated(g) = event
                    && let Err(e) = endpoint.expect_announced(
                        &g.session,
                        &g.initiator,
                        &g.session_token,
                        g.relay.as_ref(),
                    )
                {
                    eprintln!("   expect_announced: {e}");
                }
            }
        }));
        let (tx, rx) = mpsc::channel(4);
        let endpoint = target.endpoint.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(got) = endpoint.accept().await {
                match got {
                    Ok(inc) => {
                        if tx.send(inc).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("   a refused or failed session at the target: {e}"),
                }
            }
        }));
        Ok(Self {
            initiator,
            target,
            room,
            incoming: Mutex::new(rx),
            tasks,
            server_pid: server.pid(),
            silent: std::net::UdpSocket::bind("127.0.0.1:0")?,
        })
    }

    /// One session of `mode` sending `src` into `dest`; the received copy
    /// is removed after the clock stopped.
    async fn transfer(
        &self,
        mode: Mode,
        src: &Path,
        dest: &Path,
        size: u64,
    ) -> anyhow::Result<Run> {
        let (cpu0, server0) = (cpu_secs(std::process::id()), cpu_secs(self.server_pid));
        let at = Instant::now();
        let grant = self
            .initiator
            .client
            .request_p2p_session(self.room, self.target.me, SessionKind::File)
            .await
            .context("p2p.session.request")?;
        let peer = P2pInfo {
            cert_fingerprint: grant.target.cert_fingerprint.clone(),
            addrs: mode.candidates(&grant.target.addrs, self.silent.local_addr()?),
        };
        ensure!(grant.relay.is_some(), "the server granted no relay");
        let out: OutgoingSession = self
            .initiator
            .endpoint
            .connect_announced(
                &peer,
                grant.session.id,
                &grant.session_token,
                grant.relay.as_ref(),
            )
            .await
            .with_context(|| format!("connecting ({mode:?})"))?;
        let handshake = at.elapsed().as_secs_f64();
        let inc = self
            .incoming
            .lock()
            .await
            .recv()
            .await
            .context("the target stopped accepting")?;
        ensure!(
            inc.session_id() == grant.session.id,
            "the target accepted another session"
        );
        ensure!(
            out.path() == mode.path() && inc.path() == mode.path(),
            "{mode:?} took the {} path (target: {})",
            out.path(),
            inc.path()
        );
        let first: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
        let seen = first.clone();
        let into = dest.to_owned();
        let receiver = tokio::spawn(async move {
            inc.receive_file(&into, &ReceiveOptions::default(), move |p| {
                if p.done > 0 {
                    seen.get_or_init(Instant::now);
                }
            })
            .await
        });
        let monitor = out.monitor();
        let sent = out
            .send_file(src, &SendOptions::default(), |_| {})
            .await
            .context("sending")?;
        let got = receiver.await?.context("receiving")?;
        let secs = at.elapsed().as_secs_f64();
        let run = Run {
            secs,
            handshake,
            first_byte: first
                .get()
                .map_or(secs, |t| t.duration_since(at).as_secs_f64()),
            agents_cpu: cpu_secs(std::process::id()) - cpu0,
            server_cpu: cpu_secs(self.server_pid) - server0,
            quic: monitor.stats(),
        };
        self.initiator.client.close_p2p_session(grant.session.id);
        ensure!(
            got.size == size && got.blake3 == sent.blake3 && got.resumed_from == 0,
            "the received file differs: {got:?}"
        );
        std::fs::remove_file(&got.path)?;
        Ok(run)
    }

    async fn timed_transfer(
        &self,
        mode: Mode,
        src: &Path,
        dest: &Path,
        size: u64,
    ) -> anyhow::Result<Run> {
        tokio::time::timeout(TRANSFER_LIMIT, self.transfer(mode, src, dest, size))
            .await
            .with_context(|| format!("{mode:?} transfer: over {TRANSFER_LIMIT:?}"))?
    }
}

/// This network namespace's UDP counters (`/proc/net/snmp`): datagrams
/// in, and those dropped for a full receive or send buffer. Machine-wide,
/// but nothing else here moves much UDP.
#[derive(Debug, Default, Clone, Copy)]
struct Udp {
    in_datagrams: u64,
    rcvbuf_errors: u64,
    sndbuf_errors: u64,
}

impl Udp {
    fn read() -> Self {
        let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
        let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            return Self::default();
        };
        let get = |key: &str| {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == key)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0)
        };
        Self {
            in_datagrams: get("InDatagrams"),
            rcvbuf_errors: get("RcvbufErrors"),
            sndbuf_errors: get("SndbufErrors"),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            in_datagrams: self.in_datagrams.saturating_sub(before.in_datagrams),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(before.rcvbuf_errors),
            sndbuf_errors: self.sndbuf_errors.saturating_sub(before.sndbuf_errors),
        }
    }

    fn add(&mut self, other: Self) {
        self.in_datagrams += other.in_datagrams;
        self.rcvbuf_errors += other.rcvbuf_errors;
        self.sndbuf_errors += other.sndbuf_errors;
    }
}

/// What the figure measured.
#[derive(Debug, Default)]
struct Measured {
    direct: Vec<Run>,
    relay: Vec<Run>,
    /// relay bytes/s over direct bytes/s, per round.
    ratios: Vec<f64>,
    ttfb_direct: Vec<Run>,
    ttfb_relay_at_once: Vec<Run>,
    ttfb_relay_after_grace: Vec<Run>,
    /// Relayed datagrams the initiator sent, received and dropped during
    /// the relayed rounds.
    relayed_out: u64,
    relayed_in: u64,
    relay_dropped: u64,
    /// UDP counters over the relayed and over the direct rounds.
    udp_relay: Udp,
    udp_direct: Udp,
    /// Server CPU as a share of one core during the relayed rounds, and
    /// each core's busy share meanwhile.
    server_load: Vec<f64>,
    agents_load: Vec<f64>,
    cores: Vec<String>,
    /// One relayed transfer against a server with the default budgets.
    stock: Option<anyhow::Result<Run>>,
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    server: Arc<Server>,
    stock: Option<Arc<Server>>,
    src: PathBuf,
    small: PathBuf,
    dest: PathBuf,
    size: u64,
    rounds: usize,
    trials: usize,
) -> anyhow::Result<Measured> {
    let pair = Pair::new(&server).await?;
    let mut m = Measured::default();
    // Warm-up, untimed: one of each path (the relayed one small: slow).
    pair.timed_transfer(Mode::Direct, &src, &dest, size).await?;
    pair.timed_transfer(Mode::RelayAtOnce, &small, &dest, SMALL as u64)
        .await?;
    for round in 0..rounds {
        eprintln!("   round {}/{rounds}", round + 1);
        let udp0 = Udp::read();
        let d = pair.timed_transfer(Mode::Direct, &src, &dest, size).await?;
        let udp1 = Udp::read();
        m.udp_direct.add(udp1.since(udp0));
        let stats0 = pair.initiator.endpoint.socket_stats();
        let meter = CpuMeter::start_pid(server.pid());
        let r = pair
            .timed_transfer(Mode::RelayAtOnce, &src, &dest, size)
            .await?;
        let (server_load, agents_load) = meter.read();
        m.udp_relay.add(Udp::read().since(udp1));
        m.cores.push(meter.cores());
        m.server_load.push(server_load);
        m.agents_load.push(agents_load);
        let stats = pair.initiator.endpoint.socket_stats();
        m.relayed_out += stats.relayed_out - stats0.relayed_out;
        m.relayed_in += stats.relayed_in - stats0.relayed_in;
        m.relay_dropped += stats.relay_dropped - stats0.relay_dropped;
        m.ratios.push(d.secs / r.secs);
        m.direct.push(d);
        m.relay.push(r);
    }
    let small_size = SMALL as u64;
    for _ in 0..trials {
        for (mode, into) in [
            (Mode::Direct, &mut m.ttfb_direct),
            (Mode::RelayAtOnce, &mut m.ttfb_relay_at_once),
            (Mode::RelayAfterGrace, &mut m.ttfb_relay_after_grace),
        ] {
            into.push(pair.timed_transfer(mode, &small, &dest, small_size).await?);
        }
    }
    drop(pair);
    if let Some(stock) = stock {
        let run = async {
            let pair = Pair::new(&stock).await?;
            pair.timed_transfer(Mode::RelayAtOnce, &src, &dest, size)
                .await
        }
        .await;
        m.stock = Some(run);
    }
    Ok(m)
}

fn quic_list(runs: &[Run]) -> String {
    runs.iter()
        .map(|r| {
            let q = r.quic;
            format!(
                "{:.2} ms, {} KiB, {}, {}/{}",
                q.rtt.as_secs_f64() * 1000.0,
                q.cwnd / 1024,
                q.congestion_events,
                q.lost_packets,
                q.sent_packets
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Figure> {
    let size = if ctx.quick { 64 * MIB } else { 512 * MIB };
    let rounds = if ctx.quick { 1 } else { 3 };
    let trials = if ctx.quick { 2 } else { 5 };
    let (dir, medium) = scratch(ctx, "mesh-bench-relay-")?;
    let src = dir.path().join("payload.bin");
    let small = dir.path().join("small.bin");
    let dest = dir.path().join("inbox");
    std::fs::create_dir(&dest)?;
    {
        let (src, small) = (src.clone(), small.clone());
        tokio::task::spawn_blocking(move || {
            write_file(&src, size)?;
            write_file(&small, SMALL)
        })
        .await??;
    }
    // Unpinned, like the agents: the relay may use any core.
    let server = Arc::new(Server::start(
        &ServerKind::Relay {
            stock_limits: false,
        },
        None,
        &ctx.data_parent,
    )?);
    let stock = Arc::new(Server::start(
        &ServerKind::Relay { stock_limits: true },
        None,
        &ctx.data_parent,
    )?);
    let cores = ctx.pin.cores.max(1);
    let (s2, st2, src2, small2, dest2) = (
        server.clone(),
        stock.clone(),
        src.clone(),
        small.clone(),
        dest.clone(),
    );
    let m = on_every_core(ctx, move || async move {
        measure(
            s2,
            Some(st2),
            src2,
            small2,
            dest2,
            size as u64,
            rounds,
            trials,
        )
        .await
    })
    .await
    .with_context(|| format!("server log:\n{}", server.last_log()))?;
    drop(dir);

    let list = |v: &[f64], digits: usize| {
        v.iter()
            .map(|x| format!("{x:.digits$}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mib_s = |runs: &[Run]| {
        runs.iter()
            .map(|r| size as f64 / r.secs / MIB as f64)
            .collect::<Vec<_>>()
    };
    let per_gib = |runs: &[Run], f: fn(&Run) -> f64| {
        median(
            &runs
                .iter()
                .map(|r| f(r) * GIB / size as f64)
                .collect::<Vec<_>>(),
        )
    };
    let ms = |runs: &[Run], f: fn(&Run) -> f64| {
        let v: Vec<f64> = runs.iter().map(|r| f(r) * 1000.0).collect();
        format!("median {:.1} ms ({})", median(&v), list(&v, 1))
    };
    let (direct, relay) = (mib_s(&m.direct), mib_s(&m.relay));
    let (direct_med, relay_med) = (median(&direct), median(&relay));
    let ratio = median(&m.ratios);
    let stock = match &m.stock {
        Some(Ok(r)) => format!(
            "{:.0} MiB/s (one relayed transfer; the stock per-session budget is 64 MiB/s, both ways together)",
            size as f64 / r.secs / MIB as f64
        ),
        Some(Err(e)) => format!("failed: {e:#}"),
        None => "not measured".to_owned(),
    };
    let mut fig = Figure::new(
        "p2p-relay",
        format!(
            "P2P file bytes per second through mesh-server's UDP relay on loopback, {} MiB file",
            size / MIB
        ),
    )
    .value(relay_med * MIB as f64, "bytes/s")
    .baseline(
        "the direct path between the same agents, same file, same run (server-granted sessions both)",
        direct_med * MIB as f64,
    );
    fig.ratio = Some(ratio);
    Ok(fig
        .goal("ratio >= 0.7 of direct", ratio >= 0.7)
        .detail(
            "MiB/s",
            format!(
                "median: relay {relay_med:.0}, direct {direct_med:.0}; rounds relay {}, direct {}",
                list(&relay, 0),
                list(&direct, 0)
            ),
        )
        .detail("ratios", format!("rounds {}", list(&m.ratios, 3)))
        .detail(
            "cpu/GiB",
            format!(
                "CPU seconds per GiB (median): server (relaying) {:.2}, server (direct, idle) {:.2}; \
                 agents, both in this process: relay {:.2}, direct {:.2}",
                per_gib(&m.relay, |r| r.server_cpu),
                per_gib(&m.direct, |r| r.server_cpu),
                per_gib(&m.relay, |r| r.agents_cpu),
                per_gib(&m.direct, |r| r.agents_cpu),
            ),
        )
        .detail(
            "load",
            format!(
                "while relaying, in cores busy: server {}, agents {}; machine {}",
                list(&m.server_load, 2),
                list(&m.agents_load, 2),
                m.cores.join(" / ")
            ),
        )
        .detail(
            "datagrams",
            format!(
                "initiator, relayed rounds: {} out, {} in, {} dropped; {:.0} file bytes per datagram out",
                m.relayed_out,
                m.relayed_in,
                m.relay_dropped,
                (size as f64 * rounds as f64) / m.relayed_out.max(1) as f64
            ),
        )
        .detail(
            "udp",
            format!(
                "kernel UDP counters (/proc/net/snmp), relayed rounds: {} datagrams in, {} receive-buffer \
                 drops, {} send-buffer drops; direct rounds: {} in, {} receive-buffer drops, {} send-buffer drops",
                m.udp_relay.in_datagrams,
                m.udp_relay.rcvbuf_errors,
                m.udp_relay.sndbuf_errors,
                m.udp_direct.in_datagrams,
                m.udp_direct.rcvbuf_errors,
                m.udp_direct.sndbuf_errors
            ),
        )
        .detail(
            "quic",
            format!(
                "the sender's QUIC path at each round's end (rtt, cwnd, congestion events, lost/sent packets): \
                 relay {}; direct {}",
                quic_list(&m.relay),
                quic_list(&m.direct)
            ),
        )
        .detail("stock", stock)
        .detail("ttfb_dir", ms(&m.ttfb_direct, |r| r.first_byte))
        .detail("ttfb_rly", ms(&m.ttfb_relay_at_once, |r| r.first_byte))
        .detail("ttfb_rly2", ms(&m.ttfb_relay_after_grace, |r| r.first_byte))
        .detail("hs_dir", ms(&m.ttfb_direct, |r| r.handshake))
        .detail("hs_rly", ms(&m.ttfb_relay_at_once, |r| r.handshake))
        .detail("hs_rly2", ms(&m.ttfb_relay_after_grace, |r| r.handshake))
        .detail("file_on", medium)
        .detail("size", size as u64)
        .detail(
            "threads",
            format!("{cores} tokio workers for the agents, server in its own process, all unpinned"),
        )
        .note(
            "each transfer a fresh server-granted session, timed from request_p2p_session until the \
             receiver holds every byte; relay = no direct candidate (relay at once); the server's \
             relay budgets lifted (see stock); ttfb = request_p2p_session to the first file byte at \
             the target (64 KiB file), hs = to the end of connect_announced; rly = no direct \
             candidate, rly2 = one silent direct candidate, a loopback UDP port nobody reads (includes the 2 s RELAY_DELAY); \
             ratio = median of the rounds' relay/direct",
        ))
}
