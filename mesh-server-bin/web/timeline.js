// The timeline of the open room: messages in seq order, older pages on
// scroll, gap filling after a reconnect, and the outbox (messages written
// but not confirmed yet, resent until the server has them).
//
// Owns per room what history we hold (see `historyOf`); the outbox entries
// themselves live in state.js, which stores them.

import { el, $, show, formatTime, randomId, displayName, toast } from './dom.js';
import { state, isMe, rememberUser, addMyRoom, addUnread, outboxAdd, outboxRemove } from './state.js';
import { api, socket } from './net.js';
import { renderRooms } from './room-list.js';
import { stopTyping, isTyping, onTyping } from './members.js';

const PAGE = 50;
const RESEND_AFTER_MS = 8000;

const histories = new Map(); // room id -> history, see historyOf()

function historyOf(id) {
  let d = histories.get(id);
  if (!d) {
    d = {
      messages: new Map(), // seq -> Message
      loaded: false, // the newest page was fetched; `newest` is trustworthy
      newest: 0,
      oldest: null,
      hasMore: true,
      loadingOlder: false,
      filling: false,
    };
    histories.set(id, d);
  }
  return d;
}

/** Forgets a room's history (we left it). */
export function forgetHistory(roomId) {
  histories.delete(roomId);
}

export function forgetAllHistory() {
  histories.clear();
}

/** `since` for system.hello: the last seq of every room we hold history of. */
export function sinceMap() {
  const since = {};
  for (const [id, d] of histories) if (d.loaded) since[id] = d.newest;
  return since;
}

// ------------------------------------------------------------- history

/** The newest page of a newly opened room (or what we missed), then enough older pages to fill the screen. */
export async function loadInitial(id) {
  const d = historyOf(id);
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
export async function fillGap(id) {
  const d = historyOf(id);
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
  const d = historyOf(id);
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

/** The timeline scrolled: hide the jump button at the bottom, load older pages near the top. */
export function onTimelineScroll() {
  if (nearBottom()) show($('jump'), false);
  if ($('timeline').scrollTop < 120 && state.current) loadOlder(state.current);
}

// ------------------------------------------------------------ messages

/** chat.message.created */
export function onMessage(m) {
  const d = historyOf(m.room_id);
  addMyRoom(m.room_id);
  // A hole before this message (missed while catching up): fetch it.
  const gap = d.loaded && m.seq > d.newest + 1;
  addMessages(m.room_id, [m], true);
  if (gap) fillGap(m.room_id).catch(() => {});
  if (isTyping(m.room_id, m.sender.id)) onTyping({ room_id: m.room_id, user_id: m.sender.id, typing: false });
}

/** Adds messages (deduplicated by seq); `live` ones may stick the view and count as unread. */
function addMessages(roomId, messages, live) {
  const d = historyOf(roomId);
  const isCurrent = state.current === roomId;
  const stick = isCurrent && nearBottom();
  let fresh = 0;
  let own = false;
  for (const m of messages) {
    if (m.client_id && outboxRemove(m.client_id)) {
      document.querySelector(`[data-client-id="${CSS.escape(m.client_id)}"]`)?.remove();
    }
    if (d.messages.has(m.seq)) continue;
    d.messages.set(m.seq, m);
    if (m.seq > d.newest) d.newest = m.seq;
    if (d.oldest === null || m.seq < d.oldest) d.oldest = m.seq;
    rememberUser(m.sender);
    if (isMe(m.sender.id)) own = true;
    else fresh += 1;
    if (isCurrent) insertMessage(m);
  }
  if (isCurrent) renderHistoryStatus();
  if (!live) return;
  if (isCurrent) {
    if (stick || own) scrollToBottom();
    else if (fresh) show($('jump'));
  } else if (fresh) {
    addUnread(roomId, fresh);
    renderRooms();
  }
}

function messageNode(m) {
  const mine = isMe(m.sender.id);
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

/** Draws the open room's timeline from scratch: messages, then its pending ones. */
export function renderAllMessages() {
  const list = $('messages');
  list.replaceChildren();
  const d = historyOf(state.current);
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
  const d = historyOf(state.current);
  let text = '';
  if (d.loadingOlder) text = 'Loading older messages…';
  else if (d.loaded && !d.hasMore) text = d.messages.size ? 'This is the beginning of the room.' : 'No messages yet. Say hello!';
  $('history-status').textContent = text;
}

function nearBottom() {
  const tl = $('timeline');
  return tl.scrollHeight - tl.scrollTop - tl.clientHeight < 60;
}

export function scrollToBottom() {
  const tl = $('timeline');
  tl.scrollTop = tl.scrollHeight;
  show($('jump'), false);
}

// -------------------------------------------------------------- outbox

/** Grows the composer with its text, up to 160 px. */
export function autosize() {
  const input = $('message-input');
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

/** The composer was submitted: the message goes to the outbox, then out. */
export function sendMessage(ev) {
  ev.preventDefault();
  const input = $('message-input');
  const content = input.value.trim();
  if (!content || !state.current) return;
  if (new TextEncoder().encode(content).length > 16384) {
    toast('That message is too long (16 KiB at most).');
    return;
  }
  const entry = { client_id: randomId(), room_id: state.current, content, sentAt: 0 };
  outboxAdd(entry);
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
        outboxRemove(entry.client_id);
        const node = document.querySelector(`[data-client-id="${CSS.escape(entry.client_id)}"]`);
        node?.replaceWith(pendingNode(entry));
      } else if (e.code === 'rate_limited') {
        entry.sentAt = Date.now() - RESEND_AFTER_MS + (e.retryAfterMs || 1000);
      }
      // Otherwise (disconnected, timed out): the next connection resends it.
    });
}

/** Sends what waits in the outbox: all of it (`force`, after a welcome) or what waited too long. */
export function resendOutbox(force) {
  const now = Date.now();
  for (const entry of state.outbox.values()) {
    if (force || now - entry.sentAt > RESEND_AFTER_MS) trySend(entry);
  }
}
setInterval(() => resendOutbox(false), 2000);
