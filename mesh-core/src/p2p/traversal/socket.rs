//! The agent's UDP socket as quinn sees it: one socket carries QUIC to and
//! from peers, STUN to the server, `PUNCH` datagrams, and QUIC relayed
//! through the server.
//!
//! [`MeshSocket`] wraps the runtime's socket (GSO and GRO kept for direct
//! QUIC) and sorts what arrives by its first byte: QUIC always has the
//! fixed bit `0x40` set (the endpoint does not grease it), STUN starts with
//! `0b00` and carries the magic cookie, relay frames are `0x21..=0x25`.
//!
//! A relayed session appears to quinn as a peer at a synthetic address in
//! `240.0.0.0/4` (reserved, never routed), derived from the session id:
//! datagrams quinn sends there are wrapped in `DATA` frames and sent to the
//! server (over UDP, or over the relay WebSocket); `DATA` frames from the
//! server are unwrapped and handed to quinn as if they came from that
//! address. quinn's TLS (pinned to the peer's certificate) runs inside them
//! unchanged: the server only ever sees ciphertext.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use super::bind::Carrier;
use crate::protocol::SessionId;
use crate::relay::stun::{self, TxId};
use crate::relay::wire::{DATA_HEADER, data_header};
use crate::relay::{RefuseCode, RelayFrame};

/// At most this many relayed datagrams wait for quinn to read them.
const MAX_QUEUED: usize = 4096;

/// The socket's send and receive buffers, asked of the system (which caps
/// them at `net.core.rmem_max` / `wmem_max`): bursts of relayed datagrams
/// must not overflow the default ~200 KiB.
const SOCKET_BUFFER: usize = 4 << 20;

/// The synthetic address quinn uses for `session`'s relayed path.
pub fn relay_addr(session: SessionId, v6: bool) -> SocketAddr {
    let b = session.as_bytes();
    let ip = Ipv4Addr::new(240 | (b[0] & 0x0f), b[1], b[2], b[3]);
    let port = u16::from_be_bytes([b[4], b[5]]).max(1);
    let ip = if v6 {
        IpAddr::V6(ip.to_ipv6_mapped())
    } else {
        IpAddr::V4(ip)
    };
    SocketAddr::new(ip, port)
}

/// Whether `addr` is a relayed path's synthetic address.
pub fn is_relay_addr(addr: SocketAddr) -> bool {
    let v4 = match addr.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(ip) => ip,
            None => return false,
        },
    };
    v4.octets()[0] >= 240 && !v4.is_broadcast()
}

/// What the socket hands to the traversal tasks.
#[derive(Debug)]
pub enum Control {
    /// A STUN Binding response from the server.
    Stun { tx: TxId, mapped: SocketAddr },
    /// The relay bound the session.
    Bound {
        session: SessionId,
        carrier: Carrier,
    },
    /// The relay refused the session.
    Refused {
        session: SessionId,
        code: RefuseCode,
        reason: String,
    },
}

#[derive(Debug, Default)]
struct State {
    /// The server's UDP port (STUN and the relay).
    server: Option<SocketAddr>,
    /// Other relays some sessions bind at (a cluster's node that granted
    /// them), with how many routes use each.
    relays: HashMap<SocketAddr, usize>,
    /// Relayed sessions: synthetic address -> session and carrier.
    routes: HashMap<SocketAddr, Route>,
    by_session: HashMap<SessionId, SocketAddr>,
    /// Relayed datagrams waiting for quinn, with their synthetic source.
    queued: VecDeque<(SocketAddr, Vec<u8>)>,
    recv_waker: Option<Waker>,
    /// STUN answers go here.
    stun: Option<mpsc::Sender<Control>>,
    /// Relay control frames go to the session's task.
    control: HashMap<SessionId, mpsc::Sender<Control>>,
    /// The relay WebSocket's outgoing side, once open.
    stream: Option<mpsc::Sender<Vec<u8>>>,
    stats: Stats,
}

#[derive(Clone, Copy, Debug)]
struct Route {
    session: SessionId,
    carrier: Option<Carrier>,
    /// The relay's UDP address when it is not the server's.
    relay: Option<SocketAddr>,
    /// A connection runs over it: only its end removes the route.
    claimed: bool,
}

/// Counters of the socket's side traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Relayed datagrams received and sent.
    pub relayed_in: u64,
    pub relayed_out: u64,
    /// Relayed datagrams dropped (queue full, no carrier yet).
    pub relay_dropped: u64,
    /// `PUNCH` datagrams received (and dropped).
    pub punches_in: u64,
    /// Datagrams that were none of QUIC, STUN or relay frames.
    pub junk_in: u64,
}

/// The shared half: the traversal tasks use it to send STUN, `PUNCH` and
/// `BIND`, install relayed routes and feed WebSocket frames in.
pub struct Mux {
    inner: Arc<dyn AsyncUdpSocket>,
    v6: bool,
    state: Mutex<State>,
    /// The same socket, for its TTL (see [`Self::low_ttl`]).
    ttl: Option<std::net::UdpSocket>,
    /// The TTL the socket had, and how many punch windows hold it low.
    normal_ttl: u32,
    low_holders: Mutex<u32>,
}

impl fmt::Debug for Mux {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mux")
            .field("local_addr", &self.inner.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Mux {
    /// Wraps `socket` (bound, non-blocking) with the tokio runtime.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<Arc<Self>> {
        let v6 = socket.local_addr()?.is_ipv6();
        let ttl = if v6 { None } else { socket.try_clone().ok() };
        if let Ok(state) = quinn::udp::UdpSocketState::new((&socket).into()) {
            // Best effort: the system caps them.
            let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
            let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
        }
        let normal_ttl = ttl.as_ref().and_then(|s| s.ttl().ok()).unwrap_or(64);
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)?;
        Ok(Arc::new(Self {
            inner,
            v6,
            state: Mutex::default(),
            ttl,
            normal_ttl,
            low_holders: Mutex::new(0),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-changed
        // in a way that matters more than losing the socket.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The socket quinn gets.
    pub fn socket(self: &Arc<Self>) -> Arc<dyn AsyncUdpSocket> {
        Arc::new(MeshSocket(self.clone()))
    }

    /// Sends one datagram as is (STUN, `PUNCH`, `BIND`). A full socket
    /// buffer drops it: every caller retransmits.
    pub fn send_raw(&self, to: SocketAddr, bytes: &[u8]) {
        let to = self.match_family(to);
        let _ = self.inner.try_send(&Transmit {
            destination: to,
            ecn: None,
            contents: bytes,
            segment_size: None,
            src_ip: None,
        });
    }

    fn match_family(&self, to: SocketAddr) -> SocketAddr {
        match (self.v6, to.ip()) {
            (true, IpAddr::V4(ip)) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), to.port()),
            _ => to,
        }
    }

    /// Holds the socket's TTL at `ttl` until the guard is dropped (several
    /// holders share one low window). The target's punches use it: they
    /// must open its own NAT without reaching the peer's (see
    /// [`super::punch`]). IPv4 only; a no-op elsewhere.
    pub fn low_ttl(self: &Arc<Self>, ttl: u32) -> LowTtl {
        if let Some(s) = &self.ttl {
            let mut holders = self.low_holders.lock().unwrap_or_else(|e| e.into_inner());
            if *holders == 0 {
                let _ = s.set_ttl(ttl);
            }
            *holders += 1;
        }
        LowTtl(self.clone())
    }

    /// The server's UDP port, and where its STUN answers go.
    pub fn set_server(&self, server: Option<SocketAddr>, stun: Option<mpsc::Sender<Control>>) {
        let mut st = self.lock();
        st.server = server.map(|s| self.match_family(s));
        st.stun = stun;
    }

    /// Starts a relayed path for `session`: its synthetic address, which
    /// carries nothing until [`Self::set_carrier`]. Relay control frames
    /// for it go to `control`. `relay`: the relay's UDP address when it is
    /// not the server's (the session's grant named another).
    pub fn add_session(
        &self,
        session: SessionId,
        control: mpsc::Sender<Control>,
        relay: Option<SocketAddr>,
    ) -> SocketAddr {
        let addr = relay_addr(session, self.v6);
        let relay = relay.map(|r| self.match_family(r));
        let mut st = self.lock();
        forget_route(&mut st, session);
        if let Some(r) = relay {
            *st.relays.entry(r).or_insert(0) += 1;
        }
        st.routes.insert(
            addr,
            Route {
                session,
                carrier: None,
                relay,
                claimed: false,
            },
        );
        st.by_session.insert(session, addr);
        st.control.insert(session, control);
        addr
    }

    /// How `session`'s relayed datagrams travel from now on.
    pub fn set_carrier(&self, session: SessionId, carrier: Carrier) {
        let mut st = self.lock();
        if let Some(addr) = st.by_session.get(&session).copied()
            && let Some(route) = st.routes.get_mut(&addr)
        {
            route.carrier = Some(carrier);
        }
    }

    /// A connection runs over `session`'s relayed path: it stays until
    /// [`Self::remove_session`].
    pub fn claim(&self, session: SessionId) {
        let mut st = self.lock();
        if let Some(addr) = st.by_session.get(&session).copied()
            && let Some(route) = st.routes.get_mut(&addr)
        {
            route.claimed = true;
        }
    }

    /// A connection to `addr` runs over a relayed path: claims it (see
    /// [`Self::claim`]) and returns its session; `None` for a direct one.
    pub fn claim_addr(&self, addr: SocketAddr) -> Option<SessionId> {
        let mut st = self.lock();
        let route = st.routes.get_mut(&addr)?;
        route.claimed = true;
        Some(route.session)
    }

    /// Forgets `session`'s relayed path unless a connection claimed it.
    pub fn remove_unclaimed(&self, session: SessionId) {
        let claimed = {
            let st = self.lock();
            st.by_session
                .get(&session)
                .and_then(|a| st.routes.get(a))
                .is_some_and(|r| r.claimed)
        };
        if !claimed {
            self.remove_session(session);
        }
    }

    /// Forgets `session`'s relayed path.
    pub fn remove_session(&self, session: SessionId) {
        let mut st = self.lock();
        forget_route(&mut st, session);
        st.control.remove(&session);
    }

    /// The relay WebSocket's outgoing side (`None`: closed).
    pub fn set_stream(&self, stream: Option<mpsc::Sender<Vec<u8>>>) {
        self.lock().stream = stream;
    }

    /// Whether the relay WebSocket is open.
    pub fn has_stream(&self) -> bool {
        self.lock().stream.as_ref().is_some_and(|s| !s.is_closed())
    }

    /// Sends a frame on the relay WebSocket (dropped if it is not open or
    /// full).
    pub fn send_stream(&self, frame: Vec<u8>) -> bool {
        let st = self.lock();
        st.stream
            .as_ref()
            .is_some_and(|s| s.try_send(frame).is_ok())
    }

    /// A binary message from the relay WebSocket.
    pub fn handle_stream_frame(&self, bytes: &[u8]) {
        let mut st = self.lock();
        self.handle_relay_frame(&mut st, bytes, Carrier::Stream, None);
    }

    /// Side-traffic counters.
    pub fn stats(&self) -> Stats {
        self.lock().stats
    }

    /// A datagram that is not QUIC, from `from`.
    fn handle_other(&self, st: &mut State, from: SocketAddr, bytes: &[u8]) {
        let from_server = st.server == Some(from);
        if stun::is_stun(bytes) {
            if from_server
                && let Some((tx, mapped)) = stun::parse_response(bytes)
                && let Some(to) = &st.stun
            {
                let _ = to.try_send(Control::Stun { tx, mapped });
            }
            return;
        }
        if from_server || st.relays.contains_key(&from) {
            self.handle_relay_frame(st, bytes, Carrier::Udp, Some(from));
        } else if matches!(RelayFrame::decode(bytes), Ok(RelayFrame::Punch { .. })) {
            st.stats.punches_in += 1;
        } else {
            st.stats.junk_in += 1;
        }
    }

    /// A relay frame from the server or another relay, by `carrier` (over
    /// UDP: `from`, which must be the session's relay).
    fn handle_relay_frame(
        &self,
        st: &mut State,
        bytes: &[u8],
        carrier: Carrier,
        from: Option<SocketAddr>,
    ) {
        let session_relay = |st: &State, session: SessionId| {
            st.by_session
                .get(&session)
                .and_then(|a| st.routes.get(a))
                .and_then(|r| r.relay)
                .or(st.server)
        };
        let wrong_relay =
            |st: &State, session| from.is_some_and(|f| session_relay(st, session) != Some(f));
        match RelayFrame::decode(bytes) {
            Ok(RelayFrame::Data { session, payload }) => {
                let Some(addr) = st.by_session.get(&session).copied() else {
                    st.stats.relay_dropped += 1;
                    return;
                };
                if wrong_relay(st, session) {
                    st.stats.junk_in += 1;
                    return;
                }
                if st.queued.len() >= MAX_QUEUED {
                    st.stats.relay_dropped += 1;
                    return;
                }
                st.stats.relayed_in += 1;
                st.queued.push_back((addr, payload.to_vec()));
                if let Some(w) = st.recv_waker.take() {
                    w.wake();
                }
            }
            Ok(RelayFrame::Bound { session }) => {
                if wrong_relay(st, session) {
                    st.stats.junk_in += 1;
                    return;
                }
                if let Some(to) = st.control.get(&session) {
                    let _ = to.try_send(Control::Bound { session, carrier });
                }
            }
            Ok(RelayFrame::Refused {
                session,
                code,
                reason,
            }) => {
                if wrong_relay(st, session) {
                    st.stats.junk_in += 1;
                    return;
                }
                if let Some(to) = st.control.get(&session) {
                    let _ = to.try_send(Control::Refused {
                        session,
                        code,
                        reason: reason.to_owned(),
                    });
                }
            }
            Ok(RelayFrame::Punch { .. }) => st.stats.punches_in += 1,
            Ok(RelayFrame::Bind { .. }) | Err(_) => st.stats.junk_in += 1,
        }
    }

    /// Wraps a transmit to a relayed path's address in `DATA` frames.
    ///
    /// Over UDP, a GSO batch stays one: each segment gets its header and the
    /// batch leaves as one send of `segment + 17`-byte segments.
    fn send_relayed(
        &self,
        route: Route,
        server: Option<SocketAddr>,
        transmit: &Transmit<'_>,
    ) -> io::Result<()> {
        let header = data_header(route.session);
        let seg = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        if let (Some(Carrier::Udp), Some(server)) = (route.carrier, server) {
            let chunks = transmit.contents.len().div_ceil(seg);
            let mut batch = Vec::with_capacity(transmit.contents.len() + chunks * DATA_HEADER);
            for chunk in transmit.contents.chunks(seg) {
                batch.extend_from_slice(&header);
                batch.extend_from_slice(chunk);
            }
            let sent = self.inner.try_send(&Transmit {
                destination: server,
                ecn: transmit.ecn,
                contents: &batch,
                segment_size: (chunks > 1).then_some(seg + DATA_HEADER),
                src_ip: None,
            });
            let mut st = self.lock();
            match sent {
                Ok(()) => st.stats.relayed_out += chunks as u64,
                // quinn waits for the socket and sends the batch again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(_) => st.stats.relay_dropped += chunks as u64,
            }
            return Ok(());
        }
        let mut st_stats_out = 0u64;
        let mut dropped = 0u64;
        let mut first = true;
        for chunk in transmit.contents.chunks(seg) {
            let mut frame = Vec::with_capacity(DATA_HEADER + chunk.len());
            frame.extend_from_slice(&header);
            frame.extend_from_slice(chunk);
            match route.carrier {
                Some(Carrier::Udp) => {
                    let Some(server) = server else {
                        dropped += 1;
                        continue;
                    };
                    let sent = self.inner.try_send(&Transmit {
                        destination: server,
                        ecn: transmit.ecn,
                        contents: &frame,
                        segment_size: None,
                        src_ip: None,
                    });
                    match sent {
                        Ok(()) => st_stats_out += 1,
                        // quinn waits for the socket and sends the whole
                        // transmit again: only before anything went out.
                        Err(e) if first && e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                        Err(_) => dropped += 1,
                    }
                }
                Some(Carrier::Stream) => {
                    if self.send_stream(frame) {
                        st_stats_out += 1;
                    } else {
                        dropped += 1;
                    }
                }
                None => dropped += 1,
            }
            first = false;
        }
        let mut st = self.lock();
        st.stats.relayed_out += st_stats_out;
        st.stats.relay_dropped += dropped;
        Ok(())
    }
}

/// Holds the socket's TTL low (see [`Mux::low_ttl`]).
#[derive(Debug)]
pub struct LowTtl(Arc<Mux>);

impl Drop for LowTtl {
    fn drop(&mut self) {
        let mux = &self.0;
        if let Some(s) = &mux.ttl {
            let mut holders = mux.low_holders.lock().unwrap_or_else(|e| e.into_inner());
            *holders = holders.saturating_sub(1);
            if *holders == 0 {
                let _ = s.set_ttl(mux.normal_ttl);
            }
        }
    }
}

/// The [`AsyncUdpSocket`] quinn drives (see the module documentation).
#[derive(Debug)]
struct MeshSocket(Arc<Mux>);

impl AsyncUdpSocket for MeshSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.0.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if is_relay_addr(transmit.destination) {
            let (route, server) = {
                let st = self.0.lock();
                let route = st.routes.get(&transmit.destination).copied();
                (route, route.and_then(|r| r.relay).or(st.server))
            };
            // A path that is gone: the datagram is lost, as on a network.
            return match route {
                Some(route) => self.0.send_relayed(route, server, transmit),
                None => Ok(()),
            };
        }
        self.0.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            {
                let mut st = self.0.lock();
                if !st.queued.is_empty() {
                    return Poll::Ready(Ok(fill_queued(&mut st.queued, bufs, meta)));
                }
                st.recv_waker = Some(cx.waker().clone());
            }
            let n = ready!(self.0.inner.poll_recv(cx, bufs, meta))?;
            let kept = self.sort(bufs, meta, n);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.0.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.inner.may_fragment()
    }
}

impl MeshSocket {
    /// Handles what is not QUIC among the `n` received buffers and moves
    /// the QUIC ones to the front; returns how many those are.
    fn sort(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], n: usize) -> usize {
        let mut kept = 0;
        let mut st: Option<MutexGuard<'_, State>> = None;
        for i in 0..n {
            let m = meta[i];
            let len = m.len.min(bufs[i].len());
            let is_quic = bufs[i].first().is_some_and(|b| b & 0x40 != 0);
            if is_quic {
                if kept != i {
                    let (lo, hi) = bufs.split_at_mut(i);
                    lo[kept][..len].copy_from_slice(&hi[0][..len]);
                    meta[kept] = m;
                }
                kept += 1;
                continue;
            }
            let st = st.get_or_insert_with(|| self.0.lock());
            let stride = if m.stride == 0 { len.max(1) } else { m.stride };
            // The common case on a relayed path: a batch of DATA frames of
            // one session from the server. Unwrapped where it lies and
            // handed to quinn as one batch from the synthetic address.
            if let Some((from, unwrapped)) = unwrap_relayed(st, m.addr, &mut bufs[i][..len], stride)
            {
                if kept != i {
                    let (lo, hi) = bufs.split_at_mut(i);
                    lo[kept][..unwrapped].copy_from_slice(&hi[0][..unwrapped]);
                }
                meta[kept] = RecvMeta {
                    addr: from,
                    len: unwrapped,
                    stride: stride - DATA_HEADER,
                    ecn: m.ecn,
                    dst_ip: m.dst_ip,
                };
                kept += 1;
                continue;
            }
            for seg in bufs[i][..len].chunks(stride) {
                self.0.handle_other(st, m.addr, seg);
            }
        }
        kept
    }
}

/// If `buf` is a batch of `stride`-byte `DATA` frames (the last may be
/// shorter) from the server, all of one session with a relayed route:
/// moves their payloads to the front of `buf`, back to back (the batch's
/// new stride is `stride - DATA_HEADER`), and returns the session's
/// synthetic address and the payloads' length. Otherwise `None`, and
/// `buf` is unchanged.
fn unwrap_relayed(
    st: &mut State,
    from: SocketAddr,
    buf: &mut [u8],
    stride: usize,
) -> Option<(SocketAddr, usize)> {
    if stride <= DATA_HEADER || (st.server != Some(from) && !st.relays.contains_key(&from)) {
        return None;
    }
    let header: [u8; DATA_HEADER] = buf.get(..DATA_HEADER)?.try_into().ok()?;
    if header[0] != crate::relay::wire::DATA {
        return None;
    }
    // Every segment: a DATA frame of the same session, with a payload.
    let same = buf
        .chunks(stride)
        .all(|seg| seg.len() > DATA_HEADER && seg[..DATA_HEADER] == header);
    if !same {
        return None;
    }
    let session = SessionId::from_bytes(header[1..].try_into().ok()?);
    let addr = *st.by_session.get(&session)?;
    if st.routes.get(&addr)?.relay.or(st.server) != Some(from) {
        return None;
    }
    let mut at = 0;
    let mut segments = 0u64;
    let mut start = 0;
    while start < buf.len() {
        let end = (start + stride).min(buf.len());
        buf.copy_within(start + DATA_HEADER..end, at);
        at += end - start - DATA_HEADER;
        segments += 1;
        start = end;
    }
    st.stats.relayed_in += segments;
    Some((addr, at))
}

/// Moves queued relayed datagrams into quinn's buffers.
fn fill_queued(
    queued: &mut VecDeque<(SocketAddr, Vec<u8>)>,
    bufs: &mut [IoSliceMut<'_>],
    meta: &mut [RecvMeta],
) -> usize {
    let mut n = 0;
    while n < bufs.len().min(meta.len()) {
        let Some((from, data)) = queued.pop_front() else {
            break;
        };
        if data.len() > bufs[n].len() {
            // Larger than quinn's buffer: not a datagram quinn would take.
            continue;
        }
        bufs[n][..data.len()].copy_from_slice(&data);
        meta[n] = RecvMeta {
            addr: from,
            len: data.len(),
            stride: data.len(),
            ecn: None,
            dst_ip: None,
        };
        n += 1;
    }
    n
}

/// Removes `session`'s route, and its use of another relay.
fn forget_route(st: &mut State, session: SessionId) {
    let Some(addr) = st.by_session.remove(&session) else {
        return;
    };
    if let Some(relay) = st.routes.remove(&addr).and_then(|r| r.relay)
        && let Some(n) = st.relays.get_mut(&relay)
    {
        *n -= 1;
        if *n == 0 {
            st.relays.remove(&relay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_addresses_are_reserved_and_stable() {
        let s = SessionId::new();
        let a = relay_addr(s, false);
        assert_eq!(a, relay_addr(s, false));
        assert!(is_relay_addr(a));
        assert!(is_relay_addr(relay_addr(s, true)));
        assert_ne!(a.port(), 0);
        for plain in [
            "10.0.0.1:1",
            "198.51.100.2:9",
            "[::1]:4",
            "255.255.255.255:1",
        ] {
            assert!(!is_relay_addr(plain.parse().expect("addr")), "{plain}");
        }
    }

    #[test]
    fn a_batch_of_data_frames_is_unwrapped_in_place() {
        let server: SocketAddr = "192.0.2.1:8000".parse().expect("addr");
        let (one, two) = (SessionId::new(), SessionId::new());
        let mut st = State {
            server: Some(server),
            ..State::default()
        };
        let addr = relay_addr(one, false);
        let route = |relay| Route {
            session: one,
            carrier: Some(Carrier::Udp),
            relay,
            claimed: false,
        };
        st.by_session.insert(one, addr);
        st.routes.insert(addr, route(None));
        let frame = |s: SessionId, fill: u8, n: usize| {
            let mut f = data_header(s).to_vec();
            f.extend(std::iter::repeat_n(fill, n));
            f
        };
        // Three segments of 10 payload bytes and a last one of 4.
        let mut batch = [
            frame(one, 1, 10),
            frame(one, 2, 10),
            frame(one, 3, 10),
            frame(one, 4, 4),
        ]
        .concat();
        let stride = DATA_HEADER + 10;
        assert_eq!(
            unwrap_relayed(&mut st, server, &mut batch, stride),
            Some((addr, 34))
        );
        let want: Vec<u8> = [[1u8; 10], [2; 10], [3; 10]]
            .concat()
            .into_iter()
            .chain([4; 4])
            .collect();
        assert_eq!(&batch[..34], &want[..]);
        assert_eq!(st.stats.relayed_in, 4);

        // Left alone: another session in the batch, a session with no
        // route, a source that is not the server, a frame that is not DATA.
        let mixed = [frame(one, 1, 10), frame(two, 2, 10)].concat();
        let unknown = frame(two, 1, 10);
        let mut punch = RelayFrame::Punch {
            session: one,
            nonce: 1,
        }
        .to_vec();
        for (mut buf, from) in [
            (mixed, server),
            (unknown, server),
            (frame(one, 1, 10), "192.0.2.9:8000".parse().expect("addr")),
        ] {
            let before = buf.clone();
            assert_eq!(unwrap_relayed(&mut st, from, &mut buf, stride), None);
            assert_eq!(buf, before);
        }
        let len = punch.len();
        assert_eq!(unwrap_relayed(&mut st, server, &mut punch, len), None);

        // A session whose grant named another relay: from that one only.
        let other: SocketAddr = "198.51.100.7:3478".parse().expect("addr");
        st.routes.insert(addr, route(Some(other)));
        st.relays.insert(other, 1);
        let mut from_server = frame(one, 5, 10);
        assert_eq!(
            unwrap_relayed(&mut st, server, &mut from_server, stride),
            None
        );
        let mut from_other = frame(one, 5, 10);
        assert_eq!(
            unwrap_relayed(&mut st, other, &mut from_other, stride),
            Some((addr, 10))
        );
    }

    #[tokio::test]
    async fn a_session_bound_at_another_relay_is_served_from_there_only() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mux = Mux::new(sock).expect("mux");
        let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let other = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let other_addr = other.local_addr().expect("addr");
        mux.set_server(Some(server.local_addr().expect("addr")), None);
        let (tx, mut rx) = mpsc::channel(4);
        let session = SessionId::new();
        mux.add_session(session, tx, Some(other_addr));
        let to_agent = mux.inner.local_addr().expect("addr");
        let bound = RelayFrame::Bound { session }.to_vec();
        let socket = mux.socket();
        // Runs the socket's receive path until `done` holds.
        async fn pump(socket: &Arc<dyn AsyncUdpSocket>, done: &mut dyn FnMut() -> bool) {
            let mut storage = [0u8; 2048];
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !done() {
                assert!(std::time::Instant::now() < deadline, "timed out");
                std::future::poll_fn(|cx| {
                    let mut bufs = [IoSliceMut::new(&mut storage)];
                    let mut meta = [RecvMeta::default()];
                    let _ = socket.poll_recv(cx, &mut bufs, &mut meta);
                    Poll::Ready(())
                })
                .await;
                // Lets the runtime poll its IO driver.
                tokio::task::yield_now().await;
            }
        }
        // BOUND from the agent's own server is not this session's: dropped.
        server.send_to(&bound, to_agent).expect("send");
        pump(&socket, &mut || mux.stats().junk_in == 1).await;
        assert!(rx.try_recv().is_err());
        other.send_to(&bound, to_agent).expect("send");
        let mut got = None;
        pump(&socket, &mut || {
            if got.is_none() {
                got = rx.try_recv().ok();
            }
            got.is_some()
        })
        .await;
        let got = got.expect("BOUND arrives");
        assert!(matches!(got, Control::Bound { session: s, .. } if s == session));
        assert_eq!(mux.stats().junk_in, 1, "the server's BOUND was dropped");
        // Sessions gone, the other relay is forgotten.
        mux.remove_session(session);
        assert!(mux.lock().relays.is_empty());
    }

    #[tokio::test]
    async fn relayed_data_reaches_quinn_with_the_synthetic_address() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mux = Mux::new(sock).expect("mux");
        let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let server_addr = server.local_addr().expect("addr");
        mux.set_server(Some(server_addr), None);
        let (tx, mut rx) = mpsc::channel(4);
        let session = SessionId::new();
        let addr = mux.add_session(session, tx, None);

        // From the server over UDP: BOUND goes to the session's task, DATA
        // to quinn.
        let to_agent = mux.inner.local_addr().expect("addr");
        server
            .send_to(&RelayFrame::Bound { session }.to_vec(), to_agent)
            .expect("send");
        let payload = [0xc3u8, 1, 2, 3, 4];
        server
            .send_to(
                &RelayFrame::Data {
                    session,
                    payload: &payload,
                }
                .to_vec(),
                to_agent,
            )
            .expect("send");
        server
            .send_to(&RelayFrame::Punch { session, nonce: 1 }.to_vec(), to_agent)
            .expect("send");
        let socket = mux.socket();
        let mut storage = [0u8; 2048];
        let got = std::future::poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(&mut storage)];
            let mut meta = [RecvMeta::default()];
            match socket.poll_recv(cx, &mut bufs, &mut meta) {
                Poll::Ready(Ok(n)) => Poll::Ready((n, meta[0].addr, meta[0].len)),
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        assert_eq!(got, (1, addr, payload.len()));
        assert_eq!(&storage[..payload.len()], &payload);
        assert!(matches!(
            rx.recv().await,
            Some(Control::Bound { session: s, carrier: Carrier::Udp }) if s == session
        ));

        // quinn sending to the synthetic address: a DATA frame to the
        // server once the carrier is known, nothing before.
        let quic = [0xc0u8; 40];
        let transmit = Transmit {
            destination: addr,
            ecn: None,
            contents: &quic,
            segment_size: Some(30),
            src_ip: None,
        };
        socket.try_send(&transmit).expect("dropped quietly");
        mux.set_carrier(session, Carrier::Udp);
        socket.try_send(&transmit).expect("sent");
        let mut buf = [0u8; 128];
        server.set_nonblocking(false).expect("blocking");
        let mut frames = Vec::new();
        for _ in 0..2 {
            let (n, _) = server.recv_from(&mut buf).expect("recv");
            match RelayFrame::decode(&buf[..n]) {
                Ok(RelayFrame::Data {
                    session: s,
                    payload,
                }) if s == session => frames.push(payload.len()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(frames, [30, 10], "one DATA frame per segment");
        assert_eq!(mux.stats().relay_dropped, 2, "{:?}", mux.stats());
    }
}
