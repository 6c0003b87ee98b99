// The room page: presence, stage and audience, call controls, moderation,
// and the chat panel beside it. The controller keeps the room's live state
// from the signaling socket (participants, roles, mute, hands, active
// speakers), owns the call's lifetime across reconnects, and re-renders the
// parts that changed.

import { api, refreshSession } from './api.js';
import { Signal } from './signal.js';
import { Call, listMics, preferredMic, preferredVolume } from './call.js';
import { ChatPanel } from './chat.js';
import { h, icon, clear, avatar, toast, menu, modal, copyText } from './ui.js';

const AUDIENCE_RENDER_CAP = 200;
const SPEAKING_LEVEL = 0.02;

const JOIN_ERRORS = {
  room_full: ['This room is full', 'It has reached its participant limit. Try again in a little while.'],
  forbidden: ['This room is private', 'Only people the host invited can join. Ask the host for an invite link.'],
  not_found: ['Room not found', 'This room doesn’t exist any more, or the link is wrong.'],
  removed: ['You were removed from this room', 'The host removed you. You can come back if the host lets you back in.'],
  unauthorized: ['Please sign in again', 'Your session expired.'],
};

export function shareLink(roomId, inviteCode) {
  const base = `${location.origin}${location.pathname}#/room/${encodeURIComponent(roomId)}`;
  return inviteCode ? `${base}?invite=${encodeURIComponent(inviteCode)}` : base;
}

const roleLabel = { moderator: 'Host', speaker: 'Speaker', listener: 'Listener' };

// The resume token of this tab's place in a room: kept per tab (sessionStorage),
// so a reload takes the same place back instead of appearing twice.
const resumeKey = (roomId) => `chorus.resume.${roomId}`;
function storedResume(roomId) {
  try { return sessionStorage.getItem(resumeKey(roomId)); } catch { return null; }
}
function storeResume(roomId, token) {
  try {
    if (token) sessionStorage.setItem(resumeKey(roomId), token);
    else sessionStorage.removeItem(resumeKey(roomId));
  } catch { /* storage disabled: a reload joins afresh */ }
}
const canPublish = (role) => role === 'moderator' || role === 'speaker';

export class RoomView {
  constructor(root, { roomId, invite }, app) {
    this.root = root;
    this.roomId = roomId;
    this.invite = invite;
    this.app = app;
    this.meta = null;
    this.you = null; // our Participant
    this.participants = new Map(); // participantId -> Participant
    this.speaking = new Set();
    this.avatars = new Map(); // userId -> avatar URL of everyone seen in this room
    this.handOrder = new Map(); // participantId -> order in which the hand went up
    this.handSeq = 0;
    this.slots = [];
    this.resumeToken = storedResume(roomId);
    // Presence starts only on an explicit join (a click in the app, the pre-join
    // card, or this tab's earlier place after a reload): an unjoined card is nobody.
    this.wantPresence = false;
    this.iceServers = [];
    this.call = null;
    this.wantCall = false;
    this.callConnected = false;
    this.joinedOnce = false;
    this.connState = 'connecting';
    this.destroyed = false;
    this.restartTimer = null;
    this.unread = 0;
    this.chatOpen = false;

    this.renderShell();
    this.start();
  }

  // ---- lifecycle ----------------------------------------------------------

  async start() {
    try {
      // An invite link admits us to a private room before we look it up.
      this.meta = this.invite ? await api.redeemInvite(this.roomId, this.invite) : await api.room(this.roomId);
    } catch (e) {
      if (this.destroyed) return;
      if (e.status === 404 && this.invite) return this.fatal('This invite link doesn’t work', 'The link may have been revoked by the host, or the room was closed. Ask the host for a new one.');
      if (e.status === 404) return this.fatal('Room not found', 'This room doesn’t exist, or it’s private and you haven’t been invited.');
      if (e.status === 403) return this.fatal(...JOIN_ERRORS.forbidden);
      if (e.status === 401) return;
      if (e.status === 0) return this.fatal('You’re offline', e.message, true);
      return this.fatal('Couldn’t open this room', e.message, true);
    }
    if (this.destroyed) return;
    this.renderHeader();
    this.chat.load();

    this.signal = new Signal();
    this.bindSignal(this.signal);
    // Browsers only play audio after a user gesture. Arriving from a click in the
    // app counts, and so does a reload of a tab that was in the room; a cold-opened
    // link gets a one-tap "Join" card and is not in the room until it is tapped.
    if (this.resumeToken || (navigator.userActivation?.hasBeenActive ?? true)) this.wantPresence = true;
    else this.showPrejoin();
    this.signal.connect();
    // The browser knows about a lost network before the socket does.
    this.onOffline = () => this.setConn('offline');
    this.onOnline = () => {
      if (!this.signal?.isOpen()) return; // the socket's own reconnect takes over
      this.setConn(this.you ? 'live' : 'joining');
      // The network path may have changed: refresh the media path too.
      if (this.call && this.call.pc.connectionState !== 'connected') this.requestIceRestart();
    };
    window.addEventListener('offline', this.onOffline);
    window.addEventListener('online', this.onOnline);
    window.chorus = Object.assign(window.chorus || {}, { room: this });
  }

  destroy() {
    this.destroyed = true;
    window.removeEventListener('offline', this.onOffline);
    window.removeEventListener('online', this.onOnline);
    clearTimeout(this.restartTimer);
    clearTimeout(this.callWatchdog);
    clearTimeout(this.rejoinTimer);
    if (this.signal?.isOpen() && this.you) this.signal.send({ type: 'leave_room' });
    storeResume(this.roomId, null);
    this.signal?.close();
    this.call?.close();
    this.chat?.destroy();
    this.audioCtx?.close().catch(() => {});
    if (window.chorus?.room === this) delete window.chorus.room;
  }

  leave() {
    this.app.navigate('#/');
  }

  fatal(title, text, retry = false) {
    window.removeEventListener('offline', this.onOffline);
    window.removeEventListener('online', this.onOnline);
    const iconName = /full/i.test(title) ? 'users' : /private|invite|sign/i.test(title) ? 'lock' : /offline|reach/i.test(title) ? 'globe' : /longer/i.test(title) ? 'leave' : 'x';
    this.destroyed = true;
    storeResume(this.roomId, null);
    this.signal?.close();
    this.call?.close();
    this.chat?.destroy();
    clear(this.root, h('div.center-page',
      h('div.card.fatal-card',
        h('div.fatal-icon', icon(iconName)),
        h('h1', title),
        h('p.muted', text),
        h('div.row.gap',
          retry && h('button.btn', { type: 'button', onclick: () => location.reload() }, 'Try again'),
          h('a.btn.primary', { href: '#/' }, 'Back to rooms')))));
  }

  // ---- signaling ----------------------------------------------------------

  bindSignal(s) {
    s.on('open', () => {
      if (!this.wantPresence) {
        this.setConn('ready');
        return;
      }
      this.sendJoin();
    });
    s.on('close', ({ willRetry, wasOpen }) => {
      if (this.destroyed) return;
      this.failedOpens = wasOpen ? 0 : (this.failedOpens || 0) + 1;
      if (willRetry) this.setConn(navigator.onLine === false ? 'offline' : this.joinedOnce ? 'reconnecting' : 'connecting');
      // A refused upgrade looks like any other failed connect. The usual cause
      // with a reachable server is an expired access token: refresh it (at most
      // every 30 s), and give up on the session if that fails.
      if (!wasOpen && this.failedOpens >= 2 && navigator.onLine !== false && Date.now() - (this.lastRefresh || 0) > 30000) {
        this.lastRefresh = Date.now();
        this.refreshOrExpire();
      }
    });
    s.on('joined', (m) => this.onJoined(m));
    s.on('online_users', (m) => {
      this.participants = new Map((m.participants || []).map((p) => [p.participantId, p]));
      if (this.you) this.participants.set(this.you.participantId, this.participants.get(this.you.participantId) || this.you);
      this.renderPeople();
    });
    s.on('participant_joined', (m) => { this.upsert(m.participant); });
    s.on('participant_updated', (m) => { this.upsert(m.participant); });
    s.on('participant_left', (m) => {
      this.participants.delete(m.participantId);
      this.speaking.delete(m.participantId);
      this.renderPeople();
    });
    s.on('offer', (m) => this.onOffer(m));
    s.on('slots', (m) => { this.slots = m.slots || []; });
    s.on('active_speakers', (m) => this.onActiveSpeakers(m.speakers || []));
    s.on('call_state', (m) => {
      this.callConnected = !!m.connected;
      this.renderControls();
    });
    s.on('receive_message', (m) => this.onChat(m.message));
    s.on('call_notification', (m) => this.onChat(m.message));
    s.on('message_deleted', (m) => this.chat.remove(m.messageId));
    s.on('removed', (m) => {
      if (m.reason === 'room deleted') {
        this.fatal('This room has ended', 'The host ended the room for everyone.');
        return;
      }
      this.fatal('You were removed from this room', m.reason
        ? `${m.reason.charAt(0).toUpperCase()}${m.reason.slice(1)}${/[.!?]$/.test(m.reason) ? '' : '.'} You can come back if the host lets you back in.`
        : 'A moderator removed you. You can come back if the host lets you back in.');
    });
    s.on('removed_users', (m) => {
      this.removedUsers = m.users || [];
      this.drawRemoved();
    });
    s.on('error', (m) => this.onError(m));
  }

  sendJoin() {
    this.setConn('joining');
    this.signal.send({ type: 'join_room', roomId: this.roomId, resumeToken: this.resumeToken || undefined });
  }

  /** The pre-join card's button: enter the room (presence) and its call. */
  joinFromCard() {
    this.prejoin?.remove();
    this.prejoin = null;
    this.wantPresence = true;
    if (this.signal?.isOpen() && !this.you) this.sendJoin();
  }

  onJoined(m) {
    const firstJoin = !this.joinedOnce;
    this.joinedOnce = true;
    this.you = m.you;
    this.resumeToken = m.resumeToken;
    storeResume(this.roomId, m.resumeToken);
    this.iceServers = m.iceServers || [];
    this.participants.set(m.you.participantId, m.you);
    this.setConn('live');
    if (firstJoin && !m.resumed && canPublish(m.you.role) && !m.you.muted) {
      // The host enters muted, as in every such app: speaking is a deliberate tap.
      // Sent before join_call, so not a moment of audio goes out unmuted.
      this.pendingSelfMute = true;
      this.you = { ...m.you, muted: true };
      this.participants.set(m.you.participantId, this.you);
      this.signal.send({ type: 'mute' });
      toast('You’re muted. Tap Unmute to speak.', 'info', 4000);
    }
    if (!firstJoin) {
      toast(m.resumed ? 'Reconnected.' : 'Reconnected to the room.', 'success', 2500);
      this.chat.sync();
    }

    if (firstJoin) {
      this.joinCall();
    } else if (this.wantCall) {
      this.resumeCall(!!m.resumed);
    }
    this.renderPeople();
    this.renderControls();
  }

  /** After a reconnect: keep the peer connection if it survived, else restart ICE, else start over. */
  resumeCall(resumed) {
    const st = this.call?.pc.connectionState;
    if (resumed && this.call && st === 'connected') return;
    if (resumed && this.call) {
      this.requestIceRestart();
      return;
    }
    this.call?.close();
    this.call = null;
    this.callAttempts = 0;
    this.requestCall();
  }

  requestIceRestart() {
    if (!this.signal?.isOpen()) return;
    clearTimeout(this.restartTimer);
    this.signal.send({ type: 'restart_ice' });
    // If no fresh offer arrives, rebuild the call from scratch.
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (this.destroyed || !this.wantCall) return;
      if (this.call?.pc.connectionState === 'connected') return;
      this.call?.close();
      this.call = null;
      this.callAttempts = 0;
      this.requestCall();
    }, 8000);
  }

  joinCall() {
    this.wantCall = true;
    this.prejoin?.remove();
    this.prejoin = null;
    this.call?.resumeAudio();
    this.callAttempts = 0;
    this.requestCall();
    this.renderControls();
  }

  /**
   * Sends join_call and watches for the offer: if the server refuses (e.g. audio
   * could not start) or stays silent, try again a few times before telling the user.
   */
  requestCall() {
    if (this.destroyed || !this.wantCall) return;
    clearTimeout(this.callWatchdog);
    this.callAttempts = (this.callAttempts || 0) + 1;
    this.awaitingOffer = true;
    this.signal.send({ type: 'join_call' });
    this.callWatchdog = setTimeout(() => this.retryCall('timeout'), 12000);
  }

  retryCall(why) {
    clearTimeout(this.callWatchdog);
    if (!this.awaitingOffer || this.destroyed) return;
    if (this.callAttempts >= 4) {
      this.awaitingOffer = false;
      toast('Couldn’t connect the audio. Leave and re-enter the room to try again.', 'error', 8000);
      return;
    }
    console.warn(`join_call retry (${why})`);
    this.callWatchdog = setTimeout(() => this.requestCall(), 1000 * this.callAttempts);
  }

  onOffer(m) {
    clearTimeout(this.restartTimer);
    this.restartTimer = null;
    clearTimeout(this.callWatchdog);
    this.awaitingOffer = false;
    if (!this.call) {
      this.call = new Call({
        send: (msg) => this.signal.send(msg),
        iceServers: this.iceServers,
        audioHost: this.audioHost,
        hooks: {
          onState: (st) => {
            this.callConnected = st === 'connected';
            this.renderControls();
          },
          onMicError: (e) => this.showMicError(e),
          onAutoplayBlocked: () => this.showAutoplayBanner(),
          onIceTrouble: () => this.requestIceRestart(),
          onError: (e) => toast(`Audio setup failed: ${e.message || e}`, 'error', 6000),
        },
      });
      this.call.setMuted(!!this.you?.muted);
    }
    this.call.handleOffer(m, canPublish(this.you?.role));
  }

  onActiveSpeakers(list) {
    const now = new Set(list.filter((s) => (s.level ?? 1) >= SPEAKING_LEVEL).map((s) => s.participantId));
    // The server reports only changes of the set or order, so a steady speaker
    // keeps the ring until a report leaves them out.
    this.applySpeaking(now);
  }

  applySpeaking(now) {
    for (const pid of new Set([...now, ...this.speaking])) {
      const on = now.has(pid);
      for (const el of this.root.querySelectorAll(`[data-pid="${pid}"]`)) el.classList.toggle('speaking', on);
    }
    this.speaking = now;
  }

  onChat(message) {
    if (!message) return;
    this.chat.add(message);
    const system = message.type === 'call_notification' || message.type === 'call_ended';
    if (!system && !this.chatOpen && window.matchMedia('(max-width: 900px)').matches) {
      this.unread += 1;
      this.renderControls();
    }
  }

  onError(m) {
    if (!this.you) {
      // Refused before we got in: the join itself failed.
      if (m.code === 'unauthorized') {
        if (Date.now() - (this.lastRefresh || 0) < 30000) {
          // Refreshed moments ago and still refused: do not loop.
          this.fatal('Couldn’t sign you in to this room', 'Your session was not accepted by the live server. Try again, or sign out and in.', true);
          return;
        }
        this.lastRefresh = Date.now();
        this.refreshOrExpire(true);
        return;
      }
      const [title, text] = JOIN_ERRORS[m.code] || ['Couldn’t join this room', m.message];
      this.fatal(title, m.message && !['forbidden', 'not_found', 'removed'].includes(m.code) ? m.message : text);
      return;
    }
    if (m.fatal) {
      const [title, text] = JOIN_ERRORS[m.code] || ['Disconnected', m.message];
      this.fatal(title, m.message || text);
      return;
    }
    if (m.code === 'invalid_state' && this.restartTimer) {
      // The server no longer has our call: start a fresh one.
      clearTimeout(this.restartTimer);
      this.restartTimer = null;
      this.call?.close();
      this.call = null;
      this.callAttempts = 0;
      this.requestCall();
      return;
    }
    if (this.awaitingOffer && ['busy', 'internal', 'invalid_state'].includes(m.code)) {
      // Most likely the answer to our join_call: retry quietly, a little later each time.
      this.retryCall(m.code);
      return;
    }
    toast(m.message || 'That didn’t work.', 'error');
  }

  /** Refreshes the session; reconnects with it, or sends the user to login. */
  async refreshOrExpire(reconnect = false) {
    let user;
    try {
      user = await refreshSession();
    } catch {
      return; // network trouble: the socket's own retries carry on
    }
    if (this.destroyed) return;
    if (!user) {
      this.destroyed = true;
      this.signal?.close();
      this.call?.close();
      this.app.sessionExpired();
      return;
    }
    if (reconnect) this.signal.bounce();
  }

  upsert(p) {
    if (!p) return;
    const prev = this.participants.get(p.participantId);
    this.participants.set(p.participantId, p);
    if (p.handRaised && !prev?.handRaised) {
      this.handOrder.set(p.participantId, ++this.handSeq);
      if (this.you?.role === 'moderator' && p.participantId !== this.you.participantId) this.announceHand(p);
    }
    if (!p.handRaised) this.handOrder.delete(p.participantId);
    if (this.you && p.participantId === this.you.participantId) {
      const was = this.you;
      this.you = p;
      if (was.role !== p.role) {
        if (canPublish(p.role) && !canPublish(was.role)) toast('You’re on stage now. Unmute to speak.', 'success', 5000);
        if (!canPublish(p.role) && canPublish(was.role)) toast('You moved to the audience.', 'info');
      }
      if (was.inCall && !p.inCall && this.wantCall && !this.awaitingOffer) {
        // The server dropped our audio (ICE failed or timed out on its side) while
        // we still want to hear the room: start a fresh call.
        clearTimeout(this.rejoinTimer);
        this.rejoinTimer = setTimeout(() => {
          if (this.destroyed || !this.wantCall || this.you?.inCall || this.awaitingOffer) return;
          this.call?.close();
          this.call = null;
          this.callAttempts = 0;
          this.requestCall();
        }, 300);
      }
      if (was.muted !== p.muted) {
        this.call?.setMuted(p.muted);
        if (p.muted && !prev?.muted && this.pendingSelfMute !== true) toast('A moderator muted you.', 'info');
        this.pendingSelfMute = undefined;
      }
      this.renderControls();
    }
    this.renderPeople();
  }

  /** Tells moderators someone wants to speak: a toast and a short, soft chime. */
  announceHand(p) {
    toast(`${p.name || 'Someone'} raised a hand.`, 'info', 3500);
    try {
      this.audioCtx ??= new AudioContext();
      const ctx = this.audioCtx;
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.0001, ctx.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.08, ctx.currentTime + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + 0.35);
      osc.connect(gain).connect(ctx.destination);
      osc.start();
      osc.stop(ctx.currentTime + 0.4);
    } catch { /* no audio: the toast is enough */ }
  }

  /** Raised hands, earliest first (the order the hands went up). */
  handQueue() {
    return [...this.participants.values()]
      .filter((p) => p.handRaised && !canPublish(p.role))
      .sort((a, b) => (this.handOrder.get(a.participantId) ?? 1e9) - (this.handOrder.get(b.participantId) ?? 1e9) || a.participantId - b.participantId);
  }

  stepBack() {
    if (!this.you) return;
    this.signal.send({ type: 'set_role', participantId: this.you.participantId, role: 'listener' });
  }

  async endRoom() {
    const confirmBtn = h('button.btn.danger', { type: 'button' }, 'End room for everyone');
    const dlg = modal('End this room?', h('div.stack',
      h('p.muted', 'Everyone is told the room has ended, and it leaves the lobby. Its chat is deleted.'),
      h('div.row.gap', h('button.btn', { type: 'button', onclick: () => dlg.close() }, 'Cancel'), confirmBtn)));
    confirmBtn.addEventListener('click', async () => {
      confirmBtn.disabled = true;
      try {
        await api.endRoom(this.roomId);
        dlg.close();
        this.app.navigate('#/');
        toast('Room ended.', 'success', 2500);
      } catch (e) {
        confirmBtn.disabled = false;
        toast(e.message || 'Could not end the room.', 'error');
      }
    });
  }

  setConn(state) {
    this.connState = state;
    const el = this.connEl;
    if (!el) return;
    const text = { connecting: 'Connecting…', ready: 'Not joined', joining: 'Joining…', live: 'Live', reconnecting: 'Reconnecting…', offline: 'Offline' }[state];
    el.className = `conn conn-${state}`;
    clear(el, h('span.dot'), text);
    const cantReach = state === 'connecting' && (this.failedOpens || 0) >= 2;
    this.banner.hidden = state !== 'reconnecting' && state !== 'offline' && !cantReach;
    clear(this.banner, h('span.spinner'), state === 'offline'
      ? 'You’re offline. We’ll reconnect as soon as the network is back.'
      : cantReach ? 'Can’t reach the room’s live server. Retrying…' : 'Connection lost. Reconnecting…');
  }

  // ---- actions ------------------------------------------------------------

  toggleMute() {
    if (!this.you || !canPublish(this.you.role)) return;
    if (this.micError && this.call) {
      // Try the microphone again: the server is the offerer, so ask it for a
      // fresh offer (an ICE restart); answering it attaches the mic if allowed now.
      this.micError = null;
      this.requestIceRestart();
      this.renderControls();
      if (this.you.muted) this.signal.send({ type: 'unmute' });
      return;
    }
    const muted = !this.you.muted;
    this.pendingSelfMute = muted;
    this.you = { ...this.you, muted };
    this.participants.set(this.you.participantId, this.you);
    this.call?.setMuted(muted);
    this.call?.resumeAudio();
    this.signal.send({ type: muted ? 'mute' : 'unmute' });
    this.renderControls();
    this.renderPeople();
  }

  toggleHand() {
    if (!this.you) return;
    const raised = !this.you.handRaised;
    this.signal.send({ type: raised ? 'raise_hand' : 'lower_hand' });
    this.you = { ...this.you, handRaised: raised };
    this.participants.set(this.you.participantId, this.you);
    this.renderControls();
    this.renderPeople();
    if (raised) toast('Hand raised. The host can invite you to speak.', 'info', 3000);
  }

  moderate(p, anchor) {
    const items = [];
    const iOwn = this.isOwner();
    if (iOwn && p.role !== 'moderator') items.push({ label: 'Make co-host', icon: 'star', onclick: () => this.signal.send({ type: 'set_role', participantId: p.participantId, role: 'moderator' }) });
    if (p.role === 'moderator') {
      if (iOwn) items.push({ label: 'Remove as co-host', icon: 'down', onclick: () => this.signal.send({ type: 'set_role', participantId: p.participantId, role: 'speaker' }) });
      if (!items.length) return;
      menu(anchor, p.name, items);
      return;
    }
    if (p.role === 'listener') items.push({ label: 'Invite to speak', icon: 'mic', onclick: () => this.signal.send({ type: 'set_role', participantId: p.participantId, role: 'speaker' }) });
    if (p.role === 'speaker') items.push({ label: 'Move to audience', icon: 'down', onclick: () => this.signal.send({ type: 'set_role', participantId: p.participantId, role: 'listener' }) });
    if (canPublish(p.role) && !p.muted) items.push({ label: 'Mute', icon: 'micOff', onclick: () => this.signal.send({ type: 'mute_participant', participantId: p.participantId }) });
    items.push({ label: 'Remove from room', icon: 'x', danger: true, onclick: () => this.signal.send({ type: 'remove_participant', participantId: p.participantId }) });
    menu(anchor, p.name, items);
  }

  /** Output volume (this listener's own) and, for speakers, the microphone. */
  async soundSettings() {
    const vol = h('input.volume#volume', {
      type: 'range', min: 0, max: 100, step: 5, value: String(Math.round((this.call?.volume ?? preferredVolume()) * 100)),
      oninput: () => {
        this.call?.setVolume(Number(vol.value) / 100);
        if (!this.call) try { localStorage.setItem('chorus.volume', String(Number(vol.value) / 100)); } catch { /* not remembered */ }
        volOut.textContent = `${vol.value}%`;
      },
    });
    const volOut = h('output.muted', { for: 'volume' }, `${vol.value}%`);
    const mics = await listMics();
    const current = this.call?.mic?.getAudioTracks()[0]?.getSettings?.().deviceId || preferredMic();
    const micSel = h('select.input#mic-select', {
      onchange: async () => {
        try {
          await this.call?.switchMic(micSel.value);
          if (!this.call) localStorage.setItem('chorus.micId', micSel.value);
          toast('Microphone changed.', 'success', 2000);
        } catch (e) {
          toast(e.message || 'Could not use that microphone.', 'error');
        }
      },
    }, mics.length
      ? mics.map((d, i) => h('option', { value: d.deviceId, selected: d.deviceId === current }, d.label || `Microphone ${i + 1}`))
      : h('option', { value: '' }, 'Default microphone'));
    modal('Sound', h('div.stack',
      h('label.label', { for: 'volume' }, 'Volume of the room'),
      h('div.row.gap', vol, volOut),
      h('label.label', { for: 'mic-select' }, 'Microphone'),
      micSel,
      h('p.muted.small', 'The volume is yours: it changes what you hear, not what others hear.')));
  }

  isOwner() {
    return !!(this.meta && this.app.user && this.meta.ownerId === this.app.user.id);
  }

  async share() {
    const isOwner = this.meta && this.app.user && this.meta.ownerId === this.app.user.id;
    if (this.meta?.roomType === 'private' && isOwner && !this.meta.inviteCode) {
      try {
        this.meta.inviteCode = (await api.createInviteCode(this.roomId))?.code;
      } catch (e) {
        toast(e.message || 'Could not create an invite link.', 'error');
        return;
      }
    }
    if (this.meta?.roomType === 'private' && !isOwner) {
      toast('Only the host can invite people to a private room.', 'info');
      return;
    }
    const link = shareLink(this.roomId, this.meta?.inviteCode);
    const input = h('input.input', { value: link, readOnly: true, onfocus: (e) => e.target.select() });
    const btn = h('button.btn.primary', {
      type: 'button',
      onclick: async () => {
        const ok = await copyText(link);
        toast(ok ? 'Link copied.' : 'Copy failed: select the link and copy it.', ok ? 'success' : 'error');
      },
    }, icon('copy'), 'Copy link');
    modal('Invite people', h('div.stack',
      h('p.muted', this.meta?.roomType === 'private'
        ? 'This room is private: people can join only through this invite link.'
        : 'Anyone with this link can join the room.'),
      h('div.row.gap', input, btn)));
  }

  showPrejoin() {
    const topic = this.meta?.topic || 'this room';
    this.prejoin = h('div.prejoin',
      h('div.card.prejoin-card',
        h('div.brand-mark', h('img', { src: 'logo.svg', alt: '' })),
        h('p.muted', 'You’re about to join'),
        h('h2', topic),
        h('p.muted.small', 'You’ll join as a listener. Raise your hand to speak.'),
        h('button.btn.primary.big', { type: 'button', onclick: () => this.joinFromCard() }, icon('headphones'), 'Join room'),
        h('a.btn.ghost', { href: '#/' }, 'Not now')));
    this.root.querySelector('.room-page').append(this.prejoin);
  }

  showAutoplayBanner() {
    if (this.soundBanner) return;
    this.soundBanner = h('button.sound-banner', {
      type: 'button',
      onclick: () => {
        this.call?.resumeAudio();
        this.soundBanner.remove();
        this.soundBanner = null;
      },
    }, icon('headphones'), 'Tap to turn on sound');
    this.root.querySelector('.stage-wrap')?.prepend(this.soundBanner);
  }

  showMicError(e) {
    this.micError = e.message;
    toast(e.message, 'error', 8000);
    this.renderControls();
  }

  // ---- rendering ----------------------------------------------------------

  renderShell() {
    this.connEl = h('span.conn');
    this.banner = h('div.net-banner', { hidden: true, role: 'status' });
    this.titleEl = h('div.room-title', h('h1.skeleton-text', 'Loading room…'));
    this.stageEl = h('div.tiles.stage-tiles');
    this.audienceEl = h('div.tiles.audience-tiles');
    this.removedEl = h('section.removed-list', { hidden: true, 'aria-label': 'Removed from this room' });
    this.handsEl = h('section.hand-queue', { hidden: true, 'aria-label': 'Raised hands' });
    this.audienceHead = h('h3.section-title');
    this.stageHead = h('h3.section-title', 'On stage');
    this.controlsEl = h('div.controls');
    this.audioHost = h('div.audio-host', { hidden: true });
    this.chat = new ChatPanel({
      roomId: this.roomId,
      me: () => this.app.user,
      canModerate: () => this.you?.role === 'moderator' || (this.meta && this.app.user && this.meta.ownerId === this.app.user.id),
      sendWs: (msg) => (this.signal?.isOpen() && this.you ? this.signal.send(msg) : false),
      avatarFor: (userId) => {
        for (const p of this.participants.values()) if (p.userId === userId && p.avatar) return p.avatar;
        if (userId && userId === this.app.user?.id && this.app.user.avatar) return this.app.user.avatar;
        return this.avatars.get(userId) || null;
      },
    });
    this.chatWrap = h('aside.chat-wrap', this.chat.el);
    this.chat.el.querySelector('.chat-head').append(
      h('button.icon-btn.ghost.chat-close', { type: 'button', 'aria-label': 'Close chat', onclick: () => this.setChatOpen(false) }, icon('x')));

    clear(this.root, h('div.room-page',
      h('header.topbar.room-top',
        h('a.icon-btn.ghost', { href: '#/', 'aria-label': 'Back to rooms', title: 'All rooms' }, icon('arrowLeft')),
        this.titleEl,
        h('div.top-actions', this.connEl,
          h('button.btn.small', { type: 'button', 'aria-label': 'Invite people', onclick: () => this.share() }, icon('link'), h('span.hide-sm', 'Invite')))),
      this.banner,
      h('div.room-layout',
        h('main.stage-wrap',
          h('div.stage-scroll',
            h('section.stage', this.stageHead, this.stageEl),
            this.handsEl,
            h('section.audience', this.audienceHead, this.audienceEl),
            this.removedEl),
          this.controlsEl),
        this.chatWrap),
      this.audioHost));
    this.setConn('connecting');
    // Placeholders until the first participant list arrives.
    const ghost = (n, size) => Array.from({ length: n }, () => h('div.tile.ghost', h('span.avatar.avatar-' + size), h('div.sk-line.w60')));
    this.stageEl.append(...ghost(3, 'lg'));
    clear(this.audienceHead, 'Listening');
    this.audienceEl.append(...ghost(5, 'md'));
    this.renderControls();
  }

  renderHeader() {
    const m = this.meta;
    if (this.isOwner() && !this.endBtn) {
      this.endBtn = h('button.btn.small.end-room', { type: 'button', 'aria-label': 'End room', onclick: () => this.endRoom() }, icon('x'), h('span.hide-sm', 'End room'));
      this.root.querySelector('.room-top .top-actions')?.append(this.endBtn);
    }
    const typeBadge = {
      open: [icon('globe'), 'Open'],
      social: [icon('link'), 'Social'],
      private: [icon('lock'), 'Private'],
    }[m.roomType] || [];
    clear(this.titleEl,
      h('h1', { title: m.topic }, m.topic || 'Untitled room'),
      h('div.room-sub', h(`span.badge.badge-${m.roomType}`, typeBadge), m.owner?.name && h('span.muted.hide-sm', `Hosted by ${m.owner.name}`)));
    document.title = `${m.topic} · Chorus`;
  }

  sortedPeople() {
    const list = [...this.participants.values()];
    const rank = { moderator: 0, speaker: 1, listener: 2 };
    list.sort((a, b) => (rank[a.role] - rank[b.role])
      || (a.role === 'listener' ? Number(b.handRaised) - Number(a.handRaised) : 0)
      || a.participantId - b.participantId);
    return list;
  }

  /** Coalesces bursts of presence events (a join storm) into one render per frame. */
  renderPeople() {
    if (this.peopleFrame) return;
    this.peopleFrame = requestAnimationFrame(() => {
      this.peopleFrame = null;
      if (!this.destroyed) this.drawPeople();
    });
  }

  drawPeople() {
    const people = this.sortedPeople();
    // Remember pictures of everyone seen here, so the chat shows them even after they leave.
    let learned = false;
    for (const p of people) {
      if (p.avatar && this.avatars.get(p.userId) !== p.avatar) {
        this.avatars.set(p.userId, p.avatar);
        learned = true;
      }
    }
    if (learned) this.chat.refreshAvatars();
    this.drawRemoved();
    this.drawHands();
    const stage = people.filter((p) => canPublish(p.role));
    const audience = people.filter((p) => !canPublish(p.role));
    clear(this.stageEl, stage.map((p) => this.tile(p, 'lg')));
    if (!stage.length) this.stageEl.append(h('p.muted.empty-line', 'Nobody is on stage yet.'));
    const hands = audience.filter((p) => p.handRaised).length;
    clear(this.audienceHead, 'Listening', h('span.count', String(audience.length)),
      hands > 0 && h('span.hands', icon('hand'), `${hands} raised ${hands === 1 ? 'a hand' : 'hands'}`));
    const shown = audience.slice(0, AUDIENCE_RENDER_CAP);
    clear(this.audienceEl, shown.map((p) => this.tile(p, 'md')));
    if (audience.length > shown.length) this.audienceEl.append(h('div.tile.more-tile', h('span.avatar.avatar-md.more', `+${audience.length - shown.length}`), h('div.tile-name', 'more')));
    if (!audience.length) this.audienceEl.append(h('p.muted.empty-line', 'No listeners yet. Share the link to invite people.'));
    const total = people.length;
    const sub = this.titleEl.querySelector('.room-sub');
    if (sub) {
      sub.querySelector('.people-count')?.remove();
      sub.append(h('span.people-count.muted', icon('users'), `${total}`));
    }
  }

  tile(p, size) {
    const isYou = this.you && p.participantId === this.you.participantId;
    const iModerate = this.you?.role === 'moderator' && !isYou
      && (p.role !== 'moderator' || (this.isOwner() && p.userId !== this.app.user?.id));
    const av = avatar(p, size);
    const classes = ['tile'];
    if (this.speaking.has(p.participantId) && !p.muted) classes.push('speaking');
    if (p.muted) classes.push('is-muted');
    if (!p.inCall) classes.push('not-in-call');
    const el = h(`${iModerate ? 'button' : 'div'}.${classes.join('.')}`, {
      dataset: { pid: String(p.participantId), userId: p.userId, role: p.role },
      type: iModerate ? 'button' : undefined,
      title: iModerate ? `Manage ${p.name}` : p.name,
      'aria-label': `${p.name}${isYou ? ' (you)' : ''}, ${roleLabel[p.role]}${p.muted ? ', muted' : ''}${p.handRaised ? ', hand raised' : ''}`,
      onclick: iModerate ? (e) => this.moderate(p, e.currentTarget) : undefined,
    },
    h('div.tile-av', av,
      canPublish(p.role) && p.muted && h('span.badge-icon.muted-badge', { title: 'Muted' }, icon('micOff')),
      p.handRaised && h('span.badge-icon.hand-badge', { title: 'Hand raised' }, icon('hand'))),
    h('div.tile-name', p.role === 'moderator' && icon('star', 'host-star'), h('span', p.name || 'Guest')),
    (size === 'lg' || isYou) && h('div.tile-role', size === 'lg' ? roleLabel[p.role] : '', isYou && h('span.you', size === 'lg' ? ' · You' : 'You')));
    return el;
  }

  /** Moderators only: raised hands in the order they went up, each with "Invite to speak". */
  drawHands() {
    const queue = this.you?.role === 'moderator' ? this.handQueue() : [];
    this.handsEl.hidden = queue.length === 0;
    clear(this.handsEl,
      h('h3.section-title', icon('hand'), 'Raised hands', h('span.count', String(queue.length))),
      h('ol.hand-list', queue.map((p, i) => h('li.hand-item', { dataset: { handPid: String(p.participantId) } },
        h('span.hand-pos', String(i + 1)), avatar(p, 'sm'), h('span.removed-name', p.name || 'Guest'),
        h('button.btn.small.primary', {
          type: 'button',
          'aria-label': `Invite ${p.name || 'them'} to speak`,
          onclick: () => this.signal.send({ type: 'set_role', participantId: p.participantId, role: 'speaker' }),
        }, icon('mic'), 'Invite')))));
  }

  /** Moderators only: the people removed from this room, each with "Let back in". */
  drawRemoved() {
    const list = this.you?.role === 'moderator' ? this.removedUsers || [] : [];
    this.removedEl.hidden = list.length === 0;
    clear(this.removedEl,
      h('h3.section-title', 'Removed', h('span.count', String(list.length))),
      h('p.muted.small', 'They can’t come back until you let them back in.'),
      h('ul.removed-users', list.map((u) => h('li.removed-user', { dataset: { userId: u.userId } },
        avatar(u, 'sm'), h('span.removed-name', u.name || 'Someone'),
        h('button.btn.small', {
          type: 'button',
          'aria-label': `Let ${u.name || 'them'} back in`,
          onclick: () => {
            this.signal.send({ type: 'let_back_in', userId: u.userId });
            toast(`${u.name || 'They'} can join again.`, 'success', 2500);
          },
        }, 'Let back in')))));
  }

  setChatOpen(open) {
    this.chatOpen = open;
    this.chatWrap.classList.toggle('open', open);
    if (open) {
      this.unread = 0;
      this.chat.scrollToBottom();
    }
    this.renderControls();
  }

  renderControls() {
    const you = this.you;
    const speaker = you && canPublish(you.role);
    const micBtn = speaker && h(`button.ctrl.mic-btn${you.muted || this.micError ? '.off' : '.on'}`, {
      type: 'button', onclick: () => this.toggleMute(),
      'aria-pressed': String(!you.muted),
      'aria-label': you.muted ? 'Unmute microphone' : 'Mute microphone',
      title: this.micError || (you.muted ? 'Unmute' : 'Mute'),
    }, icon(you.muted ? 'micOff' : 'mic'), h('span', you.muted ? 'Unmute' : 'Mute'));
    const stepBtn = you && speaker && !this.isOwner() && h('button.ctrl.step-btn', {
      type: 'button', onclick: () => this.stepBack(), title: 'Move to the audience', 'aria-label': 'Leave stage',
    }, icon('down'), h('span', 'Leave stage'));
    const handBtn = you && !speaker && h(`button.ctrl.hand-btn${you.handRaised ? '.active' : ''}`, {
      type: 'button', onclick: () => this.toggleHand(), 'aria-pressed': String(!!you.handRaised), 'aria-label': you.handRaised ? 'Lower hand' : 'Raise hand',
    }, icon('hand'), h('span', you.handRaised ? 'Lower hand' : 'Raise hand'));
    const soundBtn = h('button.ctrl.sound-btn', { type: 'button', 'aria-label': 'Sound settings', title: 'Sound settings', onclick: () => this.soundSettings() },
      icon('headphones'), h('span', 'Sound'));
    const chatBtn = h('button.ctrl.chat-btn', { type: 'button', onclick: () => this.setChatOpen(!this.chatOpen), 'aria-label': 'Chat' },
      icon('chat'), h('span', 'Chat'), this.unread > 0 && h('span.unread', String(Math.min(this.unread, 99))));
    const status = !you ? 'Connecting…'
      : speaker && this.micError ? 'Microphone blocked'
      : !this.wantCall ? 'Not listening'
        : this.callConnected ? (speaker ? (you.muted ? 'You’re muted' : 'You’re live') : 'Listening')
          : 'Connecting audio…';
    clear(this.controlsEl,
      h('button.ctrl.leave-btn', { type: 'button', 'aria-label': 'Leave quietly', onclick: () => this.leave() }, icon('leave'), h('span', 'Leave quietly')),
      h('div.ctrl-status', { 'data-state': speaker && this.micError ? 'error' : !this.callConnected ? 'off' : speaker && you.muted ? 'muted' : 'on', title: speaker ? this.micError || '' : '' }, h('span.dot'), status),
      h('div.ctrl-group', soundBtn, chatBtn, handBtn, stepBtn, micBtn));
  }
}
