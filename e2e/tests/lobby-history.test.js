// The lobby's live view of rooms and the chat history's paging, against the
// real server: a room with someone on stage shows in another person's lobby
// with its speaker and live count; a long chat history loads its newest page
// first and older pages on demand.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { startServer } from '../lib/server.js';
import { newUser, waitFor } from '../lib/flows.js';

const SHOTS = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'screenshots');

let server;
let host;
let visitor;
let roomId;

before(async () => {
  server = await startServer();
  [host, visitor] = await Promise.all([
    newUser(server, { phone: '+15550100061', name: 'Ines Host' }),
    newUser(server, { phone: '+15550100062', name: 'Vic Visitor', viewport: { width: 390, height: 844 } }),
  ]);
});

after(async () => {
  for (const u of [host, visitor]) await u?.close();
  await server?.stop();
});

test('the lobby lists an open room with its speaker and live count', async () => {
  const p = host.page;
  await p.click('.lobby-hero button.primary');
  await p.fill('#topic', 'Open mic night');
  await p.click('.modal button[type=submit]');
  const link = await p.locator('input.share-link').inputValue();
  roomId = link.split('/room/')[1];
  await p.click('.enter-room');
  await p.locator('.tile[data-role="moderator"]').waitFor();

  // The visitor's lobby polls: the card appears with the host on stage.
  const card = visitor.page.locator(`.room-card[data-room-id="${roomId}"]`);
  await card.waitFor({ timeout: 20000 });
  assert.match(await card.locator('.room-topic').textContent(), /Open mic night/);
  await waitFor(async () => (await card.locator('.people').textContent()).trim() === '1', { what: 'live count 1' });
  await waitFor(async () => /Ines Host/.test(await card.locator('.speaker-names').textContent()), { what: 'the speaker’s name on the card' });
  assert.equal(await card.locator('.avatar-stack .avatar').count(), 1);
  await visitor.page.screenshot({ path: path.join(SHOTS, 'lobby-phone.png') });
});

test('chat history loads the newest page first and older pages on demand', async () => {
  // 60 messages through the HTTP API (the server's page is 50).
  const posted = await host.page.evaluate(async (id) => {
    const statuses = [];
    for (let i = 1; i <= 60; i++) {
      const r = await fetch(`/api/room/${id}/messages`, {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ message: `note ${i}` }),
      });
      statuses.push(r.status);
    }
    return statuses;
  }, roomId);
  assert.ok(posted.every((s) => s === 201), `posts: ${[...new Set(posted)]}`);

  const p = visitor.page;
  await p.click(`.room-card[data-room-id="${roomId}"]`);
  await p.locator('.tile[data-pid]').first().waitFor();
  await p.click('.chat-btn');
  const texts = () => p.$$eval('.msg .msg-text', (els) => els.map((e) => e.textContent));
  await waitFor(async () => (await texts()).includes('note 60'), { what: 'the newest message' });
  let shown = await texts();
  assert.ok(!shown.includes('note 1'), 'the oldest message is not on the first page');
  assert.equal(shown[shown.length - 1], 'note 60', 'newest last');
  const older = p.locator('.load-older');
  await older.waitFor();
  await older.click();
  await waitFor(async () => (await texts()).includes('note 1'), { what: 'older messages after "load older"' });
  shown = await texts();
  const nums = shown.filter((t) => /^note \d+$/.test(t)).map((t) => Number(t.slice(5)));
  assert.deepEqual(nums, Array.from({ length: 60 }, (_, i) => i + 1), 'all 60, in order, no duplicates');
  await older.waitFor({ state: 'hidden' });
});
