// The wasm package once over TLS: mesh-server with --tls-cert/--tls-key
// from a CA made here (openssl). The package has no TLS settings of its
// own (it uses the platform's fetch and WebSocket), so the CA is trusted
// the platform's way: NODE_EXTRA_CA_CERTS, which Node reads only when it
// starts, hence the chat scenario runs in a child Node (tls-chat.mjs).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import WebSocket from 'ws';
import { HERE, PACKAGE, PASSWORD, makeTestCa, name, startServer } from './support.mjs';

globalThis.WebSocket = WebSocket;
const require = createRequire(import.meta.url);
const { MeshApi } = require(PACKAGE);

let ca;
let server;

before(async () => {
  ca = makeTestCa();
  server = await startServer(ca.serverFlags);
});

after(async () => {
  await server?.stop();
  ca?.cleanup();
});

/** Runs `node tls-chat.mjs` with `env` added; resolves with its exit code and output. */
function child(env) {
  const proc = spawn(process.execPath, [path.join(HERE, 'tls-chat.mjs')], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stdout.setEncoding('utf8').on('data', (c) => (out += c));
  proc.stderr.setEncoding('utf8').on('data', (c) => (err += c));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`tls-chat.mjs did not finish:\n${out}${err}`));
    }, 30000);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

test('two users chat over https and wss with the test CA in NODE_EXTRA_CA_CERTS', async () => {
  assert.match(server.url, /^https:\/\/127\.0\.0\.1:\d+$/);
  const run = await child({ MESH_URL: server.url, NODE_EXTRA_CA_CERTS: ca.caPath });
  assert.equal(run.code, 0, `tls-chat.mjs failed:\n${run.out}${run.err}`);
  assert.deepEqual(JSON.parse(run.out.trim().split('\n').pop()), {
    received: 'hello over tls',
    history: ['hello over tls'],
  });
});

test('without the test CA trusted the server is unreachable (code transport)', async () => {
  // This process started without the test CA. Like a browser's, Node's
  // fetch says only "fetch failed", so the package can tell no more than
  // a transport failure.
  await assert.rejects(new MeshApi(server.url).register(name(), PASSWORD), (e) => {
    assert.ok(e instanceof Error);
    assert.equal(e.code, 'transport', String(e));
    return true;
  });
  const run = await child({ MESH_URL: server.url, NODE_EXTRA_CA_CERTS: '' });
  assert.notEqual(run.code, 0, `tls-chat.mjs passed without the CA:\n${run.out}`);
  assert.match(run.err, /transport|fetch failed/, run.err);
});
