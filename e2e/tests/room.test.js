// End to end, in real Chromium against the real chorus server: three people
// log in, one starts a room, the others join by its link; everyone sees
// everyone; the host's audio reaches the others through the SFU and stops
// when muted; chat and a voice note round-trip; the host promotes a listener,
// who is then heard; a dropped socket resumes without a reload.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { startServer } from '../lib/server.js';
import {
  newUser, waitFor, inboundAudio, outboundAudio, expectAudioFlowing, expectAudioStopped, shownNames, enterRoom,
} from '../lib/flows.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SHOTS = path.join(HERE, '..', 'screenshots');
mkdirSync(SHOTS, { recursive: true });

let server;
let alice; // host
let bob; // listener
let carol; // listener, later promoted (phone-sized window)
let link;

before(async () => {
  server = await startServer();
  [alice, bob, carol] = await Promise.all([
    newUser(server, { phone: '+15550100001', name: 'Alice Host' }),
    newUser(server, { phone: '+15550100002', name: 'Bob Listener' }),
    newUser(server, { phone: '+15550100003', name: 'Carol Phone', viewport: { width: 390, height: 844 } }),
  ]);
});

after(async () => {
  for (const u of [alice, bob, carol]) await u?.close();
  await server?.stop();
});

test('the host starts an open room and gets a share link', async () => {
  const p = alice.page;
  await p.click('.lobby-hero button.primary');
  await p.fill('#topic', 'Friday design review');
  await p.click('.modal button[type=submit]');
  link = await p.locator('input.share-link').inputValue();
  assert.match(link, /#\/room\/[0-9a-f]{24}$/);
  await p.click('.enter-room');
  await p.locator('.tile[data-role="moderator"]').waitFor();
  assert.deepEqual(await shownNames(p), ['Alice Host']);
});

test('two listeners join by the link and every page shows all three', async () => {
  await Promise.all([enterRoom(bob.page, link), enterRoom(carol.page, link)]);
  const want = ['Alice Host', 'Bob Listener', 'Carol Phone'];
  for (const u of [alice, bob, carol]) {
    await waitFor(async () => JSON.stringify(await shownNames(u.page)) === JSON.stringify(want), { what: `${u.name} to see all three` });
  }
  assert.equal(await bob.page.locator('.tile[data-role="listener"]').count(), 2);
  // The lobby lists the room with its live count.
  const res = await alice.page.evaluate(() => fetch('/api/rooms').then((r) => r.json()));
  const room = res.find((r) => r.topic === 'Friday design review');
  assert.ok(room, 'the open room is listed');
  assert.equal(room.totalPeople, 3);
});

test('the host is heard by both listeners, mute stops it, unmute resumes it', async () => {
  // The host entered muted, with an obvious Unmute: nothing is heard until the tap.
  await alice.page.locator('.mic-btn.off').waitFor();
  await alice.page.click('.mic-btn');
  await alice.page.locator('.mic-btn.on').waitFor();
  await Promise.all([
    expectAudioFlowing(bob.page, 'Bob', { timeout: 30000 }),
    expectAudioFlowing(carol.page, 'Carol', { timeout: 30000 }),
  ]);
  const out = await outboundAudio(alice.page);
  assert.ok(out.packets > 0, 'the host is sending');
  await alice.page.screenshot({ path: path.join(SHOTS, 'room-host-desktop.png') });

  await alice.page.click('.mic-btn');
  await alice.page.locator('.mic-btn.off').waitFor();
  await bob.page.locator('.tile[data-role="moderator"].is-muted').waitFor();
  await expectAudioStopped(bob.page, 'Bob');

  await alice.page.click('.mic-btn');
  await alice.page.locator('.mic-btn.on').waitFor();
  await expectAudioFlowing(bob.page, 'Bob');
});

test('the speaking ring follows the server’s active speakers', async () => {
  await waitFor(() => bob.page.locator('.tile[data-role="moderator"].speaking').count(), { timeout: 20000, what: 'speaking ring on the host for Bob' });
});

test('chat messages round-trip and the author can delete them', async () => {
  await bob.page.fill('.chat-input', 'Hello from Bob');
  await bob.page.press('.chat-input', 'Enter');
  await alice.page.locator('.msg .msg-text', { hasText: 'Hello from Bob' }).waitFor();
  // Carol is on a phone: chat opens as a sheet, with an unread badge first.
  await carol.page.locator('.chat-btn .unread').waitFor();
  await carol.page.click('.chat-btn');
  await carol.page.locator('.msg .msg-text', { hasText: 'Hello from Bob' }).waitFor();

  // Bob deletes it: gone everywhere.
  const msg = bob.page.locator('.msg.mine', { hasText: 'Hello from Bob' });
  await msg.hover();
  await msg.locator('.msg-more').click();
  await bob.page.click('.menu-item.danger');
  await alice.page.locator('.msg .msg-text', { hasText: 'Hello from Bob' }).waitFor({ state: 'detached' });
  await bob.page.locator('.msg .msg-text', { hasText: 'Hello from Bob' }).waitFor({ state: 'detached' });

  await alice.page.fill('.chat-input', 'Welcome, everyone! Agenda: the new lobby.');
  await alice.page.press('.chat-input', 'Enter');
  await carol.page.locator('.msg .msg-text', { hasText: 'Agenda' }).waitFor();
});

test('a voice note recorded with MediaRecorder is uploaded, kept in the history and plays', async () => {
  const p = carol.page;
  await p.click('.rec-btn');
  await p.locator('.recording .rec-dot').waitFor();
  await waitFor(async () => (await p.locator('.rec-time').textContent()) >= '0:02', { what: 'two seconds of recording' });
  const upload = p.waitForResponse((r) => /\/api\/room\/[^/]+\/voice$/.test(r.url()));
  await p.click('.recording button.primary');
  const res = await upload;
  assert.equal(res.status(), 201);
  // The server measured the note's length from its WebM (MediaRecorder writes none).
  const { duration } = (await res.json()).message;
  assert.ok(duration >= 1.5 && duration < 15, `measured duration ${duration}`);
  const mine = p.locator('.msg.mine .voice');
  await mine.waitFor();
  assert.equal(await mine.locator('.vp-time').textContent(), `0:${String(Math.floor(duration)).padStart(2, '0')}`, 'shown before playing');
  const url = await mine.getAttribute('data-url');
  assert.match(url, /^\/api\/voice\//);
  await p.click('.chat-close');

  // The bytes are served back as audio, and the note is in the room's history.
  const info = await bob.page.evaluate(async (u) => {
    const r = await fetch(u);
    const b = await r.arrayBuffer();
    return { status: r.status, type: r.headers.get('content-type'), size: b.byteLength };
  }, url);
  assert.equal(info.status, 200);
  assert.match(info.type, /^audio\/(webm|ogg|mp4)/);
  assert.ok(info.size > 1000, `voice note has bytes (${info.size})`);
  const roomId = link.split('/room/')[1];
  const history = await bob.page.evaluate((id) => fetch(`/api/room/${id}`).then((r) => r.json()), roomId);
  const note = history.messages.find((m) => m.type === 'voice');
  assert.ok(note, 'the voice note is in the history');
  assert.equal(note.url, url);
  assert.equal(note.username, 'Carol Phone');
  assert.equal(note.duration, duration, 'the history carries the duration');
  assert.equal(note.message, '', 'a voice note has no text');

  // A fresh look at the room (Bob re-opens it) shows the note, and it plays.
  await bob.page.goto(`${server.base}/#/`);
  await bob.page.locator('.lobby').waitFor();
  await enterRoom(bob.page, link);
  const voice = bob.page.locator(`.msg .voice[data-url="${url}"]`);
  await voice.waitFor();
  await voice.locator('.play-btn').click();
  await waitFor(() => bob.page.evaluate((u) => document.querySelector(`.voice[data-url="${u}"] audio`).currentTime > 0.2, url), { what: 'voice note playback' });
  await bob.page.screenshot({ path: path.join(SHOTS, 'room-listener.png') });
});

test('the host promotes a listener who raised a hand, and the listener is heard', async () => {
  if (await carol.page.locator('.chat-wrap.open').count()) await carol.page.click('.chat-close');
  await carol.page.click('.hand-btn');
  const carolTile = alice.page.locator('.tile[data-role="listener"]', { hasText: 'Carol Phone' });
  await carolTile.locator('.hand-badge').waitFor();
  await alice.page.screenshot({ path: path.join(SHOTS, 'room-hand-raised.png') });
  await carolTile.click();
  await alice.page.click('.menu-item:has-text("Invite to speak")');

  // Carol is on stage (renegotiated), unmutes, and is heard while the host is muted.
  await carol.page.locator('.mic-btn').waitFor();
  await bob.page.locator('.tile[data-role="speaker"]', { hasText: 'Carol Phone' }).waitFor();
  await alice.page.click('.mic-btn');
  await alice.page.locator('.mic-btn.off').waitFor();
  await expectAudioStopped(bob.page, 'Bob');
  if (await carol.page.locator('.mic-btn.off').count()) await carol.page.click('.mic-btn');
  await carol.page.locator('.mic-btn.on').waitFor();
  await waitFor(async () => (await outboundAudio(carol.page))?.packets > 0, { what: 'Carol to send audio' });
  await expectAudioFlowing(bob.page, 'Bob (hearing Carol)', { timeout: 30000 });
  await expectAudioFlowing(alice.page, 'Alice (hearing Carol)', { timeout: 30000 });
  await alice.page.click('.mic-btn');
  await alice.page.locator('.mic-btn.on').waitFor();
  await waitFor(() => alice.page.locator('.tile.speaking').count(), { what: 'a speaking ring' });
  await alice.page.screenshot({ path: path.join(SHOTS, 'room-view.png') });
  await carol.page.screenshot({ path: path.join(SHOTS, 'room-phone.png') });
});

test('the host mutes a speaker, then moves them back to the audience', async () => {
  const carolOnStage = alice.page.locator('.tile[data-role="speaker"]', { hasText: 'Carol Phone' });
  await carolOnStage.click();
  await alice.page.click('.menu-item:has-text("Mute")');
  await carol.page.locator('.mic-btn.off').waitFor();
  await bob.page.locator('.tile[data-role="speaker"].is-muted', { hasText: 'Carol Phone' }).waitFor();

  await carolOnStage.click();
  await alice.page.click('.menu-item:has-text("Move to audience")');
  await carol.page.locator('.hand-btn').waitFor();
  assert.equal(await carol.page.locator('.mic-btn').count(), 0);
  await bob.page.locator('.tile[data-role="listener"]', { hasText: 'Carol Phone' }).waitFor();
  // The demotion renegotiated: the microphone is released.
  await waitFor(() => carol.page.evaluate(() => window.chorus.room.call.mic === null), { what: 'Carol’s microphone released' });
});

test('a dropped connection resumes without a reload and audio keeps flowing', async () => {
  const p = bob.page;
  await p.evaluate(() => { window.__beforeDrop = true; window.chorus.room.signal.bounce(); });
  await p.locator('.conn-live').waitFor({ timeout: 20000 });
  assert.equal(await p.evaluate(() => window.__beforeDrop), true, 'same page, no reload');
  const want = ['Alice Host', 'Bob Listener', 'Carol Phone'];
  await waitFor(async () => JSON.stringify(await shownNames(alice.page)) === JSON.stringify(want), { what: 'Alice still sees Bob' });
  await expectAudioFlowing(p, 'Bob after reconnect');

  // ICE restart on request (what the client does when the network changes).
  const before = await p.evaluate(() => window.chorus.room.call.pc.remoteDescription.sdp.match(/a=ice-ufrag:(\S+)/)[1]);
  await p.evaluate(() => window.chorus.room.requestIceRestart());
  await waitFor(async () => {
    const ufrag = await p.evaluate(() => window.chorus.room.call.pc.remoteDescription.sdp.match(/a=ice-ufrag:(\S+)/)[1]);
    return ufrag !== before;
  }, { what: 'a new ICE ufrag from the restart offer' });
  await expectAudioFlowing(p, 'Bob after ICE restart');
});

test('a peer connection that dies is replaced and the audio comes back', async () => {
  const p = bob.page;
  await p.evaluate(() => window.chorus.room.call.pc.close());
  // The server notices the silence, takes Bob out of the call, and the client rejoins.
  await waitFor(() => p.evaluate(() => ['connected', 'connecting', 'new'].includes(window.chorus.room.call?.pc.connectionState) && window.chorus.room.call.pc.signalingState !== 'closed'), { timeout: 30000, what: 'a fresh peer connection' });
  await expectAudioFlowing(p, 'Bob on the new connection', { timeout: 30000 });
  await alice.page.locator('.tile[data-role="listener"]:not(.not-in-call)', { hasText: 'Bob Listener' }).waitFor();
});

test('the host removes a participant, who sees why and stays out until let back in', async () => {
  const bobTile = alice.page.locator('.tile', { hasText: 'Bob Listener' });
  await bobTile.click();
  await alice.page.click('.menu-item.danger');
  await bob.page.locator('.fatal-card', { hasText: 'You were removed from this room' }).waitFor();
  await waitFor(async () => !(await shownNames(alice.page)).includes('Bob Listener'), { what: 'Bob gone from Alice’s page' });

  // Back to the rooms and the same card: still removed, and told so (not "private").
  await bob.page.click('.fatal-card a.btn.primary');
  await bob.page.locator('.lobby').waitFor();
  await bob.page.click(`.room-card[data-room-id="${link.split('/room/')[1]}"]`);
  const card = bob.page.locator('.fatal-card');
  await card.locator('h1', { hasText: 'You were removed from this room' }).waitFor();
  assert.doesNotMatch(await card.textContent(), /private/i);
  assert.match(await card.textContent(), /lets you back in/);

  // The host sees who is out and lets Bob back in; Bob can join again.
  const removed = alice.page.locator('.removed-user', { hasText: 'Bob Listener' });
  await removed.waitFor();
  await removed.locator('button', { hasText: 'Let back in' }).click();
  await removed.waitFor({ state: 'detached' });
  await bob.page.goto(`${server.base}/#/`);
  await bob.page.locator('.lobby').waitFor();
  await enterRoom(bob.page, link);
  await alice.page.locator('.tile', { hasText: 'Bob Listener' }).waitFor();
});

test('clear errors: unknown room and a private room without an invite', async () => {
  await bob.page.goto(`${server.base}/#/room/ffffffffffffffffffffffff`);
  await bob.page.locator('.fatal-card', { hasText: 'Room not found' }).waitFor();

  const created = await alice.page.evaluate(() => fetch('/api/rooms', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ topic: 'Board only', roomType: 'private' }),
  }).then((r) => r.json()));
  await bob.page.goto(`${server.base}/#/room/${created.id}`);
  await bob.page.locator('.fatal-card', { hasText: 'Room not found' }).waitFor();

  // With the invite link it works.
  const code = await alice.page.evaluate((id) => fetch(`/api/rooms/${id}/invite-code`, { method: 'POST' }).then((r) => r.json()), created.id);
  await enterRoom(bob.page, `${server.base}/#/room/${created.id}?invite=${code.code}`);
  await bob.page.locator('.room-title h1', { hasText: 'Board only' }).waitFor();
});

test('no page threw an uncaught error', () => {
  for (const u of [alice, bob, carol]) assert.deepEqual(u.errors, [], `${u.name}'s page errors`);
});
