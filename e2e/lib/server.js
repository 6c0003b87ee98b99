// Starts the real chorus binary for a test: a free TCP port, a fresh working
// directory (the embedded store lives in ./data under it), the development SMS
// sender, and a log we can read login codes from.

import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The binary: $CHORUS_BIN, else cargo's debug build (built if missing). */
export function chorusBin() {
  if (process.env.CHORUS_BIN) return process.env.CHORUS_BIN;
  const meta = JSON.parse(execFileSync('cargo', ['metadata', '--format-version', '1', '--no-deps'], { cwd: REPO, encoding: 'utf8', maxBuffer: 64 << 20 }));
  const bin = path.join(meta.target_directory, 'debug', 'chorus');
  if (!existsSync(bin)) execFileSync('cargo', ['build', '--bin', 'chorus'], { cwd: REPO, stdio: 'inherit' });
  return bin;
}

function freePort(kind = 'tcp') {
  return new Promise((resolve, reject) => {
    if (kind === 'udp') {
      import('node:dgram').then(({ createSocket }) => {
        const s = createSocket('udp4');
        s.on('error', reject);
        s.bind(0, '127.0.0.1', () => {
          const { port } = s.address();
          s.close(() => resolve(port));
        });
      });
      return;
    }
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const ANSI = /\x1b\[[0-9;]*m/g;

export async function startServer({ env = {} } = {}) {
  const bin = chorusBin();
  const cwd = mkdtempSync(path.join(tmpdir(), 'chorus-e2e-'));
  const port = await freePort();
  const mediaPort = await freePort('udp');
  const lines = [];
  const waiters = new Set();
  const child = spawn(bin, [], {
    cwd,
    env: {
      ...process.env,
      NO_COLOR: '1',
      RUST_LOG: process.env.CHORUS_E2E_RUST_LOG || 'info',
      PORT: String(port),
      HOST: '127.0.0.1',
      DATA_DIR: path.join(cwd, 'data'),
      // Media on loopback only, on a UDP port of its own.
      MEDIA_PORT: String(mediaPort),
      MEDIA_HOST: '127.0.0.1',
      ANNOUNCE_IPS: '127.0.0.1',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const onData = (buf) => {
    for (const raw of buf.toString('utf8').split('\n')) {
      const line = raw.replace(ANSI, '');
      if (!line.trim()) continue;
      lines.push(line);
      if (process.env.CHORUS_E2E_VERBOSE) process.stderr.write(`[chorus] ${line}\n`);
      for (const w of waiters) w();
    }
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  let exited = null;
  child.on('exit', (code, sig) => {
    exited = { code, sig };
    for (const w of waiters) w();
  });

  const base = `http://127.0.0.1:${port}`;
  const server = {
    base,
    port,
    mediaPort,
    lines,
    cwd,
    /** Resolves with the first log line (from `from` on) matching re. */
    waitForLine(re, { from = 0, timeout = 15000 } = {}) {
      return new Promise((resolve, reject) => {
        let idx = from;
        const check = () => {
          for (; idx < lines.length; idx++) {
            const m = re.exec(lines[idx]);
            if (m) {
              cleanup();
              resolve(m);
              return;
            }
          }
          if (exited) {
            cleanup();
            reject(new Error(`chorus exited (${JSON.stringify(exited)}) before logging ${re}`));
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`no log line matching ${re} within ${timeout} ms; last lines:\n${lines.slice(-15).join('\n')}`));
        }, timeout);
        const cleanup = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
    /**
     * The login code the development SMS sender logged for `phone` after log
     * position `from`. The dev sender logs (tracing, target chorus::dev_sms):
     *   WARN chorus::dev_sms: DEVELOPMENT SMS (not sent) to="+15550100001" body="Your Chorus code is 123456. It expires in 2 min."
     * (or the same fields in JSON when the log format is JSON).
     */
    async otpFor(phone, from = 0) {
      const esc = phone.replace(/[+]/g, '\\+');
      const re = new RegExp(`${esc}.*?Your Chorus code is (\\d{4,8})|Your Chorus code is (\\d{4,8}).*?${esc}`);
      const m = await this.waitForLine(re, { from });
      return m[1] || m[2];
    },
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await new Promise((r) => (exited ? r() : child.once('exit', r)));
        clearTimeout(t);
      }
      rmSync(cwd, { recursive: true, force: true });
    },
  };

  // Ready when the health endpoint answers.
  const deadline = Date.now() + 60000;
  for (;;) {
    if (exited) throw new Error(`chorus exited at startup (${JSON.stringify(exited)}):\n${lines.slice(-30).join('\n')}`);
    try {
      const res = await fetch(`${base}/api/health`);
      if (res.ok) break;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) {
      await server.stop();
      throw new Error(`chorus did not become healthy on ${base}:\n${lines.slice(-30).join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, 150));
  }
  return server;
}
