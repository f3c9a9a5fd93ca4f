//! Hole punching, sans-IO: the `PUNCH` datagrams an agent sends from its
//! QUIC socket to the peer's candidates when a session starts.
//!
//! Both agents hear of the session at the same moment (the server sends
//! `p2p.session.created` to both at once: the coordinated start). The
//! target at once sends `PUNCH` datagrams to the initiator's candidates
//! with a low TTL ([`TTL`]) for [`WINDOW`]: they open the target's NAT
//! towards the initiator and die before they reach the initiator's NAT.
//! The initiator starts its QUIC handshakes to the target's public
//! candidates [`DIRECT_DELAY`] later (local ones at once): they open its
//! own NAT and find the target's already open.
//!
//! Why the low TTL and the order: a Linux NAT (and many home routers built
//! on it) that receives a peer's packet before its own host sent to that
//! peer records it as an inbound flow; the host's own packet to the peer
//! then gets another public port (a conntrack tuple clash) and the punch
//! fails for as long as either side keeps sending. So no full-TTL packet
//! may reach a NAT before that NAT's host has sent: the target's punches
//! never reach the initiator's NAT, and the initiator sends only after the
//! target's NAT is open. Measured in the NAT lab (`mesh-cli/tests/nat-lab`).
//! A `PUNCH` that arrives anyway is dropped by its receiver.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::protocol::SessionId;
use crate::relay::RelayFrame;

/// Time between two rounds.
pub const INTERVAL: Duration = Duration::from_millis(50);
/// How long the target punches (with the socket's TTL held at [`TTL`]).
pub const WINDOW: Duration = Duration::from_millis(250);
/// The punches' TTL: past the sender's own router, not to the peer's.
pub const TTL: u32 = 2;
/// How long after the start the initiator sends to public candidates.
pub const DIRECT_DELAY: Duration = Duration::from_millis(300);
/// At most this many candidates are punched.
pub const MAX_TARGETS: usize = 16;

/// The punch schedule of one session.
#[derive(Debug)]
pub struct Puncher {
    targets: Vec<SocketAddr>,
    frame: Vec<u8>,
    next_at: Instant,
    until: Instant,
}

impl Puncher {
    /// Punches `targets` (deduplicated, at most [`MAX_TARGETS`]) from `now`
    /// for [`WINDOW`].
    pub fn new(
        session: SessionId,
        targets: impl IntoIterator<Item = SocketAddr>,
        now: Instant,
    ) -> Self {
        let mut list: Vec<SocketAddr> = Vec::new();
        for t in targets {
            if !list.contains(&t) && list.len() < MAX_TARGETS {
                list.push(t);
            }
        }
        let nonce = u64::from_be_bytes(session.as_bytes()[..8].try_into().unwrap_or_default());
        Self {
            targets: list,
            frame: RelayFrame::Punch { session, nonce }.to_vec(),
            next_at: now,
            until: now + WINDOW,
        }
    }

    /// The datagrams of the round due now (empty when none is due).
    pub fn poll_transmit(&mut self, now: Instant) -> Vec<(SocketAddr, &[u8])> {
        if now < self.next_at || now >= self.until {
            return Vec::new();
        }
        self.next_at = now + INTERVAL;
        self.targets.iter().map(|t| (*t, &self.frame[..])).collect()
    }

    /// When the next round is due; `None` once punching is over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.next_at < self.until && !self.targets.is_empty()).then_some(self.next_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_go_every_interval_then_stop() {
        let t0 = Instant::now();
        let a: SocketAddr = "198.51.100.2:4000".parse().expect("addr");
        let b: SocketAddr = "10.1.0.2:4000".parse().expect("addr");
        let sid = SessionId::new();
        let mut p = Puncher::new(sid, [a, b, a], t0);
        let round = p.poll_transmit(t0);
        assert_eq!(round.len(), 2, "deduplicated");
        assert!(matches!(
            RelayFrame::decode(round[0].1),
            Ok(RelayFrame::Punch { session, .. }) if session == sid
        ));
        assert!(p.poll_transmit(t0 + Duration::from_millis(25)).is_empty());
        let mut rounds = 1;
        while let Some(at) = p.poll_timeout() {
            assert!(!p.poll_transmit(at).is_empty());
            rounds += 1;
            assert!(rounds < 100, "stops");
        }
        assert_eq!(rounds, 5, "250 ms of rounds 50 ms apart");
        assert!(p.poll_transmit(t0 + Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn nothing_to_punch_is_done_at_once() {
        let p = Puncher::new(SessionId::new(), [], Instant::now());
        assert_eq!(p.poll_timeout(), None);
    }
}
