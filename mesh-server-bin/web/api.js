// The REST API, with errors turned into sentences a person can act on.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class Api {
  constructor(getToken, onUnauthorized) {
    this.getToken = getToken;
    this.onUnauthorized = onUnauthorized;
  }

  async request(method, path, body) {
    const headers = {};
    const token = this.getToken();
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError(0, 'unreachable', 'Cannot reach the server. Check your connection and try again.');
    }
    if (res.status === 204) return null;
    let data = null;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    if (!res.ok) {
      const code = data?.error?.code || 'internal';
      const message = data?.error?.message || `The server answered ${res.status}.`;
      if (res.status === 401 && token && this.onUnauthorized) this.onUnauthorized();
      throw new ApiError(res.status, code, message);
    }
    return data;
  }

  register(username, password, displayName) {
    const body = { username, password };
    if (displayName) body.display_name = displayName;
    return this.request('POST', '/api/auth/register', body);
  }
  login(username, password) {
    return this.request('POST', '/api/auth/login', { username, password, device_name: 'web' });
  }
  me() {
    return this.request('GET', '/api/auth/me');
  }
  /** STUN and TURN servers for a call, TURN credentials minted for us. */
  iceServers() {
    return this.request('GET', '/api/rtc/ice-servers');
  }
  rooms() {
    return this.request('GET', '/api/rooms');
  }
  createRoom(name, visibility) {
    return this.request('POST', '/api/rooms', { name, visibility });
  }
  joinRoom(id) {
    return this.request('POST', `/api/rooms/${encodeURIComponent(id)}/join`);
  }
  leaveRoom(id) {
    return this.request('POST', `/api/rooms/${encodeURIComponent(id)}/leave`);
  }
  members(id) {
    return this.request('GET', `/api/rooms/${encodeURIComponent(id)}/members`);
  }
  /** One page of messages: `{before}`, `{after}` or neither (the newest). */
  messages(id, { before, after, limit } = {}) {
    const q = new URLSearchParams();
    if (before !== undefined) q.set('before', before);
    if (after !== undefined) q.set('after', after);
    if (limit !== undefined) q.set('limit', limit);
    const qs = q.toString();
    return this.request('GET', `/api/rooms/${encodeURIComponent(id)}/messages${qs ? `?${qs}` : ''}`);
  }
}

/** The message to show for a failed sign-in or sign-up. */
export function authErrorText(err, mode) {
  if (!(err instanceof ApiError)) return 'Something went wrong. Try again.';
  if (err.code === 'unreachable') return err.message;
  if (mode === 'signup' && err.status === 409) return 'That username is taken. Pick another one.';
  if (mode === 'signin' && err.status === 401) return 'Wrong username or password.';
  if (err.status === 429) return 'Too many attempts. Wait a moment and try again.';
  if (err.status === 400) return err.message;
  return `The server could not do that: ${err.message}`;
}
