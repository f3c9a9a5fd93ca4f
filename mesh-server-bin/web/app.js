// The mesh web client: sign in, rooms, real-time chat, presence, calls.
// Plain JavaScript modules, no build step; served by mesh-server itself.
//
// This module wires the others together: the session's start and end, the
// WebSocket's events to the modules that own them, and the page's controls.
//
//   state.js      state and localStorage      net.js        api, socket, calls
//   auth-view.js  sign in / sign up           room-list.js  the sidebar's rooms
//   rooms.js      open room, join, leave      timeline.js   messages, history, outbox
//   members.js    members, presence, typing   peers.js      peer-id discovery
//   call-view.js  the call on screen          test-hook.js  window.__mesh
//   socket.js + backoff.js  the WebSocket and its reconnect policy (the SDK's)

import { $, show, displayName } from './dom.js';
import {
  state,
  hasSession,
  startSession,
  loadUserStore,
  welcomed,
  setPeerId,
  clearSession,
  learnPeer,
  forgetPeer,
} from './state.js';
import { api, socket, calls, connectHandlers } from './net.js';
import { wireAuthView, showAuthView, hideAuthView } from './auth-view.js';
import { loadRooms, createRoom } from './room-list.js';
import { route, joinRoom, leaveRoom, onRoomJoined, onRoomLeft, onRoomUpdated, onRoomDeleted } from './rooms.js';
import {
  sinceMap,
  fillGap,
  onMessage,
  sendMessage,
  resendOutbox,
  onTimelineScroll,
  scrollToBottom,
  autosize,
  forgetAllHistory,
} from './timeline.js';
import {
  renderMembers,
  renderMyPresence,
  changePresence,
  onPresence,
  onComposerInput,
  onTyping,
  forgetAllMembers,
} from './members.js';
import { announceAll } from './peers.js';
import { renderCall, wireCallView } from './call-view.js';
import { exposeApp, exposePeerId } from './test-hook.js';

connectHandlers({
  hello: () => ({ device_name: 'web', since: sinceMap() }),
  event: onEvent,
  status: renderStatus,
  welcome: onWelcome,
  refused: checkSession,
  unauthorized: () => signOut('Your session has expired. Sign in again.'),
  renderCall,
  forgetPeer: (userId, peerId) => {
    forgetPeer(userId, peerId);
    renderMembers();
  },
});

exposeApp({ state, socket, calls });

// ------------------------------------------------------------- session

function signedIn(token, user) {
  startSession(token, user);
  enterApp();
}

function enterApp() {
  hideAuthView();
  show($('app-view'));
  $('me-name').textContent = displayName(state.user);
  loadUserStore();
  renderMyPresence();
  socket.start();
  loadRooms().then(route);
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
  clearSession();
  forgetAllHistory();
  forgetAllMembers();
  history.replaceState(null, '', '/');
  showAuthView(message);
}

// ---------------------------------------------------------- connection

function onWelcome(p) {
  welcomed(p.user, p.peer_id);
  $('me-name').textContent = displayName(p.user);
  exposePeerId(p.peer_id);
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
      onRoomUpdated(p);
      break;
    case 'room.deleted':
      onRoomDeleted(p);
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
  if (s !== 'connected') setPeerId(null);
  renderMembers();
}

// -------------------------------------------------------------- wiring

function wire() {
  wireAuthView(signedIn);
  $('signout').addEventListener('click', () => signOut());
  $('new-room-form').addEventListener('submit', createRoom);
  $('presence-select').addEventListener('change', changePresence);
  $('composer').addEventListener('submit', sendMessage);
  $('message-input').addEventListener('input', () => {
    autosize();
    onComposerInput();
  });
  $('message-input').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $('composer').requestSubmit();
    }
  });
  $('timeline').addEventListener('scroll', onTimelineScroll);
  $('jump').addEventListener('click', scrollToBottom);
  $('back').addEventListener('click', () => {
    location.hash = '';
  });
  $('toggle-members').addEventListener('click', () => $('app-view').classList.toggle('show-members'));
  $('leave-room').addEventListener('click', leaveRoom);
  wireCallView();
  window.addEventListener('hashchange', route);
}

wire();
if (hasSession()) {
  enterApp();
} else {
  signOut();
}
