// What a person does in the client, as reusable steps, and the probes the
// tests read (WebRTC stats through the page's own RTCPeerConnection).

import { launchUser } from './browser.js';

/** Polls fn until it returns a truthy value; throws with `what` after timeout. */
export async function waitFor(fn, { timeout = 20000, interval = 200, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** A browser with one page, logged in and activated. */
export async function newUser(server, { phone, name, viewport, denyMic } = {}) {
  const user = await launchUser({ viewport, denyMic });
  const page = user.context.pages()[0] || (await user.context.newPage());
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => {
    if (process.env.CHORUS_E2E_VERBOSE) process.stderr.write(`[${name}] ${m.type()}: ${m.text()}\n`);
  });
  await page.goto(server.base + '/');
  await page.locator('#phone').waitFor();
  const from = server.lines.length;
  await page.fill('#phone', phone);
  await page.click('button[type=submit]');
  await page.locator('#code').waitFor();
  const code = await server.otpFor(phone, from);
  await page.fill('#code', code);
  await page.click('button[type=submit]');
  // A first login asks for a profile; a returning user goes straight to the lobby.
  await page.locator('#name, .lobby').first().waitFor();
  if (await page.locator('#name').count()) {
    await page.fill('#name', name);
    await page.click('button[type=submit]');
  }
  await page.locator('.lobby').waitFor();
  return { ...user, page, name, phone, errors };
}

/** Sum of inbound audio over every slot: {packets, energy}, or null before a call exists. */
export function inboundAudio(page) {
  return page.evaluate(async () => {
    const pc = window.chorus?.room?.call?.pc;
    if (!pc) return null;
    const report = await pc.getStats();
    let packets = 0;
    let energy = 0;
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        packets += s.packetsReceived || 0;
        energy += s.totalAudioEnergy || 0;
      }
    });
    return { packets, energy };
  });
}

export function outboundAudio(page) {
  return page.evaluate(async () => {
    const pc = window.chorus?.room?.call?.pc;
    if (!pc) return null;
    const report = await pc.getStats();
    let packets = 0;
    report.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'audio') packets += s.packetsSent || 0;
    });
    return { packets };
  });
}

/** Waits until inbound packets and energy both rise by at least the given amounts. */
export async function expectAudioFlowing(page, who, { packets = 25, timeout = 20000 } = {}) {
  try {
    const start = await waitFor(() => inboundAudio(page), { timeout, what: `${who}'s call to exist` });
    return await waitFor(async () => {
      const now = await inboundAudio(page);
      return now && now.packets - start.packets >= packets && now.energy > start.energy ? now : null;
    }, { timeout, what: `${who} to receive audio (packets and energy rising)` });
  } catch (e) {
    e.message += `\npage state: ${JSON.stringify(await pageState(page))}`;
    throw e;
  }
}

/** What the page shows about its connection, for failure messages. */
export function pageState(page) {
  return page.evaluate(() => ({
    conn: document.querySelector('.conn')?.textContent,
    status: document.querySelector('.ctrl-status')?.textContent,
    toasts: [...document.querySelectorAll('.toast')].map((t) => t.textContent),
    pc: window.chorus?.room?.call?.pc?.connectionState ?? null,
  })).catch((e) => ({ error: e.message }));
}

/** Waits until no inbound packets arrive for a whole `quietMs` window. */
export async function expectAudioStopped(page, who, { quietMs = 2000, timeout = 15000 } = {}) {
  return waitFor(async () => {
    const a = await inboundAudio(page);
    await new Promise((r) => setTimeout(r, quietMs));
    const b = await inboundAudio(page);
    return a && b && b.packets === a.packets ? b : null;
  }, { timeout, interval: 0, what: `${who}'s inbound audio to stop` });
}

/** Participants shown on a page, by name. */
export function shownNames(page) {
  return page.$$eval('.tile[data-pid] .tile-name span:not(.icon)', (els) => els.map((e) => e.textContent.trim()).sort());
}

/** Enters a room from a link; clicks the pre-join card if the browser asks for a gesture. */
export async function enterRoom(page, link) {
  await page.goto(link);
  // A cold-opened link is not in the room until "Join room" is tapped; a reload of
  // a tab that was in the room (or a click inside the app) goes straight in.
  await page.locator('.tile[data-pid], .prejoin button.primary').first().waitFor();
  const join = page.locator('.prejoin button.primary');
  if (await join.isVisible().catch(() => false)) await join.click();
  await page.locator('.tile[data-pid]').first().waitFor();
}
