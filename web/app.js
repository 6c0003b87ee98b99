// Chorus web client entry point: session bootstrap and hash routing.
//   #/login            phone -> code
//   #/profile          name + avatar (first login, or editing)
//   #/                 lobby
//   #/room/ID[?invite] a room
// Routes that need a session send the user to login and come back after.

import { api, onSessionExpired, refreshSession, maybeSignedIn } from './js/api.js';
import { clear, h, toast } from './js/ui.js';
import { loginView, profileView, lobbyView } from './js/views.js';
import { RoomView } from './js/room.js';

const root = document.getElementById('app');
const RETURN_KEY = 'chorus.returnTo';

const app = {
  user: null,
  flashMessage: null,
  cleanup: null,

  setUser(user) {
    this.user = user || null;
  },

  navigate(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  },

  /** A one-time message shown on the next login page. */
  flash() {
    const m = this.flashMessage;
    this.flashMessage = null;
    return m;
  },

  takeReturnTo() {
    const r = sessionStorage.getItem(RETURN_KEY);
    sessionStorage.removeItem(RETURN_KEY);
    return r;
  },

  afterLogin() {
    if (!this.user?.activated || !this.user?.name) this.navigate('#/profile');
    else this.navigate(this.takeReturnTo() || '#/');
  },

  sessionExpired() {
    if (!this.user) return;
    this.user = null;
    this.flashMessage = 'Your session expired. Please sign in again.';
    rememberReturn();
    this.navigate('#/login');
  },

  async logout() {
    await api.logout();
    this.user = null;
    this.navigate('#/login');
    toast('Signed out.', 'info', 2500);
  },
};

function rememberReturn() {
  const h = location.hash;
  if (h.startsWith('#/room/')) sessionStorage.setItem(RETURN_KEY, h);
}

onSessionExpired(() => app.sessionExpired());

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, query = ''] = raw.split('?');
  return { path, params: new URLSearchParams(query) };
}

function route() {
  app.cleanup?.();
  app.cleanup = null;
  document.title = 'Chorus';
  const { path, params } = parseHash();

  if (path === '/login') {
    if (app.user?.activated) return app.navigate('#/');
    app.cleanup = loginView(root, app);
    return;
  }
  if (!app.user) {
    rememberReturn();
    return app.navigate('#/login');
  }
  if (path === '/profile') {
    app.cleanup = profileView(root, app);
    return;
  }
  if (!app.user.activated || !app.user.name) {
    rememberReturn();
    return app.navigate('#/profile');
  }
  const m = /^\/room\/([^/]+)$/.exec(path);
  if (m) {
    const view = new RoomView(root, { roomId: decodeURIComponent(m[1]), invite: params.get('invite') }, app);
    app.cleanup = () => view.destroy();
    return;
  }
  if (path !== '/') return app.navigate('#/');
  app.cleanup = lobbyView(root, app);
}

async function boot() {
  clear(root, h('div.center-page', h('div.boot', h('img.boot-logo', { src: 'logo.svg', alt: '' }), h('span.spinner'))));
  try {
    // Cookies are HttpOnly: asking the server is the only way to know who we are.
    app.setUser(maybeSignedIn() ? await refreshSession() : null);
  } catch (e) {
    clear(root, h('div.center-page', h('div.card.fatal-card',
      h('h1', 'Can’t reach Chorus'),
      h('p.muted', e.message || 'The server is not answering.'),
      h('button.btn.primary', { type: 'button', onclick: () => location.reload() }, 'Try again'))));
    return;
  }
  window.addEventListener('hashchange', route);
  window.addEventListener('offline', () => toast('You’re offline.', 'error', 3000));
  route();
}

window.chorus = Object.assign(window.chorus || {}, { app });
boot();
