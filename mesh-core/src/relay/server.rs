//! The server's relay, sans-IO: a state machine that takes datagrams (or
//! WebSocket binary messages), where they came from and the current time,
//! and says what to send. It owns no socket and reads no clock; the server
//! drives it from its UDP loop and its `GET /api/p2p/relay` connections.
//!
//! - **`BIND`** binds a party's [`Sink`] to a session. It needs a P2P
//!   session token (signature, `typ`, expiry) for that very session *and*
//!   the party's relay key ([`RelaySecret::check`]): the token alone, which
//!   both parties (and whoever it leaked to) hold, does not let anyone pose
//!   as a party. A session's verified token is remembered with it, so a
//!   flood of retransmitted `BIND`s costs one signature check, not one each;
//!   other signature checks are rate-limited per source address.
//!   Re-binding from another sink replaces the old one (NAT rebinding, or a
//!   move from UDP to the WebSocket). The answer is `BOUND` or `REFUSED`.
//! - **`DATA`** from a party's bound sink is forwarded, unchanged, to the
//!   other party's sink ([`Action::Forward`]: the caller sends the very
//!   bytes it received). Over the session's or its user's rate it is dropped
//!   (QUIC's congestion control adapts); past the session's byte budget both
//!   parties get `REFUSED OverBudget` and the session ends. `DATA` from
//!   anyone else gets `REFUSED NotBound`.
//! - **STUN Binding requests** (UDP only) are answered with the source
//!   address, within a per-source and a global rate, so the port cannot be
//!   used to reflect floods at a spoofed victim.
//! - Everything else (`PUNCH`, `BOUND`, `REFUSED`, garbage) is ignored.
//!
//! No reply is ever larger than the datagram that caused it, except a STUN
//! answer (32 or 44 bytes to a 20-byte request), which is rate-limited.
//!
//! Memory is bounded: at most [`RelayLimits::max_sessions`] sessions, each
//! holding one token of at most [`super::wire::MAX_TOKEN`] bytes; sessions (also
//! half-bound ones) end after [`RelayLimits::idle_timeout`] without traffic
//! ([`Relay::expire`]); the per-source limiter holds at most
//! [`SOURCE_LIMITER_CAPACITY`] addresses.
//!
//! A session outlives its token: the token authorises a `BIND`, and a
//! relayed transfer may run for longer than the token's 180 s.
//!
//! **Several nodes**: each node relays its own sessions; the per-user
//! budgets hold across them. Every second a node reports what its relay
//! did for each user ([`Relay::take_usage`]); the others count that
//! user's sessions there against [`RelayLimits::user_sessions`] and charge
//! the bytes to the user's rate here ([`Relay::remote_usage`]), so a user's
//! total stays within the limits give or take one second's worth. A node
//! not heard from for [`REMOTE_USAGE_TTL`] no longer counts.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::RelayUsage;
use super::grant::RelaySecret;
use super::stun;
use super::wire::{RefuseCode, RelayFrame};
use crate::auth::{AuthError, SessionClaims, TokenVerifier};
use crate::protocol::{RelayParty, SessionId, Timestamp, UserId};

/// Where a party is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sink {
    /// A UDP source address on the server's UDP port.
    Udp(SocketAddr),
    /// A `GET /api/p2p/relay` WebSocket connection, by the server's id for it.
    Stream(u64),
}

impl fmt::Display for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sink::Udp(a) => write!(f, "udp:{a}"),
            Sink::Stream(id) => write!(f, "ws:{id}"),
        }
    }
}

/// Budgets and time-outs of the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Bytes one session may relay, both ways together (default 8 GiB);
    /// past it the session ends with `REFUSED OverBudget`.
    pub session_bytes: u64,
    /// Bytes per second one session may relay, both ways together (default
    /// 64 MiB/s, bursts of one second's worth); more is dropped.
    pub session_rate: u64,
    /// Bytes per second a user may relay across all its sessions (default
    /// 128 MiB/s); a session's bytes count for the user who sent them.
    pub user_rate: u64,
    /// Relayed sessions a user may be a party of at once (default 16).
    pub user_sessions: usize,
    /// Relayed sessions in all (default 10 000).
    pub max_sessions: usize,
    /// A session that relays nothing for this long ends (default 30 s).
    pub idle_timeout: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            session_bytes: 8 << 30,
            session_rate: 64 << 20,
            user_rate: 128 << 20,
            user_sessions: 16,
            max_sessions: 10_000,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// What the caller sends after [`Relay::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to send.
    Nothing,
    /// Send these bytes back to where the datagram came from.
    Reply(Vec<u8>),
    /// Send the datagram, unchanged, to `to`.
    Forward { to: Sink },
    /// Send each frame to its sink (the session ended: both parties hear why).
    Send(Vec<(Sink, Vec<u8>)>),
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Nothing relayed for [`RelayLimits::idle_timeout`].
    Idle,
    /// The session spent [`RelayLimits::session_bytes`].
    OverBudget,
}

/// What a session relayed, reported when it ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionStats {
    pub session: SessionId,
    pub reason: EndReason,
    /// Bytes (whole frames) forwarded from the initiator to the target.
    pub bytes_from_initiator: u64,
    /// Bytes (whole frames) forwarded from the target to the initiator.
    pub bytes_from_target: u64,
    /// Frames forwarded, both ways.
    pub packets: u64,
    /// Frames dropped: over a rate, or the other party not bound.
    pub dropped: u64,
    /// From the first `BIND` to the end.
    pub duration: Duration,
}

/// The relay's counters since it started (for logs and `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayCounters {
    /// Sessions open now.
    pub sessions: usize,
    /// Sessions opened since the start.
    pub sessions_opened: u64,
    /// `BIND`s answered `BOUND`.
    pub binds: u64,
    /// Frames forwarded.
    pub forwarded_packets: u64,
    /// Bytes forwarded (whole frames).
    pub forwarded_bytes: u64,
    /// `DATA` frames dropped (rate, unbound other party, no reply allowed).
    pub dropped_packets: u64,
    /// `REFUSED` answers sent.
    pub refused: u64,
    /// STUN Binding requests answered.
    pub stun_answered: u64,
    /// Datagrams ignored or not answered (garbage, over a source's rate).
    pub ignored: u64,
}

/// Most source addresses the per-source limiter remembers; when it is full
/// it forgets them all (the global rate still holds).
pub const SOURCE_LIMITER_CAPACITY: usize = 4096;
/// Answers (STUN, signature checks, refusals) per source address: burst.
const SOURCE_BURST: f64 = 32.0;
/// Answers per source address and second, sustained.
const SOURCE_RATE: f64 = 16.0;
/// Answers per second for all sources together (and the burst).
const GLOBAL_RATE: f64 = 5000.0;

/// A token bucket of `f64` tokens, refilled at `rate` per second up to
/// `burst`.
#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.last = now;
    }

    fn has(&mut self, n: f64, rate: f64, burst: f64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        self.tokens >= n
    }

    fn take(&mut self, n: f64) {
        self.tokens -= n;
    }
}

/// Answers per source address and in all.
#[derive(Debug)]
struct SourceLimiter {
    sources: HashMap<IpAddr, Bucket>,
    global: Bucket,
}

impl SourceLimiter {
    fn new(now: Instant) -> Self {
        Self {
            sources: HashMap::new(),
            global: Bucket::full(GLOBAL_RATE, now),
        }
    }

    /// Whether `ip` may have one more answer (and counts it).
    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.global.has(1.0, GLOBAL_RATE, GLOBAL_RATE, now) {
            return false;
        }
        let key = source_key(ip);
        if !self.sources.contains_key(&key) && self.sources.len() >= SOURCE_LIMITER_CAPACITY {
            // Buckets refilled to the brim hold nothing worth keeping.
            self.sources.retain(|_, b| {
                b.refill(SOURCE_RATE, SOURCE_BURST, now);
                b.tokens < SOURCE_BURST
            });
            if self.sources.len() >= SOURCE_LIMITER_CAPACITY {
                self.sources.clear();
            }
        }
        let bucket = self
            .sources
            .entry(key)
            .or_insert_with(|| Bucket::full(SOURCE_BURST, now));
        if !bucket.has(1.0, SOURCE_RATE, SOURCE_BURST, now) {
            return false;
        }
        bucket.take(1.0);
        self.global.take(1.0);
        true
    }
}

/// IPv6 sources count per /64 (one host usually holds a whole /64).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
    }
}

fn index(party: RelayParty) -> usize {
    match party {
        RelayParty::Initiator => 0,
        RelayParty::Target => 1,
    }
}

/// One relayed session.
/// A `BIND`: who asks to be bound to which session, and with what.
#[derive(Clone, Copy)]
struct BindRequest<'a> {
    sid: SessionId,
    party: RelayParty,
    /// The party's relay key (an HMAC of the server's relay secret).
    key: &'a [u8; 32],
    /// The session token, checked offline as agents check it.
    token: &'a str,
}

#[derive(Debug)]
struct Session {
    /// The token that bound it, already verified: a `BIND` carrying the
    /// same bytes only needs its expiry checked.
    token: Box<str>,
    /// The token's `exp`, Unix seconds.
    exp: i64,
    /// The users behind the initiator and the target.
    users: [UserId; 2],
    sinks: [Option<Sink>; 2],
    bytes: [u64; 2],
    packets: u64,
    dropped: u64,
    bucket: Bucket,
    opened: Instant,
    last_active: Instant,
}

impl Session {
    fn party_of(&self, sink: Sink) -> Option<usize> {
        self.sinks.iter().position(|s| *s == Some(sink))
    }

    fn stats(&self, session: SessionId, reason: EndReason, now: Instant) -> SessionStats {
        SessionStats {
            session,
            reason,
            bytes_from_initiator: self.bytes[0],
            bytes_from_target: self.bytes[1],
            packets: self.packets,
            dropped: self.dropped,
            duration: now.saturating_duration_since(self.opened),
        }
    }
}

/// A user's share of the relay.
#[derive(Debug)]
struct UserShare {
    sessions: usize,
    bucket: Bucket,
    /// Bytes relayed for the user since the last [`Relay::take_usage`].
    unreported: u64,
}

/// How long another node's report of its relay counts.
pub const REMOTE_USAGE_TTL: Duration = Duration::from_secs(3);

/// Another node's last report (see the module docs).
#[derive(Debug)]
struct RemoteUsage {
    at: Instant,
    sessions: HashMap<UserId, usize>,
}

/// The relay's state; see the [module documentation](self).
#[derive(Debug)]
pub struct Relay {
    /// `None`: relaying is off (every `BIND` is refused `Disabled`; STUN is
    /// still answered).
    secret: Option<RelaySecret>,
    verifier: TokenVerifier,
    limits: RelayLimits,
    sessions: HashMap<SessionId, Session>,
    users: HashMap<UserId, UserShare>,
    /// The other nodes' relays, by node name.
    remote: HashMap<String, RemoteUsage>,
    sources: SourceLimiter,
    counters: RelayCounters,
}

impl Relay {
    /// A relay checking keys against `secret` (`None`: relaying disabled)
    /// and session tokens with `verifier`. `now` starts the rate limits.
    pub fn new(
        secret: Option<RelaySecret>,
        verifier: TokenVerifier,
        limits: RelayLimits,
        now: Instant,
    ) -> Self {
        Self {
            secret,
            verifier,
            limits,
            sessions: HashMap::new(),
            users: HashMap::new(),
            remote: HashMap::new(),
            sources: SourceLimiter::new(now),
            counters: RelayCounters::default(),
        }
    }

    /// Whether the relay relays (else only STUN is answered).
    pub fn is_enabled(&self) -> bool {
        self.secret.is_some()
    }

    pub fn limits(&self) -> &RelayLimits {
        &self.limits
    }

    /// The counters since the start.
    pub fn counters(&self) -> RelayCounters {
        RelayCounters {
            sessions: self.sessions.len(),
            ..self.counters
        }
    }

    /// One datagram (or binary message) from `from`, at `now` (`unix_now`
    /// for token expiry). Never panics, whatever the bytes.
    pub fn handle(
        &mut self,
        now: Instant,
        unix_now: Timestamp,
        from: Sink,
        datagram: &[u8],
    ) -> Action {
        if stun::is_stun(datagram) {
            return self.stun(now, from, datagram);
        }
        match RelayFrame::decode(datagram) {
            Ok(RelayFrame::Bind {
                session,
                party,
                key,
                token,
            }) => {
                let request = BindRequest {
                    sid: session,
                    party,
                    key: &key,
                    token,
                };
                let answer = self.bind(now, unix_now, from, request);
                let reply = match answer {
                    Ok(()) => RelayFrame::Bound { session }.to_vec(),
                    Err((code, reason)) => {
                        tracing::debug!(%from, %session, code = code.as_str(), reason, "relay BIND refused");
                        return self.refuse(now, from, datagram.len(), session, code, reason);
                    }
                };
                Action::Reply(reply)
            }
            Ok(RelayFrame::Data { session, .. }) => self.data(now, from, session, datagram),
            // PUNCH is for the other agent, BOUND and REFUSED for agents.
            Ok(_) | Err(_) => {
                self.counters.ignored += 1;
                Action::Nothing
            }
        }
    }

    fn stun(&mut self, now: Instant, from: Sink, datagram: &[u8]) -> Action {
        let Sink::Udp(addr) = from else {
            // An address seen through a WebSocket is the server's own view
            // of a TCP peer: no use for UDP hole punching.
            self.counters.ignored += 1;
            return Action::Nothing;
        };
        if !self.sources.allow(addr.ip(), now) {
            self.counters.ignored += 1;
            return Action::Nothing;
        }
        match stun::answer(datagram, addr) {
            Some(reply) => {
                self.counters.stun_answered += 1;
                Action::Reply(reply)
            }
            None => {
                self.counters.ignored += 1;
                Action::Nothing
            }
        }
    }

    /// A `REFUSED` for `from`, if it is no larger than the frame that
    /// caused it (no amplification) and, to UDP sources, within the
    /// source's rate (no reflection).
    fn refuse(
        &mut self,
        now: Instant,
        from: Sink,
        request_len: usize,
        session: SessionId,
        code: RefuseCode,
        reason: &str,
    ) -> Action {
        if let Sink::Udp(addr) = from
            && !self.sources.allow(addr.ip(), now)
        {
            self.counters.ignored += 1;
            return Action::Nothing;
        }
        let mut reply = RelayFrame::Refused {
            session,
            code,
            reason,
        }
        .to_vec();
        if reply.len() > request_len {
            reply = RelayFrame::Refused {
                session,
                code,
                reason: "",
            }
            .to_vec();
        }
        if reply.len() > request_len {
            self.counters.dropped_packets += 1;
            return Action::Nothing;
        }
        self.counters.refused += 1;
        Action::Reply(reply)
    }

    fn bind(
        &mut self,
        now: Instant,
        unix_now: Timestamp,
        from: Sink,
        BindRequest {
            sid,
            party,
            key,
            token,
        }: BindRequest<'_>,
    ) -> Result<(), (RefuseCode, &'static str)> {
        let secret = self
            .secret
            .as_ref()
            .ok_or((RefuseCode::Disabled, "this server does not relay"))?;
        // The key first: an HMAC is cheap, a signature check is not, and
        // without the key nothing else matters.
        if !secret.check(sid, party, key) {
            return Err((RefuseCode::NotAParty, "not this party's relay key"));
        }
        let i = index(party);
        if let Some(s) = self.sessions.get_mut(&sid)
            && *s.token == *token
        {
            if s.exp <= unix_now.unix_seconds() {
                return Err((RefuseCode::TokenExpired, "session token expired"));
            }
            if s.sinks[i] != Some(from) {
                tracing::debug!(session = %sid, ?party, old = ?s.sinks[i], new = %from, "relay party re-bound");
                s.sinks[i] = Some(from);
            }
            s.last_active = now;
            self.counters.binds += 1;
            return Ok(());
        }
        if let Sink::Udp(addr) = from
            && !self.sources.allow(addr.ip(), now)
        {
            return Err((RefuseCode::OverBudget, "too many BINDs from this address"));
        }
        let claims = self
            .verifier
            .verify_session(token, unix_now)
            .map_err(|e| match e {
                AuthError::Expired => (RefuseCode::TokenExpired, "session token expired"),
                _ => (RefuseCode::InvalidToken, "invalid session token"),
            })?;
        if claims.sid != sid {
            return Err((RefuseCode::WrongSession, "the token is for another session"));
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            // Another valid token of the same session (a retransmission
            // after a token refresh): remember the newer one.
            s.token = token.into();
            s.exp = claims.exp;
            s.sinks[i] = Some(from);
            s.last_active = now;
            self.counters.binds += 1;
            return Ok(());
        }
        self.open(now, from, sid, party, token, &claims)
    }

    /// A new relayed session, within the relay's and both users' budgets.
    fn open(
        &mut self,
        now: Instant,
        from: Sink,
        sid: SessionId,
        party: RelayParty,
        token: &str,
        claims: &SessionClaims,
    ) -> Result<(), (RefuseCode, &'static str)> {
        let i = index(party);
        if self.sessions.len() >= self.limits.max_sessions {
            return Err((RefuseCode::OverBudget, "the relay is full"));
        }
        let users = [claims.initiator_user_id, claims.target_user_id];
        let mut distinct = vec![users[0]];
        if users[1] != users[0] {
            distinct.push(users[1]);
        }
        if distinct.iter().any(|u| {
            let here = self.users.get(u).map_or(0, |share| share.sessions);
            here + self.remote_sessions(*u, now) >= self.limits.user_sessions
        }) {
            return Err((
                RefuseCode::OverBudget,
                "too many relayed sessions for this user",
            ));
        }
        let user_burst = self.limits.user_rate as f64;
        for u in distinct {
            self.users
                .entry(u)
                .or_insert_with(|| UserShare {
                    sessions: 0,
                    bucket: Bucket::full(user_burst, now),
                    unreported: 0,
                })
                .sessions += 1;
        }
        let mut sinks = [None, None];
        sinks[i] = Some(from);
        self.sessions.insert(
            sid,
            Session {
                token: token.into(),
                exp: claims.exp,
                users,
                sinks,
                bytes: [0, 0],
                packets: 0,
                dropped: 0,
                bucket: Bucket::full(self.limits.session_rate as f64, now),
                opened: now,
                last_active: now,
            },
        );
        self.counters.sessions_opened += 1;
        self.counters.binds += 1;
        tracing::debug!(session = %sid, ?party, %from, "relay session opened");
        Ok(())
    }

    fn data(&mut self, now: Instant, from: Sink, sid: SessionId, datagram: &[u8]) -> Action {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return self.refuse(
                now,
                from,
                datagram.len(),
                sid,
                RefuseCode::NotBound,
                "bind first",
            );
        };
        let Some(i) = s.party_of(from) else {
            return self.refuse(
                now,
                from,
                datagram.len(),
                sid,
                RefuseCode::NotBound,
                "bind first",
            );
        };
        let Some(to) = s.sinks[1 - i] else {
            s.dropped += 1;
            self.counters.dropped_packets += 1;
            return Action::Nothing;
        };
        let len = datagram.len() as u64;
        if s.bytes[0] + s.bytes[1] + len > self.limits.session_bytes {
            let code = RefuseCode::OverBudget;
            let reason = "the session spent its relay budget";
            let frame = RelayFrame::Refused {
                session: sid,
                code,
                reason,
            }
            .to_vec();
            let mut out = vec![(from, frame.clone()), (to, frame)];
            out.dedup_by(|a, b| a.0 == b.0);
            self.counters.refused += out.len() as u64;
            self.end(sid, EndReason::OverBudget, now);
            return Action::Send(out);
        }
        let n = len as f64;
        let (session_rate, user_rate) = (
            self.limits.session_rate as f64,
            self.limits.user_rate as f64,
        );
        let user = s.users[i];
        let session_ok = s.bucket.has(n, session_rate, session_rate, now);
        let user_ok = match self.users.get_mut(&user) {
            Some(share) => {
                let ok = share.bucket.has(n, user_rate, user_rate, now);
                if ok && session_ok {
                    share.bucket.take(n);
                    share.unreported += len;
                }
                ok
            }
            None => true,
        };
        // `s` ended its borrow for `self.users`; look it up again.
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Action::Nothing;
        };
        if !(session_ok && user_ok) {
            s.dropped += 1;
            self.counters.dropped_packets += 1;
            return Action::Nothing;
        }
        s.bucket.take(n);
        s.bytes[i] += len;
        s.packets += 1;
        s.last_active = now;
        self.counters.forwarded_packets += 1;
        self.counters.forwarded_bytes += len;
        Action::Forward { to }
    }

    /// What this relay did for each user since the last call: for the
    /// other nodes of a cluster (call it every second).
    pub fn take_usage(&mut self) -> Vec<RelayUsage> {
        self.users
            .iter_mut()
            .map(|(user, share)| RelayUsage {
                user_id: *user,
                sessions: share.sessions,
                bytes: std::mem::take(&mut share.unreported),
            })
            .collect()
    }

    /// Another node's report ([`Self::take_usage`] there): its sessions
    /// count against each user's session limit here until the next report
    /// (or for [`REMOTE_USAGE_TTL`]), its bytes are charged to each user's
    /// rate here.
    pub fn remote_usage(&mut self, node: &str, usage: Vec<RelayUsage>, now: Instant) {
        let user_rate = self.limits.user_rate as f64;
        let mut sessions = HashMap::new();
        for u in usage {
            if u.sessions > 0 {
                sessions.insert(u.user_id, u.sessions);
            }
            if let Some(share) = self.users.get_mut(&u.user_id) {
                share.bucket.refill(user_rate, user_rate, now);
                // At most one second's worth of debt: a burst elsewhere
                // slows this node down, it does not stop it for long.
                share.bucket.tokens = (share.bucket.tokens - u.bytes as f64).max(-user_rate);
            }
        }
        self.remote
            .retain(|_, r| now.saturating_duration_since(r.at) < REMOTE_USAGE_TTL);
        if sessions.is_empty() {
            self.remote.remove(node);
        } else {
            self.remote
                .insert(node.to_owned(), RemoteUsage { at: now, sessions });
        }
    }

    /// The user's relayed sessions on the other nodes, as they last said.
    fn remote_sessions(&self, user: UserId, now: Instant) -> usize {
        self.remote
            .values()
            .filter(|r| now.saturating_duration_since(r.at) < REMOTE_USAGE_TTL)
            .filter_map(|r| r.sessions.get(&user))
            .sum()
    }

    /// A WebSocket relay connection closed: its bindings go (the sessions
    /// stay, for the party to bind again, until they are idle too long).
    pub fn stream_closed(&mut self, id: u64) {
        // A scan over at most `max_sessions`, once per closed connection:
        // cheaper to keep than an index updated on every BIND.
        for s in self.sessions.values_mut() {
            for sink in &mut s.sinks {
                if *sink == Some(Sink::Stream(id)) {
                    *sink = None;
                }
            }
        }
    }

    /// When the next session goes idle (`None`: no session).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions
            .values()
            .map(|s| s.last_active + self.limits.idle_timeout)
            .min()
    }

    /// Ends the sessions idle since `now - idle_timeout`; what they relayed.
    pub fn expire(&mut self, now: Instant) -> Vec<SessionStats> {
        let idle = self.limits.idle_timeout;
        let gone: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_active) >= idle)
            .map(|(id, _)| *id)
            .collect();
        gone.into_iter()
            .filter_map(|id| self.end(id, EndReason::Idle, now))
            .collect()
    }

    fn end(&mut self, sid: SessionId, reason: EndReason, now: Instant) -> Option<SessionStats> {
        let s = self.sessions.remove(&sid)?;
        let mut users = vec![s.users[0]];
        if s.users[1] != s.users[0] {
            users.push(s.users[1]);
        }
        for u in users {
            if let Some(share) = self.users.get_mut(&u) {
                share.sessions = share.sessions.saturating_sub(1);
                if share.sessions == 0 {
                    self.users.remove(&u);
                }
            }
        }
        let stats = s.stats(sid, reason, now);
        tracing::info!(
            session = %sid,
            reason = ?reason,
            bytes_from_initiator = stats.bytes_from_initiator,
            bytes_from_target = stats.bytes_from_target,
            packets = stats.packets,
            dropped = stats.dropped,
            duration_ms = stats.duration.as_millis() as u64,
            "relay session ended"
        );
        Some(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyRing;
    use crate::auth::tokens::issue_session_token;
    use crate::protocol::{P2pSession, PeerId, RoomId, SessionKind, SessionState};

    const T0: i64 = 1_700_000_000_000;

    struct Lab {
        keys: KeyRing,
        secret: RelaySecret,
        relay: Relay,
        now: Instant,
        unix: Timestamp,
    }

    fn udp(port: u16) -> Sink {
        Sink::Udp(SocketAddr::from(([192, 0, 2, 1], port)))
    }

    impl Lab {
        fn new(limits: RelayLimits) -> Self {
            let keys = KeyRing::generate().expect("keys");
            let secret = RelaySecret::generate().expect("random");
            let now = Instant::now();
            let relay = Relay::new(Some(secret.clone()), keys.verifier(), limits, now);
            Self {
                keys,
                secret,
                relay,
                now,
                unix: Timestamp::from_unix_millis(T0),
            }
        }

        /// A session between two users (or `users` given), valid `ttl_secs`.
        fn session(&self, users: Option<(UserId, UserId)>, ttl_secs: u64) -> (SessionId, String) {
            let (a, b) = users.unwrap_or((UserId::new(), UserId::new()));
            let s = P2pSession {
                id: SessionId::new(),
                room_id: RoomId::new(),
                kind: SessionKind::File,
                initiator_peer_id: PeerId::new(),
                target_peer_id: PeerId::new(),
                initiator_user_id: a,
                target_user_id: b,
                state: SessionState::Pending,
                created_at: self.unix,
                expires_at: self.unix.saturating_add(Duration::from_secs(ttl_secs)),
            };
            let token = issue_session_token(&self.keys, &s, self.unix).expect("token");
            (s.id, token.token)
        }

        fn bind_frame(&self, sid: SessionId, party: RelayParty, token: &str) -> Vec<u8> {
            RelayFrame::Bind {
                session: sid,
                party,
                key: self.secret.key(sid, party),
                token,
            }
            .to_vec()
        }

        fn send(&mut self, from: Sink, bytes: &[u8]) -> Action {
            self.relay.handle(self.now, self.unix, from, bytes)
        }

        fn bind(&mut self, from: Sink, sid: SessionId, party: RelayParty, token: &str) -> Action {
            let f = self.bind_frame(sid, party, token);
            self.send(from, &f)
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
            self.unix = self.unix.saturating_add(d);
        }
    }

    fn bound(sid: SessionId) -> Action {
        Action::Reply(RelayFrame::Bound { session: sid }.to_vec())
    }

    fn refused_code(a: &Action) -> Option<RefuseCode> {
        match a {
            Action::Reply(b) => match RelayFrame::decode(b) {
                Ok(RelayFrame::Refused { code, .. }) => Some(code),
                _ => None,
            },
            _ => None,
        }
    }

    fn data(sid: SessionId, payload: &[u8]) -> Vec<u8> {
        RelayFrame::Data {
            session: sid,
            payload,
        }
        .to_vec()
    }

    #[test]
    fn two_parties_bind_and_data_flows_both_ways() {
        let mut lab = Lab::new(RelayLimits::default());
        let (sid, token) = lab.session(None, 180);
        let (a, b) = (udp(1), Sink::Stream(7));
        assert_eq!(lab.bind(a, sid, RelayParty::Initiator, &token), bound(sid));
        // The other party is not bound yet: dropped, not refused.
        assert_eq!(lab.send(a, &data(sid, b"early")), Action::Nothing);
        assert_eq!(lab.bind(b, sid, RelayParty::Target, &token), bound(sid));
        // Retransmitted BINDs are idempotent.
        assert_eq!(lab.bind(b, sid, RelayParty::Target, &token), bound(sid));
        assert_eq!(lab.send(a, &data(sid, b"hello")), Action::Forward { to: b });
        assert_eq!(lab.send(b, &data(sid, b"back")), Action::Forward { to: a });
        let c = lab.relay.counters();
        assert_eq!(
            (c.sessions, c.forwarded_packets, c.dropped_packets),
            (1, 2, 1)
        );
        assert_eq!(c.forwarded_bytes, (17 + 5 + 17 + 4) as u64);
    }

    #[test]
    fn binds_are_checked() {
        let mut lab = Lab::new(RelayLimits::default());
        let (sid, token) = lab.session(None, 180);
        let (other, other_token) = lab.session(None, 180);
        // Wrong key: the target's key posing as the initiator.
        let mut f = lab.bind_frame(sid, RelayParty::Target, &token);
        f[17] = RelayParty::Initiator.to_byte();
        assert_eq!(
            refused_code(&lab.send(udp(1), &f)),
            Some(RefuseCode::NotAParty)
        );
        // A token of another session with this session's key.
        assert_eq!(
            refused_code(&lab.bind(udp(1), sid, RelayParty::Initiator, &other_token)),
            Some(RefuseCode::WrongSession)
        );
        // Garbage token.
        assert_eq!(
            refused_code(&lab.bind(udp(1), sid, RelayParty::Initiator, "a.b.c")),
            Some(RefuseCode::InvalidToken)
        );
        // Another server's token.
        let stranger = Lab::new(RelayLimits::default());
        let (_, foreign) = stranger.session(None, 180);
        assert_eq!(
            refused_code(&lab.bind(udp(1), other, RelayParty::Initiator, &foreign)),
            Some(RefuseCode::InvalidToken)
        );
        assert_eq!(lab.relay.counters().sessions, 0);
    }

    #[test]
    fn expired_tokens_are_refused_even_when_cached() {
        let mut lab = Lab::new(RelayLimits {
            idle_timeout: Duration::from_secs(600),
            ..RelayLimits::default()
        });
        let (sid, token) = lab.session(None, 10);
        assert_eq!(
            lab.bind(udp(1), sid, RelayParty::Initiator, &token),
            bound(sid)
        );
        lab.advance(Duration::from_secs(10));
        assert_eq!(
            refused_code(&lab.bind(udp(1), sid, RelayParty::Initiator, &token)),
            Some(RefuseCode::TokenExpired)
        );
        let (sid2, token2) = lab.session(None, 10);
        lab.advance(Duration::from_secs(11));
        assert_eq!(
            refused_code(&lab.bind(udp(2), sid2, RelayParty::Initiator, &token2)),
            Some(RefuseCode::TokenExpired)
        );
    }

    #[test]
    fn strangers_cannot_inject_or_receive() {
        let mut lab = Lab::new(RelayLimits::default());
        let (sid, token) = lab.session(None, 180);
        let (a, b, eve) = (udp(1), udp(2), udp(3));
        lab.bind(a, sid, RelayParty::Initiator, &token);
        lab.bind(b, sid, RelayParty::Target, &token);
        // Eve holds the token but no key.
        let mut f = lab.bind_frame(sid, RelayParty::Target, &token);
        f[18..50].copy_from_slice(&[0; 32]);
        assert_eq!(
            refused_code(&lab.send(eve, &f)),
            Some(RefuseCode::NotAParty)
        );
        assert_eq!(
            refused_code(&lab.send(eve, &data(sid, b"injected")),),
            Some(RefuseCode::NotBound)
        );
        // And the parties' traffic still goes to the parties.
        assert_eq!(lab.send(a, &data(sid, b"x")), Action::Forward { to: b });
        // A refusal is never larger than the frame that caused it.
        let tiny = data(sid, b"");
        let mut tiny = tiny;
        tiny.push(0);
        match lab.send(eve, &tiny) {
            Action::Reply(r) => assert!(r.len() <= tiny.len()),
            Action::Nothing => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rebinding_moves_a_party() {
        let mut lab = Lab::new(RelayLimits::default());
        let (sid, token) = lab.session(None, 180);
        let (a, b, a2) = (udp(1), udp(2), Sink::Stream(1));
        lab.bind(a, sid, RelayParty::Initiator, &token);
        lab.bind(b, sid, RelayParty::Target, &token);
        assert_eq!(lab.bind(a2, sid, RelayParty::Initiator, &token), bound(sid));
        assert_eq!(lab.send(b, &data(sid, b"x")), Action::Forward { to: a2 });
        assert_eq!(
            refused_code(&lab.send(a, &data(sid, b"old"))),
            Some(RefuseCode::NotBound)
        );
        lab.relay.stream_closed(1);
        assert_eq!(lab.send(b, &data(sid, b"x")), Action::Nothing);
    }

    #[test]
    fn disabled_relays_refuse_but_answer_stun() {
        let keys = KeyRing::generate().expect("keys");
        let now = Instant::now();
        let mut relay = Relay::new(None, keys.verifier(), RelayLimits::default(), now);
        let lab = Lab::new(RelayLimits::default());
        let (sid, token) = lab.session(None, 180);
        let f = lab.bind_frame(sid, RelayParty::Initiator, &token);
        let unix = Timestamp::from_unix_millis(T0);
        assert_eq!(
            refused_code(&relay.handle(now, unix, udp(1), &f)),
            Some(RefuseCode::Disabled)
        );
        let from = SocketAddr::from(([198, 51, 100, 4], 999));
        let Action::Reply(r) =
            relay.handle(now, unix, Sink::Udp(from), &stun::binding_request([1; 12]))
        else {
            panic!("STUN answered");
        };
        assert_eq!(stun::parse_response(&r), Some(([1; 12], from)));
    }

    #[test]
    fn stun_is_rate_limited_per_source() {
        let mut lab = Lab::new(RelayLimits::default());
        let req = stun::binding_request([2; 12]);
        let answered = (0..1000)
            .filter(|_| matches!(lab.send(udp(5), &req), Action::Reply(_)))
            .count();
        assert_eq!(answered, SOURCE_BURST as usize);
        // Another source is still answered, and the first one after a while.
        assert!(matches!(
            lab.send(udp(6).with_ip([192, 0, 2, 9]), &req),
            Action::Reply(_)
        ));
        lab.advance(Duration::from_secs(1));
        assert!(matches!(lab.send(udp(5), &req), Action::Reply(_)));
        // The limiter's memory is bounded.
        for i in 0..(SOURCE_LIMITER_CAPACITY as u32 * 3) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            lab.send(Sink::Udp(SocketAddr::from((ip, 1))), &req);
        }
        assert!(lab.relay.sources.sources.len() <= SOURCE_LIMITER_CAPACITY);
    }

    impl Sink {
        fn with_ip(self, ip: [u8; 4]) -> Sink {
            match self {
                Sink::Udp(a) => Sink::Udp(SocketAddr::from((ip, a.port()))),
                s => s,
            }
        }
    }

    #[test]
    fn user_budgets_hold_across_nodes() {
        let mut lab = Lab::new(RelayLimits {
            user_rate: 1000,
            user_sessions: 2,
            ..RelayLimits::default()
        });
        let (alice, bob) = (UserId::new(), UserId::new());
        // Alice has one relayed session on another node: one left here.
        let elsewhere = |sessions, bytes| {
            vec![RelayUsage {
                user_id: alice,
                sessions,
                bytes,
            }]
        };
        lab.relay.remote_usage("b", elsewhere(1, 0), lab.now);
        let (sid, token) = lab.session(Some((alice, bob)), 180);
        let (a, b) = (udp(1), udp(2));
        assert_eq!(lab.bind(a, sid, RelayParty::Initiator, &token), bound(sid));
        lab.bind(b, sid, RelayParty::Target, &token);
        let (s2, t2) = lab.session(Some((alice, UserId::new())), 180);
        assert_eq!(
            refused_code(&lab.bind(udp(3), s2, RelayParty::Initiator, &t2)),
            Some(RefuseCode::OverBudget),
            "one here and one there: the limit"
        );
        // What alice sends here is reported, once.
        let frame = data(sid, &[0xc0; 83]); // 100 bytes
        assert_eq!(lab.send(a, &frame), Action::Forward { to: b });
        let usage = lab.relay.take_usage();
        let mine = usage.iter().find(|u| u.user_id == alice).expect("alice");
        assert_eq!((mine.sessions, mine.bytes), (1, 100));
        assert!(lab.relay.take_usage().iter().all(|u| u.bytes == 0));
        // Bytes relayed for her elsewhere are charged here: a second's
        // worth there leaves nothing for her here until it refills.
        lab.relay.remote_usage("b", elsewhere(1, 1000), lab.now);
        assert_eq!(lab.send(a, &frame), Action::Nothing, "her rate is spent");
        lab.advance(Duration::from_millis(1200));
        assert_eq!(lab.send(a, &frame), Action::Forward { to: b });
        // A node that stops reporting stops counting.
        lab.advance(REMOTE_USAGE_TTL);
        assert_eq!(lab.bind(udp(3), s2, RelayParty::Initiator, &t2), bound(s2));
    }

    #[test]
    fn budgets_hold() {
        let mut lab = Lab::new(RelayLimits {
            session_bytes: 1000,
            session_rate: 400,
            user_rate: 1 << 30,
            user_sessions: 2,
            max_sessions: 3,
            idle_timeout: Duration::from_secs(30),
        });
        let (alice, bob) = (UserId::new(), UserId::new());
        let (sid, token) = lab.session(Some((alice, bob)), 180);
        let (a, b) = (udp(1), udp(2));
        lab.bind(a, sid, RelayParty::Initiator, &token);
        lab.bind(b, sid, RelayParty::Target, &token);
        let frame = data(sid, &[0xc0; 83]); // 100 bytes
        let sent = (0..10)
            .filter(|_| lab.send(a, &frame) == Action::Forward { to: b })
            .count();
        assert_eq!(sent, 4, "a second's worth of the session rate");
        // Refills with time; past the byte budget the session ends.
        let mut ended = None;
        for _ in 0..20 {
            lab.advance(Duration::from_secs(1));
            if let Action::Send(out) = lab.send(a, &frame) {
                ended = Some(out);
                break;
            }
        }
        let out = ended.expect("the budget ran out");
        assert_eq!(out.len(), 2);
        for (_, f) in &out {
            assert!(matches!(
                RelayFrame::decode(f),
                Ok(RelayFrame::Refused {
                    code: RefuseCode::OverBudget,
                    ..
                })
            ));
        }
        assert_eq!(lab.relay.counters().sessions, 0);
        // Per user: two sessions, then over budget.
        for _ in 0..2 {
            let (s, t) = lab.session(Some((alice, UserId::new())), 180);
            assert_eq!(lab.bind(a, s, RelayParty::Initiator, &t), bound(s));
        }
        let (s, t) = lab.session(Some((UserId::new(), alice)), 180);
        assert_eq!(
            refused_code(&lab.bind(udp(3), s, RelayParty::Target, &t)),
            Some(RefuseCode::OverBudget)
        );
        // In all: three sessions.
        let (s, t) = lab.session(None, 180);
        assert_eq!(lab.bind(udp(4), s, RelayParty::Target, &t), bound(s));
        let (s, t) = lab.session(None, 180);
        assert_eq!(
            refused_code(&lab.bind(udp(4), s, RelayParty::Target, &t)),
            Some(RefuseCode::OverBudget)
        );
    }

    #[test]
    fn idle_and_half_bound_sessions_expire() {
        let mut lab = Lab::new(RelayLimits {
            idle_timeout: Duration::from_secs(30),
            ..RelayLimits::default()
        });
        let (busy, t1) = lab.session(None, 180);
        let (half, t2) = lab.session(None, 180);
        lab.bind(udp(1), busy, RelayParty::Initiator, &t1);
        lab.bind(udp(2), busy, RelayParty::Target, &t1);
        lab.bind(udp(3), half, RelayParty::Initiator, &t2);
        assert_eq!(
            lab.relay.poll_timeout(),
            Some(lab.now + Duration::from_secs(30))
        );
        lab.advance(Duration::from_secs(20));
        assert_eq!(
            lab.send(udp(1), &data(busy, b"x")),
            Action::Forward { to: udp(2) }
        );
        lab.advance(Duration::from_secs(10));
        let ended = lab.relay.expire(lab.now);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].session, half);
        assert_eq!(ended[0].reason, EndReason::Idle);
        lab.advance(Duration::from_secs(20));
        let ended = lab.relay.expire(lab.now);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].bytes_from_initiator, 18);
        assert_eq!(
            refused_code(&lab.send(udp(1), &data(busy, b"late"))),
            Some(RefuseCode::NotBound)
        );
        assert_eq!(lab.relay.poll_timeout(), None);
    }

    #[test]
    fn a_bind_flood_costs_one_signature_check() {
        let mut lab = Lab::new(RelayLimits::default());
        let (sid, token) = lab.session(None, 180);
        // Far past the per-source rate of signature checks: the cached
        // token is compared, not verified again.
        for _ in 0..500 {
            assert_eq!(
                lab.bind(udp(1), sid, RelayParty::Initiator, &token),
                bound(sid)
            );
        }
    }

    #[test]
    fn state_stays_bounded_under_floods_from_many_sources() {
        let limits = RelayLimits {
            max_sessions: 50,
            ..RelayLimits::default()
        };
        let idle = limits.idle_timeout;
        let mut lab = Lab::new(limits);
        let from = |i: u32| Sink::Udp(SocketAddr::from((i.to_be_bytes(), 40_000)));
        // STUN from three times as many addresses as the limiter keeps,
        // slow enough for the global rate: it never holds more.
        let request = stun::binding_request([1; 12]);
        let mut answered = 0;
        for i in 0..3 * SOURCE_LIMITER_CAPACITY as u32 {
            lab.advance(Duration::from_millis(1));
            if matches!(lab.send(from(0x0a00_0000 + i), &request), Action::Reply(_)) {
                answered += 1;
            }
            assert!(lab.relay.sources.sources.len() <= SOURCE_LIMITER_CAPACITY);
        }
        assert!(answered > 2 * SOURCE_LIMITER_CAPACITY, "{answered}");
        // Valid half-bound sessions, each from its own address and users:
        // never more than `max_sessions`; the rest are refused.
        let mut refused = 0;
        for i in 0..200 {
            lab.advance(Duration::from_millis(1));
            let (sid, token) = lab.session(None, 180);
            match refused_code(&lab.bind(from(0x0b00_0000 + i), sid, RelayParty::Initiator, &token))
            {
                Some(RefuseCode::OverBudget) => refused += 1,
                None => {}
                other => panic!("{other:?}"),
            }
            assert!(lab.relay.sessions.len() <= 50);
            assert!(lab.relay.users.len() <= 2 * 50);
        }
        assert_eq!(refused, 150);
        // Left alone, they all go, and with them every user's share.
        lab.advance(idle + Duration::from_secs(1));
        let _ = lab.relay.expire(lab.now);
        assert_eq!(lab.relay.sessions.len(), 0);
        assert_eq!(lab.relay.users.len(), 0);
        let (sid, token) = lab.session(None, 180);
        assert_eq!(
            lab.bind(udp(9), sid, RelayParty::Initiator, &token),
            bound(sid)
        );
    }

    #[test]
    fn garbage_is_ignored() {
        let mut lab = Lab::new(RelayLimits::default());
        let (sid, _) = lab.session(None, 180);
        let punch = RelayFrame::Punch {
            session: sid,
            nonce: 1,
        }
        .to_vec();
        for bytes in [&[][..], &[0x24][..], &[0xff; 1200][..], &punch[..]] {
            assert_eq!(lab.send(udp(1), bytes), Action::Nothing);
        }
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 300) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 56)) as u8).collect();
            let _ = lab.send(udp(1), &bytes);
        }
        assert_eq!(lab.relay.counters().sessions, 0);
    }
}
