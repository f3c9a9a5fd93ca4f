// Members and presence, and who is typing: the member list of the open
// room, our own presence, and the typing line under the timeline.
//
// Owns per room the member list and the typing timers; the users,
// presence and peers themselves live in state.js.

import { el, $, displayName } from './dom.js';
import {
  state,
  isMe,
  addMyRoom,
  rememberUser,
  setPresence,
  setPresenceChoice,
  forgetPeersOf,
  peersOf,
} from './state.js';
import { socket, calls } from './net.js';

const TYPING_SEND_EVERY_MS = 3000;
const TYPING_IDLE_MS = 4000;
const TYPING_SHOW_MS = 7000;
const PRESENCE_ORDER = { online: 0, busy: 1, away: 2, offline: 3 };

const rooms = new Map(); // room id -> { members: user id -> Member, typing: user id -> timer }

function roomOf(id) {
  let r = rooms.get(id);
  if (!r) {
    r = { members: new Map(), typing: new Map() };
    rooms.set(id, r);
  }
  return r;
}

/** Forgets a room's members and typing (we left it). */
export function forgetRoomMembers(roomId) {
  rooms.delete(roomId);
}

export function forgetAllMembers() {
  rooms.clear();
}

export function memberOf(roomId, userId) {
  return roomOf(roomId).members.get(userId);
}

// ------------------------------------------------------------- members

/** The full member list of a room (REST or room.joined). */
export function setMembers(roomId, members) {
  roomOf(roomId).members = new Map(members.map((m) => [m.user.id, m]));
  for (const m of members) {
    rememberUser(m.user);
    setPresence(m.user.id, m.presence);
    if (isMe(m.user.id)) addMyRoom(roomId);
  }
  if (state.current === roomId) renderMembers();
}

/** Someone else joined `roomId`; false if they were not a member before. */
export function memberJoined(roomId, user) {
  const members = roomOf(roomId).members;
  const existing = members.get(user.id);
  members.set(user.id, existing ? { ...existing, user } : { user, role: 'member', presence: 'online' });
  if (!state.presence.get(user.id) || state.presence.get(user.id) === 'offline') {
    setPresence(user.id, 'online');
  }
  return Boolean(existing);
}

export function memberLeft(roomId, userId) {
  const r = roomOf(roomId);
  r.members.delete(userId);
  r.typing.delete(userId);
}

export function renderMembers() {
  const list = $('member-list');
  list.replaceChildren();
  if (!state.current) return;
  const members = [...roomOf(state.current).members.values()];
  members.sort(
    (a, b) =>
      PRESENCE_ORDER[presenceOf(a.user.id)] - PRESENCE_ORDER[presenceOf(b.user.id)] ||
      displayName(a.user).localeCompare(displayName(b.user)),
  );
  for (const m of members) {
    const me = isMe(m.user.id);
    const presence = presenceOf(m.user.id);
    const peers = peersOf(m.user.id);
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

// ------------------------------------------------------------ presence

function presenceOf(userId) {
  if (isMe(userId)) return socket.connected ? state.presenceChoice : 'offline';
  return state.presence.get(userId) || 'offline';
}

export function onPresence({ user_id, status }) {
  setPresence(user_id, status);
  if (status === 'offline') forgetPeersOf(user_id);
  if (isMe(user_id)) {
    setPresenceChoice(status === 'offline' ? state.presenceChoice : status);
  }
  renderMembers();
}

/** Shows our chosen presence in the sidebar. */
export function renderMyPresence() {
  $('presence-select').value = state.presenceChoice;
  $('me-dot').dataset.presence = state.presenceChoice;
}

/** The presence select changed. */
export function changePresence() {
  const status = $('presence-select').value;
  setPresenceChoice(status, { save: true });
  $('me-dot').dataset.presence = status;
  socket.send('presence.update', { status });
  renderMembers();
}

// -------------------------------------------------------------- typing

let typingSentAt = 0;
let typingRoom = null;
let typingIdle = null;

/** The composer changed: tell the room we are typing (at most every 3 s). */
export function onComposerInput() {
  if (!state.current || !socket.connected) return;
  const now = Date.now();
  if ($('message-input').value.trim() === '') {
    stopTyping();
    return;
  }
  if (now - typingSentAt > TYPING_SEND_EVERY_MS) {
    typingSentAt = now;
    typingRoom = state.current;
    socket.send('chat.typing', { room_id: state.current, typing: true });
  }
  clearTimeout(typingIdle);
  typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
}

export function stopTyping() {
  clearTimeout(typingIdle);
  if (typingSentAt && typingRoom) {
    socket.send('chat.typing', { room_id: typingRoom, typing: false });
  }
  typingSentAt = 0;
  typingRoom = null;
}

export function isTyping(roomId, userId) {
  return roomOf(roomId).typing.has(userId);
}

export function onTyping({ room_id, user_id, typing }) {
  if (isMe(user_id)) return;
  const timers = roomOf(room_id).typing;
  clearTimeout(timers.get(user_id));
  if (typing) {
    timers.set(
      user_id,
      setTimeout(() => {
        timers.delete(user_id);
        renderTyping();
      }, TYPING_SHOW_MS),
    );
  } else {
    timers.delete(user_id);
  }
  renderTyping();
}

export function renderTyping() {
  const node = $('typing');
  if (!state.current) return;
  const r = roomOf(state.current);
  const names = [...r.typing.keys()].map((id) => displayName(r.members.get(id)?.user || state.users.get(id)));
  let text = '';
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = 'Several people are typing…';
  node.textContent = text;
}
