// Reconnect delays: exponential backoff with "equal jitter".
//
// The source of truth is the Rust SDK, mesh-core/src/client/backoff.rs
// (`Backoff`, `BackoffConfig::default()`): this file mirrors it, parameters
// included, so the web client and every SDK client back off the same way.
// Change both together. The web client does not run the SDK's wasm build
// instead, because it must load as plain modules with no wasm build step.
//
// The n-th consecutive failure (from 0) waits a random time in [d / 2, d],
// where d = min(max, initial * 2^n): the delay still grows, but clients that
// lost the same server at the same moment spread out instead of reconnecting
// in lock step. The SDK draws the jitter from a seeded SplitMix64 stream so
// its tests are reproducible; here `random` defaults to Math.random.

/** `BackoffConfig::default()` in backoff.rs. */
export const DEFAULT_BACKOFF = Object.freeze({ initialMs: 250, maxMs: 30000 });

export class Backoff {
  constructor(config = DEFAULT_BACKOFF, random = Math.random) {
    this.config = config;
    this.random = random;
    /** How many failures in a row so far. */
    this.attempt = 0;
  }

  /** The ceiling of the next delay, before jitter: initial * 2^attempt, capped at max. */
  ceiling() {
    return Math.min(this.config.maxMs, this.config.initialMs * 2 ** Math.min(this.attempt, 31));
  }

  /** The delay (ms) before the next attempt; counts one more failure. */
  nextDelay() {
    const ceiling = this.ceiling();
    this.attempt += 1;
    const half = Math.floor(ceiling / 2);
    const spread = ceiling - half;
    return half + Math.floor(this.random() * (spread + 1));
  }

  /** A connection made it through the handshake: start over. */
  reset() {
    this.attempt = 0;
  }
}
