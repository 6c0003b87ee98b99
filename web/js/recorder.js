// Voice-note recording with MediaRecorder. Picks a container the server
// accepts (webm/opus in Chromium and Firefox, mp4 in Safari), caps the length,
// and always releases the microphone when done.

import { getMic } from './call.js';

export const MAX_VOICE_SECONDS = 120;

function pickType() {
  const types = ['audio/webm;codecs=opus', 'audio/webm', 'audio/ogg;codecs=opus', 'audio/mp4'];
  if (typeof MediaRecorder === 'undefined') return null;
  return types.find((t) => MediaRecorder.isTypeSupported?.(t)) ?? '';
}

export class VoiceRecorder {
  constructor({ onTick, onLimit } = {}) {
    this.onTick = onTick;
    this.onLimit = onLimit;
    this.stream = null;
    this.rec = null;
    this.chunks = [];
    this.started = 0;
    this.tick = null;
  }

  static supported() {
    return typeof MediaRecorder !== 'undefined' && !!navigator.mediaDevices?.getUserMedia;
  }

  async start() {
    const type = pickType();
    if (type == null) throw new Error('Recording isn’t supported in this browser.');
    this.stream = await getMic();
    this.rec = new MediaRecorder(this.stream, type ? { mimeType: type, audioBitsPerSecond: 32000 } : undefined);
    this.chunks = [];
    this.rec.ondataavailable = (e) => { if (e.data?.size) this.chunks.push(e.data); };
    this.rec.start(250);
    this.started = performance.now();
    this.tick = setInterval(() => {
      const s = (performance.now() - this.started) / 1000;
      this.onTick?.(s);
      if (s >= MAX_VOICE_SECONDS) this.onLimit?.();
    }, 200);
  }

  elapsed() {
    return this.started ? (performance.now() - this.started) / 1000 : 0;
  }

  /** Stops and returns {blob, seconds, ext}; or null when cancelled/empty. */
  stop() {
    clearInterval(this.tick);
    const rec = this.rec;
    const seconds = this.elapsed();
    if (!rec) return Promise.resolve(null);
    return new Promise((resolve) => {
      rec.onstop = () => {
        this.release();
        const type = (rec.mimeType || 'audio/webm').split(';')[0];
        const blob = new Blob(this.chunks, { type });
        const ext = type.includes('mp4') ? 'm4a' : type.includes('ogg') ? 'ogg' : 'webm';
        resolve(blob.size ? { blob, seconds, ext } : null);
      };
      if (rec.state !== 'inactive') rec.stop();
      else rec.onstop();
    });
  }

  cancel() {
    clearInterval(this.tick);
    if (this.rec && this.rec.state !== 'inactive') {
      this.rec.onstop = null;
      this.rec.stop();
    }
    this.release();
  }

  release() {
    for (const t of this.stream?.getTracks() || []) t.stop();
    this.stream = null;
    this.rec = null;
  }
}
