// What people hit in the second round of trying the client (issue 12), against
// the real server: a rate-limit message said once and in minutes; a reload that
// takes the same place back (no ghost twin, no joined/left lines); a cold-opened
// link on the "Join room" card that is nobody until tapped; one 2,000-character
// limit with a counter; a new image that scrolls into view; photos in the
// history after a reload.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startServer } from '../lib/server.js';
import { launchUser } from '../lib/browser.js';
import { newUser, waitFor, enterRoom, shownNames } from '../lib/flows.js';

let server;
let host;
let guest;
let link;
let roomId;

before(async () => {
  server = await startServer();
  [host, guest] = await Promise.all([
    newUser(server, { phone: '+15550100061', name: 'Hana Host' }),
    newUser(server, { phone: '+15550100062', name: 'Gus Guest', viewport: { width: 390, height: 844 } }),
  ]);
});

after(async () => {
  for (const u of [host, guest]) await u?.close();
  await server?.stop();
});

const pids = (page) => page.$$eval('.tile[data-pid]', (els) => els.map((e) => e.dataset.pid).sort());

test('a long rate-limit wait is said once, in minutes', async () => {
  const user = await launchUser();
  try {
    const page = user.context.pages()[0] || (await user.context.newPage());
    await page.route('**/api/send-otp', (route) => route.fulfill({
      status: 429,
      headers: { 'Retry-After': '710', 'Content-Type': 'application/json' },
      body: JSON.stringify({ code: 'rate_limited', message: 'Too many requests, try again in 710 s' }),
    }));
    await page.goto(server.base + '/');
    await page.fill('#phone', '+15550100069');
    await page.click('button[type=submit]');
    const err = page.locator('.form-error');
    await err.waitFor();
    assert.equal(await err.textContent(), 'Too many attempts. Try again in 12 minutes.');
  } finally {
    await user.close();
  }
});

test('a reload takes the same place back: nobody sees a twin or joined/left lines', async () => {
  const p = host.page;
  await p.click('.lobby-hero button.primary');
  await p.fill('#topic', 'Reload me');
  await p.click('.modal button[type=submit]');
  link = await p.locator('input.share-link').inputValue();
  roomId = link.split('/room/')[1];
  await p.click('.enter-room');
  await p.locator('.tile[data-role="moderator"]').waitFor();
  await enterRoom(guest.page, link);
  await waitFor(async () => (await pids(p)).length === 2, { what: 'the host to see the guest' });
  const before = await pids(p);
  const guestPid = await guest.page.evaluate(() => window.chorus.room.you.participantId);
  await guest.page.locator('.conn-live').waitFor();
  const systemLines = () => p.locator('.msg-system').count();
  const linesBefore = await systemLines();

  // Watch the host's page through the reload: never three tiles.
  let most = 0;
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      most = Math.max(most, (await pids(p)).length);
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  await guest.page.reload();
  await guest.page.locator('.conn-live').waitFor();
  await waitFor(() => guest.page.evaluate(() => window.chorus.room?.you?.participantId), { what: 'the guest back in' });
  assert.equal(await guest.page.evaluate(() => window.chorus.room.you.participantId), guestPid, 'same participant after the reload');
  // The resumed call comes back on a fresh peer connection.
  await waitFor(() => guest.page.evaluate(() => window.chorus.room.call?.pc.connectionState === 'connected'), { timeout: 30000, what: 'the guest’s audio back' });
  await new Promise((r) => setTimeout(r, 1500));
  watching = false;
  await watcher;
  assert.equal(most, 2, 'the host never saw a third (ghost) tile');
  assert.deepEqual(await pids(p), before);
  assert.equal(await systemLines(), linesBefore, 'no joined/left lines for a reload');
});

test('a cold-opened link on the "Join room" card is not in the room until tapped', async () => {
  // A tab opened from a link elsewhere has had no click: it gets the card. (A
  // page opened by the test driver may count as activated, so the tab is told it
  // has not been, as a link from another app would be.)
  const tab = await guest.context.newPage();
  await tab.addInitScript(() => {
    Object.defineProperty(navigator, 'userActivation', { configurable: true, get: () => ({ hasBeenActive: false, isActive: false }) });
  });
  try {
    await tab.goto(link);
    await tab.locator('.prejoin button.primary').waitFor();
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal((await pids(host.page)).length, 2, 'the card is nobody');
    await tab.click('.prejoin button.primary');
    await waitFor(async () => (await pids(host.page)).length === 3, { what: 'the tapped tab to join' });
  } finally {
    await tab.close();
  }
  // Closing a tab that joined leaves within the resume grace; the one that never
  // joined left nothing behind to begin with.
  await waitFor(async () => (await pids(host.page)).length === 2, { timeout: 30000, what: 'the closed tab to leave' });
});

test('one 2,000-character limit, with a counter as it nears', async () => {
  const p = host.page;
  const counter = p.locator('.char-count');
  await p.fill('.chat-input', 'x'.repeat(1500));
  assert.equal(await counter.isVisible(), false);
  await p.fill('.chat-input', 'y'.repeat(2100));
  assert.equal(await counter.textContent(), '2000 / 2000', 'the box stops at the server’s limit');
  await p.press('.chat-input', 'Enter');
  const sent = p.locator('.msg.mine .msg-text', { hasText: 'yyyy' });
  await sent.waitFor();
  assert.equal((await sent.textContent()).length, 2000, 'nothing cut');
  assert.equal(await counter.isVisible(), false, 'counter hidden again after sending');
});

test('a new image below the fold scrolls into view', async () => {
  const g = guest.page;
  if (!(await g.locator('.chat-wrap.open').count())) await g.click('.chat-btn');
  // Enough messages that the list scrolls.
  await host.page.evaluate(async (id) => {
    for (let i = 0; i < 25; i++) {
      await fetch(`/api/room/${id}/messages`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ message: `filler ${i}` }) });
    }
  }, roomId);
  await g.locator('.msg-text', { hasText: 'filler 24' }).waitFor();
  const atBottom = () => g.evaluate(() => {
    const s = document.querySelector('.chat-scroll');
    return s.scrollHeight - s.scrollTop - s.clientHeight < 4;
  });
  await waitFor(atBottom, { what: 'the guest’s chat at the bottom' });
  await host.page.evaluate(async (id) => {
    const c = document.createElement('canvas');
    c.width = 600;
    c.height = 900;
    const g2 = c.getContext('2d');
    g2.fillStyle = '#5b4be1';
    g2.fillRect(0, 0, 600, 900);
    const blob = await new Promise((r) => c.toBlob(r, 'image/png'));
    const form = new FormData();
    form.append('image', blob, 'tall.png');
    const res = await fetch(`/api/room/${id}/image`, { method: 'POST', body: form });
    if (res.status !== 201) throw new Error(`image upload ${res.status}`);
  }, roomId);
  const img = g.locator('.msg-image img');
  await img.waitFor();
  await waitFor(() => img.evaluate((el) => el.complete && el.naturalHeight > 0), { what: 'the image loaded' });
  await waitFor(atBottom, { what: 'the chat scrolled to the bottom of the loaded image' });
  const box = await img.boundingBox();
  const list = await g.locator('.chat-scroll').boundingBox();
  assert.ok(box.y + box.height <= list.y + list.height + 2, 'the image bottom is in view');
});

test('after a reload the history shows the senders’ photos', async () => {
  const g = guest.page;
  await g.reload();
  await g.locator('.conn-live').waitFor();
  if (!(await g.locator('.chat-wrap.open').count())) await g.click('.chat-btn');
  const hostMsg = g.locator('.msg:not(.mine)', { hasText: 'filler 3' });
  await hostMsg.waitFor();
  await waitFor(() => hostMsg.locator('.avatar img').count(), { what: 'the host’s photo in the history' });
  assert.deepEqual(await shownNames(g), ['Gus Guest', 'Hana Host']);
});

test('an image shared from the chat’s button reaches the others', async () => {
  const png = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==', 'base64');
  const before = await guest.page.locator('.msg-image img').count();
  await host.page.setInputFiles('.chat-compose input[type=file]', { name: 'dot.png', mimeType: 'image/png', buffer: png });
  await host.page.locator('.msg.mine .msg-image img').last().waitFor();
  await waitFor(async () => (await guest.page.locator('.msg-image img').count()) === before + 1, { what: 'the image at the guest' });
});

test('sound settings: a listener’s own volume, and a speaker picks another microphone', async () => {
  const g = guest.page;
  if (await g.locator('.chat-wrap.open').count()) await g.click('.chat-close');
  await g.click('.sound-btn');
  await g.locator('#volume').fill('30');
  await waitFor(() => g.evaluate(() => {
    const a = [...document.querySelectorAll('.audio-host audio')];
    return a.length > 0 && a.every((x) => Math.abs(x.volume - 0.3) < 1e-6);
  }), { what: 'every voice the guest hears at 30%' });
  await g.keyboard.press('Escape');
  // Remembered for the next room visit.
  assert.equal(await g.evaluate(() => localStorage.getItem('chorus.volume')), '0.3');

  const p = host.page;
  await p.click('.sound-btn');
  await p.locator('#mic-select').waitFor();
  const options = await p.locator('#mic-select option').evaluateAll((os) => os.map((o) => o.value));
  assert.ok(options.length >= 2, `the fake devices are listed (${options.length})`);
  const pick = options[options.length - 1];
  await p.selectOption('#mic-select', pick);
  await waitFor(() => p.evaluate((id) => {
    const call = window.chorus.room.call;
    const track = call.mic?.getAudioTracks()[0];
    const sender = call.pc.getTransceivers().find((t) => t.mid === call.publishMid)?.sender;
    return track && track.getSettings().deviceId === id && sender.track === track;
  }, pick), { what: 'the new microphone on the sender' }).catch(async (e) => {
    const st = await p.evaluate(() => {
      const call = window.chorus.room.call;
      const track = call.mic?.getAudioTracks()[0];
      return { settings: track?.getSettings(), label: track?.label, toasts: [...document.querySelectorAll('.toast')].map((t) => t.textContent) };
    });
    e.message += ` ${JSON.stringify(st)}`;
    throw e;
  });
  await p.keyboard.press('Escape');
});

test('no page threw an uncaught error', () => {
  for (const u of [host, guest]) assert.deepEqual(u.errors, [], `${u.name}'s page errors`);
});
