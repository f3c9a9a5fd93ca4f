// The call on screen: the incoming-call prompt, the call overlay with both
// videos, and starting a call from the member list. The call itself
// (WebRTC and signaling) is call.js.

import { $, show, displayName, toast } from './dom.js';
import { state, peersOf } from './state.js';
import { calls } from './net.js';
import { memberOf, renderMembers } from './members.js';

/** Calls a member of the open room on their most recent peers. */
export function startCall(userId, video) {
  const m = memberOf(state.current, userId);
  const peerIds = peersOf(userId);
  if (!m || peerIds.length === 0) return;
  calls.start({ roomId: state.current, user: m.user, peerIds, video });
}

/** Draws `call` (null: no call); the member list's call buttons follow. */
export function renderCall(call) {
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

/** Wires the call buttons: in the member list, the prompt and the overlay. */
export function wireCallView() {
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
  window.addEventListener('pagehide', () => calls.hangup());
}
