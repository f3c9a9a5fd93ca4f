// 1:1 audio/video calls over WebRTC; mesh relays the signaling
// (rtc.offer / rtc.answer / rtc.ice / rtc.hangup) to one peer.
//
// Every signal carries `call_id`, so late signals of an ended call are
// ignored. ICE candidates that arrive before the remote description are
// queued. The live RTCPeerConnection is exposed as `window.__mesh.pc`
// (through test-hook.js).
//
// ICE servers (STUN, and TURN with short-lived credentials) are fetched from
// the server (`GET /api/rtc/ice-servers`) at the start of every call. Test
// hook: `?relay=1` in the URL a tab loads (kept for that tab), or
// `window.__mesh.forceRelay = true`, sets `iceTransportPolicy: "relay"`, so
// a call connects through TURN or not at all. While connected, getStats tells whether the selected candidate
// pair uses a relay candidate: `call.relayed`, shown as "relayed".

import { randomId } from './dom.js';
import { exposeCall, exposePeerConnection, relayForcedByHook } from './test-hook.js';

const RING_TIMEOUT_MS = 45000;
const STATS_INTERVAL_MS = 1000;

// `?relay=1` is read once at load and kept for the tab (sessionStorage):
// the app rewrites its URL to `/` (`?relay=0` turns it off again).
const RELAY_KEY = 'mesh.forceRelay';
{
  const relay = new URLSearchParams(location.search).get('relay');
  try {
    if (relay === '1') sessionStorage.setItem(RELAY_KEY, '1');
    else if (relay === '0') sessionStorage.removeItem(RELAY_KEY);
  } catch {
    // Storage may be off; the window.__mesh hook still works.
  }
}

function forceRelay() {
  if (relayForcedByHook()) return true;
  try {
    return sessionStorage.getItem(RELAY_KEY) === '1';
  } catch {
    return false;
  }
}

export class Calls {
  /**
   * @param {object} ui
   * @param {(type: string, payload: object) => Promise<any>} ui.signal  sends an rtc.* request
   * @param {(call: object) => void} ui.render  redraws the call UI
   * @param {(text: string) => void} ui.toast
   * @param {() => Promise<{ice_servers: object[]}>} [ui.iceServers]  GET /api/rtc/ice-servers
   */
  constructor(ui) {
    this.ui = ui;
    this.call = null;
  }

  get busy() {
    return this.call !== null;
  }

  expose() {
    exposeCall(this.call);
  }

  /** Calls `user` on one of `peerIds` (the most recent first). */
  async start({ roomId, user, peerIds, video }) {
    if (this.call) return;
    const call = {
      id: randomId(),
      roomId,
      user,
      peerId: null,
      video,
      outgoing: true,
      state: 'calling',
      pc: null,
      local: null,
      remote: null,
      queued: [],
      ringTimer: null,
    };
    this.call = call;
    this.render();
    try {
      call.local = await getMedia(video);
    } catch (e) {
      this.ui.toast(`Cannot use your ${video ? 'camera or microphone' : 'microphone'}: ${e.message}`);
      this.end();
      return;
    }
    const rtcConfig = await this.rtcConfig();
    if (this.call !== call) return stopStream(call.local);
    const pc = this.makePeerConnection(call, rtcConfig);
    for (const track of call.local.getTracks()) pc.addTrack(track, call.local);
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    // Ring the callee's devices one after the other until one is reachable:
    // a peer id may be stale if that device went away.
    for (const peerId of peerIds) {
      if (this.call !== call) return;
      try {
        call.peerId = peerId;
        await this.ui.signal('rtc.offer', {
          target_peer_id: peerId,
          room_id: roomId,
          call_id: call.id,
          video,
          sdp: pc.localDescription.sdp,
        });
        this.flushLocalCandidates(call);
        call.ringTimer = setTimeout(() => {
          if (this.call === call && call.state === 'calling') {
            this.ui.toast('No answer.');
            this.hangup('no_answer');
          }
        }, RING_TIMEOUT_MS);
        this.render();
        return;
      } catch (e) {
        call.peerId = null;
        if (e.code !== 'not_found') {
          this.ui.toast(`Could not call: ${e.message}`);
          this.end();
          return;
        }
        this.ui.forgetPeer?.(user.id, peerId);
      }
    }
    this.ui.toast('They are not reachable right now.');
    this.end();
  }

  /** The RTCPeerConnection configuration: the server's ICE servers. */
  async rtcConfig() {
    const config = { iceServers: [] };
    if (forceRelay()) config.iceTransportPolicy = 'relay';
    if (!this.ui.iceServers) return config;
    try {
      const answer = await this.ui.iceServers();
      config.iceServers = (answer?.ice_servers || []).map((s) => {
        const server = { urls: s.urls };
        if (s.username) server.username = s.username;
        if (s.credential) server.credential = s.credential;
        return server;
      });
    } catch (e) {
      // Calls on one network still work without STUN/TURN.
      console.warn('no ICE servers', e);
    }
    return config;
  }

  makePeerConnection(call, rtcConfig) {
    const pc = new RTCPeerConnection(rtcConfig);
    call.pc = pc;
    call.localCandidates = [];
    pc.onicecandidate = (ev) => {
      if (!ev.candidate || this.call !== call) return;
      if (!call.offerSent) {
        call.localCandidates.push(ev.candidate.toJSON());
        return;
      }
      this.sendIce(call, ev.candidate.toJSON());
    };
    pc.ontrack = (ev) => {
      if (this.call !== call) return;
      if (!call.remote) call.remote = ev.streams[0] || new MediaStream();
      if (!call.remote.getTracks().includes(ev.track)) call.remote.addTrack(ev.track);
      this.render();
    };
    pc.onconnectionstatechange = () => {
      if (this.call !== call) return;
      const s = pc.connectionState;
      if (s === 'connected') {
        call.state = 'connected';
        this.watchRoute(call);
      }
      else if (s === 'disconnected') call.state = 'reconnecting';
      else if (s === 'failed') {
        this.ui.toast('The call failed: no network path between you.');
        this.hangup('failed');
        return;
      }
      this.render();
    };
    this.expose();
    return pc;
  }

  /** Polls getStats while the call lasts: is the selected pair relayed? */
  watchRoute(call) {
    if (call.statsTimer) return;
    const check = async () => {
      if (this.call !== call || !call.pc) return;
      let relayed = null;
      try {
        relayed = selectedPairRelayed(await call.pc.getStats());
      } catch {
        relayed = null;
      }
      if (this.call === call && relayed !== null && relayed !== call.relayed) {
        call.relayed = relayed;
        this.render();
      }
    };
    call.statsTimer = setInterval(check, STATS_INTERVAL_MS);
    check();
  }

  flushLocalCandidates(call) {
    call.offerSent = true;
    for (const c of call.localCandidates.splice(0)) this.sendIce(call, c);
  }

  sendIce(call, candidate) {
    this.ui
      .signal('rtc.ice', {
        target_peer_id: call.peerId,
        room_id: call.roomId,
        call_id: call.id,
        candidate,
      })
      .catch(() => {});
  }

  /** An rtc.* event from the server. */
  async onSignal(type, p, user) {
    const call = this.call;
    if (type === 'rtc.offer') {
      if (call) {
        // One call at a time.
        this.ui
          .signal('rtc.hangup', {
            target_peer_id: p.from_peer_id,
            room_id: p.room_id,
            call_id: p.call_id,
            reason: 'busy',
          })
          .catch(() => {});
        return;
      }
      this.call = {
        id: p.call_id,
        roomId: p.room_id,
        user,
        peerId: p.from_peer_id,
        video: p.video !== false,
        outgoing: false,
        state: 'ringing',
        offerSdp: p.sdp,
        pc: null,
        local: null,
        remote: null,
        queued: [],
        ringTimer: setTimeout(() => {
          if (this.call && this.call.id === p.call_id && this.call.state === 'ringing') {
            this.decline();
          }
        }, RING_TIMEOUT_MS),
      };
      this.expose();
      this.render();
      return;
    }
    if (!call || p.call_id !== call.id || p.from_peer_id !== call.peerId) return;
    if (type === 'rtc.answer') {
      if (!call.pc || call.pc.signalingState !== 'have-local-offer') return;
      clearTimeout(call.ringTimer);
      call.state = 'connecting';
      this.render();
      await call.pc.setRemoteDescription({ type: 'answer', sdp: p.sdp });
      await this.drainQueued(call);
    } else if (type === 'rtc.ice') {
      if (!p.candidate) return;
      if (call.pc && call.pc.remoteDescription) {
        await call.pc.addIceCandidate(p.candidate).catch(() => {});
      } else {
        call.queued.push(p.candidate);
      }
    } else if (type === 'rtc.hangup') {
      const why = {
        declined: 'Call declined.',
        busy: 'They are in another call.',
        no_answer: 'Missed call.',
      }[p.reason];
      this.ui.toast(why || 'Call ended.');
      this.end();
    }
  }

  async drainQueued(call) {
    for (const c of call.queued.splice(0)) {
      await call.pc.addIceCandidate(c).catch(() => {});
    }
  }

  /** Accepts the ringing call. */
  async accept() {
    const call = this.call;
    if (!call || call.state !== 'ringing') return;
    clearTimeout(call.ringTimer);
    call.state = 'connecting';
    this.render();
    try {
      call.local = await getMedia(call.video);
    } catch (e) {
      // Answer anyway, receiving only.
      this.ui.toast(`Joining without camera/microphone: ${e.message}`);
      call.local = null;
    }
    const rtcConfig = await this.rtcConfig();
    if (this.call !== call) return stopStream(call.local);
    const pc = this.makePeerConnection(call, rtcConfig);
    if (call.local) for (const track of call.local.getTracks()) pc.addTrack(track, call.local);
    await pc.setRemoteDescription({ type: 'offer', sdp: call.offerSdp });
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    try {
      await this.ui.signal('rtc.answer', {
        target_peer_id: call.peerId,
        room_id: call.roomId,
        call_id: call.id,
        sdp: pc.localDescription.sdp,
      });
    } catch (e) {
      this.ui.toast(`Could not answer: ${e.message}`);
      this.end();
      return;
    }
    this.flushLocalCandidates(call);
    await this.drainQueued(call);
    this.render();
  }

  decline() {
    this.hangup('declined');
  }

  /** Ends the call and tells the other side. */
  hangup(reason = 'hangup') {
    const call = this.call;
    if (!call) return;
    if (call.peerId) {
      this.ui
        .signal('rtc.hangup', {
          target_peer_id: call.peerId,
          room_id: call.roomId,
          call_id: call.id,
          reason,
        })
        .catch(() => {});
    }
    this.end();
  }

  end() {
    const call = this.call;
    if (!call) return;
    this.call = null;
    clearTimeout(call.ringTimer);
    clearInterval(call.statsTimer);
    stopStream(call.local);
    if (call.pc) {
      call.pc.onicecandidate = call.pc.ontrack = call.pc.onconnectionstatechange = null;
      call.pc.close();
    }
    this.expose();
    this.render();
  }

  toggleTrack(kind) {
    const tracks = this.call?.local?.getTracks().filter((t) => t.kind === kind) || [];
    for (const t of tracks) t.enabled = !t.enabled;
    return tracks.length > 0 && tracks.every((t) => t.enabled);
  }

  render() {
    exposePeerConnection(this.call?.pc || null);
    this.ui.render(this.call);
  }
}

/**
 * Whether the selected candidate pair of a stats report uses a relay
 * (TURN) candidate on either end; null when no pair is selected yet.
 */
export function selectedPairRelayed(stats) {
  let pair = null;
  stats.forEach((r) => {
    if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
  });
  if (!pair) {
    stats.forEach((r) => {
      if (r.type === 'candidate-pair' && r.state === 'succeeded' && (r.selected || r.nominated)) pair = r;
    });
  }
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  if (!local && !remote) return null;
  return local?.candidateType === 'relay' || remote?.candidateType === 'relay';
}

async function getMedia(video) {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error('this browser has no camera access here (it needs https or localhost)');
  }
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true, video });
  } catch (e) {
    if (!video) throw e;
    // No camera: fall back to a voice call.
    return navigator.mediaDevices.getUserMedia({ audio: true, video: false });
  }
}

function stopStream(stream) {
  if (stream) for (const t of stream.getTracks()) t.stop();
}
