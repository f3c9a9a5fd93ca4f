// The browser lab's test (run by lab/run.sh, which builds the namespaces):
// mesh-server and coturn (configured from docs/coturn/turnserver.conf) in
// the public namespace; one Chromium per home namespace, driven over its
// pipe through an `ip netns exec` wrapper, reaching the server as mesh.lab.
// A call forced through TURN (`?relay=1`) must connect, carry media both
// ways, and say "relayed"; then, with all UDP out of home B dropped, a
// second call must do the same with home B relaying over TURN/TCP.
//
// Nothing here sends to a lab address from the root namespace: processes
// that talk to the lab are started inside it.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, chmodSync, rmSync, openSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import {
  ROOT,
  SERVER_BIN,
  CHROMIUM,
  buildServer,
  signUp,
  createRoom,
  openRoom,
  waitConnected,
  uniqueName,
  screenshot,
} from '../tests/harness.js';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run web-tests/lab/run.sh`);
  return v;
};
const PUB = env('LAB_PUB');
const HOME_A = env('LAB_HOME_A');
const HOME_B = env('LAB_HOME_B');
const IP = env('LAB_SERVER_IP');
const ROUTER_B = env('LAB_ROUTER_B');
const PORT = 8443;
// HTTPS with a CA made here, trusted only by these browsers: it goes into
// an NSS database of the run's own (Chromium's certificate store on Linux),
// under a HOME that exists only for the run.
const ORIGIN = `https://mesh.lab:${PORT}`;

/** A test CA and a leaf for mesh.lab signed by it; the CA goes into a fresh
 * NSS database under `dir/home`, the HOME the browsers are started with. */
function makeCertificates() {
  const f = (name) => path.join(dir, name);
  const ossl = (...args) => execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', f('ca-key.pem'), '-out', f('ca.pem'), '-days', '1', '-subj', '/CN=mesh lab test CA');
  ossl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', f('key.pem'), '-out', f('leaf.csr'), '-subj', '/CN=mesh.lab');
  writeFileSync(f('leaf.ext'), 'subjectAltName=DNS:mesh.lab\nextendedKeyUsage=serverAuth\n');
  ossl('x509', '-req', '-in', f('leaf.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca-key.pem'),
    '-CAcreateserial', '-days', '1', '-extfile', f('leaf.ext'), '-out', f('cert.pem'));
  const nssdb = path.join(dir, 'home', '.pki', 'nssdb');
  mkdirSync(nssdb, { recursive: true });
  const certutil = (...args) => execFileSync('certutil', ['-d', `sql:${nssdb}`, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  certutil('-N', '--empty-password');
  certutil('-A', '-n', 'mesh lab test CA', '-t', 'C,,', '-i', f('ca.pem'));
}

let dir;
const procs = [];
const browsers = [];

/** Starts `cmd args` inside namespace `ns`; resolves when `ready(log)` holds. */
function startIn(ns, cmd, args, ready, what) {
  const proc = spawn('ip', ['netns', 'exec', ns, cmd, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: 'info' },
  });
  procs.push(proc);
  let log = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} did not start:\n${log}`)), 30000);
    const check = (chunk) => {
      log += chunk;
      if (timer && ready(log)) {
        clearTimeout(timer);
        resolve({ proc, log: () => log });
      }
    };
    proc.stdout.setEncoding('utf8');
    proc.stderr.setEncoding('utf8');
    proc.stdout.on('data', check);
    proc.stderr.on('data', check);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited with ${code}:\n${log}`));
    });
  });
}

/** Waits until something in `ns` listens on UDP `port` (coturn is up). */
async function waitUdpListener(ns, port) {
  const deadline = Date.now() + 20000;
  for (;;) {
    const out = execFileSync('ip', ['netns', 'exec', ns, 'ss', '-Hlun', `sport = :${port}`], { encoding: 'utf8' });
    if (out.trim()) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on UDP ${port} in ${ns}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function launchIn(ns) {
  const wrapper = path.join(dir, `chromium-${ns}.sh`);
  // HOME: the run's NSS database, where the test CA is trusted.
  writeFileSync(wrapper, `#!/bin/sh\nexport HOME=${path.join(dir, 'home')}\nexec ip netns exec ${ns} ${CHROMIUM} "$@"\n`);
  chmodSync(wrapper, 0o755);
  const browser = await chromium.launch({
    executablePath: wrapper,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
      `--host-resolver-rules=MAP mesh.lab ${IP}`,
    ],
  });
  browsers.push(browser);
  return browser;
}

async function openPage(browser) {
  const context = await browser.newContext({ baseURL: ORIGIN, viewport: { width: 1000, height: 700 } });
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  // A change of the namespace's network seen by Chromium (a link coming
  // up) aborts a navigation in flight: load again once, then it must work.
  try {
    await page.goto('/?relay=1');
  } catch (e) {
    if (!String(e).includes('ERR_NETWORK_CHANGED')) throw e;
    await page.goto('/?relay=1');
  }
  assert.equal(await page.evaluate(() => window.isSecureContext), true, 'a secure context');
  assert.equal(await page.evaluate(() => location.origin), ORIGIN);
  return page;
}

/** Bytes received over all inbound RTP streams of the live call. */
const inboundBytes = () =>
  window.__mesh.pc.getStats().then((stats) => {
    let n = 0;
    stats.forEach((r) => {
      if (r.type === 'inbound-rtp') n += r.bytesReceived || 0;
    });
    return n;
  });

/** The candidate types of the selected pair. */
const selectedPair = () =>
  window.__mesh.pc.getStats().then((stats) => {
    let pair = null;
    stats.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
    });
    if (!pair) return null;
    const l = stats.get(pair.localCandidateId);
    const rm = stats.get(pair.remoteCandidateId);
    return {
      local: l?.candidateType,
      remote: rm?.candidateType,
      localAddress: l?.address,
      relayProtocol: l?.relayProtocol,
    };
  });

/**
 * Alice video-calls Bob; both peer connections must connect over a relay
 * candidate of the lab's coturn, say "relayed", and receive media. Returns
 * each side's local relay protocol (udp, tcp).
 */
async function callAndCheck(alice, bob, aliceName, bobName) {
  const protocols = [];
  const label = `Video call ${bobName}`;
  await alice.waitForFunction((l) => {
    const b = document.querySelector(`button[aria-label="${l}"]`);
    return b && !b.disabled;
  }, label);
  await alice.click(`button[aria-label="${label}"]`);
  await bob.locator('#incoming-text', { hasText: `${aliceName} is calling you` }).waitFor();
  await bob.click('#accept-call');

  for (const page of [alice, bob]) {
    await page.waitForFunction(() => window.__mesh.pc?.connectionState === 'connected', null, { timeout: 30000 });
    await page.locator('#call-route', { hasText: 'relayed' }).waitFor({ timeout: 10000 });
    const pair = await page.evaluate(selectedPair);
    protocols.push(pair.relayProtocol);
    const config = await page.evaluate(() => ({
      href: location.href,
      policy: window.__mesh.pc.getConfiguration().iceTransportPolicy,
    }));
    assert.equal(pair.local, 'relay', `the selected pair is relayed: ${JSON.stringify({ pair, config })}`);
    assert.equal(pair.localAddress, IP, 'relayed by the lab coturn');
  }
  // Media both ways: each side's inbound RTP keeps growing.
  for (const page of [alice, bob]) {
    const start = await page.evaluate(inboundBytes);
    await page.waitForFunction(
      async (s) => {
        let n = 0;
        (await window.__mesh.pc.getStats()).forEach((r) => {
          if (r.type === 'inbound-rtp') n += r.bytesReceived || 0;
        });
        return n > s + 20000;
      },
      start,
      { timeout: 20000, polling: 250 },
    );
  }
  await alice.click('#hangup');
  await bob.locator('#call').waitFor({ state: 'hidden' });
  await alice.locator('#call').waitFor({ state: 'hidden' });
  return protocols;
}

describe('browser lab: a call between two NATed homes through TURN', () => {
  before(async () => {
    buildServer();
    dir = mkdtempSync(path.join(tmpdir(), 'mesh-lab-'));
    const data = path.join(dir, 'data');
    makeCertificates();
    const tlsArgs = ['--tls-cert', path.join(dir, 'cert.pem'), '--tls-key', path.join(dir, 'key.pem')];
    await startIn(
      PUB,
      SERVER_BIN,
      [
        '--listen', `${IP}:${PORT}`,
        '--data', data,
        '--stun-url', `stun:${IP}:3478`,
        '--turn-url', `turn:${IP}:3478?transport=udp`,
        '--turn-url', `turn:${IP}:3478?transport=tcp`,
        ...tlsArgs,
      ],
      (log) => /listening on /.test(log),
      'mesh-server',
    );
    // coturn exactly as the docs ship it, with mesh's secret.
    const secret = readFileSync(path.join(data, 'turn.secret'), 'utf8').trim();
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', path.join(dir, 'turn-key.pem'), '-out', path.join(dir, 'turn-cert.pem'),
      '-days', '1', '-subj', '/CN=mesh.lab',
    ], { stdio: 'ignore' });
    const conf = readFileSync(path.join(ROOT, 'docs', 'coturn', 'turnserver.conf'), 'utf8')
      .replaceAll('@SECRET@', secret)
      .replaceAll('@REALM@', 'mesh.lab')
      .replaceAll('@LISTEN_IP@', IP)
      .replaceAll('@RELAY_IP@', IP)
      .replaceAll('@PORT@', '3478')
      .replaceAll('@TLS_PORT@', '5349')
      .replaceAll('@MIN_PORT@', '49152')
      .replaceAll('@MAX_PORT@', '49252')
      .replaceAll('@CERT@', path.join(dir, 'turn-cert.pem'))
      .replaceAll('@PKEY@', path.join(dir, 'turn-key.pem'))
      .replaceAll('@STATE_DIR@', dir);
    writeFileSync(path.join(dir, 'turnserver.conf'), conf);
    const coturnLog = openSync(path.join(process.env.LAB_LOG_DIR || dir, 'turnserver.log'), 'w');
    const coturn = spawn('ip', ['netns', 'exec', PUB, 'turnserver', '-c', path.join(dir, 'turnserver.conf')], {
      stdio: ['ignore', coturnLog, coturnLog],
    });
    procs.push(coturn);
    await waitUdpListener(PUB, 3478);
  });

  after(async () => {
    for (const b of browsers) await b.close().catch(() => {});
    for (const p of procs) {
      if (p.exitCode === null) {
        const done = new Promise((r) => p.once('exit', r));
        p.kill('SIGTERM');
        await done;
      }
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a call forced through TURN connects, media flows both ways, and both say "relayed"', async () => {
    const alice = await openPage(await launchIn(HOME_A));
    const bob = await openPage(await launchIn(HOME_B));
    const aliceName = uniqueName('alice');
    const bobName = uniqueName('bob');
    await signUp(alice, aliceName);
    await signUp(bob, bobName);
    const room = uniqueName('lab');
    await createRoom(alice, room);
    await bob.reload();
    await waitConnected(bob);
    await openRoom(bob, room);
    await alice.locator('#member-list .member', { hasText: bobName }).waitFor();

    await callAndCheck(alice, bob, aliceName, bobName);
    await screenshot(bob, 'lab-relayed-call');

    // A network that lets no UDP out at all: home B reaches TURN over TCP.
    execFileSync('ip', ['netns', 'exec', ROUTER_B, 'iptables', '-I', 'FORWARD', '-p', 'udp', '-j', 'DROP']);
    const protocols = await callAndCheck(alice, bob, aliceName, bobName);
    assert.equal(protocols[1], 'tcp', `bob relays over TCP: ${protocols}`);
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors, []);
  });
});
