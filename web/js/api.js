// HTTP client for the Chorus control plane. Owns the session rules: cookies
// carry the tokens (HttpOnly, so JavaScript never sees them); on a 401 it
// refreshes once and retries; if the refresh fails the session is over and
// `onSessionExpired` sends the user back to the login page.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let sessionExpiredHandler = () => {};
export function onSessionExpired(fn) {
  sessionExpiredHandler = fn;
}

let refreshing = null;

// Whether this browser holds a session. The tokens are HttpOnly cookies that
// JavaScript cannot see, so a marker beside them lets a signed-out load go
// straight to the login page instead of asking the server (and logging a 401).
const SESSION_MARK = 'chorus.session';
export function markSession(on) {
  try {
    if (on) localStorage.setItem(SESSION_MARK, '1');
    else localStorage.removeItem(SESSION_MARK);
  } catch { /* storage disabled: every load asks the server */ }
}
export function maybeSignedIn() {
  try { return localStorage.getItem(SESSION_MARK) === '1'; } catch { return true; }
}

/**
 * Rotates the refresh token. One refresh at a time per tab, and (where the
 * browser has Web Locks) one at a time across tabs: the server revokes a
 * whole login when a rotated refresh token is presented twice, which is what
 * two tabs refreshing concurrently with the same cookie would look like.
 */
export function refreshSession() {
  if (!refreshing) {
    const run = async () => {
      try {
        const res = await fetch('/api/refresh', { credentials: 'same-origin' });
        if (!res.ok) {
          markSession(false);
          return null;
        }
        const body = await res.json().catch(() => null);
        markSession(!!body?.user);
        return body?.user ?? null;
      } catch {
        throw new ApiError(0, 'network', 'Can’t reach the server. Check your connection.');
      }
    };
    const locked = navigator.locks?.request ? navigator.locks.request('chorus-refresh', run) : run();
    refreshing = locked.finally(() => { refreshing = null; });
  }
  return refreshing;
}

const NO_REFRESH = new Set(['/api/send-otp', '/api/verify-otp', '/api/refresh', '/api/logout']);

/** 45 -> "45 seconds", 710 -> "12 minutes", 7300 -> "2 hours". */
export function waitText(seconds) {
  const s = Math.ceil(seconds);
  if (s < 60) return `${s} second${s === 1 ? '' : 's'}`;
  const m = Math.ceil(s / 60);
  if (m < 90) return `${m} minute${m === 1 ? '' : 's'}`;
  const hr = Math.round(m / 60);
  return `${hr} hour${hr === 1 ? '' : 's'}`;
}

async function errorFrom(res) {
  let body = null;
  try { body = await res.json(); } catch { /* not JSON */ }
  const fallback = {
    400: 'That request was not accepted.',
    401: 'Please sign in again.',
    403: 'You’re not allowed to do that.',
    404: 'Not found.',
    413: 'That file is too large.',
    415: 'That file type isn’t supported.',
    429: 'Too many attempts. Please wait a moment and try again.',
  }[res.status] || `Something went wrong (${res.status}).`;
  let message = body?.message || fallback;
  if (res.status === 429) {
    // The server's own text may already name the wait in seconds: say it once, in
    // words people read at a glance.
    const after = Number(res.headers.get('Retry-After'));
    if (after > 0) message = `Too many attempts. Try again in ${waitText(after)}.`;
  }
  return new ApiError(res.status, body?.code || `http_${res.status}`, message);
}

/**
 * request('POST', '/api/rooms', {json: {...}}) -> parsed JSON (or null for 204).
 * `form` sends multipart FormData.
 */
export async function request(method, path, { json, form, retry = true, signal } = {}) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' }, signal };
  if (json !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = form;
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (e?.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'Can’t reach the server. Check your connection.');
  }
  if (res.status === 401 && retry && !NO_REFRESH.has(path)) {
    const user = await refreshSession();
    if (user) return request(method, path, { json, form, retry: false, signal });
    sessionExpiredHandler();
    throw new ApiError(401, 'session_expired', 'Your session expired. Please sign in again.');
  }
  if (!res.ok) throw await errorFrom(res);
  if (res.status === 204) return null;
  const type = res.headers.get('Content-Type') || '';
  return type.includes('json') ? res.json() : null;
}

export const api = {
  sendOtp: (phone) => request('POST', '/api/send-otp', { json: { phone } }),
  verifyOtp: async (phone, otp, hash) => {
    const res = await request('POST', '/api/verify-otp', { json: { phone, otp, hash } });
    markSession(true);
    return res;
  },
  activate: (name, avatar) => request('POST', '/api/activate', { json: { name, avatar } }),
  logout: () => {
    markSession(false);
    return request('POST', '/api/logout').catch(() => null);
  },
  rooms: () => request('GET', '/api/rooms'),
  createRoom: (topic, roomType) => request('POST', '/api/rooms', { json: { topic, roomType } }),
  room: (id) => request('GET', `/api/rooms/${encodeURIComponent(id)}`),
  endRoom: (id) => request('DELETE', `/api/rooms/${encodeURIComponent(id)}`),
  createInviteCode: (id) => request('POST', `/api/rooms/${encodeURIComponent(id)}/invite-code`),
  redeemInvite: (id, code) => request('POST', `/api/rooms/${encodeURIComponent(id)}/redeem`, { json: { code } }),
  history: (roomId, before) => request('GET', `/api/room/${encodeURIComponent(roomId)}${before ? `?before=${encodeURIComponent(before)}` : ''}`),
  sendText: (roomId, message) => request('POST', `/api/room/${encodeURIComponent(roomId)}/messages`, { json: { message } }),
  deleteMessage: (roomId, id) => request('DELETE', `/api/room/${encodeURIComponent(roomId)}/messages/${encodeURIComponent(id)}`),
  uploadImage: (roomId, file) => {
    const form = new FormData();
    form.append('image', file, file.name || 'image');
    return request('POST', `/api/room/${encodeURIComponent(roomId)}/image`, { form });
  },
  uploadVoice: (roomId, blob, name) => {
    const form = new FormData();
    form.append('voice', blob, name);
    return request('POST', `/api/room/${encodeURIComponent(roomId)}/voice`, { form });
  },
};

/** GET /api/rooms may answer with an array or a page object; normalise. */
export function roomList(body) {
  if (Array.isArray(body)) return body;
  return body?.rooms || body?.items || body?.data || [];
}
