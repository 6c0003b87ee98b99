// The chat panel beside a room: history with "load older" paging, live
// messages, text composer, voice notes (record, upload, play) and deleting.
// Live traffic arrives from the room controller (receive_message,
// message_deleted, call_notification); sends go over the socket when it is
// open and over HTTP otherwise.

import { api } from './api.js';
import { h, icon, clear, avatar, toast, menu, clock, fmtDuration } from './ui.js';
import { VoiceRecorder, MAX_VOICE_SECONDS } from './recorder.js';

// The server's limit (MAX_MESSAGE_CHARS, default 2000): one limit, shown by a
// counter as it nears, never a silent cut.
export const MAX_TEXT = 2000;
const COUNTER_FROM = MAX_TEXT - 200;
const SYSTEM_TYPES = new Set(['call_notification', 'call_ended', 'system']);

function msgId(m) {
  return String(m.id ?? m._id ?? '');
}

export class ChatPanel {
  /**
   * ctx: { roomId, me: () => user, canModerate: () => bool,
   *        sendWs: (msg) => bool, avatarFor: (userId) => url|null }
   */
  constructor(ctx) {
    this.ctx = ctx;
    this.messages = new Map(); // id -> message
    this.nodes = new Map(); // id -> element
    this.cursor = null;
    this.loadingOlder = false;
    this.recorder = null;
    this.el = this.render();
  }

  render() {
    this.list = h('div.chat-list', { role: 'log', 'aria-live': 'polite', 'aria-label': 'Chat messages' });
    this.olderBtn = h('button.btn.small.ghost.load-older', { type: 'button', hidden: true, onclick: () => this.loadOlder() }, icon('up'), 'Load older messages');
    this.empty = h('div.chat-empty', h('div.chat-empty-icon', icon('chat')), h('p', 'No messages yet'), h('p.muted', 'Say hi, or hold a voice note.'));
    this.scroller = h('div.chat-scroll', this.olderBtn, this.empty, this.list);

    this.input = h('textarea.chat-input', {
      rows: 1, maxLength: MAX_TEXT, placeholder: 'Write a message…', 'aria-label': 'Message',
      oninput: () => { this.autosize(); this.updateCounter(); },
      onkeydown: (e) => {
        if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
          e.preventDefault();
          this.sendText();
        }
      },
    });
    this.sendBtn = h('button.icon-btn.primary.send-btn', { type: 'button', 'aria-label': 'Send message', title: 'Send', onclick: () => this.sendText() }, icon('send'));
    this.recBtn = h('button.icon-btn.rec-btn', { type: 'button', 'aria-label': 'Record a voice note', title: 'Record a voice note', onclick: () => this.startRecording() }, icon('mic'));
    if (!VoiceRecorder.supported()) this.recBtn.hidden = true;
    this.counter = h('span.char-count', { hidden: true, 'aria-live': 'polite' });
    this.imageInput = h('input', {
      type: 'file', accept: 'image/png,image/jpeg,image/webp,image/gif', hidden: true,
      onchange: () => this.sendImage(),
    });
    this.imgBtn = h('button.icon-btn.img-btn', { type: 'button', 'aria-label': 'Share an image', title: 'Share an image', onclick: () => this.imageInput.click() }, icon('camera'));
    this.composeRow = h('div.compose-row', this.imageInput, this.imgBtn, this.recBtn, h('div.input-wrap', this.input, this.counter), this.sendBtn);

    this.recTime = h('span.rec-time', '0:00');
    this.recRow = h('div.compose-row.recording', { hidden: true },
      h('button.icon-btn.ghost', { type: 'button', 'aria-label': 'Discard voice note', title: 'Discard', onclick: () => this.cancelRecording() }, icon('trash')),
      h('div.rec-indicator', h('span.rec-dot'), 'Recording', this.recTime, h('span.muted', ` / ${fmtDuration(MAX_VOICE_SECONDS)}`)),
      h('button.icon-btn.primary', { type: 'button', 'aria-label': 'Send voice note', title: 'Send voice note', onclick: () => this.finishRecording() }, icon('send')));

    return h('section.chat', { 'aria-label': 'Chat' },
      h('header.chat-head', h('h2', 'Chat')),
      this.scroller,
      h('footer.chat-compose', this.composeRow, this.recRow));
  }

  updateCounter() {
    const n = this.input.value.length;
    this.counter.hidden = n < COUNTER_FROM;
    this.counter.textContent = `${n} / ${MAX_TEXT}`;
    this.counter.classList.toggle('full', n >= MAX_TEXT);
  }

  /** Gives message avatars their photo once the sender's picture is known (after the room's participant list arrives). */
  refreshAvatars() {
    for (const node of this.nodes.values()) {
      const el = node.querySelector(':scope > .avatar');
      const userId = node.dataset.userId;
      if (!el || !userId || el.querySelector('img')) continue;
      const url = this.ctx.avatarFor(userId);
      if (!url) continue;
      const m = this.messages.get(node.dataset.id);
      el.replaceWith(avatar({ name: m?.username, userId, avatar: url }, 'sm'));
    }
  }

  autosize() {
    this.input.style.height = 'auto';
    this.input.style.height = `${Math.min(this.input.scrollHeight, 120)}px`;
  }

  async load() {
    try {
      const body = await api.history(this.ctx.roomId);
      this.cursor = body?.nextCursor || null;
      this.insertMany(body?.messages || []);
      this.olderBtn.hidden = !this.cursor;
      this.scrollToBottom();
    } catch (e) {
      if (e.status === 401) return;
      this.list.before(h('div.chat-error', e.message || 'Could not load the chat history.'));
    }
  }

  /**
   * After a reconnect: fetch the newest page again to pick up messages sent and
   * deleted while the socket was down.
   */
  async sync() {
    let body;
    try {
      body = await api.history(this.ctx.roomId);
    } catch {
      return;
    }
    const page = body?.messages || [];
    const ids = new Set(page.map(msgId));
    const oldest = body?.nextCursor && page.length
      ? Math.min(...page.map((m) => Date.parse(m.createdAt)))
      : -Infinity;
    for (const [id, m] of this.messages) {
      if (!ids.has(id) && Date.parse(m.createdAt) >= oldest) this.messages.delete(id);
    }
    if (!this.cursor && this.messages.size === 0) this.cursor = body?.nextCursor || null;
    this.insertMany(page);
    this.olderBtn.hidden = !this.cursor;
  }

  async loadOlder() {
    if (!this.cursor || this.loadingOlder) return;
    this.loadingOlder = true;
    this.olderBtn.disabled = true;
    const prevHeight = this.scroller.scrollHeight;
    try {
      const body = await api.history(this.ctx.roomId, this.cursor);
      this.cursor = body?.nextCursor || null;
      this.insertMany(body?.messages || []);
      // Keep the reader's place: older messages grow the list above them.
      this.scroller.scrollTop += this.scroller.scrollHeight - prevHeight;
    } catch (e) {
      toast(e.message || 'Could not load older messages.', 'error');
    } finally {
      this.loadingOlder = false;
      this.olderBtn.disabled = false;
      this.olderBtn.hidden = !this.cursor;
    }
  }

  insertMany(list) {
    for (const m of list) this.messages.set(msgId(m), m);
    this.rebuild();
  }

  /** A live message (ours or someone else's). */
  add(m) {
    const id = msgId(m);
    if (!id || this.messages.has(id)) return;
    const nearBottom = this.scroller.scrollHeight - this.scroller.scrollTop - this.scroller.clientHeight < 120;
    this.messages.set(id, m);
    this.rebuild();
    const mine = m.userId && m.userId === this.ctx.me()?.id;
    if (nearBottom || mine) {
      this.scrollToBottom();
      // An image has no height until it loads: follow it down when it does.
      for (const img of this.nodes.get(id)?.querySelectorAll('img') || []) {
        if (!img.complete) img.addEventListener('load', () => this.scrollToBottom(), { once: true });
      }
    }
  }

  remove(id) {
    if (!this.messages.delete(String(id))) return;
    this.rebuild();
  }

  sorted() {
    return [...this.messages.values()].sort((a, b) => {
      const d = Date.parse(a.createdAt) - Date.parse(b.createdAt);
      return d || (msgId(a) < msgId(b) ? -1 : 1);
    });
  }

  /**
   * Puts the message nodes in order without touching nodes already in place:
   * moving a node that holds a playing <audio> would pause it.
   */
  rebuild() {
    const want = [];
    let prev = null;
    let lastDay = null;
    this.daySeps ??= new Map();
    const days = new Set();
    for (const m of this.sorted()) {
      const day = new Date(m.createdAt).toDateString();
      if (day !== lastDay) {
        if (!this.daySeps.has(day)) this.daySeps.set(day, h('div.day-sep', h('span', dayLabel(m.createdAt))));
        want.push(this.daySeps.get(day));
        days.add(day);
        lastDay = day;
        prev = null;
      }
      const id = msgId(m);
      let node = this.nodes.get(id);
      if (!node) {
        node = this.messageNode(m);
        this.nodes.set(id, node);
      }
      const grouped = prev && !SYSTEM_TYPES.has(prev.type) && !SYSTEM_TYPES.has(m.type)
        && prev.userId === m.userId && Date.parse(m.createdAt) - Date.parse(prev.createdAt) < 5 * 60e3;
      node.classList.toggle('grouped', !!grouped);
      want.push(node);
      prev = m;
    }
    for (const [id, node] of this.nodes) {
      if (!this.messages.has(id)) {
        node.remove();
        this.nodes.delete(id);
      }
    }
    for (const [day, node] of this.daySeps) {
      if (!days.has(day)) {
        node.remove();
        this.daySeps.delete(day);
      }
    }
    this.collapseSystemRuns(want);
    const keep = new Set(want);
    for (const child of [...this.list.children]) if (!keep.has(child)) child.remove();
    want.forEach((node, i) => {
      const at = this.list.children[i];
      if (at !== node) this.list.insertBefore(node, at || null);
    });
    this.empty.hidden = this.messages.size > 0;
  }

  /**
   * Consecutive call joined/left lines read as one: "Ann, Bob and 2 others joined
   * the call · Cy left". Only the run's last line is shown, carrying the summary.
   */
  collapseSystemRuns(nodes) {
    let run = [];
    const flush = () => {
      for (const [i, node] of run.entries()) {
        const last = i === run.length - 1;
        node.hidden = run.length > 1 && !last;
        const sum = node.querySelector('.sys-summary');
        const own = node.querySelector('.sys-text');
        if (last && run.length > 1) {
          const ms = run.map((n) => this.messages.get(n.dataset.id)).filter(Boolean);
          sum.textContent = summarise(ms);
          sum.hidden = false;
          own.hidden = true;
        } else {
          sum.hidden = true;
          own.hidden = false;
        }
      }
      run = [];
    };
    for (const node of nodes) {
      if (node.classList.contains('msg-system')) run.push(node);
      else flush();
    }
    flush();
  }

  messageNode(m) {
    if (SYSTEM_TYPES.has(m.type)) {
      return h('div.msg-system', { dataset: { id: msgId(m) } }, icon(m.type === 'call_ended' ? 'leave' : 'headphones'),
        h('span.sys-text', m.message || (m.type === 'call_ended' ? `${m.username} left the call` : `${m.username} joined the call`)),
        h('span.sys-summary', { hidden: true }),
        h('time', clock(m.createdAt)));
    }
    const me = this.ctx.me();
    const mine = me && m.userId === me.id;
    let body;
    if (m.type === 'voice' && m.url) body = voicePlayer(m.url, m.duration);
    else if (m.type === 'image' && m.url) body = h('a.msg-image', { href: m.url, target: '_blank', rel: 'noopener' }, h('img', { src: m.url, alt: `Image shared by ${m.username || 'someone'}` }));
    else body = h('div.msg-text', m.message ?? '');
    const actions = [];
    if (mine || this.ctx.canModerate()) {
      const btn = h('button.icon-btn.ghost.tiny.msg-more', {
        type: 'button', 'aria-label': 'Message actions', title: 'More',
        onclick: () => menu(btn, null, [{ label: 'Delete message', icon: 'trash', danger: true, onclick: () => this.deleteMessage(m) }]),
      }, icon('more'));
      actions.push(btn);
    }
    return h(`div.msg${mine ? '.mine' : ''}`, { dataset: { id: msgId(m), userId: m.userId || '' } },
      avatar({ name: m.username, userId: m.userId, avatar: this.ctx.avatarFor(m.userId) }, 'sm'),
      h('div.msg-main',
        h('div.msg-meta', h('span.msg-author', m.username || 'Someone'), h('time', { datetime: m.createdAt }, clock(m.createdAt))),
        h('div.msg-body', body, actions)));
  }

  scrollToBottom() {
    requestAnimationFrame(() => { this.scroller.scrollTop = this.scroller.scrollHeight; });
  }

  async sendText() {
    const text = this.input.value.trim();
    if (!text) return;
    if (text.length > MAX_TEXT) {
      toast(`Messages can be at most ${MAX_TEXT} characters.`, 'error');
      return;
    }
    this.input.value = '';
    this.autosize();
    this.updateCounter();
    if (this.ctx.sendWs({ type: 'send_message', message: text })) return;
    // Socket down (reconnecting): fall back to HTTP so the message is not lost.
    try {
      const m = await api.sendText(this.ctx.roomId, text);
      if (m && msgId(m)) this.add(m.message && typeof m.message === 'object' ? m.message : m);
    } catch (e) {
      this.input.value = text;
      this.autosize();
      toast(e.message || 'Message not sent.', 'error');
    }
  }

  deleteMessage(m) {
    const id = msgId(m);
    if (this.ctx.sendWs({ type: 'delete_message', messageId: id })) return;
    api.deleteMessage(this.ctx.roomId, id)
      .then(() => this.remove(id))
      .catch((e) => toast(e.message || 'Could not delete the message.', 'error'));
  }

  async sendImage() {
    const file = this.imageInput.files?.[0];
    this.imageInput.value = '';
    if (!file) return;
    const pending = h('div.msg-pending', h('span.spinner'), 'Sending image…');
    this.scroller.append(pending);
    this.scrollToBottom();
    try {
      const res = await api.uploadImage(this.ctx.roomId, file);
      const m = res?.message && typeof res.message === 'object' ? res.message : res;
      if (m && msgId(m) && m.createdAt) this.add(m);
    } catch (e) {
      toast(e.message || 'The image could not be sent.', 'error', 6000);
    } finally {
      pending.remove();
    }
  }

  async startRecording() {
    if (this.recorder) return;
    const rec = new VoiceRecorder({
      onTick: (s) => { this.recTime.textContent = fmtDuration(s); },
      onLimit: () => this.finishRecording(),
    });
    try {
      await rec.start();
    } catch (e) {
      toast(e.message || 'Could not start recording.', 'error', 6000);
      return;
    }
    this.recorder = rec;
    this.recTime.textContent = '0:00';
    this.composeRow.hidden = true;
    this.recRow.hidden = false;
  }

  cancelRecording() {
    this.recorder?.cancel();
    this.recorder = null;
    this.recRow.hidden = true;
    this.composeRow.hidden = false;
  }

  async finishRecording() {
    const rec = this.recorder;
    if (!rec) return;
    this.recorder = null;
    const result = await rec.stop();
    this.recRow.hidden = true;
    this.composeRow.hidden = false;
    if (!result || result.seconds < 0.5) {
      toast('That voice note was too short.', 'info');
      return;
    }
    const pending = h('div.msg-pending', h('span.spinner'), 'Sending voice note…');
    this.scroller.append(pending);
    this.scrollToBottom();
    try {
      const res = await api.uploadVoice(this.ctx.roomId, result.blob, `voice-note.${result.ext}`);
      const m = res?.message && typeof res.message === 'object' ? res.message : res;
      if (m && msgId(m) && m.createdAt) this.add(m);
    } catch (e) {
      toast(e.message || 'The voice note could not be sent.', 'error', 6000);
    } finally {
      pending.remove();
    }
  }

  destroy() {
    this.recorder?.cancel();
    this.recorder = null;
    for (const a of this.el.querySelectorAll('audio')) a.pause();
  }
}

function names(list) {
  const uniq = [...new Set(list)];
  if (uniq.length === 1) return uniq[0];
  if (uniq.length === 2) return `${uniq[0]} and ${uniq[1]}`;
  if (uniq.length === 3) return `${uniq[0]}, ${uniq[1]} and ${uniq[2]}`;
  return `${uniq[0]}, ${uniq[1]} and ${uniq.length - 2} others`;
}

/** "3 people joined the call · Dee left" for a run of call notices. */
export function summarise(ms) {
  const joined = ms.filter((m) => m.type !== 'call_ended').map((m) => m.username || 'Someone');
  const left = ms.filter((m) => m.type === 'call_ended').map((m) => m.username || 'Someone');
  const parts = [];
  const count = (l) => new Set(l).size;
  if (joined.length) parts.push(count(joined) > 3 ? `${count(joined)} people joined the call` : `${names(joined)} joined the call`);
  if (left.length) parts.push(count(left) > 3 ? `${count(left)} people left` : `${names(left)} left`);
  return parts.join(' · ');
}

function dayLabel(iso) {
  const d = new Date(iso);
  const today = new Date();
  const yesterday = new Date(Date.now() - 864e5);
  if (d.toDateString() === today.toDateString()) return 'Today';
  if (d.toDateString() === yesterday.toDateString()) return 'Yesterday';
  return d.toLocaleDateString([], { weekday: 'short', month: 'short', day: 'numeric' });
}

/**
 * A compact player: play/pause, progress bar, time. `known` is the length the
 * server measured at upload: Chrome's MediaRecorder WebM has no duration of its
 * own until it has been played through.
 */
function voicePlayer(url, known) {
  const audio = h('audio', { preload: 'metadata', src: url });
  const length = () => (Number.isFinite(audio.duration) && audio.duration > 0 ? audio.duration : known);
  const btn = h('button.icon-btn.play-btn', { type: 'button', 'aria-label': `Play voice note${Number.isFinite(known) ? ` (${fmtDuration(known)})` : ''}` }, icon('play'));
  const fill = h('div.vp-fill');
  const bar = h('div.vp-bar', fill);
  const time = h('span.vp-time', Number.isFinite(known) ? fmtDuration(known) : '0:00');
  const bars = h('div.vp-wave', Array.from({ length: 24 }, (_, i) => h('span', { style: `--h:${28 + Math.round(60 * Math.abs(Math.sin(i * 1.7 + url.length)))}%` })));
  const el = h('div.voice', { dataset: { url } }, btn, h('div.vp-track', bars, bar), time, audio);
  const setIcon = (name) => clear(btn, icon(name));
  btn.addEventListener('click', () => {
    if (audio.paused) {
      for (const other of document.querySelectorAll('.voice audio')) if (other !== audio) other.pause();
      audio.play().catch((e) => toast(`Can’t play this voice note (${e.name}).`, 'error'));
    } else {
      audio.pause();
    }
  });
  audio.addEventListener('play', () => { setIcon('pause'); el.classList.add('playing'); });
  audio.addEventListener('pause', () => { setIcon('play'); el.classList.remove('playing'); });
  audio.addEventListener('ended', () => {
    fill.style.width = '0%';
    if (Number.isFinite(length())) time.textContent = fmtDuration(length());
  });
  audio.addEventListener('loadedmetadata', () => {
    if (Number.isFinite(length())) time.textContent = fmtDuration(length());
  });
  audio.addEventListener('timeupdate', () => {
    const d = length();
    if (Number.isFinite(d) && d > 0) fill.style.width = `${Math.min(100, (audio.currentTime / d) * 100)}%`;
    time.textContent = fmtDuration(audio.currentTime);
  });
  audio.addEventListener('error', () => el.classList.add('broken'));
  bar.parentElement?.addEventListener?.('click', (e) => {
    const d = length();
    if (!Number.isFinite(d)) return;
    const r = e.currentTarget.getBoundingClientRect();
    audio.currentTime = ((e.clientX - r.left) / r.width) * d;
  });
  return el;
}
