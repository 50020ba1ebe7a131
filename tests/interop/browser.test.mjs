// Browser scenarios: Debian's Chromium, headless, through billguard, to the
// echo upstream, with the Authentik-shaped oidc-provider as the provider.
//
// run.sh starts the provider(s) and the echo upstream and passes their
// addresses in INTEROP_ISSUER, INTEROP_ISSUER_USERINFO and INTEROP_UPSTREAM;
// each scenario starts the billguard it needs (lib/billguard.mjs).

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { env } from 'node:process';

import * as billguard from './lib/billguard.mjs';
import { echoOf, launch, providerLogin, screenshot, websocketRoundTrip } from './lib/browser.mjs';

const ISSUER = required('INTEROP_ISSUER');
const ISSUER_USERINFO = env.INTEROP_ISSUER_USERINFO;
const UPSTREAM = required('INTEROP_UPSTREAM');

const FIRST_PAGE = '/bills/2026/03?view=unpaid';

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

describe('OIDC login through the provider form (client_secret_basic)', () => {
  let proxy;
  let admin;
  before(async () => {
    proxy = await billguard.start({
      name: 'basic',
      toml: (base) => `upstream = "${UPSTREAM}"\n${billguard.oidcToml({ issuer: ISSUER, base })}`,
    });
    admin = await browser.newContext();
  });
  after(async () => {
    await admin?.close();
    await proxy?.stop();
  });

  it('sends a navigation without a session to the provider login form', async () => {
    const page = await admin.newPage();
    await page.goto(`${proxy.base}${FIRST_PAGE}`);
    const url = new URL(page.url());
    assert.equal(url.origin, new URL(ISSUER).origin, `ended on ${page.url()}`);
    assert.match(url.pathname, /^\/if\/flow\/[^/]+\/$/);
    assert.ok(await page.isVisible('input[name=password]'));
    await screenshot(page, 'provider-login');
  });

  it('refuses a wrong password on the provider form', async () => {
    const page = admin.pages()[0];
    await providerLogin(page, 'akadmin', 'not-the-password');
    await page.waitForSelector('.error');
    assert.match(await page.textContent('.error'), /Invalid username or password/);
    assert.notEqual(new URL(page.url()).origin, proxy.base);
  });

  it('lands the admin on the first page asked for, with admin identity upstream', async () => {
    const page = admin.pages()[0];
    await providerLogin(page, 'akadmin', 'akadmin-password');
    await page.waitForURL(`${proxy.base}${FIRST_PAGE}`);
    const echo = await echoOf(page);
    assert.equal(echo.path, FIRST_PAGE);
    assert.equal(echo.headers['x-forwarded-user'], 'akadmin');
    assert.equal(echo.headers['x-forwarded-email'], 'ada@example.com');
    assert.equal(echo.headers['x-forwarded-groups'], 'bill-tracker-admins,staff');
    assert.equal(echo.headers['x-forwarded-role'], 'admin');
    // billguard's own cookies never reach the app.
    assert.doesNotMatch(echo.headers.cookie ?? '', /billguard/);
    assert.equal(await page.textContent('#greeting'), 'Hello, akadmin');
    await screenshot(page, 'landing');
  });

  it('shows the admin mapping on /_billguard/whoami', async () => {
    const res = await admin.request.get(`${proxy.base}/_billguard/whoami`);
    assert.equal(res.status(), 200);
    const who = await res.json();
    assert.equal(who.user, 'akadmin');
    assert.equal(who.role, 'admin');
    assert.deepEqual(who.groups, ['bill-tracker-admins', 'staff']);
  });

  it('carries a WebSocket through the proxy with the identity', async () => {
    const page = admin.pages()[0];
    const wsUrl = `${proxy.base.replace('http:', 'ws:')}/ws`;
    const result = await websocketRoundTrip(page, wsUrl, 'ping through billguard');
    assert.equal(result.error, undefined, 'the WebSocket through billguard failed');
    const hello = JSON.parse(result.messages[0]).hello;
    assert.equal(hello['x-forwarded-user'], 'akadmin');
    assert.equal(hello['x-forwarded-role'], 'admin');
    assert.equal(result.messages[1], 'ping through billguard');
  });

  it('refuses a WebSocket without a session', async () => {
    const stranger = await browser.newContext();
    try {
      const page = await stranger.newPage();
      await page.goto('about:blank');
      const result = await websocketRoundTrip(page, `${proxy.base.replace('http:', 'ws:')}/ws`, 'x');
      assert.deepEqual(result, { error: 'websocket failed' });
    } finally {
      await stranger.close();
    }
  });

  it('sees a plain user as user', async () => {
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      await page.goto(`${proxy.base}/`);
      await providerLogin(page, 'bob', 'bob-password');
      await page.waitForURL(`${proxy.base}/`);
      const echo = await echoOf(page);
      assert.equal(echo.headers['x-forwarded-user'], 'bob');
      assert.equal(echo.headers['x-forwarded-groups'], 'staff');
      assert.equal(echo.headers['x-forwarded-role'], 'user');
    } finally {
      await context.close();
    }
  });

  it('signs out through the provider end-session endpoint', async () => {
    const page = admin.pages()[0];
    await page.goto(`${proxy.base}/_billguard/sign_out`);
    const endSession = new URL(page.url());
    assert.equal(endSession.origin, new URL(ISSUER).origin);
    assert.match(endSession.pathname, /\/application\/o\/bill-tracker\/end-session\//);
    await page.click('button[value=yes]');
    // Back at billguard without a session, and the provider's session is
    // gone too: the login form asks for the password again.
    await page.waitForURL(/\/if\/flow\//);
    assert.ok(await page.isVisible('input[name=password]'));
    const res = await admin.request.get(`${proxy.base}/_billguard/whoami`);
    assert.equal(res.status(), 401);
  });
});

describe('OIDC login with client_secret_post', () => {
  let proxy;
  before(async () => {
    proxy = await billguard.start({
      name: 'post',
      toml: (base) => `upstream = "${UPSTREAM}"\n${billguard.oidcToml({ issuer: ISSUER, base, client: billguard.CLIENTS.post })}`,
    });
  });
  after(async () => proxy?.stop());

  it('signs in and forwards the identity', async () => {
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      await page.goto(`${proxy.base}/settings`);
      await providerLogin(page, 'carol@example.com', 'carol-password');
      await page.waitForURL(`${proxy.base}/settings`);
      const echo = await echoOf(page);
      assert.equal(echo.headers['x-forwarded-user'], 'carol');
      assert.equal(echo.headers['x-forwarded-role'], 'user');
      assert.equal(echo.headers['x-forwarded-groups'] ?? '', '');
    } finally {
      await context.close();
    }
  });
});

describe('claims only from userinfo (ID token without scope claims)', { skip: ISSUER_USERINFO ? false : 'INTEROP_ISSUER_USERINFO not set' }, () => {
  let proxy;
  before(async () => {
    proxy = await billguard.start({
      name: 'userinfo',
      toml: (base) => `upstream = "${UPSTREAM}"\n${billguard.oidcToml({ issuer: ISSUER_USERINFO, base })}`,
    });
  });
  after(async () => proxy?.stop());

  it('takes groups and email from userinfo', async () => {
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      await page.goto(`${proxy.base}/`);
      await providerLogin(page, 'akadmin', 'akadmin-password');
      await page.waitForURL(`${proxy.base}/`);
      const echo = await echoOf(page);
      assert.equal(echo.headers['x-forwarded-email'], 'ada@example.com');
      assert.equal(echo.headers['x-forwarded-role'], 'admin');
    } finally {
      await context.close();
    }
  });
});

function required(name) {
  const value = env[name];
  if (!value) throw new Error(`${name} is not set; run this file through run.sh`);
  return value;
}
