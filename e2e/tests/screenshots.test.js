// Retakes the pictures of the changed screens in docs/ (desktop and phone), and
// the README's docs/screenshot-room.png. Only with CHORUS_E2E_SHOTS=1: the
// pictures are committed, not checked.

import { test, before, after } from 'node:test';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { startServer } from '../lib/server.js';
import { launchUser } from '../lib/browser.js';
import { newUser, waitFor, enterRoom } from '../lib/flows.js';

const SKIP = !process.env.CHORUS_E2E_SHOTS;
const DOCS = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'docs');
const SHOTS = path.join(DOCS, 'screenshots');

let server;
let users = [];

before(async () => {
  if (SKIP) return;
  mkdirSync(SHOTS, { recursive: true });
  server = await startServer();
});

after(async () => {
  for (const u of users) await u?.close();
  await server?.stop();
});

const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, name) });

test('pictures of the changed screens', { skip: SKIP, timeout: 240000 }, async () => {
  const [host, ann, ben, zed] = await Promise.all([
    newUser(server, { phone: '+15550100091', name: 'Alice Host' }),
    newUser(server, { phone: '+15550100092', name: 'Ann Early' }),
    newUser(server, { phone: '+15550100093', name: 'Ben Phone', viewport: { width: 390, height: 844 } }),
    newUser(server, { phone: '+15550100094', name: 'Zed Rowdy' }),
  ]);
  users = [host, ann, ben, zed];

  const login = await launchUser({ viewport: { width: 390, height: 844 } });
  users.push(login);
  const lp = login.context.pages()[0] || (await login.context.newPage());
  await lp.goto(server.base + '/');
  await lp.locator('#phone').waitFor();
  await shot(lp, 'login-phone.png');

  const p = host.page;
  await p.evaluate(() => fetch('/api/rooms', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ topic: 'Book club: quiet for now', roomType: 'open' }),
  }));
  await p.click('.lobby-hero button.primary');
  await p.fill('#topic', 'Friday design review: the new lobby, moderation and voice notes');
  await p.click('.modal button[type=submit]');
  const link = await p.locator('input.share-link').inputValue();
  const roomId = link.split('/room/')[1];
  await p.click('.enter-room');
  await p.locator('.mic-btn.off').waitFor();
  await shot(p, 'room-host-muted-desktop.png');
  for (const u of [ann, ben, zed]) await enterRoom(u.page, link);
  await p.click('.mic-btn');
  await p.locator('.mic-btn.on').waitFor();

  await zed.page.evaluate((id) => fetch(`/api/room/${id}/messages`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ message: 'first!!!' }) }), roomId);
  await p.locator('.tile', { hasText: 'Zed Rowdy' }).click();
  await p.click('.menu-item.danger');
  await p.locator('.removed-user').waitFor();
  for (const [u, text] of [[host, 'Welcome! Agenda: the new lobby, then moderation.'], [ann, 'Can we start with the raised-hands queue?'], [host, 'Sure, raise your hand and I’ll bring you up.']]) {
    await u.page.evaluate(({ id, t }) => fetch(`/api/room/${id}/messages`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ message: t }) }), { id: roomId, t: text });
  }
  await ann.page.click('.hand-btn');
  await ben.page.click('.hand-btn');
  await p.locator('.hand-queue .hand-item').nth(1).waitFor();
  await waitFor(() => p.locator('.tile.speaking').count(), { what: 'a speaking ring' });
  await new Promise((r) => setTimeout(r, 4500)); // toasts gone
  await shot(p, 'room-host-desktop.png');
  await p.screenshot({ path: path.join(DOCS, 'screenshot-room.png') });
  await shot(ben.page, 'room-listener-phone.png');
  await ben.page.click('.chat-btn');
  await ben.page.locator('.msg-text', { hasText: 'Sure, raise' }).waitFor();
  await shot(ben.page, 'chat-phone.png');
  await zed.page.goto(`${server.base}/#/`);
  await zed.page.locator('.room-card', { hasText: 'Friday design review' }).click();
  await zed.page.locator('.fatal-card').waitFor();
  await shot(zed.page, 'removed-desktop.png');

  await ann.page.goto(`${server.base}/#/`);
  await ann.page.locator('.idle-grid .room-card').waitFor({ timeout: 15000 });
  await shot(ann.page, 'lobby-desktop.png');
});
