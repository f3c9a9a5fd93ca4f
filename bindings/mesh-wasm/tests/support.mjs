// What the Node tests of mesh-wasm share: a real mesh-server on a free port
// (plain HTTP, or HTTPS with a test CA made here with the `openssl`
// command), an event collector, and unique user names.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomUUID } from 'node:crypto';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..', '..');
const TARGET = process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target');
export const SERVER_BIN = process.env.MESH_SERVER_BIN || path.join(TARGET, 'debug', 'mesh-server');
export const PACKAGE = path.join(HERE, '..', 'pkg', 'mesh_wasm.js');
export const PASSWORD = 'correct horse battery';
export const TIMEOUT = 10000;

/**
 * `mesh-server --listen 127.0.0.1:0 --data <tmp> ...flags`, up once it logs
 * its address; `url` has the scheme it logs (`http` or `https`).
 */
export function startServer(flags = []) {
  const dir = mkdtempSync(path.join(tmpdir(), 'mesh-wasm-'));
  const proc = spawn(SERVER_BIN, ['--listen', '127.0.0.1:0', '--data', dir, ...flags], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${log}`)), 30000);
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (chunk) => {
      log += chunk;
      const m = /listening on (\S+) \((https?)\)/.exec(log);
      if (m && timer) {
        clearTimeout(timer);
        resolve({
          url: `${m[2]}://${m[1]}`,
          async stop() {
            if (proc.exitCode === null) {
              const done = new Promise((r) => proc.once('exit', r));
              proc.kill('SIGTERM');
              await done;
            }
            rmSync(dir, { recursive: true, force: true });
          },
        });
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${log}`));
    });
  });
}

/**
 * A throwaway CA and a leaf it signed for 127.0.0.1 and localhost, in a
 * temporary folder: `{ caPath, certPath, keyPath, cleanup() }`.
 */
export function makeTestCa() {
  const dir = mkdtempSync(path.join(tmpdir(), 'mesh-wasm-ca-'));
  const f = (name) => path.join(dir, name);
  const ossl = (...args) => execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  ossl('req', '-x509', ...ec, '-keyout', f('ca-key.pem'), '-out', f('ca.pem'), '-days', '1',
    '-subj', '/CN=mesh node test CA');
  ossl('req', ...ec, '-keyout', f('key.pem'), '-out', f('leaf.csr'), '-subj', '/CN=localhost');
  writeFileSync(f('leaf.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n');
  ossl('x509', '-req', '-in', f('leaf.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca-key.pem'),
    '-CAcreateserial', '-days', '1', '-extfile', f('leaf.ext'), '-out', f('cert.pem'));
  return {
    caPath: f('ca.pem'),
    caPem: readFileSync(f('ca.pem'), 'utf8'),
    certPath: f('cert.pem'),
    keyPath: f('key.pem'),
    serverFlags: ['--tls-cert', f('cert.pem'), '--tls-key', f('key.pem')],
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** Collects a client's events; `waitFor(pick)` resolves with the first one `pick` maps to a value. */
export class Events {
  constructor() {
    this.seen = [];
    this.waiters = [];
    this.push = (event) => {
      this.seen.push(event);
      this.waiters = this.waiters.filter((w) => !w(event));
    };
  }

  waitFor(pick) {
    return new Promise((resolve, reject) => {
      for (const e of this.seen) {
        const v = pick(e);
        if (v !== undefined) return resolve(v);
      }
      const timer = setTimeout(() => reject(new Error('no such event')), TIMEOUT);
      this.waiters.push((e) => {
        const v = pick(e);
        if (v === undefined) return false;
        clearTimeout(timer);
        resolve(v);
        return true;
      });
    });
  }
}

export const name = () => `u${randomUUID().replaceAll('-', '').slice(0, 10)}`;
