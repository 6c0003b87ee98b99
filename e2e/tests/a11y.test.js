// Accessibility of the main screens (issue 12, item 12): axe-core finds no
// serious or critical violation on login, lobby, the create dialog and a room
// (desktop and phone); controls reach by keyboard show a focus ring; and
// prefers-reduced-motion stops the animations.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

import { startServer } from '../lib/server.js';
import { launchUser } from '../lib/browser.js';
import { newUser } from '../lib/flows.js';

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

let server;
let host;

before(async () => {
  server = await startServer();
  host = await newUser(server, { phone: '+15550100081', name: 'Ada Access' });
});

after(async () => {
  await host?.close();
  await server?.stop();
});

async function serious(page, what) {
  await page.addScriptTag({ content: AXE });
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  const text = bad.map((v) => `${v.id} (${v.impact}): ${v.help}\n  ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join('\n  ')}`).join('\n');
  assert.equal(bad.length, 0, `${what}: ${text}`);
}

test('login has no serious accessibility violations', async () => {
  const user = await launchUser();
  try {
    const page = user.context.pages()[0] || (await user.context.newPage());
    await page.goto(server.base + '/');
    await page.locator('#phone').waitFor();
    await serious(page, 'login');
  } finally {
    await user.close();
  }
});

test('lobby, create dialog and room have no serious violations', async () => {
  const p = host.page;
  await p.locator('.lobby').waitFor();
  await serious(p, 'lobby');
  await p.click('.lobby-hero button.primary');
  await p.locator('.modal #topic').waitFor();
  await serious(p, 'create dialog');
  await p.fill('#topic', 'Accessible room');
  await p.click('.modal button[type=submit]');
  await p.click('.enter-room');
  await p.locator('.tile[data-pid]').waitFor();
  await p.locator('.mic-btn').waitFor();
  await serious(p, 'room (desktop)');
  await p.setViewportSize({ width: 390, height: 844 });
  await serious(p, 'room (phone)');
  await p.setViewportSize({ width: 1280, height: 800 });
});

test('keyboard: Tab reaches the room controls with a visible focus ring', async () => {
  const p = host.page;
  const seen = new Set();
  for (let i = 0; i < 25; i++) {
    await p.keyboard.press('Tab');
    const f = await p.evaluate(() => {
      const el = document.activeElement;
      if (!el || el === document.body) return null;
      const cs = getComputedStyle(el);
      const name = el.getAttribute('aria-label') || el.textContent.trim();
      return { name, ring: (cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) > 0) || cs.boxShadow !== 'none' };
    });
    if (!f) continue;
    assert.ok(f.ring, `focused "${f.name}" shows a focus ring`);
    assert.ok(f.name, 'every focusable control has a name');
    seen.add(f.name);
  }
  for (const want of ['Unmute microphone', 'Message', 'Send message']) assert.ok([...seen].some((n) => n.includes(want)), `Tab reaches "${want}" (saw ${[...seen].join(', ')})`);
});

test('prefers-reduced-motion stops the animations', async () => {
  const p = host.page;
  await p.emulateMedia({ reducedMotion: 'reduce' });
  const anim = await p.evaluate(() => {
    const el = document.createElement('span');
    el.className = 'rec-dot';
    document.body.append(el);
    const cs = getComputedStyle(el);
    const r = { duration: cs.animationDuration, count: cs.animationIterationCount };
    el.remove();
    return r;
  });
  assert.ok(parseFloat(anim.duration) < 0.01 && anim.count === '1', `rec-dot animation: ${JSON.stringify(anim)}`);
  await p.emulateMedia({ reducedMotion: 'no-preference' });
});
