// The web client's reconnect backoff (mesh-server-bin/web/backoff.js) against
// the Rust SDK's (mesh-core/src/client/backoff.rs): same defaults, same
// equal-jitter bounds. No browser: backoff.js touches no DOM.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

const root = new URL('../../', import.meta.url);

// backoff.js lives outside this package (no "type": "module" above it), so
// it is imported from its text as an ES module.
const source = readFileSync(new URL('mesh-server-bin/web/backoff.js', root), 'utf8');
const { Backoff, DEFAULT_BACKOFF } = await import(
  `data:text/javascript,${encodeURIComponent(source)}`
);

test('the defaults are the SDK defaults (BackoffConfig::default)', () => {
  const rust = readFileSync(new URL('mesh-core/src/client/backoff.rs', root), 'utf8');
  const body = rust.slice(rust.indexOf('fn default()'));
  const initial = /initial:\s*Duration::from_millis\((\d+)\)/.exec(body);
  const max = /max:\s*Duration::from_secs\((\d+)\)/.exec(body);
  assert.ok(initial && max, 'BackoffConfig::default() not found in backoff.rs');
  assert.equal(DEFAULT_BACKOFF.initialMs, Number(initial[1]));
  assert.equal(DEFAULT_BACKOFF.maxMs, Number(max[1]) * 1000);
});

test('each delay lies in [d / 2, d] with d = min(max, initial * 2^n)', () => {
  for (const draw of [0, 0.5, 0.999999]) {
    const backoff = new Backoff(DEFAULT_BACKOFF, () => draw);
    for (let n = 0; n < 40; n += 1) {
      const ceiling = Math.min(30000, 250 * 2 ** n);
      const delay = backoff.nextDelay();
      assert.ok(delay >= Math.floor(ceiling / 2) && delay <= ceiling, `n=${n}: ${delay}`);
      assert.equal(backoff.attempt, n + 1);
    }
  }
  // The lowest draw gives the lower bound, the highest the ceiling.
  assert.equal(new Backoff(DEFAULT_BACKOFF, () => 0).nextDelay(), 125);
  assert.equal(new Backoff(DEFAULT_BACKOFF, () => 0.999999).nextDelay(), 250);
});

test('reset starts over from the initial delay', () => {
  const backoff = new Backoff(DEFAULT_BACKOFF, () => 0.999999);
  for (let n = 0; n < 10; n += 1) backoff.nextDelay();
  assert.equal(backoff.ceiling(), 30000);
  backoff.reset();
  assert.equal(backoff.attempt, 0);
  assert.equal(backoff.nextDelay(), 250);
});
