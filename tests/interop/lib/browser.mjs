// Debian's Chromium, driven headless through playwright-core. Nothing is
// downloaded: the executable is /usr/bin/chromium (or $CHROMIUM), and
// playwright gives every launch a fresh temporary profile (user data dir).

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { env } from 'node:process';

import { chromium } from 'playwright-core';

export const ARTIFACTS = env.INTEROP_ARTIFACTS ?? join(import.meta.dirname, '..', 'artifacts');

const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export async function launch() {
  mkdirSync(ARTIFACTS, { recursive: true });
  return chromium.launch({
    executablePath: env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: FLAGS,
  });
}

/// Saves a full-page screenshot as artifacts/<name>.png.
export async function screenshot(page, name) {
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/// Signs in on the interop provider's login form (the page must show it).
export async function providerLogin(page, username, password) {
  await page.fill('input[name=username]', username);
  await page.fill('input[name=password]', password);
  await page.click('button[type=submit]');
}

/// The JSON the echo upstream put in the page.
export async function echoOf(page) {
  return JSON.parse(await page.textContent('#echo'));
}

/// Opens a WebSocket from the page to `path` on the page's origin, sends
/// one message, and returns what came back (or `{error}`).
export async function websocketRoundTrip(page, url, message) {
  return page.evaluate(
    ([target, text]) => new Promise((resolve) => {
      const ws = new WebSocket(target);
      const got = [];
      ws.onmessage = (event) => {
        got.push(event.data);
        if (got.length === 1) ws.send(text);
        else {
          ws.close();
          resolve({ messages: got });
        }
      };
      ws.onerror = () => resolve({ error: 'websocket failed' });
    }),
    [url, message],
  );
}
