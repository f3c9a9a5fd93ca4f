// The sidebar's room list: loading it, drawing it (with unread badges), and
// creating a room.

import { ApiError } from './api.js';
import { el, $, show } from './dom.js';
import { state, setRooms, putRoom, addMyRoom } from './state.js';
import { api } from './net.js';

export async function loadRooms() {
  try {
    const { rooms } = await api.rooms();
    setRooms(rooms);
    for (const r of rooms) if (r.visibility === 'private') addMyRoom(r.id);
    show($('rooms-error'), false);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    $('rooms-error').textContent =
      e.code === 'unreachable' ? 'Offline: showing what was loaded.' : `Could not load rooms: ${e.message}`;
    show($('rooms-error'));
  }
  renderRooms();
}

export function renderRooms() {
  const list = $('room-list');
  list.replaceChildren();
  if (state.rooms.size === 0) {
    list.append(el('li', { class: 'muted empty-list' }, 'No rooms yet. Create the first one above.'));
  }
  for (const room of state.rooms.values()) {
    const unread = state.unread.get(room.id) || 0;
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

/** The new-room form was submitted. */
export async function createRoom(ev) {
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
    putRoom(room);
    addMyRoom(room.id, { save: true });
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
