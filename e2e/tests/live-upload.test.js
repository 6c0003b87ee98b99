// Changes made over HTTP reach the others in the room live: a voice note uploaded
// by one person appears for the others as receive_message, and its deletion over
// HTTP (DELETE /api/room/{id}/messages/{mid}) removes it for them as
// message_deleted, with no reload (the server's LiveRooms hooks, src/wiring.rs).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startServer } from '../lib/server.js';
import { newUser, waitFor, enterRoom } from '../lib/flows.js';

let server;
let host;
let guest;

before(async () => {
  server = await startServer();
  [host, guest] = await Promise.all([
    newUser(server, { phone: '+15550100021', name: 'Hana Host' }),
    newUser(server, { phone: '+15550100022', name: 'Gus Guest' }),
  ]);
});

after(async () => {
  for (const u of [host, guest]) await u?.close();
  await server?.stop();
});

test('a voice note uploaded by one person appears live for the others, and its deletion too', async () => {
  const p = host.page;
  await p.click('.lobby-hero button.primary');
  await p.fill('#topic', 'Live uploads');
  await p.click('.modal button[type=submit]');
  const link = await p.locator('input.share-link').inputValue();
  await p.click('.enter-room');
  await enterRoom(guest.page, link);

  await p.click('.rec-btn');
  await p.locator('.recording .rec-dot').waitFor();
  await waitFor(async () => (await p.locator('.rec-time').textContent()) >= '0:02', { what: 'two seconds of recording' });
  await p.click('.recording button.primary');
  const mine = p.locator('.msg.mine .voice');
  await mine.waitFor();
  const url = await mine.getAttribute('data-url');
  await guest.page.locator(`.msg .voice[data-url="${url}"]`).waitFor({ timeout: 15000 });

  const id = await p.locator('.msg.mine').getAttribute('data-id');
  const res = await p.evaluate(([room, mid]) => fetch(`/api/room/${room}/messages/${mid}`, { method: 'DELETE' }).then((r) => r.status), [link.split('/room/')[1], id]);
  assert.ok(res === 200 || res === 204, `delete answered ${res}`);
  await guest.page.locator(`.msg .voice[data-url="${url}"]`).waitFor({ state: 'detached', timeout: 15000 });
});
