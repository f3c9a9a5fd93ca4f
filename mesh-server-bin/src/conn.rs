//! Connections before HTTP: how many a client address and the server may
//! hold, and how long one may sit without moving.
//!
//! Without these a client that opens connections and sends half a request
//! header, or nothing, holds a task and a file descriptor each for ever
//! (slowloris). The accept loop asks [`ConnCounter::admit`] for every
//! connection:
//!
//! - past [`ConnLimits::max_connections`] in total the connection is
//!   closed at once, unanswered: reading a request costs what the cap is
//!   there to save;
//! - past [`ConnLimits::max_per_addr`] from one address it is served one
//!   answer, `429` with the contract's error body and `Retry-After`, then
//!   closed. It counts towards the total while it is answered, and an
//!   address has at most [`REFUSALS_PER_ADDR`] refusals under way; past
//!   that its connections are closed at once too, so one address holds at
//!   most `max_per_addr` plus a few.
//!
//! A connection from a trusted reverse proxy ([`crate::proxy`]) carries
//! many clients, so it is not counted against the proxy's address: it is
//! admitted with no address ([`ConnCounter::admit`] with `None`) and
//! counts only towards the total. Its clients' addresses are known only
//! once a request header is read; a WebSocket upgraded through the proxy
//! then counts against its real client's address
//! ([`ConnSlot::client_slot`]), and is answered `429` past the cap like a
//! direct connection. (A proxied HTTP connection is not counted per client:
//! a proxy may reuse it for requests of many clients.)
//!
//! The header time-out ([`ConnLimits::header_timeout`]) bounds how long a
//! request's header may take, counted from when the server starts waiting
//! for it: on a new connection and after each answer on a keep-alive
//! connection, so it also closes idle keep-alive connections. [`IdleIo`]
//! times it, not hyper: hyper's own header timeout closes without an
//! answer. When it fires after part of a header came (a byte since the
//! last answer), `IdleIo` writes `408` with the contract's error body
//! (code `timeout`) and `Connection: close` straight to the socket, ends
//! the write side and fails the read, so hyper drops the connection, as
//! Apache and nginx answer. When nothing came, the read ends the stream
//! and hyper closes without a word: a `408` to a client that sent nothing
//! could be read as the answer to its next request. The header's end is
//! found by scanning the bytes read for an empty line ([`HeaderScan`]);
//! the timer stops there and restarts at the next byte written. A request
//! whose handler is running (pipelined, parsed from hyper's buffer without
//! a read) holds the timer off. A refused connection (the `429` above)
//! keeps hyper's header timeout and is closed unanswered when it fires.
//! [`IdleIo`] also bounds the rest: an HTTP connection on which no byte
//! moves either way for [`ConnLimits::idle_timeout`] (a request body that
//! stalls, an answer the client does not read) is closed. Neither applies
//! to a WebSocket once upgraded ([`Activity::end_http`]): it has its own
//! heartbeat.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Limits on connections and on how long they may idle.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Open connections per client address (IPv6: per /64), WebSockets
    /// included; past it, `429`. Enough for an office behind one NAT.
    pub max_per_addr: usize,
    /// Open connections in all; past it, new ones are closed unanswered.
    /// Keep it below the open-files limit (`ulimit -n`) less what the
    /// database and the keys need (a hundred or so).
    pub max_connections: usize,
    /// How long a request header may take (timed by [`IdleIo`]; `408` if
    /// part of it came), also the longest wait for the next request on a
    /// keep-alive connection.
    pub header_timeout: Duration,
    /// How long an HTTP connection may go without a byte read or written.
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_per_addr: 1_000,
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Refusals (`429`s being answered) one address may have under way; more
/// are closed at accept.
pub(crate) const REFUSALS_PER_ADDR: usize = 64;

/// The address connections of client `ip` are counted on: the TCP peer
/// at accept, or the real client behind a trusted proxy (see the module
/// docs). IPv6 addresses count per /64, the block one subscriber gets.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::V6(Ipv6Addr::from(seg))
        }
        v4 => v4,
    }
}

/// Open connections, in all and per address.
#[derive(Debug, Default)]
pub(crate) struct ConnCounter {
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_addr: HashMap<IpAddr, PerAddr>,
}

#[derive(Debug, Default)]
struct PerAddr {
    /// Connections served.
    open: usize,
    /// `429`s under way.
    refusing: usize,
}

/// What to do with a new connection.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Serve it; the slot is released when the last clone is dropped.
    Serve(Arc<ConnSlot>),
    /// Answer `429` once and close; counted in the total meanwhile.
    Refuse(Arc<ConnSlot>),
    /// Close it at once: the server is full.
    Drop,
}

/// One counted connection. The HTTP connection task holds it, and an
/// upgraded WebSocket's task holds a clone, so a WebSocket counts for as
/// long as it is open.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    counter: Arc<ConnCounter>,
    /// The address it counts against; `None` for a trusted proxy's
    /// connection, counted only in the total.
    addr: Option<IpAddr>,
    /// Whether it is a refusal (counted in `refusing`, not `open`).
    refusal: bool,
    /// Whether it counts in the total: not a proxied client's slot
    /// ([`ConnSlot::client_slot`]), whose connection is counted already.
    in_total: bool,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut counts = self.counter.lock();
        if self.in_total {
            counts.total = counts.total.saturating_sub(1);
        }
        let Some(addr) = self.addr else { return };
        if let Some(n) = counts.per_addr.get_mut(&addr) {
            if self.refusal {
                n.refusing = n.refusing.saturating_sub(1);
            } else {
                n.open = n.open.saturating_sub(1);
            }
            if n.open == 0 && n.refusing == 0 {
                counts.per_addr.remove(&addr);
            }
        }
    }
}

impl ConnCounter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Counts are updated in single steps: a poisoned lock is consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection from `addr` against `limits`; with `None`
    /// (a trusted proxy) only against the total.
    pub(crate) fn admit(self: &Arc<Self>, addr: Option<IpAddr>, limits: &ConnLimits) -> Admission {
        let mut counts = self.lock();
        if counts.total >= limits.max_connections {
            return Admission::Drop;
        }
        let Some(addr) = addr else {
            counts.total += 1;
            return Admission::Serve(Arc::new(ConnSlot {
                counter: self.clone(),
                addr: None,
                refusal: false,
                in_total: true,
            }));
        };
        let n = counts.per_addr.entry(addr).or_default();
        let refusal = n.open >= limits.max_per_addr;
        if refusal {
            if n.refusing >= REFUSALS_PER_ADDR {
                return Admission::Drop;
            }
            n.refusing += 1;
        } else {
            n.open += 1;
        }
        counts.total += 1;
        drop(counts);
        let slot = Arc::new(ConnSlot {
            counter: self.clone(),
            addr: Some(addr),
            refusal,
            in_total: true,
        });
        if refusal {
            Admission::Refuse(slot)
        } else {
            Admission::Serve(slot)
        }
    }

    /// Open connections: in all, and from `addr`.
    #[cfg(test)]
    fn open(&self, addr: IpAddr) -> (usize, usize) {
        let counts = self.lock();
        (
            counts.total,
            counts.per_addr.get(&addr).map_or(0, |n| n.open),
        )
    }
}

impl ConnSlot {
    /// For a connection admitted with no address (a trusted proxy's), a
    /// slot counting it against its real client `client` as well, to be
    /// held for as long as the connection serves only that client (an
    /// upgraded WebSocket). `Ok(None)` when the connection is counted on
    /// an address already; `Err` when `client` is at its cap.
    pub(crate) fn client_slot(
        &self,
        client: IpAddr,
        limits: &ConnLimits,
    ) -> Result<Option<Arc<ConnSlot>>, ()> {
        if self.addr.is_some() {
            return Ok(None);
        }
        let addr = client_key(client);
        let mut counts = self.counter.lock();
        let n = counts.per_addr.entry(addr).or_default();
        if n.open >= limits.max_per_addr {
            if n.open == 0 && n.refusing == 0 {
                counts.per_addr.remove(&addr);
            }
            return Err(());
        }
        n.open += 1;
        drop(counts);
        Ok(Some(Arc::new(ConnSlot {
            counter: self.counter.clone(),
            addr: Some(addr),
            refusal: false,
            in_total: false,
        })))
    }
}

/// When a connection last moved a byte, shared between its [`IdleIo`] and
/// the task that watches it; also what the header watch needs to know
/// from outside the stream.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last read or write.
    last_ms: AtomicU64,
    /// Requests whose handler is running: a pipelined request hyper parsed
    /// from its buffer, with no read the watch could see.
    in_flight: AtomicUsize,
    /// HTTP has ended (upgraded to a WebSocket): the header watch is off.
    http_done: AtomicBool,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            http_done: AtomicBool::new(false),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves once nothing has moved for `limit`.
    pub(crate) async fn idle_for(&self, limit: Duration) {
        loop {
            let deadline = self.last() + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }

    /// Marks a request as being handled until the guard is dropped.
    pub(crate) fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// HTTP is over on this connection (it was upgraded): the stream now
    /// carries WebSocket frames, which the header watch must not time.
    pub(crate) fn end_http(&self) {
        self.http_done.store(true, Ordering::Relaxed);
    }
}

/// A request being handled; see [`Activity::request`].
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Finds the end of a request header (an empty line) in bytes read in
/// pieces; leading empty lines are skipped as hyper skips them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeaderScan {
    /// A byte other than CR or LF has been read: a header has begun.
    started: bool,
    /// The last byte other than CR was LF.
    after_lf: bool,
}

impl HeaderScan {
    /// Feeds bytes; true once the header's end is among them.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            match b {
                b'\r' => {}
                b'\n' if !self.started => {}
                b'\n' if self.after_lf => return true,
                b'\n' => self.after_lf = true,
                _ => {
                    self.started = true;
                    self.after_lf = false;
                }
            }
        }
        false
    }

    /// Whether part of a header has been read.
    pub(crate) fn started(&self) -> bool {
        self.started
    }
}

/// Where the header watch of an [`IdleIo`] stands.
#[derive(Debug)]
enum Watch {
    /// Waiting for a request header since the last answer (or the start).
    Waiting(HeaderScan),
    /// A header is complete; the timer stops until an answer is written.
    Complete,
    /// The header timed out after part of it came: `408` bytes written so
    /// far.
    Answering(usize),
}

/// A stream that records when it last read or wrote a byte, and times
/// request headers (see the module docs): `408` when a started header
/// stalls, end of stream when nothing came.
#[derive(Debug)]
pub(crate) struct IdleIo<T> {
    inner: T,
    activity: Arc<Activity>,
    header_timeout: Duration,
    /// When the header being waited for is due.
    deadline: Pin<Box<tokio::time::Sleep>>,
    watch: Watch,
}

impl<T> IdleIo<T> {
    /// Must be called within a Tokio runtime (the header timer).
    pub(crate) fn new(inner: T, activity: Arc<Activity>, header_timeout: Duration) -> Self {
        Self {
            inner,
            activity,
            header_timeout,
            deadline: Box::pin(tokio::time::sleep(header_timeout)),
            watch: Watch::Waiting(HeaderScan::default()),
        }
    }

    /// Bytes went out: an answer (or part of one) was written, so the next
    /// thing to come is a new request header, due a header time-out from
    /// now.
    fn wrote(&mut self, cx: &mut Context<'_>) {
        self.activity.touch();
        if !matches!(self.watch, Watch::Answering(_)) {
            self.watch = Watch::Waiting(HeaderScan::default());
            let due = tokio::time::Instant::now() + self.header_timeout;
            self.deadline.as_mut().reset(due);
            // Registers this task with the timer: hyper may already have
            // polled its read for this wait, and is woken by the timer to
            // poll it again.
            let _ = self.deadline.as_mut().poll(cx);
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> IdleIo<T> {
    /// Writes what is left of the `408`, then ends the write side; the
    /// read then fails so that hyper drops the connection.
    fn poll_answer_timeout(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let answer = request_timeout_answer();
        while let Watch::Answering(sent) = self.watch {
            let Some(rest) = answer.get(sent..).filter(|r| !r.is_empty()) else {
                break;
            };
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.watch = Watch::Answering(sent + n);
        }
        // A FIN after the answer, so the client reads it before the end.
        ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "request header timed out: answered 408",
        )))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if matches!(this.watch, Watch::Answering(_)) {
            return this.poll_answer_timeout(cx);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = buf.filled().get(before..).unwrap_or_default();
                if !got.is_empty() {
                    this.activity.touch();
                    if let Watch::Waiting(scan) = &mut this.watch
                        && scan.feed(got)
                    {
                        this.watch = Watch::Complete;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Watch::Waiting(scan) = this.watch else {
                    return Poll::Pending;
                };
                if this.activity.http_done.load(Ordering::Relaxed)
                    || this.activity.in_flight.load(Ordering::Relaxed) > 0
                    || this.deadline.as_mut().poll(cx).is_pending()
                {
                    return Poll::Pending;
                }
                if scan.started() {
                    this.watch = Watch::Answering(0);
                    this.poll_answer_timeout(cx)
                } else {
                    // Nothing since the last answer: end of stream, and
                    // hyper closes the connection without a word.
                    Poll::Ready(Ok(()))
                }
            }
            ready => ready,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote(cx);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote(cx);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The whole `408` answer written straight to the socket when a request
/// header stalls: hyper's connection is abandoned at that point, so the
/// bytes are made here rather than by hyper. Built once.
fn request_timeout_answer() -> &'static [u8] {
    static ANSWER: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let body = mesh_core::protocol::http::ErrorResponse {
            error: mesh_core::protocol::http::ErrorBody {
                code: mesh_core::ErrorCode::Timeout,
                message: "the request header took too long; send it on a new connection".into(),
            },
        };
        // A struct of two strings always encodes; the fallback is the same text.
        let body = serde_json::to_string(&body).unwrap_or_else(|_| {
            r#"{"error":{"code":"timeout","message":"request header timeout"}}"#.into()
        });
        format!(
            "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    });
    &ANSWER
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn header_scan_finds_the_empty_line_across_pieces() {
        let mut s = HeaderScan::default();
        assert!(!s.started());
        // Empty lines before a request are skipped, as hyper skips them.
        assert!(!s.feed(b"\r\n\r\n"));
        assert!(!s.started());
        assert!(!s.feed(b"GET / HTTP/1.1\r\nHost: m\r"));
        assert!(s.started());
        assert!(!s.feed(b"\n\r"));
        assert!(s.feed(b"\n"));
        // Bare LF line ends too.
        let mut s = HeaderScan::default();
        assert!(!s.feed(b"GET / HTTP/1.1\nHost: m\n"));
        assert!(s.feed(b"\n"));
        // A CR alone in a line does not end it.
        let mut s = HeaderScan::default();
        assert!(!s.feed(b"GET / HTTP/1.1\r\nX: a\r\r\nY: b\r\n"));
    }

    fn limits(per_addr: usize, total: usize) -> ConnLimits {
        ConnLimits {
            max_per_addr: per_addr,
            max_connections: total,
            ..ConnLimits::default()
        }
    }

    #[test]
    fn per_address_cap_refuses_then_frees() {
        let counter = Arc::new(ConnCounter::default());
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let l = limits(2, 10);
        let first = counter.admit(Some(a), &l);
        let second = counter.admit(Some(a), &l);
        assert!(matches!(first, Admission::Serve(_)));
        assert!(matches!(second, Admission::Serve(_)));
        let refused = counter.admit(Some(a), &l);
        assert!(matches!(refused, Admission::Refuse(_)));
        assert!(matches!(counter.admit(Some(b), &l), Admission::Serve(_)));
        // The refusal counts in the total while it is answered, not per address.
        assert_eq!(counter.open(a), (3, 2));
        drop(refused);
        drop(first);
        assert_eq!(counter.open(a), (1, 1));
        assert!(matches!(counter.admit(Some(a), &l), Admission::Serve(_)));
    }

    #[test]
    fn refusals_per_address_are_bounded() {
        let counter = Arc::new(ConnCounter::default());
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let l = limits(1, 100);
        let _served = counter.admit(Some(a), &l);
        let refusals: Vec<Admission> = (0..REFUSALS_PER_ADDR)
            .map(|_| counter.admit(Some(a), &l))
            .collect();
        assert!(refusals.iter().all(|r| matches!(r, Admission::Refuse(_))));
        assert!(matches!(counter.admit(Some(a), &l), Admission::Drop));
        assert_eq!(counter.open(a), (1 + REFUSALS_PER_ADDR, 1));
        drop(refusals);
        assert_eq!(counter.open(a), (1, 1));
        assert!(matches!(counter.admit(Some(a), &l), Admission::Refuse(_)));
    }

    #[test]
    fn total_cap_drops_and_frees() {
        let counter = Arc::new(ConnCounter::default());
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let l = limits(10, 1);
        let held = counter.admit(Some(a), &l);
        assert!(matches!(held, Admission::Serve(_)));
        assert!(matches!(counter.admit(Some(a), &l), Admission::Drop));
        assert_eq!(counter.open(a), (1, 1));
        drop(held);
        assert_eq!(counter.open(a), (0, 0));
        assert!(matches!(counter.admit(Some(a), &l), Admission::Serve(_)));
    }

    #[test]
    fn trusted_proxy_counts_in_total_only_and_its_clients_per_address() {
        let counter = Arc::new(ConnCounter::default());
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let l = limits(1, 4);
        let proxied: Vec<Admission> = (0..3).map(|_| counter.admit(None, &l)).collect();
        assert!(proxied.iter().all(|p| matches!(p, Admission::Serve(_))));
        assert_eq!(counter.open(a), (3, 0));
        let Admission::Serve(slot) = &proxied[0] else {
            unreachable!()
        };
        // A WebSocket of client `a` through the proxy: one per `a` here.
        let ws = slot
            .client_slot(a, &l)
            .expect("under the cap")
            .expect("a slot");
        assert_eq!(counter.open(a), (3, 1));
        assert!(slot.client_slot(a, &l).is_err());
        drop(ws);
        assert_eq!(counter.open(a), (3, 0));
        // The total still binds proxied connections.
        let _fourth = counter.admit(None, &l);
        assert!(matches!(counter.admit(None, &l), Admission::Drop));
        // A directly counted connection needs no client slot.
        drop(proxied);
        let Admission::Serve(direct) = counter.admit(Some(a), &l) else {
            panic!("served")
        };
        assert!(matches!(direct.client_slot(a, &l), Ok(None)));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let p = |s: &str| s.parse::<SocketAddr>().expect("addr").ip();
        assert_eq!(
            client_key(p("[2001:db8:1:2:aaaa::1]:5")),
            client_key(p("[2001:db8:1:2:bbbb::9]:6"))
        );
        assert_ne!(
            client_key(p("[2001:db8:1:2::1]:5")),
            client_key(p("[2001:db8:1:3::1]:5"))
        );
        assert_eq!(
            client_key(p("[::ffff:10.0.0.1]:5")),
            "10.0.0.1".parse::<IpAddr>().expect("ip")
        );
    }
}
