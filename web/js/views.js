// The pages before a room: phone login, profile (name + avatar), and the
// lobby (open rooms, create, join by link). Each view renders into `root`
// and returns a cleanup function.

import { api, roomList } from './api.js';
import { h, icon, clear, avatar, toast, modal, menu, copyText, hueFor, initials } from './ui.js';
import { shareLink } from './room.js';

// ---- login ----------------------------------------------------------------

// Country calling codes offered beside the phone field (a typed "+..." wins).
export const COUNTRIES = [
  ['US', 'United States', '1'], ['CA', 'Canada', '1'], ['GB', 'United Kingdom', '44'], ['IE', 'Ireland', '353'],
  ['FR', 'France', '33'], ['DE', 'Germany', '49'], ['ES', 'Spain', '34'], ['IT', 'Italy', '39'], ['PT', 'Portugal', '351'],
  ['NL', 'Netherlands', '31'], ['BE', 'Belgium', '32'], ['CH', 'Switzerland', '41'], ['AT', 'Austria', '43'],
  ['SE', 'Sweden', '46'], ['NO', 'Norway', '47'], ['DK', 'Denmark', '45'], ['FI', 'Finland', '358'], ['PL', 'Poland', '48'],
  ['GR', 'Greece', '30'], ['TR', 'Türkiye', '90'], ['UA', 'Ukraine', '380'], ['IL', 'Israel', '972'], ['AE', 'United Arab Emirates', '971'],
  ['SA', 'Saudi Arabia', '966'], ['EG', 'Egypt', '20'], ['NG', 'Nigeria', '234'], ['KE', 'Kenya', '254'], ['ZA', 'South Africa', '27'],
  ['IN', 'India', '91'], ['PK', 'Pakistan', '92'], ['BD', 'Bangladesh', '880'], ['CN', 'China', '86'], ['JP', 'Japan', '81'],
  ['KR', 'South Korea', '82'], ['SG', 'Singapore', '65'], ['ID', 'Indonesia', '62'], ['PH', 'Philippines', '63'], ['VN', 'Vietnam', '84'],
  ['TH', 'Thailand', '66'], ['MY', 'Malaysia', '60'], ['AU', 'Australia', '61'], ['NZ', 'New Zealand', '64'],
  ['MX', 'Mexico', '52'], ['BR', 'Brazil', '55'], ['AR', 'Argentina', '54'], ['CO', 'Colombia', '57'], ['CL', 'Chile', '56'],
];
const COUNTRY_KEY = 'chorus.country';
const RESEND_AFTER_S = 30;

/** A guess at the visitor's country from the browser's language ("en-GB" -> GB). */
function guessCountry() {
  const saved = localStorage.getItem(COUNTRY_KEY);
  if (saved && COUNTRIES.some((c) => c[0] === saved)) return saved;
  for (const lang of navigator.languages || [navigator.language]) {
    const region = /-([A-Z]{2})$/i.exec(lang || '')?.[1]?.toUpperCase();
    if (region && COUNTRIES.some((c) => c[0] === region)) return region;
  }
  return 'US';
}

/** "+44 7700 900123", "0044…", or a national number with the picked country's code. */
export function normalisePhone(raw, dial = '') {
  const s = String(raw).replace(/[\s().-]/g, '');
  if (/^\+/.test(s)) return s;
  if (/^00\d/.test(s)) return `+${s.slice(2)}`;
  // A national number: drop the trunk prefix 0 (UK 07…, FR 06…), add the code.
  return dial ? `+${dial}${s.replace(/^0+/, '')}` : s;
}

export function loginView(root, app) {
  let step = 'phone';
  let phone = '';
  let hash = '';
  let busy = false;

  const errorEl = h('p.form-error', { role: 'alert', hidden: true });
  const showError = (msg) => {
    errorEl.textContent = msg || '';
    errorEl.hidden = !msg;
  };
  const body = h('div.login-body');
  let country = guessCountry();
  let resendTimer = null;
  const dialOf = (cc) => COUNTRIES.find((c) => c[0] === cc)?.[2] || '';
  const render = () => {
    showError(app.flash());
    clearInterval(resendTimer);
    if (step === 'phone') {
      const input = h('input.input.big#phone', {
        type: 'tel', inputMode: 'tel', autocomplete: 'tel-national', placeholder: '555 010 0000', required: true, value: phone,
      });
      const picker = h('select.input.big.country#country', {
        'aria-label': 'Country calling code',
        onchange: () => {
          country = picker.value;
          localStorage.setItem(COUNTRY_KEY, country);
        },
      }, COUNTRIES.map(([cc, name, dial]) => h('option', { value: cc, selected: cc === country }, `${name} +${dial}`)));
      const submit = h('button.btn.primary.big.wide', { type: 'submit' }, 'Send code');
      clear(body, h('form.stack', {
        onsubmit: async (e) => {
          e.preventDefault();
          if (busy) return;
          const p = normalisePhone(input.value, dialOf(country));
          if (!/^\+[1-9]\d{7,14}$/.test(p)) {
            showError('That doesn’t look like a phone number. Pick your country and enter your number.');
            input.focus();
            return;
          }
          busy = true;
          submit.disabled = true;
          showError('');
          try {
            const res = await api.sendOtp(p);
            phone = res?.phone || p;
            hash = res?.hash || '';
            step = 'code';
            render();
          } catch (err) {
            showError(err.message);
          } finally {
            busy = false;
            submit.disabled = false;
          }
        },
      },
      h('label.label', { for: 'phone' }, 'Your phone number'),
      h('div.phone-row', picker, input),
      errorEl,
      submit,
      h('p.muted.small.center', 'We’ll text you a one-time code.')));
      setTimeout(() => input.focus(), 0);
    } else {
      const input = h('input.input.big.code-input#code', {
        type: 'text', inputMode: 'numeric', autocomplete: 'one-time-code', pattern: '[0-9]*', maxLength: 8,
        placeholder: '••••••', required: true, 'aria-label': 'Code',
      });
      const submit = h('button.btn.primary.big.wide', { type: 'submit' }, 'Continue');
      const resend = h('button.link-btn.resend', {
        type: 'button',
        onclick: async () => {
          if (busy) return;
          busy = true;
          resend.disabled = true;
          showError('');
          try {
            const res = await api.sendOtp(phone);
            hash = res?.hash || hash;
            toast('A new code is on its way.', 'success', 3000);
            render();
          } catch (err) {
            showError(err.message);
            resend.disabled = false;
          } finally {
            busy = false;
          }
        },
      }, 'Resend code');
      clear(body, h('form.stack', {
        onsubmit: async (e) => {
          e.preventDefault();
          if (busy) return;
          const otp = input.value.replace(/\D/g, '');
          if (otp.length < 4) {
            showError('Enter the code from the text message.');
            return;
          }
          busy = true;
          submit.disabled = true;
          showError('');
          try {
            const res = await api.verifyOtp(phone, otp, hash);
            app.setUser(res.user);
            app.afterLogin();
          } catch (err) {
            showError(err.message);
            input.select();
          } finally {
            busy = false;
            submit.disabled = false;
          }
        },
      },
      h('label.label', { for: 'code' }, 'Enter the code sent to ', h('strong', phone)),
      input,
      errorEl,
      submit,
      h('div.dev-note', icon('wave'), h('span', 'Running Chorus in development? The code isn’t texted: it is printed in the ', h('strong', 'server log'), '.')),
      h('div.row.gap.resend-row', resend, h('button.link-btn', { type: 'button', onclick: () => { step = 'phone'; render(); } }, 'Use a different number'))));
      setTimeout(() => input.focus(), 0);
      // "Resend code" after a short wait, to the same number: no retyping.
      let left = RESEND_AFTER_S;
      const tick = () => {
        resend.disabled = left > 0;
        resend.textContent = left > 0 ? `Resend code in ${left} s` : 'Resend code';
        left -= 1;
        if (left < -1) clearInterval(resendTimer);
      };
      tick();
      resendTimer = setInterval(tick, 1000);
    }
  };

  clear(root, h('div.login-page',
    h('div.login-art', { 'aria-hidden': 'true' }, h('div.blob.b1'), h('div.blob.b2'), h('div.blob.b3')),
    h('div.card.login-card',
      h('div.brand', h('img.brand-logo', { src: 'logo.svg', alt: '' }), h('span', 'Chorus')),
      h('h1', 'Drop in. Speak up.'),
      h('p.muted.lead', 'Live voice rooms for your people.'),
      body)));
  render();
  return () => clearInterval(resendTimer);
}

// ---- profile --------------------------------------------------------------

const AVATAR_PX = 256;

function fileToAvatar(file) {
  return new Promise((resolve, reject) => {
    if (!/^image\/(png|jpe?g|webp|gif)$/.test(file.type)) {
      reject(new Error('Pick a PNG, JPEG, WebP or GIF image.'));
      return;
    }
    if (file.size > 15 * 1024 * 1024) {
      reject(new Error('That image is too large (15 MB at most).'));
      return;
    }
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      // Centre-crop to a square and scale down: uploads stay small.
      const side = Math.min(img.naturalWidth, img.naturalHeight);
      const c = document.createElement('canvas');
      c.width = c.height = AVATAR_PX;
      const g = c.getContext('2d');
      g.drawImage(img, (img.naturalWidth - side) / 2, (img.naturalHeight - side) / 2, side, side, 0, 0, AVATAR_PX, AVATAR_PX);
      URL.revokeObjectURL(url);
      resolve(c.toDataURL('image/jpeg', 0.88));
    };
    img.onerror = () => {
      URL.revokeObjectURL(url);
      reject(new Error('That file doesn’t look like an image.'));
    };
    img.src = url;
  });
}

/** An initials avatar, for people who don't pick a photo. */
function generatedAvatar(name, seed) {
  const c = document.createElement('canvas');
  c.width = c.height = AVATAR_PX;
  const g = c.getContext('2d');
  const hue = hueFor(seed || name);
  const grad = g.createLinearGradient(0, 0, AVATAR_PX, AVATAR_PX);
  grad.addColorStop(0, `hsl(${hue} 70% 62%)`);
  grad.addColorStop(1, `hsl(${(hue + 40) % 360} 65% 48%)`);
  g.fillStyle = grad;
  g.fillRect(0, 0, AVATAR_PX, AVATAR_PX);
  g.fillStyle = 'rgba(255,255,255,0.95)';
  g.font = `600 ${AVATAR_PX * 0.4}px system-ui, -apple-system, "Segoe UI", sans-serif`;
  g.textAlign = 'center';
  g.textBaseline = 'middle';
  g.fillText(initials(name || '?'), AVATAR_PX / 2, AVATAR_PX / 2 + 6);
  return c.toDataURL('image/png');
}

async function urlToDataUrl(url) {
  const res = await fetch(url, { credentials: 'same-origin' });
  if (!res.ok) throw new Error(`avatar ${res.status}`);
  const blob = await res.blob();
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(blob);
  });
}

export function profileView(root, app) {
  const user = app.user || {};
  let picked = null; // data URL chosen by the user
  let busy = false;
  const errorEl = h('p.form-error', { role: 'alert', hidden: true });
  const preview = h('div.avatar-preview');
  const nameInput = h('input.input.big#name', {
    type: 'text', maxLength: 64, autocomplete: 'name', placeholder: 'Your name', required: true, value: user.name || '',
    oninput: () => { if (!picked) drawPreview(); },
  });
  const fileInput = h('input', {
    type: 'file', accept: 'image/png,image/jpeg,image/webp,image/gif', hidden: true,
    onchange: async () => {
      const f = fileInput.files?.[0];
      if (!f) return;
      try {
        picked = await fileToAvatar(f);
        drawPreview();
      } catch (e) {
        toast(e.message, 'error');
      }
      fileInput.value = '';
    },
  });
  // Editing keeps the current photo unless a new one is picked.
  const keepCurrent = () => !picked && user.avatar && user.activated;
  const drawPreview = () => {
    const src = picked || (keepCurrent() ? user.avatar : null) || generatedAvatar(nameInput.value.trim(), user.id);
    clear(preview, h('img', { src, alt: 'Your avatar' }));
  };
  const submit = h('button.btn.primary.big.wide', { type: 'submit' }, user.activated ? 'Save' : 'Let’s go');
  clear(root, h('div.login-page',
    h('div.login-art', { 'aria-hidden': 'true' }, h('div.blob.b1'), h('div.blob.b2'), h('div.blob.b3')),
    h('div.card.login-card',
      h('div.brand', h('img.brand-logo', { src: 'logo.svg', alt: '' }), h('span', 'Chorus')),
      h('h1', user.activated ? 'Your profile' : 'Who’s joining?'),
      h('p.muted.lead', 'This is how people see you in rooms.'),
      h('form.stack', {
        onsubmit: async (e) => {
          e.preventDefault();
          if (busy) return;
          const name = nameInput.value.trim();
          if (!name) {
            errorEl.textContent = 'Tell us your name.';
            errorEl.hidden = false;
            return;
          }
          busy = true;
          submit.disabled = true;
          errorEl.hidden = true;
          try {
            let avatarData = picked;
            if (!avatarData && keepCurrent()) avatarData = await urlToDataUrl(user.avatar).catch(() => null);
            const res = await api.activate(name, avatarData || generatedAvatar(name, user.id));
            app.setUser(res?.user || { ...user, name, activated: true });
            app.navigate(app.takeReturnTo() || '#/');
          } catch (err) {
            errorEl.textContent = err.message;
            errorEl.hidden = false;
          } finally {
            busy = false;
            submit.disabled = false;
          }
        },
      },
      h('div.avatar-pick',
        preview,
        h('button.btn.small', { type: 'button', onclick: () => fileInput.click() }, icon('camera'), 'Choose photo'),
        fileInput),
      h('label.label', { for: 'name' }, 'Name'),
      nameInput,
      errorEl,
      submit,
      user.activated && h('a.btn.ghost.wide', { href: '#/' }, 'Cancel')))));
  drawPreview();
  setTimeout(() => nameInput.focus(), 0);
  return () => {};
}

// ---- lobby ----------------------------------------------------------------

const TYPES = [
  { value: 'open', icon: 'globe', title: 'Open', text: 'Listed in the lobby. Anyone can join.' },
  { value: 'social', icon: 'link', title: 'Social', text: 'Hidden from the lobby. Anyone with the link can join.' },
  { value: 'private', icon: 'lock', title: 'Private', text: 'Only people you invite can join.' },
];

/** Accepts a full share link, a "#/room/ID" fragment, or a bare id. */
export function parseRoomLink(text) {
  const s = String(text || '').trim();
  if (!s) return null;
  const m = /#\/room\/([^?#/\s]+)(?:\?invite=([^#&\s]+))?/.exec(s) || /\/room\/([^?#/\s]+)(?:\?invite=([^#&\s]+))?/.exec(s);
  if (m) return { id: decodeURIComponent(m[1]), invite: m[2] ? decodeURIComponent(m[2]) : null };
  if (/^[\w-]{3,64}$/.test(s)) return { id: s, invite: null };
  return null;
}

export function topBar(app, extra) {
  const u = app.user || {};
  const meBtn = h('button.me-btn', {
    type: 'button', 'aria-label': `${u.name || 'Account'}: account menu`,
    onclick: () => menu(meBtn, u.name, [
      { label: 'Edit profile', icon: 'camera', onclick: () => app.navigate('#/profile') },
      { label: 'Sign out', icon: 'logout', danger: true, onclick: () => app.logout() },
    ]),
  }, avatar(u, 'sm'), h('span.hide-sm', u.name || ''));
  return h('header.topbar',
    h('a.brand', { href: '#/' }, h('img.brand-logo', { src: 'logo.svg', alt: '' }), h('span', 'Chorus')),
    h('div.top-actions', extra, meBtn));
}

export function lobbyView(root, app) {
  let timer = null;
  let stopped = false;
  const grid = h('div.room-grid', { 'aria-live': 'polite' }, skeletonCards());
  const idleHead = h('h2.section-title.lobby-idle-title', { hidden: true }, 'Quiet rooms');
  const idleGrid = h('div.room-grid.idle-grid', { hidden: true });
  const linkInput = h('input.input', { type: 'text', placeholder: 'Paste a room link', 'aria-label': 'Room link' });

  const load = async () => {
    try {
      const rooms = roomList(await api.rooms());
      if (stopped) return;
      renderRooms(rooms);
    } catch (e) {
      if (stopped || e.status === 401) return;
      if (!grid.querySelector('.room-card')) clear(grid, h('div.empty-state', h('h3', 'Can’t load rooms'), h('p.muted', e.message)));
    } finally {
      // Live counts: poll while the page is visible.
      if (!stopped) timer = setTimeout(load, document.hidden ? 15000 : 5000);
    }
  };

  const renderRooms = (rooms) => {
    if (!rooms.length) {
      clear(grid, h('div.empty-state',
        h('div.empty-art', icon('wave')),
        h('h3', 'It’s quiet in here'),
        h('p.muted', 'No open rooms right now. Start one and invite your friends.'),
        h('button.btn.primary', { type: 'button', onclick: () => createRoom(app) }, icon('plus'), 'Start a room')));
      return;
    }
    // Live rooms (someone in them) first; idle ones apart, below, so the lobby
    // never leads with "0 people".
    const live = rooms.filter((r) => (r.totalPeople ?? 0) > 0);
    const idle = rooms.filter((r) => !((r.totalPeople ?? 0) > 0));
    clear(grid,
      live.length ? live.map((r) => roomCard(r)) : h('p.muted.empty-line', 'Nobody is talking right now. Start a room, or wake up a quiet one.'));
    clear(idleGrid, idle.map((r) => roomCard(r, true)));
    idleHead.hidden = idle.length === 0;
    idleGrid.hidden = idle.length === 0;
  };

  const join = (e) => {
    e.preventDefault();
    const parsed = parseRoomLink(linkInput.value);
    if (!parsed) {
      toast('That doesn’t look like a Chorus room link.', 'error');
      return;
    }
    app.navigate(`#/room/${encodeURIComponent(parsed.id)}${parsed.invite ? `?invite=${encodeURIComponent(parsed.invite)}` : ''}`);
  };

  clear(root, h('div.page',
    topBar(app),
    h('main.lobby',
      h('section.lobby-hero',
        h('div',
          h('h1', `Hi ${(app.user?.name || '').split(' ')[0] || 'there'}`),
          h('p.muted.lead', 'Rooms happening now. Jump in and listen, or start your own.')),
        h('button.btn.primary.big', { type: 'button', onclick: () => createRoom(app) }, icon('plus'), 'Start a room')),
      h('form.join-link', { onsubmit: join }, icon('link'), linkInput, h('button.btn', { type: 'submit' }, 'Join')),
      h('h2.section-title', 'Live now'),
      grid,
      idleHead,
      idleGrid)));
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function skeletonCards() {
  return [0, 1, 2].map(() => h('div.room-card.skeleton', h('div.sk-line.w60'), h('div.sk-line.w40'), h('div.sk-avatars')));
}

function roomCard(r, idle = false) {
  const speakers = r.speakers || [];
  const total = r.totalPeople ?? 0;
  return h(`a.room-card${idle ? '.idle' : ''}`, { href: `#/room/${encodeURIComponent(r.id)}`, dataset: { roomId: r.id } },
    h('div.room-card-top',
      idle ? h('span.idle-pill', 'Quiet') : h('span.live-pill', h('span.dot'), 'Live'),
      h('span.people', { 'aria-label': `${total} ${total === 1 ? 'person' : 'people'} in the room` }, icon('users'), String(total))),
    h('h3.room-topic', r.topic || 'Untitled room'),
    h('div.room-card-foot',
      h('div.avatar-stack', speakers.slice(0, 4).map((s) => avatar(s, 'sm'))),
      h('span.speaker-names.muted', speakers.length
        ? speakers.slice(0, 2).map((s) => s.name).join(', ') + (speakers.length > 2 ? ` +${speakers.length - 2}` : '')
        : (r.owner?.name ? `Hosted by ${r.owner.name}` : 'Waiting for speakers'))));
}

export function createRoom(app) {
  let type = 'open';
  const topic = h('input.input.big#topic', { type: 'text', maxLength: 120, placeholder: 'What do you want to talk about?', required: true });
  const errorEl = h('p.form-error', { role: 'alert', hidden: true });
  const opts = h('div.type-options', { role: 'radiogroup', 'aria-label': 'Room type' }, TYPES.map((t) => h(`label.type-option${t.value === type ? '.selected' : ''}`,
    h('input', {
      type: 'radio', name: 'roomType', value: t.value, checked: t.value === type,
      onchange: () => {
        type = t.value;
        for (const o of opts.children) o.classList.toggle('selected', o.querySelector('input').value === type);
      },
    }),
    icon(t.icon), h('span.type-title', t.title), h('span.type-text', t.text))));
  const submit = h('button.btn.primary.big.wide', { type: 'submit' }, 'Start room');
  const form = h('form.stack', {
    onsubmit: async (e) => {
      e.preventDefault();
      const t = topic.value.trim();
      if (!t) {
        errorEl.textContent = 'Give your room a topic.';
        errorEl.hidden = false;
        return;
      }
      submit.disabled = true;
      try {
        const room = await api.createRoom(t, type);
        if (room.roomType === 'private' && !room.inviteCode) {
          // Private rooms are reached through an invite code: make one for the link.
          try {
            room.inviteCode = (await api.createInviteCode(room.id))?.code;
          } catch (err) {
            toast(err.message || 'Room created, but the invite link could not be made.', 'error');
          }
        }
        showCreated(room);
      } catch (err) {
        errorEl.textContent = err.message;
        errorEl.hidden = false;
        submit.disabled = false;
      }
    },
  }, h('label.label', { for: 'topic' }, 'Topic'), topic, h('span.label', 'Who can join'), opts, errorEl, submit);
  const dlg = modal('Start a room', form);

  function showCreated(room) {
    const link = shareLink(room.id, room.inviteCode);
    const input = h('input.input.share-link', { value: link, readOnly: true, onfocus: (e) => e.target.select() });
    clear(form,
      h('div.created',
        h('div.created-icon', icon('wave')),
        h('h3', room.topic),
        h('p.muted', room.roomType === 'open'
          ? 'Your room is live and listed in the lobby. Share the link to bring people in.'
          : room.roomType === 'social'
            ? 'Your room is live. It’s not listed, so share the link.'
            : 'Your private room is ready. People can join only through this invite link.')),
      h('div.row.gap', input, h('button.btn', {
        type: 'button',
        onclick: async () => {
          const ok = await copyText(link);
          toast(ok ? 'Link copied.' : 'Copy failed: select the link and copy it.', ok ? 'success' : 'error');
        },
      }, icon('copy'), 'Copy')),
      h('button.btn.primary.big.wide.enter-room', {
        type: 'button',
        onclick: () => {
          dlg.close();
          app.navigate(`#/room/${encodeURIComponent(room.id)}${room.inviteCode ? `?invite=${encodeURIComponent(room.inviteCode)}` : ''}`);
        },
      }, 'Enter room'));
  }
}
