// Hosting a room (issue 12, items 6-8 and 11), against the real server: the host
// enters muted with an obvious Unmute; raised hands reach moderators as a toast
// and a queue in the order they went up; a speaker steps back to the audience
// themself; the owner names a co-host, and moderation passes on when the host
// leaves; join/leave lines collapse; quiet rooms sit apart in the lobby; the host
// ends the room for everyone and it leaves the lobby.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startServer } from '../lib/server.js';
import { newUser, waitFor, enterRoom } from '../lib/flows.js';

let server;
let host;
let ann;
let ben;
let link;
let roomId;

before(async () => {
  server = await startServer();
  [host, ann, ben] = await Promise.all([
    newUser(server, { phone: '+15550100071', name: 'Hal Host' }),
    newUser(server, { phone: '+15550100072', name: 'Ann Early' }),
    newUser(server, { phone: '+15550100073', name: 'Ben Later', viewport: { width: 390, height: 844 } }),
  ]);
});

after(async () => {
  for (const u of [host, ann, ben]) await u?.close();
  await server?.stop();
});

const tile = (page, name) => page.locator('.tile[data-pid]', { hasText: name });

test('the host enters muted, with an obvious Unmute and no green "live" dot', async () => {
  const p = host.page;
  await p.click('.lobby-hero button.primary');
  await p.fill('#topic', 'Office hours');
  await p.click('.modal button[type=submit]');
  link = await p.locator('input.share-link').inputValue();
  roomId = link.split('/room/')[1];
  await p.click('.enter-room');
  const mic = p.locator('.mic-btn');
  await mic.waitFor();
  assert.equal(await mic.getAttribute('aria-label'), 'Unmute microphone');
  // The "you're muted" toast does not cover the button it points at.
  const t = p.locator('.toast', { hasText: 'You’re muted' });
  await t.waitFor();
  const [tb, mb] = [await t.boundingBox(), await mic.boundingBox()];
  assert.ok(tb.y + tb.height <= mb.y || tb.y >= mb.y + mb.height || tb.x + tb.width <= mb.x || tb.x >= mb.x + mb.width, `toast ${JSON.stringify(tb)} clear of the mic ${JSON.stringify(mb)}`);
  await p.locator('.mic-btn.off').waitFor();
  await p.locator('.ctrl-status', { hasText: 'You’re muted' }).waitFor({ timeout: 30000 });
  assert.equal(await p.locator('.ctrl-status').getAttribute('data-state'), 'muted');
  // Everyone else sees the host muted from the start (joined in this order).
  await enterRoom(ann.page, link);
  await enterRoom(ben.page, link);
  await ann.page.locator('.tile.is-muted[data-role="moderator"]', { hasText: 'Hal Host' }).waitFor();
});

test('raised hands reach the host as a toast and a queue, earliest first', async () => {
  await ann.page.click('.hand-btn');
  await host.page.locator('.toast', { hasText: 'Ann Early raised a hand' }).waitFor();
  await ben.page.click('.hand-btn');
  await host.page.locator('.toast', { hasText: 'Ben Later raised a hand' }).waitFor();
  const queue = host.page.locator('.hand-queue .hand-item');
  await waitFor(async () => (await queue.count()) === 2, { what: 'two hands in the queue' });
  assert.deepEqual(await queue.locator('.removed-name').allTextContents(), ['Ann Early', 'Ben Later']);
  // Listeners do not get the queue.
  assert.equal(await ann.page.locator('.hand-queue:not([hidden])').count(), 0);
  await queue.first().locator('button', { hasText: 'Invite' }).click();
  await ann.page.locator('.mic-btn').waitFor();
  await waitFor(async () => (await queue.count()) === 1, { what: 'Ann out of the queue' });
});

test('a speaker steps back to the audience themself', async () => {
  const p = ann.page;
  await p.click('.step-btn');
  await p.locator('.hand-btn').waitFor();
  assert.equal(await p.locator('.mic-btn').count(), 0);
  await host.page.locator('.tile[data-role="listener"]', { hasText: 'Ann Early' }).waitFor();
});

test('the owner names a co-host; when the host leaves, moderation passes on', async () => {
  await tile(host.page, 'Ben Later').click();
  await host.page.click('.menu-item:has-text("Make co-host")');
  await ben.page.locator('.tile[data-role="moderator"]', { hasText: 'Ben Later' }).waitFor();
  // The co-host moderates: sees the queue (Ann raises again) and can invite.
  await ann.page.click('.hand-btn');
  await ben.page.locator('.hand-queue .hand-item', { hasText: 'Ann Early' }).waitFor();
  await ben.page.locator('.hand-queue button', { hasText: 'Invite' }).click();
  await host.page.locator('.tile[data-role="speaker"]', { hasText: 'Ann Early' }).waitFor();
  // The owner takes the co-host role back: Ben is a speaker, Ann the earliest one.
  await tile(host.page, 'Ben Later').click();
  await host.page.click('.menu-item:has-text("Remove as co-host")');
  await ann.page.locator('.tile[data-role="speaker"]', { hasText: 'Ben Later' }).waitFor();
  // The host leaves: the earliest-joined speaker (Ann) moderates now.
  await host.page.click('.leave-btn');
  await host.page.locator('.lobby').waitFor();
  await ben.page.locator('.tile[data-role="moderator"]', { hasText: 'Ann Early' }).waitFor();
});

test('join and leave lines collapse instead of flooding the chat', async () => {
  const p = ann.page;
  if (!(await p.locator('.chat-list').isVisible())) await p.click('.chat-btn');
  // Host, Ann and Ben joined the call one after another, then the host left: one line.
  const shown = p.locator('.msg-system:not([hidden])');
  await waitFor(async () => /left/.test(await shown.last().textContent()), { what: 'the leave in the summary' });
  const visible = await shown.count();
  const all = await p.locator('.msg-system').count();
  assert.ok(all >= 4, `call notices stored (${all})`);
  assert.equal(visible, 1, 'one summary line');
  assert.match(await shown.textContent(), /Hal Host, Ann Early and Ben Later joined the call · Hal Host left/);
});

test('quiet rooms sit apart in the lobby, below the live ones', async () => {
  const p = host.page;
  await p.evaluate(() => fetch('/api/rooms', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ topic: 'Nobody here', roomType: 'open' }),
  }));
  const live = p.locator('.room-grid:not(.idle-grid) .room-card', { hasText: 'Office hours' });
  const quiet = p.locator('.idle-grid .room-card', { hasText: 'Nobody here' });
  await live.waitFor({ timeout: 15000 });
  await quiet.waitFor({ timeout: 15000 });
  assert.equal(await quiet.locator('.live-pill').count(), 0, 'no "LIVE" on a quiet room');
});

test('the host ends the room: everyone is told and it leaves the lobby', async () => {
  const p = host.page;
  await p.locator('.room-card', { hasText: 'Office hours' }).click();
  await p.locator('.tile[data-pid]').first().waitFor();
  await p.click('.end-room');
  await p.click('.modal button:has-text("End room for everyone")');
  await p.locator('.lobby').waitFor();
  for (const u of [ann, ben]) await u.page.locator('.fatal-card', { hasText: 'This room has ended' }).waitFor();
  await waitFor(async () => !(await p.locator('.room-card', { hasText: 'Office hours' }).count()), { what: 'the ended room gone from the lobby' });
  const res = await p.evaluate((id) => fetch(`/api/rooms/${id}`).then((r) => r.status), roomId);
  assert.equal(res, 404);
});

test('no page threw an uncaught error', () => {
  for (const u of [host, ann, ben]) assert.deepEqual(u.errors, [], `${u.name}'s page errors`);
});
