//! Binding a session at the relay, sans-IO: the agent's side of `BIND`.
//!
//! `BIND` goes to the server's UDP port at once and is retried with backoff
//! (200 ms, 400 ms, 800 ms, ...). If no `BOUND` came back after
//! [`UDP_PATIENCE`] (UDP to the server is blocked, or the server has no UDP
//! port), the agent opens the relay's WebSocket (`GET /api/p2p/relay`) and
//! binds there too; whichever `BOUND` arrives first decides how this
//! session's relayed datagrams travel. A refusal that retrying cannot
//! change ends it; after [`GIVE_UP`] without an answer the relay counts as
//! unavailable.

use std::time::{Duration, Instant};

use crate::relay::{RefuseCode, RelayFrame};

/// How long `BIND` over UDP may go unanswered before the WebSocket is tried.
pub const UDP_PATIENCE: Duration = Duration::from_millis(1200);
/// How long binding may take in all.
pub const GIVE_UP: Duration = Duration::from_secs(10);

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// How relayed datagrams reach the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    /// UDP to the server's port.
    Udp,
    /// The relay WebSocket.
    Stream,
}

/// Where binding stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindState {
    /// Still trying.
    Binding,
    /// Bound; datagrams go by this carrier.
    Bound(Carrier),
    /// The relay refused, for a reason retrying cannot change.
    Refused(RefuseCode, String),
    /// No answer in time.
    Failed,
}

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub enum BindOutput<'a> {
    /// Send this datagram to the server's UDP port.
    SendUdp(&'a [u8]),
    /// Open the relay WebSocket, then report with [`Binding::stream_opened`]
    /// or [`Binding::stream_failed`].
    OpenStream,
    /// Send this message on the relay WebSocket.
    SendStream(&'a [u8]),
}

/// One session's binding at the relay.
#[derive(Debug)]
pub struct Binding {
    frame: Vec<u8>,
    state: BindState,
    udp: bool,
    udp_next: Instant,
    udp_attempt: u32,
    stream_at: Instant,
    /// `None`: not asked for; `Some(false)`: opening; `Some(true)`: open.
    stream: Option<bool>,
    stream_next: Option<Instant>,
    give_up_at: Instant,
}

impl Binding {
    /// Binds with `bind` (an encoded `BIND`); over UDP first when `udp`,
    /// else straight over the WebSocket.
    pub fn new(bind: &RelayFrame<'_>, udp: bool, now: Instant) -> Self {
        Self {
            frame: bind.to_vec(),
            state: BindState::Binding,
            udp,
            udp_next: now,
            udp_attempt: 0,
            stream_at: if udp { now + UDP_PATIENCE } else { now },
            stream: None,
            stream_next: None,
            give_up_at: now + GIVE_UP,
        }
    }

    /// The current state.
    pub fn state(&self) -> &BindState {
        &self.state
    }

    /// What to do now, if anything; call until `None`.
    pub fn poll(&mut self, now: Instant) -> Option<BindOutput<'_>> {
        if self.state != BindState::Binding {
            return None;
        }
        if now >= self.give_up_at {
            self.state = BindState::Failed;
            return None;
        }
        if self.udp && now >= self.udp_next {
            let wait = FIRST_RETRY
                .saturating_mul(1 << self.udp_attempt.min(8))
                .min(MAX_RETRY);
            self.udp_attempt += 1;
            self.udp_next = now + wait;
            return Some(BindOutput::SendUdp(&self.frame));
        }
        if self.stream.is_none() && now >= self.stream_at {
            self.stream = Some(false);
            return Some(BindOutput::OpenStream);
        }
        if let Some(at) = self.stream_next
            && now >= at
        {
            // The WebSocket is reliable; a retry covers a server that was
            // still setting the session up.
            self.stream_next = Some(now + MAX_RETRY);
            return Some(BindOutput::SendStream(&self.frame));
        }
        None
    }

    /// When [`Self::poll`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state != BindState::Binding {
            return None;
        }
        let mut at = self.give_up_at;
        if self.udp {
            at = at.min(self.udp_next);
        }
        if self.stream.is_none() {
            at = at.min(self.stream_at);
        }
        if let Some(s) = self.stream_next {
            at = at.min(s);
        }
        Some(at)
    }

    /// The WebSocket is open: bind over it now.
    pub fn stream_opened(&mut self, now: Instant) {
        self.stream = Some(true);
        self.stream_next = Some(now);
    }

    /// The WebSocket could not be opened: only UDP is left (if any).
    pub fn stream_failed(&mut self) {
        self.stream = Some(true);
        self.stream_next = None;
        if !self.udp && self.state == BindState::Binding {
            self.state = BindState::Failed;
        }
    }

    /// The relay answered `BOUND` by `carrier`; the first answer wins.
    pub fn handle_bound(&mut self, carrier: Carrier) {
        if self.state == BindState::Binding {
            self.state = BindState::Bound(carrier);
        }
    }

    /// The relay answered `REFUSED`.
    pub fn handle_refused(&mut self, code: RefuseCode, reason: &str) {
        if self.state == BindState::Binding && !code.is_retryable() {
            self.state = BindState::Refused(code, reason.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{RelayParty, SessionId};

    fn bind_frame(session: SessionId) -> RelayFrame<'static> {
        RelayFrame::Bind {
            session,
            party: RelayParty::Initiator,
            key: [1; 32],
            token: "a.b.c",
        }
    }

    fn drain(b: &mut Binding, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(o) = b.poll(now) {
            out.push(match o {
                BindOutput::SendUdp(_) => "udp".to_owned(),
                BindOutput::OpenStream => "open".to_owned(),
                BindOutput::SendStream(_) => "stream".to_owned(),
            });
        }
        out
    }

    #[test]
    fn udp_first_then_the_websocket_then_first_bound_wins() {
        let t0 = Instant::now();
        let mut b = Binding::new(&bind_frame(SessionId::new()), true, t0);
        assert_eq!(drain(&mut b, t0), ["udp"]);
        assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_millis(200)));
        let mut now = t0;
        let mut udp = 1;
        while now < t0 + UDP_PATIENCE {
            now = b.poll_timeout().expect("binding");
            for o in drain(&mut b, now) {
                match o.as_str() {
                    "udp" => udp += 1,
                    "open" => assert!(now >= t0 + UDP_PATIENCE),
                    other => panic!("{other} before the stream is open"),
                }
            }
        }
        assert!((3..=5).contains(&udp), "retried with backoff: {udp}");
        b.stream_opened(now);
        assert_eq!(drain(&mut b, now), ["stream"]);
        b.handle_bound(Carrier::Stream);
        b.handle_bound(Carrier::Udp);
        assert_eq!(b.state(), &BindState::Bound(Carrier::Stream));
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn without_udp_the_websocket_is_opened_at_once() {
        let t0 = Instant::now();
        let mut b = Binding::new(&bind_frame(SessionId::new()), false, t0);
        assert_eq!(drain(&mut b, t0), ["open"]);
        b.stream_failed();
        assert_eq!(b.state(), &BindState::Failed);
    }

    #[test]
    fn refusals_end_it_unless_retryable_and_silence_gives_up() {
        let t0 = Instant::now();
        let mut b = Binding::new(&bind_frame(SessionId::new()), true, t0);
        b.handle_refused(RefuseCode::NotBound, "later");
        assert_eq!(b.state(), &BindState::Binding, "{:?}", RefuseCode::NotBound);
        b.handle_refused(RefuseCode::TokenExpired, "expired");
        assert_eq!(
            b.state(),
            &BindState::Refused(RefuseCode::TokenExpired, "expired".into())
        );

        let mut b = Binding::new(&bind_frame(SessionId::new()), true, t0);
        let mut now = t0;
        while let Some(at) = b.poll_timeout() {
            now = at;
            if drain(&mut b, now).contains(&"open".to_owned()) {
                b.stream_failed();
            }
        }
        assert_eq!(b.state(), &BindState::Failed);
        assert!(now >= t0 + GIVE_UP);
    }
}
