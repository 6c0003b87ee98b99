// The messages people see when something is refused or expires, against the
// real server: a blocked microphone on promotion, a full room
// (MAX_PARTICIPANTS=2), the network going away, an access token gone stale
// (refreshed silently, the page keeps working), and a session that cannot be
// refreshed (back to login, told why).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startServer } from '../lib/server.js';
import { newUser, waitFor, enterRoom } from '../lib/flows.js';

let server;
let host;
let blocked; // has blocked the microphone in the browser
let late;
let link;

before(async () => {
  server = await startServer({ env: { MAX_PARTICIPANTS: '2' } });
  [host, blocked, late] = await Promise.all([
    newUser(server, { phone: '+15550100031', name: 'Fay Full' }),
    newUser(server, { phone: '+15550100032', name: 'Mo Blocked', denyMic: true }),
    newUser(server, { phone: '+15550100033', name: 'Lee Late' }),
  ]);
});

after(async () => {
  for (const u of [host, blocked, late]) await u?.close();
  await server?.stop();
});

test('a speaker whose browser blocks the microphone is told so and still listens', async () => {
  const p = host.page;
  await p.click('.lobby-hero button.primary');
  await p.fill('#topic', 'Tiny room');
  await p.click('.modal button[type=submit]');
  link = await p.locator('input.share-link').inputValue();
  await p.click('.enter-room');
  await p.locator('.tile[data-pid]').waitFor();
  await enterRoom(blocked.page, link);

  await p.locator('.tile[data-role="listener"]', { hasText: 'Mo Blocked' }).click();
  await p.click('.menu-item:has-text("Invite to speak")');
  const status = blocked.page.locator('.ctrl-status[data-state="error"]');
  await status.waitFor();
  assert.match(await status.textContent(), /Microphone blocked/);
  await blocked.page.locator('.toast', { hasText: 'Microphone access is blocked' }).waitFor();
  // Still in the call, hearing the host.
  await waitFor(async () => (await blocked.page.evaluate(() => window.chorus.room.call?.pc.connectionState)) === 'connected', { what: 'the blocked speaker’s call to stay connected' });
});

test('a full room says so', async () => {
  await late.page.goto(link);
  const card = late.page.locator('.fatal-card');
  await card.waitFor();
  assert.match(await card.textContent(), /This room is full/);
});

test('losing the network shows an offline banner; getting it back clears it', async () => {
  const p = host.page;
  await host.context.setOffline(true);
  const banner = p.locator('.net-banner');
  await banner.waitFor();
  assert.match(await banner.textContent(), /offline/i);
  assert.match(await p.locator('.conn').textContent(), /Offline/);
  await host.context.setOffline(false);
  await banner.waitFor({ state: 'hidden' });
  await p.locator('.conn-live').waitFor();
});

test('a stale access token is refreshed silently and the page keeps working', async () => {
  const p = late.page;
  await p.goto(`${server.base}/#/`);
  await p.locator('.lobby').waitFor();
  const before = (await late.context.cookies()).map((c) => c.name);
  assert.ok(before.includes('accessToken'), `cookies: ${before}`);
  await late.context.clearCookies({ name: 'accessToken' });
  const refreshed = p.waitForResponse((r) => r.url().endsWith('/api/refresh'));
  await p.click('.lobby-hero button.primary');
  await p.fill('#topic', 'After a refresh');
  await p.click('.modal button[type=submit]');
  assert.equal((await refreshed).status(), 200);
  await p.locator('input.share-link').waitFor();
  assert.ok((await late.context.cookies()).some((c) => c.name === 'accessToken'), 'a new access token was set');
  await p.keyboard.press('Escape');
});

test('a session that cannot be refreshed goes back to login and says why', async () => {
  const p = late.page;
  await late.context.clearCookies();
  // The lobby polls the room list; the next poll finds the session gone.
  await p.locator('#phone').waitFor({ timeout: 20000 });
  await waitFor(async () => /session expired/i.test(await p.locator('.form-error').textContent()), { what: 'the expiry message' });
});
