// The mesh web client: sign in, rooms, real-time chat, presence, calls.
// Plain JavaScript modules, no build step; served by mesh-server itself.

import { Api, ApiError, authErrorText } from './api.js';
import { Socket } from './socket.js';
import { Calls } from './call.js';
import { el, $, show, formatTime, randomId, displayName } from './dom.js';

const TOKEN_KEY = 'mesh.token';
const USER_KEY = 'mesh.user';
const PAGE = 50;
const TYPING_SEND_EVERY_MS = 3000;
const TYPING_IDLE_MS = 4000;
const TYPING_SHOW_MS = 7000;
const RESEND_AFTER_MS = 8000;

const state = {
  token: localStorage.getItem(TOKEN_KEY),
  user: readJson(USER_KEY),
  peerId: null,
  rooms: new Map(), // id -> Room
  data: new Map(), // id -> per-room state, see roomData()
  myRooms: new Set(), // rooms this user is known to belong to
  peers: new Map(), // user id -> peer ids, most recent first
  presence: new Map(), // user id -> presence
  users: new Map(), // user id -> User
  announced: new Map(), // room id -> when we last sent room.join there
  outbox: new Map(), // client_id -> {client_id, room_id, content, sentAt}
  current: null,
  presenceChoice: 'online',
  typingSentAt: 0,
  typingIdle: null,
};

const api = new Api(
  () => state.token,
  () => signOut('Your session has expired. Sign in again.'),
);

const socket = new Socket({
  token: () => state.token,
  hello: () => ({ device_name: 'web', since: sinceMap() }),
  onEvent,
  onStatus: renderStatus,
  onWelcome,
  onRefused: checkSession,
});

const calls = new Calls({
  signal: (type, payload) => socket.confirm(type, payload),
  render: renderCall,
  toast,
  forgetPeer,
  iceServers: () => api.iceServers(),
});

window.__mesh = Object.assign(window.__mesh || {}, { state, socket, calls, pc: null });

function readJson(key) {
  try {
    return JSON.parse(localStorage.getItem(key) || 'null');
  } catch {
    return null;
  }
}

function storageKey(name) {
  return `mesh.${name}.${state.user?.id || 'anon'}`;
}

function saveMyRooms() {
  localStorage.setItem(storageKey('rooms'), JSON.stringify([...state.myRooms]));
}

function saveOutbox() {
  localStorage.setItem(storageKey('outbox'), JSON.stringify([...state.outbox.values()]));
}

function roomData(id) {
  let d = state.data.get(id);
  if (!d) {
    d = {
      messages: new Map(), // seq -> Message
      loaded: false, // the newest page was fetched; `newest` is trustworthy
      newest: 0,
      oldest: null,
      hasMore: true,
      loadingOlder: false,
      members: new Map(), // user id -> Member
      typing: new Map(), // user id -> timer
      unread: 0,
    };
    state.data.set(id, d);
  }
  return d;
}

/** `since` for system.hello: the last seq of every room we hold history of. */
function sinceMap() {
  const since = {};
  for (const [id, d] of state.data) if (d.loaded) since[id] = d.newest;
  return since;
}

// ---------------------------------------------------------------- auth

let authMode = 'signin';

function setAuthMode(mode) {
  authMode = mode;
  const signup = mode === 'signup';
  $('tab-signin').setAttribute('aria-selected', String(!signup));
  $('tab-signup').setAttribute('aria-selected', String(signup));
  show($('auth-display-row'), signup);
  $('auth-submit').textContent = signup ? 'Create account' : 'Sign in';
  $('auth-password').autocomplete = signup ? 'new-password' : 'current-password';
  show($('auth-error'), false);
}

async function submitAuth(ev) {
  ev.preventDefault();
  const username = $('auth-username').value.trim();
  const password = $('auth-password').value;
  const error = $('auth-error');
  const local = validateAuth(username, password);
  if (local) {
    error.textContent = local;
    show(error);
    return;
  }
  const button = $('auth-submit');
  button.disabled = true;
  show(error, false);
  try {
    const answer =
      authMode === 'signup'
        ? await api.register(username, password, $('auth-display').value.trim())
        : await api.login(username, password);
    $('auth-password').value = '';
    startSession(answer.token, answer.user);
  } catch (e) {
    error.textContent = authErrorText(e, authMode);
    show(error);
  } finally {
    button.disabled = false;
  }
}

function validateAuth(username, password) {
  if (username.length < 3 || username.length > 32) return 'Usernames are 3 to 32 characters long.';
  if (!/^[A-Za-z0-9_.-]+$/.test(username)) {
    return 'Usernames use letters, digits, "_", "." and "-" only.';
  }
  if (password.length < 8) return 'Passwords are at least 8 characters long.';
  return null;
}

function startSession(token, user) {
  state.token = token;
  state.user = user;
  localStorage.setItem(TOKEN_KEY, token);
  localStorage.setItem(USER_KEY, JSON.stringify(user));
  enterApp();
}

/** The WebSocket was refused before the upgrade: is the token still good? */
async function checkSession() {
  try {
    await api.me();
  } catch {
    /* 401 signs out through the Api hook; anything else: keep retrying */
  }
}

function signOut(message) {
  calls.hangup();
  socket.stop();
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(USER_KEY);
  state.token = null;
  state.user = null;
  state.peerId = null;
  state.rooms.clear();
  state.data.clear();
  state.myRooms.clear();
  state.peers.clear();
  state.outbox.clear();
  state.current = null;
  history.replaceState(null, '', '/');
  show($('app-view'), false);
  show($('auth-view'));
  setAuthMode('signin');
  if (message) {
    $('auth-error').textContent = message;
    show($('auth-error'));
  }
}

// ------------------------------------------------------------- the app

function enterApp() {
  show($('auth-view'), false);
  show($('app-view'));
  $('me-name').textContent = displayName(state.user);
  state.myRooms = new Set(readJson(storageKey('rooms')) || []);
  state.outbox = new Map((readJson(storageKey('outbox')) || []).map((e) => [e.client_id, e]));
  state.presenceChoice = localStorage.getItem(storageKey('presence')) || 'online';
  $('presence-select').value = state.presenceChoice;
  $('me-dot').dataset.presence = state.presenceChoice;
  socket.start();
  loadRooms().then(route);
}

async function loadRooms() {
  try {
    const { rooms } = await api.rooms();
    state.rooms = new Map(rooms.map((r) => [r.id, r]));
    for (const r of rooms) if (r.visibility === 'private') state.myRooms.add(r.id);
    show($('rooms-error'), false);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    $('rooms-error').textContent =
      e.code === 'unreachable' ? 'Offline: showing what was loaded.' : `Could not load rooms: ${e.message}`;
    show($('rooms-error'));
  }
  renderRooms();
}

function renderRooms() {
  const list = $('room-list');
  list.replaceChildren();
  if (state.rooms.size === 0) {
    list.append(el('li', { class: 'muted empty-list' }, 'No rooms yet. Create the first one above.'));
  }
  for (const room of state.rooms.values()) {
    const d = state.data.get(room.id);
    const unread = d?.unread || 0;
    list.append(
      el(
        'li',
        {},
        el(
          'a',
          {
            href: `#/room/${room.id}`,
            class: `room-link${room.id === state.current ? ' current' : ''}`,
            dataset: { roomId: room.id },
          },
          el('span', { class: 'hash', 'aria-hidden': 'true' }, room.visibility === 'private' ? '🔒' : '#'),
          el('span', { class: 'room-link-name' }, room.name),
          unread ? el('span', { class: 'badge', 'aria-label': `${unread} unread` }, String(unread)) : null,
        ),
      ),
    );
  }
}

async function createRoom(ev) {
  ev.preventDefault();
  const input = $('new-room-name');
  const name = input.value.trim();
  if (!name) {
    input.focus();
    return;
  }
  const button = $('new-room-create');
  button.disabled = true;
  try {
    const { room } = await api.createRoom(name, $('new-room-visibility').value);
    state.rooms.set(room.id, room);
    state.myRooms.add(room.id);
    saveMyRooms();
    input.value = '';
    show($('rooms-error'), false);
    renderRooms();
    location.hash = `#/room/${room.id}`;
  } catch (e) {
    $('rooms-error').textContent = `Could not create the room: ${e.message}`;
    show($('rooms-error'));
  } finally {
    button.disabled = false;
  }
}

function route() {
  const m = /^#\/room\/([0-9a-f-]{36})$/i.exec(location.hash);
  if (m && state.token) openRoom(m[1]);
  else closeRoom();
}

function closeRoom() {
  state.current = null;
  stopTyping();
  show($('room-view'), false);
  show($('empty-view'));
  $('app-view').classList.remove('in-room');
  renderRooms();
}

async function openRoom(id) {
  if (state.current !== id) stopTyping();
  state.current = id;
  const d = roomData(id);
  d.unread = 0;
  $('app-view').classList.add('in-room');
  show($('empty-view'), false);
  show($('room-view'));
  renderRoomHead();
  renderRooms();
  renderAllMessages();
  renderMembers();
  renderTyping();
  scrollToBottom();
  try {
    await joinRoom(id);
  } catch (e) {
    if (state.current !== id) return;
    if (e instanceof ApiError && (e.status === 404 || e.status === 403)) {
      toast('That room is not available.');
      location.hash = '';
      return;
    }
    if (!(e instanceof ApiError) || e.code !== 'unreachable') toast(`Could not join: ${e.message}`);
  }
  if (state.current === id) $('message-input').focus();
  await loadInitial(id);
}

/** Joins (idempotent) and gets the member list; announces our peer id. */
async function joinRoom(id) {
  if (socket.connected) {
    state.announced.set(id, Date.now());
    try {
      await socket.request('room.join', { room_id: id });
    } catch (e) {
      if (e.code === 'not_found' || e.code === 'forbidden') {
        throw new ApiError(e.code === 'not_found' ? 404 : 403, e.code, e.message);
      }
      throw e;
    }
  } else {
    await api.joinRoom(id);
    const { members } = await api.members(id);
    setMembers(id, members);
  }
  state.myRooms.add(id);
  saveMyRooms();
}

async function loadInitial(id) {
  const d = roomData(id);
  try {
    if (!d.loaded) {
      const page = await api.messages(id, { limit: PAGE });
      addMessages(id, page.messages, false);
      d.hasMore = page.has_more;
      d.loaded = true;
      if (state.current === id) scrollToBottom();
    } else {
      await fillGap(id);
    }
  } catch (e) {
    if (state.current === id && e.code !== 'unreachable') toast(`Could not load messages: ${e.message}`);
  }
  renderHistoryStatus();
  // Fill the screen: fetch older pages until the timeline can scroll.
  const tl = $('timeline');
  while (state.current === id && d.hasMore && tl.scrollHeight <= tl.clientHeight + 10) {
    if (!(await loadOlder(id))) break;
  }
}

/** Fetches everything after the newest message we hold. */
async function fillGap(id) {
  const d = roomData(id);
  if (!d.loaded || d.filling) return;
  d.filling = true;
  try {
    for (;;) {
      const page = await api.messages(id, { after: d.newest, limit: 100 });
      addMessages(id, page.messages, true);
      if (!page.has_more || page.messages.length === 0) break;
    }
  } finally {
    d.filling = false;
  }
}

/** One older page; false if nothing more came. */
async function loadOlder(id) {
  const d = roomData(id);
  if (d.loadingOlder || !d.hasMore || d.oldest === null) return false;
  d.loadingOlder = true;
  renderHistoryStatus();
  const tl = $('timeline');
  try {
    const page = await api.messages(id, { before: d.oldest, limit: PAGE });
    const height = tl.scrollHeight;
    const top = tl.scrollTop;
    addMessages(id, page.messages, false);
    d.hasMore = page.has_more && page.messages.length > 0;
    if (state.current === id) tl.scrollTop = top + (tl.scrollHeight - height);
    return page.messages.length > 0;
  } catch (e) {
    if (e.code !== 'unreachable') toast(`Could not load older messages: ${e.message}`);
    return false;
  } finally {
    d.loadingOlder = false;
    renderHistoryStatus();
  }
}

// ------------------------------------------------------------ messages

/** Adds messages (deduplicated by seq); `live` ones may stick the view and count as unread. */
function addMessages(roomId, messages, live) {
  const d = roomData(roomId);
  const isCurrent = state.current === roomId;
  const stick = isCurrent && nearBottom();
  let fresh = 0;
  let own = false;
  let outboxChanged = false;
  for (const m of messages) {
    if (m.client_id && state.outbox.has(m.client_id)) {
      state.outbox.delete(m.client_id);
      outboxChanged = true;
      document.querySelector(`[data-client-id="${CSS.escape(m.client_id)}"]`)?.remove();
    }
    if (d.messages.has(m.seq)) continue;
    d.messages.set(m.seq, m);
    if (m.seq > d.newest) d.newest = m.seq;
    if (d.oldest === null || m.seq < d.oldest) d.oldest = m.seq;
    state.users.set(m.sender.id, m.sender);
    if (m.sender.id === state.user?.id) own = true;
    else fresh += 1;
    if (isCurrent) insertMessage(m);
  }
  if (outboxChanged) saveOutbox();
  if (isCurrent) renderHistoryStatus();
  if (!live) return;
  if (isCurrent) {
    if (stick || own) scrollToBottom();
    else if (fresh) show($('jump'));
  } else if (fresh) {
    d.unread += fresh;
    renderRooms();
  }
}

function messageNode(m) {
  const mine = m.sender.id === state.user?.id;
  return el(
    'li',
    { class: `msg${mine ? ' own' : ''}`, dataset: { seq: String(m.seq) } },
    el(
      'div',
      { class: 'meta' },
      el('span', { class: 'author' }, displayName(m.sender)),
      el('time', { datetime: m.created_at, title: new Date(m.created_at).toLocaleString() }, formatTime(m.created_at)),
    ),
    el('div', { class: 'body' }, m.content),
  );
}

function pendingNode(entry) {
  return el(
    'li',
    { class: 'msg own pending', dataset: { clientId: entry.client_id } },
    el(
      'div',
      { class: 'meta' },
      el('span', { class: 'author' }, displayName(state.user)),
      el('span', { class: 'state' }, entry.failed ? `not sent: ${entry.failed}` : 'sending…'),
    ),
    el('div', { class: 'body' }, entry.content),
  );
}

/** Inserts a message node in seq order, before the pending ones. */
function insertMessage(m) {
  const list = $('messages');
  const node = messageNode(m);
  let before = null;
  for (const child of list.children) {
    if (child.dataset.clientId || Number(child.dataset.seq) > m.seq) {
      before = child;
      break;
    }
  }
  // Messages usually arrive at the end; scan from there when they do.
  list.insertBefore(node, before);
}

function renderAllMessages() {
  const list = $('messages');
  list.replaceChildren();
  const d = roomData(state.current);
  const seqs = [...d.messages.keys()].sort((a, b) => a - b);
  for (const seq of seqs) list.append(messageNode(d.messages.get(seq)));
  for (const entry of state.outbox.values()) {
    if (entry.room_id === state.current) list.append(pendingNode(entry));
  }
  renderHistoryStatus();
  show($('jump'), false);
}

function renderHistoryStatus() {
  if (!state.current) return;
  const d = roomData(state.current);
  let text = '';
  if (d.loadingOlder) text = 'Loading older messages…';
  else if (d.loaded && !d.hasMore) text = d.messages.size ? 'This is the beginning of the room.' : 'No messages yet. Say hello!';
  $('history-status').textContent = text;
}

function sendMessage(ev) {
  ev.preventDefault();
  const input = $('message-input');
  const content = input.value.trim();
  if (!content || !state.current) return;
  if (new TextEncoder().encode(content).length > 16384) {
    toast('That message is too long (16 KiB at most).');
    return;
  }
  const entry = { client_id: randomId(), room_id: state.current, content, sentAt: 0 };
  state.outbox.set(entry.client_id, entry);
  saveOutbox();
  $('messages').append(pendingNode(entry));
  input.value = '';
  autosize();
  stopTyping();
  scrollToBottom();
  trySend(entry);
}

/** Sends an outbox entry; the same client_id makes retries safe. */
function trySend(entry) {
  if (!socket.connected || entry.failed) return;
  entry.sentAt = Date.now();
  socket
    .request('chat.message.send', {
      room_id: entry.room_id,
      content: entry.content,
      client_id: entry.client_id,
    })
    .catch((e) => {
      if (['invalid_request', 'payload_too_large', 'forbidden', 'not_found'].includes(e.code)) {
        entry.failed = e.message;
        state.outbox.delete(entry.client_id);
        saveOutbox();
        const node = document.querySelector(`[data-client-id="${CSS.escape(entry.client_id)}"]`);
        node?.replaceWith(pendingNode(entry));
      } else if (e.code === 'rate_limited') {
        entry.sentAt = Date.now() - RESEND_AFTER_MS + (e.retryAfterMs || 1000);
      }
      // Otherwise (disconnected, timed out): the next connection resends it.
    });
}

function resendOutbox(force) {
  const now = Date.now();
  for (const entry of state.outbox.values()) {
    if (force || now - entry.sentAt > RESEND_AFTER_MS) trySend(entry);
  }
}
setInterval(() => resendOutbox(false), 2000);

// -------------------------------------------------------------- typing

function onComposerInput() {
  autosize();
  if (!state.current || !socket.connected) return;
  const now = Date.now();
  if ($('message-input').value.trim() === '') {
    stopTyping();
    return;
  }
  if (now - state.typingSentAt > TYPING_SEND_EVERY_MS) {
    state.typingSentAt = now;
    state.typingRoom = state.current;
    socket.send('chat.typing', { room_id: state.current, typing: true });
  }
  clearTimeout(state.typingIdle);
  state.typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(state.typingIdle);
  if (state.typingSentAt && state.typingRoom) {
    socket.send('chat.typing', { room_id: state.typingRoom, typing: false });
  }
  state.typingSentAt = 0;
  state.typingRoom = null;
}

function onTyping({ room_id, user_id, typing }) {
  if (user_id === state.user?.id) return;
  const d = roomData(room_id);
  clearTimeout(d.typing.get(user_id));
  if (typing) {
    d.typing.set(
      user_id,
      setTimeout(() => {
        d.typing.delete(user_id);
        renderTyping();
      }, TYPING_SHOW_MS),
    );
  } else {
    d.typing.delete(user_id);
  }
  renderTyping();
}

function renderTyping() {
  const node = $('typing');
  if (!state.current) return;
  const d = roomData(state.current);
  const names = [...d.typing.keys()].map((id) => displayName(d.members.get(id)?.user || state.users.get(id)));
  let text = '';
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = 'Several people are typing…';
  node.textContent = text;
}

// ------------------------------------------------------------- members

function setMembers(roomId, members) {
  const d = roomData(roomId);
  d.members = new Map(members.map((m) => [m.user.id, m]));
  for (const m of members) {
    state.users.set(m.user.id, m.user);
    state.presence.set(m.user.id, m.presence);
    if (m.user.id === state.user?.id) state.myRooms.add(roomId);
  }
  if (state.current === roomId) renderMembers();
}

const PRESENCE_ORDER = { online: 0, busy: 1, away: 2, offline: 3 };

function renderMembers() {
  const list = $('member-list');
  list.replaceChildren();
  if (!state.current) return;
  const members = [...roomData(state.current).members.values()];
  members.sort(
    (a, b) =>
      PRESENCE_ORDER[presenceOf(a.user.id)] - PRESENCE_ORDER[presenceOf(b.user.id)] ||
      displayName(a.user).localeCompare(displayName(b.user)),
  );
  for (const m of members) {
    const me = m.user.id === state.user?.id;
    const presence = presenceOf(m.user.id);
    const peers = state.peers.get(m.user.id) || [];
    const callable = !me && presence !== 'offline' && peers.length > 0;
    const callButton = (video) =>
      el(
        'button',
        {
          type: 'button',
          class: 'ghost call-btn',
          disabled: !callable || calls.busy,
          title: callable
            ? `${video ? 'Video call' : 'Call'} ${displayName(m.user)}`
            : `${displayName(m.user)} has no device online to call`,
          'aria-label': `${video ? 'Video call' : 'Call'} ${displayName(m.user)}`,
          dataset: { userId: m.user.id, video: video ? '1' : '' },
        },
        video ? 'Video' : 'Call',
      );
    list.append(
      el(
        'li',
        { class: 'member', dataset: { userId: m.user.id, presence } },
        el('span', { class: 'dot', dataset: { presence }, title: presence }),
        el(
          'span',
          { class: 'member-name' },
          displayName(m.user),
          me ? el('span', { class: 'muted' }, ' (you)') : null,
          m.role !== 'member' ? el('span', { class: 'role' }, m.role) : null,
        ),
        el('span', { class: 'presence-label muted' }, presence),
        me ? null : el('span', { class: 'call-buttons' }, callButton(false), callButton(true)),
      ),
    );
  }
}

function presenceOf(userId) {
  if (userId === state.user?.id) return socket.connected ? state.presenceChoice : 'offline';
  return state.presence.get(userId) || 'offline';
}

function onPresence({ user_id, status }) {
  state.presence.set(user_id, status);
  if (status === 'offline') state.peers.delete(user_id);
  if (user_id === state.user?.id) {
    state.presenceChoice = status === 'offline' ? state.presenceChoice : status;
  }
  renderMembers();
}

function changePresence() {
  const status = $('presence-select').value;
  state.presenceChoice = status;
  localStorage.setItem(storageKey('presence'), status);
  $('me-dot').dataset.presence = status;
  socket.send('presence.update', { status });
  renderMembers();
}

// --------------------------------------------------- peers and calling

/**
 * Peer-id discovery. A call goes to a connection (peer), not a user, and
 * peers announce themselves only in `room.joined`. So:
 *  1. every room.joined (and every rtc.* from_peer_id) is remembered per user;
 *  2. after each system.welcome this client re-sends `room.join` for its rooms
 *     (idempotent on the server, which broadcasts room.joined with our peer id);
 *  3. when an unknown peer announces itself in a room, we answer with our own
 *     `room.join` there (once per room for a burst of newcomers, after a short
 *     random delay), so a peer that connected after us learns ours. Answers
 *     stop by themselves: a peer we already know never triggers one;
 *  4. a peer id that the server reports as not_found is dropped, and peers of
 *     a user who goes offline are forgotten.
 */
function learnPeer(userId, peerId) {
  if (!peerId || peerId === state.peerId) return true;
  const list = state.peers.get(userId) || [];
  const known = list.includes(peerId);
  state.peers.set(userId, [peerId, ...list.filter((p) => p !== peerId)].slice(0, 8));
  return known;
}

function forgetPeer(userId, peerId) {
  const list = (state.peers.get(userId) || []).filter((p) => p !== peerId);
  if (list.length) state.peers.set(userId, list);
  else state.peers.delete(userId);
  renderMembers();
}

function announce(roomId) {
  // Announcements are delayed; `room.join` would join again a room the
  // user has left in the meantime.
  if (!state.myRooms.has(roomId)) return;
  state.announced.set(roomId, Date.now());
  socket.send('room.join', { room_id: roomId });
}

const answering = new Set();
function answerNewcomer(roomId) {
  // Several newcomers at once get one answer; the random delay spreads the
  // answers of a room's members.
  if (answering.has(roomId)) return;
  answering.add(roomId);
  setTimeout(() => {
    answering.delete(roomId);
    if (socket.connected) announce(roomId);
  }, 100 + Math.random() * 500);
}

function announceAll() {
  // Paced well under the rate limit.
  const rooms = [...state.myRooms].filter((id) => id !== state.current);
  rooms.forEach((id, i) => setTimeout(() => socket.connected && announce(id), 150 * (i + 1)));
}

function onRoomJoined(p) {
  const { room_id, user, peer_id, members } = p;
  state.users.set(user.id, user);
  if (members) setMembers(room_id, members);
  if (user.id === state.user?.id) {
    state.myRooms.add(room_id);
    saveMyRooms();
    if (!state.rooms.has(room_id)) loadRooms();
  } else {
    const d = roomData(room_id);
    const existing = d.members.get(user.id);
    d.members.set(user.id, existing ? { ...existing, user } : { user, role: 'member', presence: 'online' });
    if (!state.presence.get(user.id) || state.presence.get(user.id) === 'offline') {
      state.presence.set(user.id, 'online');
    }
    const room = state.rooms.get(room_id);
    if (room && !existing) room.member_count = (room.member_count || 0) + 1;
  }
  const known = learnPeer(user.id, peer_id);
  if (!known && user.id !== state.user?.id && peer_id !== state.peerId) answerNewcomer(room_id);
  if (room_id === state.current) renderMembers();
}

function onRoomLeft({ room_id, user_id }) {
  const d = roomData(room_id);
  d.members.delete(user_id);
  d.typing.delete(user_id);
  if (user_id === state.user?.id) {
    state.myRooms.delete(room_id);
    saveMyRooms();
    state.data.delete(room_id);
    const room = state.rooms.get(room_id);
    if (room && room.visibility === 'private') state.rooms.delete(room_id);
    if (state.current === room_id) location.hash = '';
    renderRooms();
    return;
  }
  if (room_id === state.current) {
    renderMembers();
    renderTyping();
  }
}

async function leaveRoom() {
  const id = state.current;
  if (!id) return;
  const button = $('leave-room');
  // Two clicks, no dialog: the first one asks.
  if (button.dataset.confirm !== id) {
    button.dataset.confirm = id;
    button.textContent = 'Leave? Click again';
    setTimeout(() => {
      delete button.dataset.confirm;
      button.textContent = 'Leave';
    }, 4000);
    return;
  }
  delete button.dataset.confirm;
  button.textContent = 'Leave';
  try {
    await api.leaveRoom(id);
    onRoomLeft({ room_id: id, user_id: state.user.id });
    location.hash = '';
  } catch (e) {
    toast(e.code === 'conflict' ? 'You own this room, so you cannot leave it.' : `Could not leave: ${e.message}`);
  }
}

function startCall(userId, video) {
  const m = roomData(state.current).members.get(userId);
  const peerIds = state.peers.get(userId) || [];
  if (!m || peerIds.length === 0) return;
  calls.start({ roomId: state.current, user: m.user, peerIds, video });
}

function renderCall(call) {
  window.__mesh.pc = call?.pc || null;
  const incoming = $('incoming');
  const overlay = $('call');
  const local = $('local-video');
  const remote = $('remote-video');
  if (call && call.state === 'ringing') {
    $('incoming-text').textContent = `${displayName(call.user)} is calling you${call.video ? ' (video)' : ''}…`;
    show(incoming);
  } else {
    show(incoming, false);
  }
  if (call && call.state !== 'ringing') {
    const name = displayName(call.user);
    $('call-status').textContent = {
      calling: `Calling ${name}…`,
      connecting: `Connecting to ${name}…`,
      connected: `In a call with ${name}`,
      reconnecting: `Reconnecting to ${name}…`,
    }[call.state];
    // Said in words, not only shown: the call's media goes through the
    // TURN server (see call.js, watchRoute).
    const route = $('call-route');
    route.textContent = call.state === 'connected' && call.relayed ? 'relayed' : '';
    show(route, call.state === 'connected' && call.relayed === true);
    overlay.dataset.state = call.state;
    overlay.classList.toggle('audio-only', !call.video);
    if (local.srcObject !== call.local) local.srcObject = call.local;
    if (call.remote && remote.srcObject !== call.remote) {
      remote.srcObject = call.remote;
      remote.play().catch(() => toast('Tap the call to hear and see them.'));
    }
    show(overlay);
  } else {
    show(overlay, false);
    local.srcObject = null;
    remote.srcObject = null;
  }
  renderMembers();
}

// ---------------------------------------------------------- connection

function onWelcome(p) {
  state.peerId = p.peer_id;
  state.user = p.user;
  localStorage.setItem(USER_KEY, JSON.stringify(p.user));
  $('me-name').textContent = displayName(p.user);
  window.__mesh.peerId = p.peer_id;
  if (state.presenceChoice !== 'online') {
    socket.send('presence.update', { status: state.presenceChoice });
  }
  if (state.current) {
    joinRoom(state.current).catch(() => {});
    fillGap(state.current).catch(() => {});
  }
  announceAll();
  resendOutbox(true);
  loadRooms();
}

function onEvent(type, p, frame) {
  switch (type) {
    case 'chat.message.created':
      onMessage(p.message);
      break;
    case 'chat.typing':
      onTyping(p);
      break;
    case 'presence.update':
      onPresence(p);
      break;
    case 'room.joined':
      onRoomJoined(p);
      break;
    case 'room.left':
      onRoomLeft(p);
      break;
    case 'room.updated':
      state.rooms.set(p.room.id, p.room);
      renderRooms();
      if (p.room.id === state.current) renderRoomHead();
      break;
    case 'room.deleted':
      state.rooms.delete(p.room_id);
      onRoomLeft({ room_id: p.room_id, user_id: state.user?.id });
      break;
    case 'rtc.offer':
    case 'rtc.answer':
    case 'rtc.ice':
    case 'rtc.hangup': {
      learnPeer(p.from_user_id, p.from_peer_id);
      const user = state.users.get(p.from_user_id) || { id: p.from_user_id, username: 'someone' };
      calls.onSignal(type, p, user).catch((e) => console.warn('call signal', e));
      break;
    }
    case 'error':
      if (!frame.id) console.warn('mesh error', p);
      break;
    default:
      break;
  }
}

function onMessage(m) {
  const d = roomData(m.room_id);
  state.myRooms.add(m.room_id);
  // A hole before this message (missed while catching up): fetch it.
  const gap = d.loaded && m.seq > d.newest + 1;
  addMessages(m.room_id, [m], true);
  if (gap) fillGap(m.room_id).catch(() => {});
  if (d.typing.has(m.sender.id)) onTyping({ room_id: m.room_id, user_id: m.sender.id, typing: false });
}

function renderStatus(s, detail) {
  const node = $('conn-status');
  node.dataset.state = s;
  node.textContent = {
    connecting: 'connecting…',
    connected: 'connected',
    reconnecting: 'reconnecting…',
    offline: 'offline',
  }[s];
  node.title = s === 'reconnecting' && detail.delay ? `retrying in ${Math.ceil(detail.delay / 1000)} s` : s;
  document.body.dataset.conn = s;
  if (s !== 'connected') state.peerId = null;
  renderMembers();
}

// ------------------------------------------------------------- helpers

function renderRoomHead() {
  const room = state.rooms.get(state.current);
  $('room-name').textContent = room ? `${room.visibility === 'private' ? '🔒 ' : '# '}${room.name}` : 'Room';
  $('room-topic').textContent = room?.topic || '';
}

function nearBottom() {
  const tl = $('timeline');
  return tl.scrollHeight - tl.scrollTop - tl.clientHeight < 60;
}

function scrollToBottom() {
  const tl = $('timeline');
  tl.scrollTop = tl.scrollHeight;
  show($('jump'), false);
}

function autosize() {
  const input = $('message-input');
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

let toastTimer = null;
function toast(text) {
  const node = $('toast');
  node.textContent = text;
  show(node);
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => show(node, false), 4000);
}

// -------------------------------------------------------------- wiring

function wire() {
  $('tab-signin').addEventListener('click', () => setAuthMode('signin'));
  $('tab-signup').addEventListener('click', () => setAuthMode('signup'));
  $('auth-form').addEventListener('submit', submitAuth);
  $('signout').addEventListener('click', () => signOut());
  $('new-room-form').addEventListener('submit', createRoom);
  $('presence-select').addEventListener('change', changePresence);
  $('composer').addEventListener('submit', sendMessage);
  $('message-input').addEventListener('input', onComposerInput);
  $('message-input').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $('composer').requestSubmit();
    }
  });
  $('timeline').addEventListener('scroll', () => {
    if (nearBottom()) show($('jump'), false);
    if ($('timeline').scrollTop < 120 && state.current) loadOlder(state.current);
  });
  $('jump').addEventListener('click', scrollToBottom);
  $('back').addEventListener('click', () => {
    location.hash = '';
  });
  $('toggle-members').addEventListener('click', () => $('app-view').classList.toggle('show-members'));
  $('leave-room').addEventListener('click', leaveRoom);
  $('member-list').addEventListener('click', (ev) => {
    const button = ev.target.closest('.call-btn');
    if (button && !button.disabled) startCall(button.dataset.userId, button.dataset.video === '1');
  });
  $('accept-call').addEventListener('click', () => calls.accept());
  $('decline-call').addEventListener('click', () => calls.decline());
  $('hangup').addEventListener('click', () => calls.hangup());
  $('toggle-mic').addEventListener('click', () => {
    $('toggle-mic').textContent = calls.toggleTrack('audio') ? 'Mute' : 'Unmute';
  });
  $('toggle-cam').addEventListener('click', () => {
    $('toggle-cam').textContent = calls.toggleTrack('video') ? 'Camera off' : 'Camera on';
  });
  $('remote-video').addEventListener('click', () => $('remote-video').play().catch(() => {}));
  window.addEventListener('hashchange', route);
  window.addEventListener('pagehide', () => calls.hangup());
}

wire();
if (state.token && state.user) {
  enterApp();
} else {
  signOut();
}
