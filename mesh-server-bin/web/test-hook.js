// The test hook: `window.__mesh`, read by the browser tests (web-tests/)
// and by hand from the console. This module is the only one that writes it.
//
//   state    the client's state (state.js), e.g. `state.current`
//   socket   the WebSocket (socket.js): tests send frames through it
//   calls    the calls (call.js)
//   call     the current call, or null
//   pc       the live RTCPeerConnection, or null
//   peerId   this connection's peer id, from system.welcome
//
// Read from it: `forceRelay = true` makes calls relay through TURN (call.js).

function hook() {
  window.__mesh = window.__mesh || {};
  return window.__mesh;
}

/** Publishes the app's state, socket and calls; no call yet. */
export function exposeApp({ state, socket, calls }) {
  window.__mesh = Object.assign(window.__mesh || {}, { state, socket, calls, pc: null });
}

/** The peer connection of the call being drawn (null without one). */
export function exposePeerConnection(pc) {
  hook().pc = pc;
}

/** The current call and its peer connection. */
export function exposeCall(call) {
  const h = hook();
  h.pc = call?.pc || null;
  h.call = call;
}

export function exposePeerId(peerId) {
  hook().peerId = peerId;
}

/** Whether a test asked for relay-only calls through the hook. */
export function relayForcedByHook() {
  return window.__mesh?.forceRelay === true;
}
