// Login (issue 12, item 10), against the real server: a signed-out load asks
// the server nothing and logs no error; the country picker fills in the calling
// code; "Resend code" comes after the wait and sends to the same number without
// retyping it; the newest code signs in.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startServer } from '../lib/server.js';
import { launchUser } from '../lib/browser.js';

let server;
let user;
let page;
const consoleErrors = [];
const requests = [];

before(async () => {
  server = await startServer();
  user = await launchUser();
  page = user.context.pages()[0] || (await user.context.newPage());
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('request', (r) => requests.push(new URL(r.url()).pathname));
});

after(async () => {
  await user?.close();
  await server?.stop();
});

test('a signed-out load goes to login without a 401 in the console', async () => {
  await page.clock.install();
  await page.goto(server.base + '/');
  await page.locator('#phone').waitFor();
  assert.deepEqual(consoleErrors, []);
  assert.ok(!requests.includes('/api/refresh'), `requests: ${requests.join(' ')}`);
});

test('the country picker adds the calling code; resend after the wait, same number', async () => {
  await page.selectOption('#country', 'GB');
  await page.fill('#phone', '07700 900123');
  const from = server.lines.length;
  await page.click('button[type=submit]');
  await page.locator('#code').waitFor();
  assert.match(await page.locator('label[for=code]').textContent(), /\+447700900123/);
  const first = await server.otpFor('+447700900123', from);

  const resend = page.locator('.resend');
  assert.equal(await resend.isDisabled(), true, 'not before the wait');
  assert.match(await resend.textContent(), /Resend code in \d+ s/);
  await page.clock.fastForward(31_000);
  await waitEnabled(resend);
  const again = server.lines.length;
  await resend.click();
  const second = await server.otpFor('+447700900123', again);
  await page.locator('.toast', { hasText: 'new code' }).waitFor();
  assert.match(await page.locator('label[for=code]').textContent(), /\+447700900123/, 'still the same number');
  assert.ok(first && second);

  await page.fill('#code', second);
  await page.click('button[type=submit]');
  await page.locator('#name').waitFor();
  assert.deepEqual(consoleErrors, []);
});

async function waitEnabled(loc) {
  const deadline = Date.now() + 10000;
  while (await loc.isDisabled()) {
    if (Date.now() > deadline) throw new Error('resend never enabled');
    await page.clock.fastForward(1000);
  }
}
