// The page's connections to the server: the REST API, the WebSocket and the
// calls over it, one of each. What they report goes to the handlers app.js
// sets with `connectHandlers`, so this module imports none of the views.

import { Api } from './api.js';
import { Socket } from './socket.js';
import { Calls } from './call.js';
import { toast } from './dom.js';
import { state } from './state.js';

const handlers = {
  hello: () => ({}),
  event: () => {},
  status: () => {},
  welcome: () => {},
  refused: () => {},
  unauthorized: () => {},
  renderCall: () => {},
  forgetPeer: () => {},
};

/** Sets what happens on socket events, API 401s and call changes. */
export function connectHandlers(h) {
  Object.assign(handlers, h);
}

export const api = new Api(
  () => state.token,
  () => handlers.unauthorized(),
);

export const socket = new Socket({
  token: () => state.token,
  hello: () => handlers.hello(),
  onEvent: (type, payload, frame) => handlers.event(type, payload, frame),
  onStatus: (s, detail) => handlers.status(s, detail),
  onWelcome: (payload) => handlers.welcome(payload),
  onRefused: () => handlers.refused(),
});

export const calls = new Calls({
  signal: (type, payload) => socket.confirm(type, payload),
  render: (call) => handlers.renderCall(call),
  toast,
  forgetPeer: (userId, peerId) => handlers.forgetPeer(userId, peerId),
  iceServers: () => api.iceServers(),
});
