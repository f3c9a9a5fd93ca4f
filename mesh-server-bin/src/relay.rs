//! The relay's IO: the UDP socket (STUN Binding and relay frames) and the
//! hub that the `GET /api/p2p/relay` WebSocket (`crate::http::relay_ws`)
//! also feeds, both driving one sans-IO [`mesh_core::relay::server::Relay`].
//!
//! The UDP socket is read by one task, in batches as quinn reads its own
//! (quinn-udp: `recvmmsg` and GRO, so a burst of same-sized datagrams from
//! one agent arrives as one buffer): each datagram goes through the relay
//! under a std `Mutex` (held for hash lookups and, on a `BIND`, at most one
//! signature check: never across an `.await`), and runs of datagrams
//! forwarded to the same party leave as one GSO send, unchanged. A send
//! that would block is dropped, as the network would drop it; QUIC
//! retransmits. The socket's buffers are raised to [`SOCKET_BUFFER`]
//! (within the system's `net.core.rmem_max`/`wmem_max`).
//!
//! A relay WebSocket carries exactly the relay frames, one per binary
//! message. Frames for it wait in a queue bounded in frames and bytes
//! ([`P2pConfig::stream_queue`], [`P2pConfig::stream_queue_bytes`]); when
//! it is full a frame is dropped (datagram semantics), never buffered
//! without bound.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh_core::protocol::Timestamp;
use mesh_core::relay::server::{Action, Relay, RelayLimits, Sink};
use mesh_core::relay::wire;
use mesh_core::service::{RelayReport, Service};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

/// The UDP socket's send and receive buffers, asked of the system (which
/// caps them at `net.core.rmem_max` / `wmem_max`).
pub(crate) const SOCKET_BUFFER: usize = 4 << 20;

/// Datagrams read per receive call (each may hold a GRO batch).
const RECV_BATCH: usize = 16;

/// Settings of the relay and the UDP port.
#[derive(Clone, Debug)]
pub struct P2pConfig {
    /// The UDP port announced in `system.welcome` (`p2p.udp_port`): the
    /// bound port of the UDP socket the server is given (see
    /// [`crate::Listeners`]; [`crate::run`] sets it). `None`: no UDP port,
    /// and no relay.
    pub udp_port: Option<u16>,
    /// Whether the server relays sessions (`--no-relay` turns it off: STUN
    /// is still answered, `BIND`s are refused `disabled`, no relay keys are
    /// handed out, and the welcome says `relay: false`).
    pub relay: bool,
    /// Budgets and the idle time-out of relayed sessions.
    pub limits: RelayLimits,
    /// Relay frames queued for one relay WebSocket before more are dropped.
    pub stream_queue: usize,
    /// Bytes queued for one relay WebSocket before more frames are dropped.
    pub stream_queue_bytes: usize,
    /// Where agents reach the UDP port (`--relay-public-addr`): named in
    /// every relay grant (see `EngineConfig::relay_addr`). A port of `None`
    /// is [`Self::udp_port`].
    pub public_addr: Option<(IpAddr, Option<u16>)>,
}

impl P2pConfig {
    /// The relay's address as grants name it (`IP:port`), if configured
    /// and there is a UDP port.
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        let (ip, port) = self.public_addr?;
        Some(SocketAddr::new(ip, port.or(self.udp_port)?))
    }
}

/// Parses `--relay-public-addr`: an IP, or an IP and a port.
pub fn parse_public_addr(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok((addr.ip(), Some(addr.port())));
    }
    s.parse::<IpAddr>()
        .map(|ip| (ip, None))
        .map_err(|_| format!("{s:?} is neither an IP address nor IP:PORT (a name would need resolving by every agent the same way)"))
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            udp_port: None,
            relay: true,
            limits: RelayLimits::default(),
            stream_queue: 256,
            stream_queue_bytes: 1024 * 1024,
            public_addr: None,
        }
    }
}

/// A relay WebSocket's outgoing queue, bounded in frames (the channel) and
/// in bytes (`queued`).
#[derive(Debug)]
struct StreamOut {
    tx: mpsc::Sender<Bytes>,
    queued: Arc<AtomicUsize>,
}

/// The relay and the ways out of it, shared by the UDP task and every relay
/// WebSocket.
#[derive(Debug)]
pub(crate) struct RelayHub {
    relay: Mutex<Relay>,
    udp: Arc<UdpSocket>,
    streams: Mutex<HashMap<u64, StreamOut>>,
    next_stream: AtomicU64,
    stream_queue: usize,
    stream_queue_bytes: usize,
}

impl RelayHub {
    pub(crate) fn new(relay: Relay, udp: Arc<UdpSocket>, config: &P2pConfig) -> Self {
        Self {
            relay: Mutex::new(relay),
            udp,
            streams: Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(1),
            stream_queue: config.stream_queue.max(1),
            stream_queue_bytes: config.stream_queue_bytes,
        }
    }

    fn relay(&self) -> MutexGuard<'_, Relay> {
        // The relay's state stays consistent between calls: a panic in one
        // (there is none to expect) must not stop relaying.
        self.relay.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<u64, StreamOut>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One datagram or binary message from `from`. `owned` is `bytes` as
    /// `Bytes` when the caller has it (a WebSocket message), so forwarding
    /// to a WebSocket does not copy.
    pub(crate) fn handle(&self, from: Sink, bytes: &[u8], owned: Option<&Bytes>) {
        let action = self
            .relay()
            .handle(Instant::now(), Timestamp::now(), from, bytes);
        match action {
            Action::Nothing => {}
            Action::Reply(reply) => self.send(from, &reply, None),
            Action::Forward { to } => self.send(to, bytes, owned),
            Action::Send(frames) => {
                for (to, frame) in frames {
                    self.send(to, &frame, None);
                }
            }
        }
    }

    /// A received buffer from `from`: one datagram, or a GRO batch of
    /// datagrams `stride` bytes long (the last may be shorter). Runs of
    /// datagrams forwarded to the same UDP party leave as one GSO send.
    fn handle_batch(&self, udp: &UdpIo, from: Sink, data: &[u8], stride: usize) {
        let stride = if stride == 0 {
            data.len().max(1)
        } else {
            stride
        };
        // A run: (destination, start, end) of datagrams forwarded unchanged.
        let mut run: Option<(SocketAddr, usize, usize)> = None;
        let mut actions = Vec::new();
        {
            let mut relay = self.relay();
            let (now, unix_now) = (Instant::now(), Timestamp::now());
            let mut start = 0;
            for seg in data.chunks(stride) {
                let end = start + seg.len();
                match relay.handle(now, unix_now, from, seg) {
                    Action::Forward { to: Sink::Udp(to) } => match &mut run {
                        Some((dest, run_start, run_end))
                            if *dest == to
                                && *run_end == start
                                && udp.fits(*run_end - *run_start, stride) =>
                        {
                            *run_end = end;
                        }
                        _ => {
                            if let Some(done) = run.replace((to, start, end)) {
                                actions.push(Out::Run(done));
                            }
                        }
                    },
                    Action::Nothing => {}
                    other => {
                        if let Some(done) = run.take() {
                            actions.push(Out::Run(done));
                        }
                        actions.push(Out::Action(other, start, end));
                    }
                }
                start = end;
            }
        }
        if let Some(done) = run {
            actions.push(Out::Run(done));
        }
        for out in actions {
            match out {
                Out::Run((to, start, end)) => udp.send(to, &data[start..end], stride),
                Out::Action(Action::Forward { to }, start, end) => {
                    self.send(to, &data[start..end], None)
                }
                Out::Action(Action::Reply(reply), _, _) => self.send(from, &reply, None),
                Out::Action(Action::Send(frames), _, _) => {
                    for (to, frame) in frames {
                        self.send(to, &frame, None);
                    }
                }
                Out::Action(Action::Nothing, _, _) => {}
            }
        }
    }

    fn send(&self, to: Sink, bytes: &[u8], owned: Option<&Bytes>) {
        match to {
            Sink::Udp(addr) => {
                if let Err(e) = self.udp.try_send_to(bytes, addr)
                    && e.kind() != std::io::ErrorKind::WouldBlock
                {
                    tracing::debug!(%addr, error = %e, "relay UDP send failed");
                }
            }
            Sink::Stream(id) => {
                let streams = self.streams();
                let Some(out) = streams.get(&id) else { return };
                // Full: dropped, as a datagram would be.
                if out.queued.load(Ordering::Relaxed) + bytes.len() > self.stream_queue_bytes {
                    return;
                }
                let b = owned
                    .cloned()
                    .unwrap_or_else(|| Bytes::copy_from_slice(bytes));
                if out.tx.try_send(b).is_ok() {
                    out.queued.fetch_add(bytes.len(), Ordering::Relaxed);
                }
            }
        }
    }

    fn expire(&self) {
        // Each ended session is logged by the relay.
        let _ = self.relay().expire(Instant::now());
    }

    pub(crate) fn open_stream(&self) -> (u64, mpsc::Receiver<Bytes>, Arc<AtomicUsize>) {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.stream_queue);
        let queued = Arc::new(AtomicUsize::new(0));
        self.streams().insert(
            id,
            StreamOut {
                tx,
                queued: queued.clone(),
            },
        );
        (id, rx, queued)
    }

    pub(crate) fn close_stream(&self, id: u64) {
        self.streams().remove(&id);
        self.relay().stream_closed(id);
    }
}

/// What one received buffer makes the relay do, once its lock is released.
enum Out {
    /// Forward `data[start..end]` (whole datagrams) to a UDP party.
    Run((SocketAddr, usize, usize)),
    /// Any other action, for the datagram at `data[start..end]`.
    Action(Action, usize, usize),
}

/// The UDP socket with quinn-udp's batched IO.
struct UdpIo {
    socket: Arc<UdpSocket>,
    state: quinn_udp::UdpSocketState,
}

impl UdpIo {
    fn new(socket: Arc<UdpSocket>) -> std::io::Result<Self> {
        let state = quinn_udp::UdpSocketState::new((&*socket).into())?;
        // Best effort: the system caps them.
        let _ = state.set_recv_buffer_size((&*socket).into(), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size((&*socket).into(), SOCKET_BUFFER);
        Ok(Self { socket, state })
    }

    /// Whether a run of `len` bytes can take one more `stride` datagram
    /// in one GSO send.
    fn fits(&self, len: usize, stride: usize) -> bool {
        let segments = len / stride.max(1) + 1;
        segments <= self.state.max_gso_segments() && len + stride <= u16::MAX as usize - 8
    }

    /// Sends whole datagrams of `stride` bytes (the last may be shorter) to
    /// `to`, as one GSO send when there are several. Dropped if the socket
    /// would block.
    fn send(&self, to: SocketAddr, contents: &[u8], stride: usize) {
        let transmit = quinn_udp::Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: (contents.len() > stride).then_some(stride),
            src_ip: None,
        };
        let sent = self.socket.try_io(tokio::io::Interest::WRITABLE, || {
            self.state.send((&*self.socket).into(), &transmit)
        });
        if let Err(e) = sent
            && e.kind() != std::io::ErrorKind::WouldBlock
        {
            tracing::debug!(%to, error = %e, "relay UDP send failed");
        }
    }
}

/// Reads the UDP socket until shutdown: STUN and relay frames into the
/// relay, and idle sessions out of it.
pub(crate) async fn udp_loop(hub: Arc<RelayHub>, mut shutdown: watch::Receiver<bool>) {
    let udp = match UdpIo::new(hub.udp.clone()) {
        Ok(udp) => udp,
        Err(e) => {
            tracing::error!(error = %e, "the UDP socket cannot be used: no STUN, no relay over UDP");
            return;
        }
    };
    // One slot per datagram, large enough for a GRO batch when the system
    // coalesces (64 KiB), else for the largest frame.
    let slot = if udp.state.gro_segments() > 1 {
        u16::MAX as usize
    } else {
        wire::MAX_FRAME + 1
    };
    let mut storage = vec![vec![0u8; slot]; RECV_BATCH];
    let mut meta = vec![quinn_udp::RecvMeta::default(); RECV_BATCH];
    let idle = hub.relay().limits().idle_timeout;
    let mut tick =
        tokio::time::interval((idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut error_warned: Option<Instant> = None;
    loop {
        tokio::select! {
            received = udp.socket.async_io(tokio::io::Interest::READABLE, || {
                let mut bufs: Vec<IoSliceMut<'_>> =
                    storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                udp.state.recv((&*udp.socket).into(), &mut bufs, &mut meta)
            }) => match received {
                Ok(n) => {
                    for (m, buf) in meta.iter().zip(&storage).take(n) {
                        let len = m.len.min(buf.len());
                        hub.handle_batch(&udp, Sink::Udp(normalize(m.addr)), &buf[..len], m.stride);
                    }
                }
                // ICMP errors for earlier sends (a party's port closed)
                // show up here on some systems: not this socket's fault.
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ) => tracing::debug!(error = %e, "UDP receive: an earlier send bounced"),
                Err(e) => {
                    if error_warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(error = %e, "UDP receive failed");
                        error_warned = Some(Instant::now());
                    }
                    // Out of buffers and the like: back off, don't spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = tick.tick() => hub.expire(),
            _ = shutdown.changed() => break,
        }
    }
}

/// In a cluster: every second, tells the other nodes what this relay did
/// for each user, and charges here what theirs did, so that per-user relay
/// budgets hold across nodes (see `mesh_core::relay::server`).
pub(crate) async fn share_usage(
    hub: Arc<RelayHub>,
    service: Service,
    mut reports: mpsc::Receiver<RelayReport>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(USAGE_REPORT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let usage = hub.relay().take_usage();
                service.publish_relay_usage(usage);
            }
            report = reports.recv() => match report {
                Some((node, users)) => hub.relay().remote_usage(&node, users, Instant::now()),
                None => return,
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// How often a node reports its relay's use to the others.
const USAGE_REPORT: Duration = Duration::from_secs(1);

/// An IPv4 peer on a dual-stack socket is reported as `::ffff:a.b.c.d`;
/// STUN answers it as IPv4.
fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}
