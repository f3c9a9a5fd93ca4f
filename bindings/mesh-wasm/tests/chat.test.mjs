// The chat scenario through the mesh-wasm package (wasm-bindgen --target
// nodejs) against a real mesh-server on a free port. Run by scripts/test.sh
// after bindings/mesh-wasm/build.sh:
//
//   cd bindings/mesh-wasm/tests && npm ci && MESH_SERVER_BIN=... node --test .

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import WebSocket from 'ws';
import { Events, PACKAGE, PASSWORD, name, startServer } from './support.mjs';

// Node 20 has no global WebSocket: the package drives whatever
// `globalThis.WebSocket` is, as in a browser.
globalThis.WebSocket = WebSocket;

const require = createRequire(import.meta.url);
const { MeshApi, connect } = require(PACKAGE);

let server;
const clients = [];

before(async () => {
  server = await startServer();
});

after(async () => {
  for (const c of clients) c.close();
  await server?.stop();
});

async function user(username = name()) {
  const api = new MeshApi(server.url);
  const auth = await api.register(username, PASSWORD);
  const events = new Events();
  const client = await connect(server.url, auth.token, events.push, 'node');
  clients.push(client);
  return { auth, client, events };
}

test('two users chat through the callbacks and page history', async () => {
  const alice = await user();
  const bob = await user();
  assert.equal(alice.client.me().username, alice.auth.user.username);
  await alice.events.waitFor((e) => (e.type === 'connected' ? e : undefined));

  const room = await alice.client.createRoom('general', 'chat', false);
  const members = await bob.client.joinRoom(room.id);
  assert.deepEqual(
    members.map((m) => m.user.username).sort(),
    [alice.auth.user.username, bob.auth.user.username].sort(),
  );

  const sent = await alice.client.sendMessage(room.id, 'hello bob');
  assert.equal(sent.seq, 1);
  const got = await bob.events.waitFor((e) => (e.type === 'message' ? e.message : undefined));
  assert.equal(got.content, 'hello bob');
  assert.equal(got.seq, 1);
  assert.equal(got.sender.username, alice.auth.user.username);

  bob.client.setTyping(room.id, true);
  const typing = await alice.events.waitFor((e) => (e.type === 'typing' ? e : undefined));
  assert.equal(typing.user_id, bob.auth.user.id);
  assert.equal(typing.typing, true);

  await bob.client.setPresence('away', 'lunch');
  const presence = await alice.events.waitFor((e) =>
    e.type === 'presence' && e.user_id === bob.auth.user.id ? e : undefined,
  );
  assert.equal(presence.status, 'away');
  assert.equal(presence.message, 'lunch');

  for (let i = 2; i < 8; i++) await bob.client.sendMessage(room.id, `message ${i}`);
  const newest = await alice.client.history(room.id, null, null, 3);
  assert.deepEqual(newest.messages.map((m) => m.seq), [5, 6, 7]);
  assert.equal(newest.has_more, true);
  const older = await alice.client.history(room.id, 5, null, 10);
  assert.deepEqual(older.messages.map((m) => m.seq), [1, 2, 3, 4]);
  assert.equal(older.has_more, false);
  assert.equal(older.messages[0].content, 'hello bob');
  const newer = await alice.client.history(room.id, null, 5, 10);
  assert.deepEqual(newer.messages.map((m) => m.seq), [6, 7]);

  const rooms = await bob.client.rooms();
  assert.ok(rooms.some((r) => r.id === room.id));
});

test('p2p sessions are granted to both peers and closed', async () => {
  const alice = await user();
  const bob = await user();
  const room = await alice.client.createRoom('files', null, false);
  await bob.client.joinRoom(room.id);
  const grant = await alice.client.requestP2pSession(room.id, bob.client.peerId(), 'file');
  assert.equal(grant.session.kind, 'file');
  assert.equal(grant.session.initiator_peer_id, alice.client.peerId());
  assert.equal(grant.session.target_peer_id, bob.client.peerId());
  assert.equal(grant.session_token.split('.').length, 3);
  const heard = await bob.events.waitFor((e) =>
    e.type === 'p2p_session_created' ? e.session.id : undefined,
  );
  assert.equal(heard, grant.session.id);
  alice.client.closeP2pSession(grant.session.id);
  const closed = await bob.events.waitFor((e) =>
    e.type === 'p2p_session_closed' ? e.session_id : undefined,
  );
  assert.equal(closed, grant.session.id);
  assert.throws(
    () => alice.client.requestP2pSession(room.id, bob.client.peerId(), 'teleport'),
    (e) => e.code === 'invalid_argument',
  );
});

test('rtc signals and role changes reach the other side', async () => {
  const alice = await user();
  const bob = await user();
  const room = await alice.client.createRoom('calls', null, false);
  await bob.client.joinRoom(room.id);

  const offer = { sdp: 'v=0 (an offer)', media: ['audio', 'video'] };
  alice.client.sendRtc('offer', room.id, bob.client.peerId(), offer);
  const got = await bob.events.waitFor((e) => (e.type === 'rtc' ? e : undefined));
  assert.equal(got.kind, 'offer');
  assert.equal(got.room_id, room.id);
  assert.equal(got.from_peer_id, alice.client.peerId());
  assert.equal(got.from_user_id, alice.auth.user.id);
  assert.deepEqual(got.body, offer);
  assert.throws(
    () => alice.client.sendRtc('ring', room.id, bob.client.peerId(), {}),
    (e) => e.code === 'invalid_argument',
  );
  assert.throws(
    () => alice.client.sendRtc('offer', room.id, bob.client.peerId(), [1, 2]),
    (e) => e.code === 'invalid_argument',
  );

  const member = await alice.client.setRole(room.id, bob.auth.user.id, 'admin');
  assert.equal(member.role, 'admin');
  const updated = await bob.events.waitFor((e) => (e.type === 'member_updated' ? e : undefined));
  assert.deepEqual(
    [updated.room_id, updated.user_id, updated.role],
    [room.id, bob.auth.user.id, 'admin'],
  );
  assert.throws(
    () => alice.client.setRole(room.id, bob.auth.user.id, 'owner'),
    (e) => e.code === 'invalid_argument',
  );
  await assert.rejects(bob.client.setRole(room.id, alice.auth.user.id, 'member'), (e) => {
    assert.equal(e.code, 'forbidden');
    return true;
  });
});

test('a wrong password is an Error with code unauthorized', async () => {
  const username = name();
  const api = new MeshApi(server.url);
  await api.register(username, PASSWORD);
  await assert.rejects(api.login(username, 'not the password'), (e) => {
    assert.ok(e instanceof Error);
    assert.equal(e.code, 'unauthorized');
    return true;
  });
  const auth = await api.login(username, PASSWORD);
  assert.equal(auth.user.username, username);
});

test('a bad token is refused with code unauthorized', async () => {
  await assert.rejects(connect(server.url, 'not-a-token', () => {}), (e) => {
    assert.equal(e.code, 'unauthorized');
    return true;
  });
});

test('a private room is forbidden to outsiders', async () => {
  const alice = await user();
  const mallory = await user();
  const room = await alice.client.createRoom('secret', null, true);
  await assert.rejects(mallory.client.sendMessage(room.id, 'let me in'), (e) => {
    assert.ok(e instanceof Error);
    assert.equal(e.code, 'forbidden');
    return true;
  });
  const failed = await mallory.events.waitFor((e) => (e.type === 'send_failed' ? e : undefined));
  assert.equal(failed.room_id, room.id);
  assert.equal(failed.code, 'forbidden');
  await assert.rejects(mallory.client.history(room.id), (e) => {
    assert.ok(['forbidden', 'not_found'].includes(e.code), e.code);
    return true;
  });
});

test('bad arguments throw invalid_argument', async () => {
  const alice = await user();
  assert.throws(() => alice.client.sendMessage('not-a-room', 'hi'), (e) => {
    assert.equal(e.code, 'invalid_argument');
    return true;
  });
  assert.throws(() => alice.client.setPresence('sleepy'), (e) => e.code === 'invalid_argument');
  assert.throws(() => new MeshApi('ftp://nope'), (e) => e.code === 'invalid_argument');
});

test('close ends with a closed event', async () => {
  const alice = await user();
  alice.client.close();
  const closed = await alice.events.waitFor((e) => (e.type === 'closed' ? e : undefined));
  assert.equal(closed.error, null);
});
