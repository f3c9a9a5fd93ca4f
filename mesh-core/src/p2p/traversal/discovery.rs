//! Address discovery, sans-IO: when to send a STUN Binding request to the
//! server's UDP port, and what the answers mean.
//!
//! The first request goes at once and is retried with backoff (250 ms,
//! 500 ms, 1 s, ... up to the refresh interval) until answered; after an
//! answer the next round is one refresh interval later (default 15 s,
//! shorter than the UDP timeouts of common NATs, so the mapping the server
//! saw stays the one peers reach). A round whose answer differs from the
//! last known address reports the change: the agent then announces its new
//! server-reflexive candidate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::relay::stun::{self, TxId};

/// Default time between discovery rounds.
pub const REFRESH: Duration = Duration::from_secs(15);

const FIRST_RETRY: Duration = Duration::from_millis(250);

/// The STUN schedule of one socket towards one server.
#[derive(Debug)]
pub struct Discovery {
    refresh: Duration,
    /// The request of the current round (retransmitted unchanged).
    outstanding: Option<TxId>,
    attempt: u32,
    next_at: Instant,
    mapped: Option<SocketAddr>,
}

impl Discovery {
    /// Starts with a request due at `now`.
    pub fn new(now: Instant, refresh: Duration) -> Self {
        Self {
            refresh,
            outstanding: None,
            attempt: 0,
            next_at: now,
            mapped: None,
        }
    }

    /// The request to send now, if one is due.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if now < self.next_at {
            return None;
        }
        let tx = *self.outstanding.get_or_insert_with(new_tx);
        let backoff = FIRST_RETRY
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.refresh);
        self.attempt = self.attempt.saturating_add(1);
        self.next_at = now + backoff;
        Some(stun::binding_request(tx))
    }

    /// A Binding response arrived. Returns the new address when it differs
    /// from the last one (the first answer included); answers to requests
    /// this round did not send are ignored.
    pub fn handle_response(
        &mut self,
        tx: TxId,
        mapped: SocketAddr,
        now: Instant,
    ) -> Option<SocketAddr> {
        if self.outstanding != Some(tx) {
            return None;
        }
        self.outstanding = None;
        self.attempt = 0;
        self.next_at = now + self.refresh;
        if self.mapped == Some(mapped) {
            return None;
        }
        self.mapped = Some(mapped);
        Some(mapped)
    }

    /// When [`Self::poll_transmit`] next has something to send.
    pub fn poll_timeout(&self) -> Instant {
        self.next_at
    }

    /// The last address the server saw.
    pub fn mapped(&self) -> Option<SocketAddr> {
        self.mapped
    }
}

fn new_tx() -> TxId {
    let mut tx = [0u8; 12];
    // A transaction id only needs to be unpredictable enough that a third
    // party cannot answer for the server; on failure a time-based one does.
    if getrandom::fill(&mut tx).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        tx.copy_from_slice(&nanos.to_le_bytes()[..12]);
    }
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx_of(request: &[u8]) -> TxId {
        request[8..20].try_into().expect("a STUN header")
    }

    #[test]
    fn retries_with_backoff_until_answered_then_refreshes() {
        let t0 = Instant::now();
        let mut d = Discovery::new(t0, REFRESH);
        let first = d.poll_transmit(t0).expect("due at once");
        assert!(stun::is_stun(&first));
        assert_eq!(d.poll_transmit(t0), None, "nothing more until the retry");
        assert_eq!(d.poll_timeout(), t0 + Duration::from_millis(250));
        let retry = d.poll_transmit(d.poll_timeout()).expect("retried");
        assert_eq!(
            tx_of(&retry),
            tx_of(&first),
            "a retransmission keeps its id"
        );
        assert_eq!(d.poll_timeout() - t0, Duration::from_millis(750));

        let mapped: SocketAddr = "198.51.100.2:4000".parse().expect("addr");
        let at = t0 + Duration::from_secs(1);
        assert_eq!(d.handle_response([0; 12], mapped, at), None, "not ours");
        assert_eq!(d.handle_response(tx_of(&first), mapped, at), Some(mapped));
        assert_eq!(d.poll_timeout(), at + REFRESH);
        assert_eq!(
            d.handle_response(tx_of(&first), mapped, at),
            None,
            "answered once"
        );

        // The next round: same address, no change reported; a new one is.
        let second = d.poll_transmit(at + REFRESH).expect("refresh");
        assert_ne!(tx_of(&second), tx_of(&first));
        assert_eq!(
            d.handle_response(tx_of(&second), mapped, at + REFRESH),
            None
        );
        let third = d.poll_transmit(at + REFRESH * 2).expect("refresh");
        let moved: SocketAddr = "198.51.100.2:5000".parse().expect("addr");
        assert_eq!(
            d.handle_response(tx_of(&third), moved, at + REFRESH * 2),
            Some(moved)
        );
        assert_eq!(d.mapped(), Some(moved));
    }

    #[test]
    fn backoff_is_capped_by_the_refresh_interval() {
        let t0 = Instant::now();
        let mut d = Discovery::new(t0, Duration::from_secs(2));
        let mut now = t0;
        for _ in 0..40 {
            d.poll_transmit(now).expect("due");
            assert!(d.poll_timeout() - now <= Duration::from_secs(2));
            now = d.poll_timeout();
        }
    }
}
