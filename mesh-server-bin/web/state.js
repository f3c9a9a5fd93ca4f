// The client's state and what of it lives in localStorage: the session, the
// rooms, who is who, presence, peers and the outbox.
//
// Other modules read `state`; they change it only through the functions
// below. Per-room history belongs to timeline.js, per-room members and
// typing to members.js.

const TOKEN_KEY = 'mesh.token';
const USER_KEY = 'mesh.user';

export const state = {
  token: localStorage.getItem(TOKEN_KEY),
  user: readJson(USER_KEY),
  peerId: null,
  rooms: new Map(), // id -> Room
  unread: new Map(), // room id -> messages that came while another room was open
  myRooms: new Set(), // rooms this user is known to belong to
  peers: new Map(), // user id -> peer ids, most recent first
  presence: new Map(), // user id -> presence
  users: new Map(), // user id -> User
  outbox: new Map(), // client_id -> {client_id, room_id, content, sentAt}
  current: null,
  presenceChoice: 'online',
};

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

// ------------------------------------------------------------- session

export function hasSession() {
  return Boolean(state.token && state.user);
}

export function startSession(token, user) {
  state.token = token;
  state.user = user;
  localStorage.setItem(TOKEN_KEY, token);
  localStorage.setItem(USER_KEY, JSON.stringify(user));
}

/** Loads what this user's previous visits left: rooms, outbox, chosen presence. */
export function loadUserStore() {
  state.myRooms = new Set(readJson(storageKey('rooms')) || []);
  state.outbox = new Map((readJson(storageKey('outbox')) || []).map((e) => [e.client_id, e]));
  state.presenceChoice = localStorage.getItem(storageKey('presence')) || 'online';
}

/** system.welcome: who we are now, and this connection's peer id. */
export function welcomed(user, peerId) {
  state.peerId = peerId;
  state.user = user;
  localStorage.setItem(USER_KEY, JSON.stringify(user));
}

export function setPeerId(peerId) {
  state.peerId = peerId;
}

export function clearSession() {
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(USER_KEY);
  state.token = null;
  state.user = null;
  state.peerId = null;
  state.rooms.clear();
  state.unread.clear();
  state.myRooms.clear();
  state.peers.clear();
  state.outbox.clear();
  state.current = null;
}

export function isMe(userId) {
  return userId === state.user?.id;
}

// --------------------------------------------------------------- rooms

export function setCurrent(roomId) {
  state.current = roomId;
}

export function setRooms(rooms) {
  state.rooms = new Map(rooms.map((r) => [r.id, r]));
}

export function putRoom(room) {
  state.rooms.set(room.id, room);
}

export function dropRoom(roomId) {
  state.rooms.delete(roomId);
}

export function countMemberJoined(roomId) {
  const room = state.rooms.get(roomId);
  if (room) room.member_count = (room.member_count || 0) + 1;
}

/** Remembers that we belong to `roomId`; `save` writes the list to storage. */
export function addMyRoom(roomId, { save = false } = {}) {
  state.myRooms.add(roomId);
  if (save) saveMyRooms();
}

export function removeMyRoom(roomId) {
  state.myRooms.delete(roomId);
  saveMyRooms();
}

function saveMyRooms() {
  localStorage.setItem(storageKey('rooms'), JSON.stringify([...state.myRooms]));
}

export function addUnread(roomId, count) {
  state.unread.set(roomId, (state.unread.get(roomId) || 0) + count);
}

export function clearUnread(roomId) {
  state.unread.delete(roomId);
}

// ------------------------------------------------- users and presence

export function rememberUser(user) {
  state.users.set(user.id, user);
}

export function setPresence(userId, status) {
  state.presence.set(userId, status);
}

export function setPresenceChoice(status, { save = false } = {}) {
  state.presenceChoice = status;
  if (save) localStorage.setItem(storageKey('presence'), status);
}

// --------------------------------------------------------------- peers

/** Remembers a peer of `userId`; true if it was known already (or is us). */
export function learnPeer(userId, peerId) {
  if (!peerId || peerId === state.peerId) return true;
  const list = state.peers.get(userId) || [];
  const known = list.includes(peerId);
  state.peers.set(userId, [peerId, ...list.filter((p) => p !== peerId)].slice(0, 8));
  return known;
}

export function forgetPeer(userId, peerId) {
  const list = (state.peers.get(userId) || []).filter((p) => p !== peerId);
  if (list.length) state.peers.set(userId, list);
  else state.peers.delete(userId);
}

export function forgetPeersOf(userId) {
  state.peers.delete(userId);
}

export function peersOf(userId) {
  return state.peers.get(userId) || [];
}

// -------------------------------------------------------------- outbox

export function outboxAdd(entry) {
  state.outbox.set(entry.client_id, entry);
  saveOutbox();
}

/** Drops an entry (confirmed or refused); false if it was not there. */
export function outboxRemove(clientId) {
  if (!state.outbox.delete(clientId)) return false;
  saveOutbox();
  return true;
}

function saveOutbox() {
  localStorage.setItem(storageKey('outbox'), JSON.stringify([...state.outbox.values()]));
}
