// Launches Debian's Chromium through playwright-core with the flags these
// machines need (no sandbox as root, no background networking on a closed
// network) plus fake media devices, each browser with a fresh profile dir.

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

const FLAGS = [
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // The server under test announces 127.0.0.1: let WebRTC gather loopback candidates.
  '--allow-loopback-in-peer-connection',
  // Tabs in the background still run their timers and audio at full speed.
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];

/** Returns {context, close}; one persistent context = one browser with its own profile. */
export async function launchUser({ viewport = { width: 1280, height: 800 }, extraArgs = [], denyMic = false } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'chorus-chromium-'));
  // denyMic: a person who blocked the microphone (no auto-accepting fake UI).
  const flags = denyMic
    ? [...FLAGS.filter((f) => f !== '--use-fake-ui-for-media-stream'), '--deny-permission-prompts']
    : FLAGS;
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...flags, ...extraArgs],
    viewport,
    permissions: denyMic ? [] : ['microphone'],
  });
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
