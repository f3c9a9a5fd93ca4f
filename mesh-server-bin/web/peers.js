// Peer-id discovery. A call goes to a connection (peer), not a user, and
// peers announce themselves only in `room.joined`. So:
//  1. every room.joined (and every rtc.* from_peer_id) is remembered per user
//     (`learnPeer` in state.js);
//  2. after each system.welcome this client re-sends `room.join` for its rooms
//     (idempotent on the server, which broadcasts room.joined with our peer id);
//  3. when an unknown peer announces itself in a room, we answer with our own
//     `room.join` there (once per room for a burst of newcomers, after a short
//     random delay), so a peer that connected after us learns ours. Answers
//     stop by themselves: a peer we already know never triggers one;
//  4. a peer id that the server reports as not_found is dropped, and peers of
//     a user who goes offline are forgotten.

import { state } from './state.js';
import { socket } from './net.js';

const announced = new Map(); // room id -> when we last sent room.join there
const answering = new Set();

/** We are sending room.join to `roomId` (ourselves, or through announce). */
export function noteAnnounced(roomId) {
  announced.set(roomId, Date.now());
}

function announce(roomId) {
  // Announcements are delayed; `room.join` would join again a room the
  // user has left in the meantime.
  if (!state.myRooms.has(roomId)) return;
  noteAnnounced(roomId);
  socket.send('room.join', { room_id: roomId });
}

/** An unknown peer joined `roomId`: tell it about us. */
export function answerNewcomer(roomId) {
  // Several newcomers at once get one answer; the random delay spreads the
  // answers of a room's members.
  if (answering.has(roomId)) return;
  answering.add(roomId);
  setTimeout(() => {
    answering.delete(roomId);
    if (socket.connected) announce(roomId);
  }, 100 + Math.random() * 500);
}

/** After system.welcome: announce our new peer id in every room of ours but the open one. */
export function announceAll() {
  // Paced well under the rate limit.
  const rooms = [...state.myRooms].filter((id) => id !== state.current);
  rooms.forEach((id, i) => setTimeout(() => socket.connected && announce(id), 150 * (i + 1)));
}
