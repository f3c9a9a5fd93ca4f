// The WebSocket: system.hello / welcome, requests with ids, heartbeats,
// and reconnection with the Rust SDK's backoff (backoff.js: equal jitter,
// 250 ms growing to 30 s).

import { randomId } from './dom.js';
import { Backoff } from './backoff.js';

const REQUEST_TIMEOUT_MS = 10000;

/**
 * States: 'connecting' (first attempt), 'connected', 'reconnecting',
 * 'offline' (the browser says there is no network, or stop() was called).
 */
export class Socket {
  /**
   * @param {object} opts
   * @param {() => string} opts.token
   * @param {() => object} opts.hello   payload of system.hello (with `since`)
   * @param {(type: string, payload: object, frame: object) => void} opts.onEvent
   * @param {(state: string, detail: object) => void} opts.onStatus
   * @param {(payload: object) => void} opts.onWelcome
   * @param {() => void} opts.onRefused  the server refused the token
   */
  constructor(opts) {
    this.opts = opts;
    this.ws = null;
    this.state = 'offline';
    this.backoff = new Backoff();
    this.timer = null;
    this.stopped = true;
    this.live = false;
    this.pending = new Map();
    this.heartbeat = null;
    this.lastHeard = 0;
    this.onOnline = () => this.reconnectNow();
    this.onOffline = () => this.dropped('offline');
  }

  start() {
    this.stopped = false;
    window.addEventListener('online', this.onOnline);
    window.addEventListener('offline', this.onOffline);
    this.connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener('online', this.onOnline);
    window.removeEventListener('offline', this.onOffline);
    clearTimeout(this.timer);
    this.teardown();
    this.setState('offline');
  }

  get connected() {
    return this.live && this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  setState(state, detail = {}) {
    this.state = state;
    this.opts.onStatus(state, detail);
  }

  connect() {
    clearTimeout(this.timer);
    if (this.stopped) return;
    if (!navigator.onLine) {
      this.setState('offline');
      return;
    }
    this.teardown();
    this.setState(this.backoff.attempt === 0 && !this.everLive ? 'connecting' : 'reconnecting', {
      attempt: this.backoff.attempt,
    });
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${proto}//${location.host}/ws?token=${encodeURIComponent(this.opts.token())}`;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.lastHeard = Date.now();
      this.raw({ type: 'system.hello', id: 'hello', payload: this.opts.hello() });
    };
    ws.onmessage = (ev) => this.receive(ev.data);
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (!opened && !this.stopped) {
        // Refused before the upgrade: maybe the token expired. The app
        // checks with the REST API and signs out if so.
        this.opts.onRefused?.();
      }
      this.dropped('closed');
    };
    ws.onerror = () => {};
  }

  /** The connection is gone: fail pending requests, retry later. */
  dropped(reason) {
    const wasLive = this.live;
    this.teardown();
    if (this.stopped) return;
    if (reason === 'offline' || !navigator.onLine) {
      this.setState('offline');
      return;
    }
    if (wasLive) this.backoff.reset();
    this.scheduleReconnect();
  }

  teardown() {
    this.live = false;
    clearInterval(this.heartbeat);
    this.heartbeat = null;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = ws.onmessage = ws.onopen = null;
      try {
        ws.close(1000, 'bye');
      } catch {
        /* already closed */
      }
    }
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new Error('disconnected'));
    }
    this.pending.clear();
  }

  scheduleReconnect() {
    clearTimeout(this.timer);
    const delay = this.backoff.nextDelay();
    this.setState('reconnecting', { attempt: this.backoff.attempt, delay });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.stopped) return;
    this.backoff.reset();
    if (!this.connected) this.connect();
  }

  receive(text) {
    this.lastHeard = Date.now();
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    const { type, payload = {}, id } = frame;
    if (type === 'system.welcome') {
      this.live = true;
      this.everLive = true;
      this.backoff.reset();
      this.startHeartbeat(payload.heartbeat_ms || 15000);
      this.setState('connected');
      this.opts.onWelcome(payload);
      return;
    }
    if (type === 'error' && id === 'hello') {
      this.dropped('closed');
      return;
    }
    if (id && this.pending.has(id)) {
      const p = this.pending.get(id);
      this.pending.delete(id);
      clearTimeout(p.timer);
      if (type === 'error') {
        const err = new Error(payload.message || 'request failed');
        err.code = payload.code;
        err.retryAfterMs = payload.retry_after_ms;
        p.reject(err);
      } else {
        p.resolve(frame);
      }
      // The answer is also an event (room.joined, chat.message.created...).
    }
    if (type === 'system.pong' || type === 'system.ack') return;
    this.opts.onEvent(type, payload, frame);
  }

  startHeartbeat(ms) {
    clearInterval(this.heartbeat);
    const every = Math.max(2000, Math.min(ms, 30000));
    this.heartbeat = setInterval(() => {
      if (!this.connected) return;
      if (Date.now() - this.lastHeard > every * 2.5) {
        // Nothing heard for too long: the connection is dead without
        // having said so (sleeping laptop, changed network).
        this.dropped('silent');
        return;
      }
      this.raw({ type: 'system.ping', payload: {} });
    }, every);
  }

  raw(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Fire and forget; false when not connected. */
  send(type, payload) {
    if (!this.connected) return false;
    return this.raw({ type, payload });
  }

  /** Sends with a request id; resolves with the answer frame. */
  request(type, payload) {
    return new Promise((resolve, reject) => {
      if (!this.connected) {
        reject(new Error('not connected'));
        return;
      }
      const id = randomId();
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error('timed out'));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      this.raw({ type, id, payload });
    });
  }

  /**
   * Sends a frame whose success has no result event of its own (rtc.*): the
   * server answers it with `system.ack`, or an error (e.g. code 'not_found').
   */
  async confirm(type, payload) {
    await this.request(type, payload);
  }
}
