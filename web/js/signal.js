// The signaling WebSocket: one per room visit. Owns reconnection (exponential
// backoff with jitter, immediate retry when the browser comes back online),
// keepalive pings with a dead-connection timeout, and message dispatch by
// `type`. It knows nothing about rooms; the room controller decides what to
// send after each (re)connect.

const PING_EVERY_MS = 15000;
const DEAD_AFTER_MS = 40000;
const MAX_BACKOFF_MS = 10000;

export function wsUrl() {
  const meta = document.querySelector('meta[name="chorus-ws-path"]');
  const path = window.CHORUS_WS_PATH || meta?.content || '/ws';
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}${path}`;
}

export class Signal {
  constructor(url = wsUrl()) {
    this.url = url;
    this.ws = null;
    this.handlers = new Map();
    this.attempt = 0;
    this.stopped = false;
    this.timer = null;
    this.pingTimer = null;
    this.lastSeen = 0;
    this.onOnline = () => {
      if (!this.isOpen() && !this.stopped) this.reconnectNow();
    };
    window.addEventListener('online', this.onOnline);
  }

  /** on('offer', fn); also the pseudo-types 'open', 'close' ({willRetry, delay}). */
  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(fn);
    return this;
  }

  emit(type, payload) {
    for (const fn of this.handlers.get(type) || []) {
      try {
        fn(payload);
      } catch (e) {
        console.error(`handler for ${type} failed`, e);
      }
    }
  }

  isOpen() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  connect() {
    this.stopped = false;
    clearTimeout(this.timer);
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      console.error('websocket', e);
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.attempt = 0;
      this.lastSeen = Date.now();
      this.startPing();
      this.emit('open');
    };
    ws.onmessage = (ev) => {
      this.lastSeen = Date.now();
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        console.warn('ignoring non-JSON signaling frame');
        return;
      }
      if (msg && typeof msg.type === 'string') {
        this.emit(msg.type, msg);
        this.emit('*', msg);
      }
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.stopPing();
      this.ws = null;
      if (this.stopped) {
        this.emit('close', { willRetry: false, code: ev.code, wasOpen: opened });
        return;
      }
      const delay = this.scheduleReconnect();
      this.emit('close', { willRetry: true, delay, code: ev.code, wasOpen: opened });
    };
    ws.onerror = () => {
      // onclose follows and owns the retry.
    };
  }

  scheduleReconnect() {
    const base = Math.min(MAX_BACKOFF_MS, 500 * 2 ** this.attempt);
    const delay = Math.round(base * (0.7 + Math.random() * 0.6));
    this.attempt += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
    return delay;
  }

  reconnectNow() {
    clearTimeout(this.timer);
    this.attempt = 0;
    this.connect();
  }

  /** Drops the current socket (as a network failure would) and reconnects. */
  bounce() {
    const ws = this.ws;
    if (ws) {
      this.stopPing();
      ws.close();
      // Treat as a drop even before the close handshake completes.
      ws.onclose?.({ code: 4000 });
    }
  }

  startPing() {
    this.stopPing();
    this.pingTimer = setInterval(() => {
      if (Date.now() - this.lastSeen > DEAD_AFTER_MS) {
        // Half-open TCP: nothing heard for too long. Drop and reconnect.
        this.bounce();
        return;
      }
      this.send({ type: 'ping' });
    }, PING_EVERY_MS);
  }

  stopPing() {
    clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  send(msg) {
    if (!this.isOpen()) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /** Stops for good (no more reconnects). */
  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.stopPing();
    window.removeEventListener('online', this.onOnline);
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, 'bye');
  }
}
