// The audio call: one RTCPeerConnection to the Chorus SFU. The server is the
// offerer: its SDP has one microphone m-line (`publishMid`) and N sendonly
// slot m-lines (`slotMids`). Every offer (first join, promotion/demotion, ICE
// restart) is answered here, one at a time, attaching the microphone only when
// the role may publish. Remote slot tracks play through <audio> elements.

export class MicError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}

export function micErrorFrom(e) {
  const name = e?.name || '';
  if (name === 'NotAllowedError' || name === 'SecurityError') {
    return new MicError('denied', 'Microphone access is blocked. Allow the microphone for this site in your browser’s settings, then try again.');
  }
  if (name === 'NotFoundError' || name === 'OverconstrainedError') {
    return new MicError('missing', 'No microphone was found. Plug one in and try again.');
  }
  if (name === 'NotReadableError' || name === 'AbortError') {
    return new MicError('busy', 'Your microphone is being used by another app.');
  }
  if (!navigator.mediaDevices?.getUserMedia) {
    return new MicError('insecure', 'This browser can only use the microphone on a secure (https) page.');
  }
  return new MicError('other', `Could not start the microphone (${name || e?.message || 'unknown error'}).`);
}

const MIC_KEY = 'chorus.micId';
const VOLUME_KEY = 'chorus.volume';

/** The microphone picked in the sound settings ('' = the system default). */
export function preferredMic() {
  try { return localStorage.getItem(MIC_KEY) || ''; } catch { return ''; }
}

/** This listener's output volume, 0..1 (their own, for every voice they hear). */
export function preferredVolume() {
  try {
    const v = Number(localStorage.getItem(VOLUME_KEY));
    return localStorage.getItem(VOLUME_KEY) != null && Number.isFinite(v) ? Math.min(1, Math.max(0, v)) : 1;
  } catch { return 1; }
}

/** The microphone: `deviceId` if given (exactly that one), else the remembered one if still there. */
export async function getMic(deviceId) {
  if (!navigator.mediaDevices?.getUserMedia) throw micErrorFrom(null);
  const device = deviceId ? { deviceId: { exact: deviceId } } : preferredMic() ? { deviceId: { ideal: preferredMic() } } : {};
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, ...device },
      video: false,
    });
  } catch (e) {
    throw micErrorFrom(e);
  }
}

/** The microphones the browser lists (labels once the page may use the mic). */
export async function listMics() {
  const all = await navigator.mediaDevices?.enumerateDevices?.().catch(() => []) || [];
  return all.filter((d) => d.kind === 'audioinput' && d.deviceId);
}

export class Call {
  /**
   * send(msg): sends a signaling message.
   * hooks: onState(state), onMicError(MicError), onAutoplayBlocked(), onIceTrouble()
   */
  constructor({ send, iceServers = [], audioHost, hooks = {} }) {
    this.send = send;
    this.hooks = hooks;
    this.audioHost = audioHost;
    this.pc = new RTCPeerConnection({ iceServers, bundlePolicy: 'max-bundle' });
    this.mic = null; // MediaStream
    this.muted = false;
    this.publishMid = null;
    this.slotMids = [];
    this.audios = new Map(); // mid -> <audio>
    this.volume = preferredVolume();
    this.queue = Promise.resolve();
    this.closed = false;
    this.troubleTimer = null;

    this.pc.ontrack = (ev) => this.attachTrack(ev);
    this.pc.onconnectionstatechange = () => this.hooks.onState?.(this.pc.connectionState);
    this.pc.oniceconnectionstatechange = () => {
      const s = this.pc.iceConnectionState;
      clearTimeout(this.troubleTimer);
      if (s === 'failed') this.hooks.onIceTrouble?.();
      // 'disconnected' often heals by itself; restart only if it lingers.
      if (s === 'disconnected') {
        this.troubleTimer = setTimeout(() => {
          if (this.pc.iceConnectionState === 'disconnected') this.hooks.onIceTrouble?.();
        }, 4000);
      }
    };
  }

  /** Queue an offer; offers are applied strictly in order. */
  handleOffer(offer, canPublish) {
    this.queue = this.queue.then(() => this.applyOffer(offer, canPublish)).catch((e) => {
      console.error('offer failed', e);
      this.hooks.onError?.(e);
    });
    return this.queue;
  }

  async applyOffer({ sdp, publishMid, slotMids }, canPublish) {
    if (this.closed) return;
    this.publishMid = publishMid;
    this.slotMids = slotMids || [];
    await this.pc.setRemoteDescription({ type: 'offer', sdp });
    const micTx = this.pc.getTransceivers().find((t) => t.mid === publishMid);
    if (micTx) {
      let track = null;
      if (canPublish) {
        try {
          if (!this.mic || this.mic.getAudioTracks().every((t) => t.readyState === 'ended')) {
            this.mic = await getMic();
          }
          track = this.mic.getAudioTracks()[0] || null;
          if (track) track.enabled = !this.muted;
        } catch (e) {
          this.hooks.onMicError?.(e instanceof MicError ? e : micErrorFrom(e));
        }
      } else {
        this.stopMic();
      }
      if (this.closed) return;
      micTx.direction = track ? 'sendonly' : 'inactive';
      await micTx.sender.replaceTrack(track);
    }
    for (const t of this.pc.getTransceivers()) {
      if (t.mid !== publishMid && this.slotMids.includes(t.mid) && t.direction !== 'recvonly') {
        t.direction = 'recvonly';
      }
    }
    const answer = await this.pc.createAnswer();
    await this.pc.setLocalDescription(answer);
    if (this.closed) return;
    this.send({ type: 'answer', sdp: this.pc.localDescription.sdp });
  }

  attachTrack(ev) {
    const mid = ev.transceiver?.mid;
    if (mid == null || mid === this.publishMid) return;
    let audio = this.audios.get(mid);
    if (!audio) {
      audio = document.createElement('audio');
      audio.autoplay = true;
      audio.volume = this.volume;
      audio.dataset.mid = mid;
      this.audioHost?.append(audio);
      this.audios.set(mid, audio);
    }
    audio.srcObject = new MediaStream([ev.track]);
    this.play(audio);
  }

  play(audio) {
    const p = audio.play();
    if (p?.catch) {
      p.catch((e) => {
        if (e?.name === 'NotAllowedError') this.hooks.onAutoplayBlocked?.();
      });
    }
  }

  /** Called from a click: browsers allow playback after a user gesture. */
  resumeAudio() {
    for (const a of this.audios.values()) this.play(a);
  }

  /** Output volume for everything this listener hears (0..1), remembered. */
  setVolume(v) {
    this.volume = Math.min(1, Math.max(0, v));
    for (const a of this.audios.values()) a.volume = this.volume;
    try { localStorage.setItem(VOLUME_KEY, String(this.volume)); } catch { /* not remembered */ }
  }

  /**
   * Uses another microphone, remembered for next time. While publishing the
   * new track replaces the old one on the same sender: no renegotiation.
   */
  async switchMic(deviceId) {
    try { localStorage.setItem(MIC_KEY, deviceId || ''); } catch { /* not remembered */ }
    const micTx = this.pc.getTransceivers().find((t) => t.mid === this.publishMid);
    if (!this.mic || !micTx?.sender.track) return;
    const next = await getMic(deviceId);
    const track = next.getAudioTracks()[0] || null;
    if (track) track.enabled = !this.muted;
    await micTx.sender.replaceTrack(track);
    this.stopMic();
    this.mic = next;
  }

  setMuted(muted) {
    this.muted = muted;
    for (const t of this.mic?.getAudioTracks() || []) t.enabled = !muted;
  }

  stopMic() {
    for (const t of this.mic?.getTracks() || []) t.stop();
    this.mic = null;
  }

  async stats() {
    const out = { inbound: [], outbound: [] };
    const report = await this.pc.getStats();
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') out.inbound.push(s);
      if (s.type === 'outbound-rtp' && s.kind === 'audio') out.outbound.push(s);
    });
    return out;
  }

  close() {
    this.closed = true;
    clearTimeout(this.troubleTimer);
    this.stopMic();
    for (const a of this.audios.values()) {
      a.srcObject = null;
      a.remove();
    }
    this.audios.clear();
    try {
      this.pc.close();
    } catch {
      /* already closed */
    }
  }
}
