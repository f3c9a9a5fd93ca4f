// The open room and room membership: routing (#/room/<id>), opening and
// closing a room, joining and leaving, and the room.* events.

import { ApiError } from './api.js';
import { $, show, toast } from './dom.js';
import {
  state,
  isMe,
  setCurrent,
  putRoom,
  dropRoom,
  countMemberJoined,
  addMyRoom,
  removeMyRoom,
  clearUnread,
  rememberUser,
  learnPeer,
} from './state.js';
import { api, socket } from './net.js';
import { loadRooms, renderRooms } from './room-list.js';
import { renderAllMessages, loadInitial, scrollToBottom, forgetHistory } from './timeline.js';
import {
  setMembers,
  memberJoined,
  memberLeft,
  forgetRoomMembers,
  renderMembers,
  renderTyping,
  stopTyping,
} from './members.js';
import { noteAnnounced, answerNewcomer } from './peers.js';

/** Opens the room the location names, or none. */
export function route() {
  const m = /^#\/room\/([0-9a-f-]{36})$/i.exec(location.hash);
  if (m && state.token) openRoom(m[1]);
  else closeRoom();
}

function closeRoom() {
  setCurrent(null);
  stopTyping();
  show($('room-view'), false);
  show($('empty-view'));
  $('app-view').classList.remove('in-room');
  renderRooms();
}

async function openRoom(id) {
  if (state.current !== id) stopTyping();
  setCurrent(id);
  clearUnread(id);
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
export async function joinRoom(id) {
  if (socket.connected) {
    noteAnnounced(id);
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
  addMyRoom(id, { save: true });
}

/** The Leave button: the first click asks, the second leaves. */
export async function leaveRoom() {
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

export function renderRoomHead() {
  const room = state.rooms.get(state.current);
  $('room-name').textContent = room ? `${room.visibility === 'private' ? '🔒 ' : '# '}${room.name}` : 'Room';
  $('room-topic').textContent = room?.topic || '';
}

// -------------------------------------------------------------- events

export function onRoomJoined(p) {
  const { room_id, user, peer_id, members } = p;
  rememberUser(user);
  if (members) setMembers(room_id, members);
  if (isMe(user.id)) {
    addMyRoom(room_id, { save: true });
    if (!state.rooms.has(room_id)) loadRooms();
  } else if (!memberJoined(room_id, user)) {
    countMemberJoined(room_id);
  }
  const known = learnPeer(user.id, peer_id);
  if (!known && !isMe(user.id) && peer_id !== state.peerId) answerNewcomer(room_id);
  if (room_id === state.current) renderMembers();
}

export function onRoomLeft({ room_id, user_id }) {
  memberLeft(room_id, user_id);
  if (user_id === state.user?.id) {
    removeMyRoom(room_id);
    forgetHistory(room_id);
    forgetRoomMembers(room_id);
    clearUnread(room_id);
    const room = state.rooms.get(room_id);
    if (room && room.visibility === 'private') dropRoom(room_id);
    if (state.current === room_id) location.hash = '';
    renderRooms();
    return;
  }
  if (room_id === state.current) {
    renderMembers();
    renderTyping();
  }
}

export function onRoomUpdated({ room }) {
  putRoom(room);
  renderRooms();
  if (room.id === state.current) renderRoomHead();
}

export function onRoomDeleted({ room_id }) {
  dropRoom(room_id);
  onRoomLeft({ room_id, user_id: state.user?.id });
}
