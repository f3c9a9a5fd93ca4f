// The chat scenario over https:// and wss://, run by tls.test.mjs in a
// child Node whose NODE_EXTRA_CA_CERTS names the test CA (Node reads it
// only at start-up): the package uses Node's fetch and the `ws` WebSocket,
// which trust the platform's roots plus that CA, as a browser would.
//
//   MESH_URL=https://127.0.0.1:PORT NODE_EXTRA_CA_CERTS=ca.pem node tls-chat.mjs
//
// Prints one JSON line with what it saw; exits non-zero on any failure.

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import WebSocket from 'ws';
import { Events, PACKAGE, PASSWORD, name } from './support.mjs';

globalThis.WebSocket = WebSocket;
const require = createRequire(import.meta.url);
const { MeshApi, connect } = require(PACKAGE);

const url = process.env.MESH_URL;
assert.match(url ?? '', /^https:\/\//, 'MESH_URL must be an https:// URL');

const clients = [];
async function user() {
  const auth = await new MeshApi(url).register(name(), PASSWORD);
  const events = new Events();
  const client = await connect(url, auth.token, events.push, 'node-tls');
  clients.push(client);
  return { auth, client, events };
}

try {
  const alice = await user();
  const bob = await user();
  await alice.events.waitFor((e) => (e.type === 'connected' ? e : undefined));
  const room = await alice.client.createRoom('tls', null, false);
  await bob.client.joinRoom(room.id);
  const sent = await alice.client.sendMessage(room.id, 'hello over tls');
  const got = await bob.events.waitFor((e) => (e.type === 'message' ? e.message : undefined));
  assert.equal(got.seq, sent.seq);
  assert.equal(got.sender.username, alice.auth.user.username);
  const page = await bob.client.history(room.id, null, null, 10);
  console.log(JSON.stringify({
    received: got.content,
    history: page.messages.map((m) => m.content),
  }));
} finally {
  for (const c of clients) c.close();
}
