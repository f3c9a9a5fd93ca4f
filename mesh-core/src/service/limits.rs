//! Rate limits: a token bucket per connection, and login attempts limited
//! per username and per client address.
//!
//! Both take the current time as an argument, like the engine, so their
//! tests run on a virtual clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::Duration;

use crate::protocol::Timestamp;

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    burst: f64,
    per_second: f64,
    tokens: f64,
    last: Timestamp,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: u32, per_second: f64, now: Timestamp) -> Self {
        Self {
            burst: f64::from(burst),
            per_second,
            tokens: f64::from(burst),
            last: now,
        }
    }

    fn refill(&mut self, now: Timestamp) {
        let elapsed = now.since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.last = now.max(self.last);
    }

    /// Takes one token, or says how long until one is there.
    pub fn try_take(&mut self, now: Timestamp) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.per_second;
            Err(Duration::from_secs_f64(wait.max(0.001)))
        }
    }

    /// Whether the bucket is full at `now` (it can be forgotten).
    fn is_full(&mut self, now: Timestamp) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// Settings of the per-connection frame limit.
#[derive(Clone, Copy, Debug)]
pub struct FrameRate {
    /// Frames allowed in a burst (the contract asks for at least 50).
    pub burst: u32,
    /// Sustained frames per second (the contract asks for at least 20).
    pub per_second: f64,
    /// Refused frames in a row after which the connection is closed (1008).
    pub strikes_before_close: u32,
}

impl Default for FrameRate {
    fn default() -> Self {
        Self {
            burst: 60,
            per_second: 25.0,
            strikes_before_close: 20,
        }
    }
}

/// What the connection limiter says about one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse this frame with `rate_limited`.
    Refuse {
        retry_after: Duration,
    },
    /// The client keeps flooding: close with 1008.
    Close,
}

/// A connection's frame limiter: a token bucket plus a strike count, so a
/// client that ignores `rate_limited` gets cut off.
#[derive(Clone, Debug)]
pub struct ConnectionLimiter {
    bucket: TokenBucket,
    strikes: u32,
    max_strikes: u32,
}

impl ConnectionLimiter {
    pub fn new(rate: FrameRate, now: Timestamp) -> Self {
        Self {
            bucket: TokenBucket::new(rate.burst, rate.per_second, now),
            strikes: 0,
            max_strikes: rate.strikes_before_close,
        }
    }

    /// Counts one frame.
    pub fn check(&mut self, now: Timestamp) -> Verdict {
        match self.bucket.try_take(now) {
            Ok(()) => {
                self.strikes = 0;
                Verdict::Allow
            }
            Err(retry_after) => {
                self.strikes += 1;
                if self.strikes >= self.max_strikes {
                    Verdict::Close
                } else {
                    Verdict::Refuse { retry_after }
                }
            }
        }
    }
}

/// Settings of the login limiter.
#[derive(Clone, Copy, Debug)]
pub struct LoginRate {
    /// Failed logins allowed per username in a burst.
    pub per_user_burst: u32,
    /// One more failed login per username allowed every this long.
    pub per_user_refill: Duration,
    /// Attempts (logins and registrations) per client address in a burst.
    pub per_addr_burst: u32,
    /// One more attempt per address allowed every this long.
    pub per_addr_refill: Duration,
}

impl Default for LoginRate {
    fn default() -> Self {
        Self {
            per_user_burst: 10,
            per_user_refill: Duration::from_secs(30),
            per_addr_burst: 30,
            per_addr_refill: Duration::from_secs(2),
        }
    }
}

/// Buckets keyed by something, forgetting full ones so the map stays small.
#[derive(Debug)]
struct Buckets<K> {
    map: HashMap<K, TokenBucket>,
    burst: u32,
    per_second: f64,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// Past this many keys, full buckets are swept out before adding one.
    const SWEEP_AT: usize = 10_000;

    fn new(burst: u32, refill: Duration) -> Self {
        Self {
            map: HashMap::new(),
            burst,
            per_second: 1.0 / refill.as_secs_f64().max(0.001),
        }
    }

    fn peek(&mut self, key: &K, now: Timestamp) -> Result<(), Duration> {
        match self.map.get_mut(key) {
            None => Ok(()),
            Some(bucket) => {
                let mut probe = bucket.clone();
                probe.try_take(now).map(|_| ())
            }
        }
    }

    fn take(&mut self, key: &K, now: Timestamp) -> Result<(), Duration> {
        if !self.map.contains_key(key) && self.map.len() >= Self::SWEEP_AT {
            self.map.retain(|_, b| !b.is_full(now));
        }
        let (burst, per_second) = (self.burst, self.per_second);
        self.map
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(burst, per_second, now))
            .try_take(now)
    }
}

/// Limits login attempts per username (failures count) and per client
/// address (every attempt counts), against password guessing.
#[derive(Debug)]
pub struct LoginLimiter {
    users: Buckets<String>,
    addrs: Buckets<IpAddr>,
}

impl LoginLimiter {
    pub fn new(rate: LoginRate) -> Self {
        Self {
            users: Buckets::new(rate.per_user_burst, rate.per_user_refill),
            addrs: Buckets::new(rate.per_addr_burst, rate.per_addr_refill),
        }
    }

    /// Before an attempt: counts it against the address, and refuses it if
    /// either the address or the username is out of attempts.
    pub fn before_attempt(
        &mut self,
        username: Option<&str>,
        addr: Option<IpAddr>,
        now: Timestamp,
    ) -> Result<(), Duration> {
        if let Some(user) = username {
            self.users.peek(&user.to_owned(), now)?;
        }
        if let Some(addr) = addr {
            self.addrs.take(&addr, now)?;
        }
        Ok(())
    }

    /// After a failed login: counts it against the username.
    pub fn failed(&mut self, username: &str, now: Timestamp) {
        let _ = self.users.take(&username.to_owned(), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    #[test]
    fn bucket_allows_burst_then_sustained_rate() {
        let mut b = TokenBucket::new(50, 20.0, t(0));
        for _ in 0..50 {
            assert!(b.try_take(t(0)).is_ok());
        }
        let wait = b.try_take(t(0)).expect_err("empty");
        assert_eq!(wait, Duration::from_millis(50));
        // 20 per second sustained: one token every 50 ms.
        for i in 1..=100 {
            assert!(b.try_take(t(i * 50)).is_ok(), "frame {i}");
        }
    }

    #[test]
    fn connection_limiter_refuses_then_closes() {
        let rate = FrameRate {
            burst: 2,
            per_second: 1.0,
            strikes_before_close: 3,
        };
        let mut l = ConnectionLimiter::new(rate, t(0));
        assert_eq!(l.check(t(0)), Verdict::Allow);
        assert_eq!(l.check(t(0)), Verdict::Allow);
        assert!(matches!(l.check(t(0)), Verdict::Refuse { .. }));
        assert!(matches!(l.check(t(0)), Verdict::Refuse { .. }));
        assert_eq!(l.check(t(0)), Verdict::Close);
        // A well-behaved client after a pause is forgiven.
        let mut l = ConnectionLimiter::new(rate, t(0));
        l.check(t(0));
        l.check(t(0));
        assert!(matches!(l.check(t(0)), Verdict::Refuse { .. }));
        assert_eq!(l.check(t(1000)), Verdict::Allow);
    }

    #[test]
    fn login_limiter_counts_failures_per_user_and_attempts_per_address() {
        let rate = LoginRate {
            per_user_burst: 3,
            per_user_refill: Duration::from_secs(60),
            per_addr_burst: 5,
            per_addr_refill: Duration::from_secs(60),
        };
        let mut l = LoginLimiter::new(rate);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        for _ in 0..3 {
            assert!(l.before_attempt(Some("eve"), Some(a), t(0)).is_ok());
            l.failed("eve", t(0));
        }
        // The username is locked out, whatever the address.
        assert!(l.before_attempt(Some("eve"), Some(b), t(0)).is_err());
        // Another username from the first address still has attempts left,
        // until the address runs out (5 attempts in all).
        assert!(l.before_attempt(Some("bob"), Some(a), t(0)).is_ok());
        assert!(l.before_attempt(Some("bob"), Some(a), t(0)).is_ok());
        assert!(l.before_attempt(Some("bob"), Some(a), t(0)).is_err());
        // Time heals.
        assert!(l.before_attempt(Some("eve"), Some(b), t(60_000)).is_ok());
    }
}
