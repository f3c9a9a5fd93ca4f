//! Reconnect delays: exponential backoff with jitter, and the small
//! deterministic random source behind the jitter.
//!
//! The state machine reads no clock and no OS randomness, so the jitter
//! comes from [`Rng`], a SplitMix64 stream seeded by whoever drives the
//! state machine: the native driver seeds it from the OS, tests with a
//! constant so every delay is reproducible.

use std::time::Duration;

/// How reconnect delays grow.
///
/// The `n`-th consecutive failure (from 0) waits a random time in
/// `[d / 2, d]`, where `d = min(max, initial * 2^n)` ("equal jitter"): the
/// delay still grows, but clients that lost the same server at the same
/// moment spread out instead of reconnecting in lock step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The ceiling of the first delay.
    pub initial: Duration,
    /// No delay is longer than this.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

/// The backoff of one client: the failure count and the jitter source.
#[derive(Clone, Debug)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// A backoff with no failures yet.
    pub fn new(config: BackoffConfig) -> Self {
        Self { config, attempt: 0 }
    }

    /// How many failures in a row so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay, before jitter: `initial * 2^attempt`,
    /// capped at `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.config
            .initial
            .checked_mul(factor)
            .unwrap_or(self.config.max)
            .min(self.config.max)
    }

    /// The delay before the next attempt; counts one more failure.
    pub fn next_delay(&mut self, rng: &mut Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rng.below(spread.saturating_add(1)))
    }

    /// A connection made it through the handshake: start over.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// SplitMix64: a tiny, fast, deterministic random stream. Not for secrets;
/// it spreads reconnect times and makes idempotency keys unique per seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A stream that is a pure function of `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0). The modulo bias is far below
    /// anything a reconnect delay could notice.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_and_cap() {
        let config = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        let mut backoff = Backoff::new(config);
        let mut rng = Rng::new(7);
        let mut delays = Vec::new();
        for n in 0..12u32 {
            let ceiling = (Duration::from_millis(100) * 2u32.pow(n)).min(config.max);
            assert_eq!(backoff.ceiling(), ceiling, "attempt {n}");
            let d = backoff.next_delay(&mut rng);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {n}: {d:?}");
            delays.push(d);
        }
        // Capped: the last ones never pass `max`, and they are not all equal
        // (the jitter is real).
        assert!(delays[8..].iter().all(|d| *d <= config.max));
        assert!(delays[8..].windows(2).any(|w| w[0] != w[1]), "{delays:?}");
        // Grows on average: the early delays are far shorter than the late ones.
        assert!(delays[0] < delays[6]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), config.initial);
    }

    #[test]
    fn same_seed_same_delays() {
        let run = |seed| {
            let mut b = Backoff::new(BackoffConfig::default());
            let mut rng = Rng::new(seed);
            (0..8).map(|_| b.next_delay(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        });
        b.attempt = u32::MAX;
        assert_eq!(b.ceiling(), Duration::from_secs(60));
        let d = b.next_delay(&mut Rng::new(0));
        assert!(d <= Duration::from_secs(60));
    }
}
