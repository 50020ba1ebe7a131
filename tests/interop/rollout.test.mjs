// The safe rollout from DESIGN.md, performed in Chromium against the
// Authentik-shaped provider, on one running billguard whose configuration
// file is edited while it runs:
//
//   0. local login only: the sign-in page has the form and no provider;
//   1. the provider settings are added to the file of the running proxy
//      (reloaded without a restart; local login still on);
//   2. the provider test, `billguard check`, passes;
//   3. log out, then a real OIDC login through the provider's form;
//   4. the admin mapping, verified on /_billguard/whoami;
//   5. local login turned off: the form is gone.
//
// It needs local login, the sign-in page, `billguard check` and
// configuration reload; a billguard without them reports these scenarios
// as skipped, never as passed.

import assert from 'node:assert/strict';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { env } from 'node:process';

import * as billguard from './lib/billguard.mjs';
import { echoOf, launch, providerLogin, screenshot } from './lib/browser.mjs';

const ISSUER = env.INTEROP_ISSUER;
const UPSTREAM = env.INTEROP_UPSTREAM;
const SIGN_IN = '/_billguard/sign_in';
const RELOADED = /Configuration reloaded/;
const LOCAL_USER = { username: 'ops', password: 'ops-local-password-1', email: 'ops@example.com' };

const missing = ['check', 'hash-password'].filter((name) => !billguard.hasSubcommand(name));
const skip = missing.length > 0
  ? `this billguard has no ${missing.join(', ')} subcommand (local login, the provider test and reload are not in this build)`
  : false;

describe('the five-step rollout, in the browser', { skip }, () => {
  let browser;
  let proxy;
  let context;
  let page;

  before(async () => {
    browser = await launch();
    const hashed = billguard.run(['hash-password'], `${LOCAL_USER.password}\n`);
    assert.equal(hashed.status, 0, hashed.stderr);
    const hash = hashed.stdout.trim().split('\n').pop().trim();

    proxy = await billguard.start({
      name: 'rollout',
      ready: false,
      toml: (_base, dir) => {
        const users = join(dir, 'users.toml');
        writeFileSync(users, `[[users]]
username = "${LOCAL_USER.username}"
email = "${LOCAL_USER.email}"
role = "admin"
password_hash = "${hash}"
`);
        return `upstream = "${UPSTREAM}"

[session]
secret = "interop-rollout-secret-that-is-long-enough-0123456789"

[local_login]
enabled = true
users_file = "${users}"
`;
      },
    });
    context = await browser.newContext();
    page = await context.newPage();
  });
  after(async () => {
    await context?.close();
    await browser?.close();
    await proxy?.stop();
  });

  it('0. with local login only, a navigation lands on the sign-in form', async () => {
    await page.goto(`${proxy.base}/bills`);
    const url = new URL(page.url());
    assert.equal(url.origin + url.pathname, `${proxy.base}${SIGN_IN}`);
    assert.ok(await page.isVisible('input[name=password]'));
    assert.equal(await page.locator('a.button', { hasText: 'Sign in with' }).count(), 0);
    await screenshot(page, 'sign-in-local-only');

    await page.fill('input[name=username]', LOCAL_USER.username);
    await page.fill('input[name=password]', LOCAL_USER.password);
    await page.click('button[type=submit]');
    await page.waitForURL(`${proxy.base}/bills`);
    const echo = await echoOf(page);
    assert.equal(echo.headers['x-forwarded-user'], LOCAL_USER.username);
  });

  it('1. provider settings added to the running proxy\'s file are picked up without a restart', async () => {
    const pid = proxy.child.pid;
    const reloads = proxy.countLog(RELOADED);
    editConfig(proxy, (text) => `${text}\n${billguard.oidcToml({ issuer: ISSUER, base: proxy.base })}`);
    await proxy.waitForLog(RELOADED, reloads + 1);
    await proxy.waitForLog(/Provider metadata loaded/);
    assert.equal(proxy.child.exitCode, null);
    assert.equal(proxy.child.pid, pid);

    // Local login is still on, and the provider now sits next to it.
    await page.goto(`${proxy.base}${SIGN_IN}?rd=%2F`);
    assert.ok(await page.isVisible('input[name=password]'));
    assert.ok(await page.isVisible('text=Sign in with authentik'));
    await screenshot(page, 'sign-in');
  });

  it('2. the provider test passes', (t) => {
    const check = billguard.run(['check', '--config', proxy.configPath]);
    assert.equal(check.status, 0, `billguard check failed:\n${check.stdout}\n${check.stderr}`);
    assert.ok(check.stdout.trim().split('\n').length >= 5, check.stdout);
    for (const line of check.stdout.trim().split('\n')) t.diagnostic(line);
  });

  it('3. log out, then a real OIDC login through the provider', async () => {
    await page.goto(`${proxy.base}/_billguard/sign_out`);
    const who = await context.request.get(`${proxy.base}/_billguard/whoami`);
    assert.equal(who.status(), 401);

    await page.goto(`${proxy.base}${SIGN_IN}?rd=%2Fbills%2Fdue`);
    await page.click('text=Sign in with authentik');
    await page.waitForURL(/\/if\/flow\//);
    await providerLogin(page, 'akadmin', 'akadmin-password');
    await page.waitForURL(`${proxy.base}/bills/due`);
    const echo = await echoOf(page);
    assert.equal(echo.headers['x-forwarded-user'], 'akadmin');
  });

  it('4. the admin mapping is verified on whoami', async () => {
    const res = await context.request.get(`${proxy.base}/_billguard/whoami`);
    assert.equal(res.status(), 200);
    const who = await res.json();
    assert.equal(who.user, 'akadmin');
    assert.equal(who.role, 'admin');
    assert.ok(who.groups.includes(billguard.ADMIN_GROUP), JSON.stringify(who));
  });

  it('5. local login turned off: the form is gone', async () => {
    const reloads = proxy.countLog(RELOADED);
    editConfig(proxy, (text) => text.replace(/^enabled = true$/m, 'enabled = false'));
    await proxy.waitForLog(RELOADED, reloads + 1);

    const fresh = await browser.newContext();
    try {
      const stranger = await fresh.newPage();
      // A navigation now goes straight to the provider.
      await stranger.goto(`${proxy.base}/bills`);
      assert.match(stranger.url(), /\/if\/flow\//);
      // The sign-in page has no form, and a posted form is refused.
      await stranger.goto(`${proxy.base}${SIGN_IN}?rd=%2F`);
      assert.equal(await stranger.locator('input[name=password]').count(), 0);
      await screenshot(stranger, 'sign-in-local-off');
      const posted = await fresh.request.post(`${proxy.base}${SIGN_IN}`, {
        form: { username: LOCAL_USER.username, password: LOCAL_USER.password, rd: '/' },
        maxRedirects: 0,
      });
      assert.ok(posted.status() >= 400 && posted.status() < 500, `status ${posted.status()}`);
      // The OIDC session from step 3 is untouched.
      const who = await context.request.get(`${proxy.base}/_billguard/whoami`);
      assert.equal(who.status(), 200);
    } finally {
      await fresh.close();
    }
  });
});

/// Rewrites the configuration file of the running proxy in place, the way
/// an editor or a ConfigMap update does: a new file renamed over the old.
function editConfig(proxy, change) {
  const next = change(readFileSync(proxy.configPath, 'utf8'));
  const tmp = `${proxy.configPath}.next`;
  writeFileSync(tmp, next);
  renameSync(tmp, proxy.configPath);
}
