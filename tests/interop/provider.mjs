// An Authentik-shaped OpenID provider for billguard's interop tests.
//
// It is `oidc-provider` (an OpenID-certified implementation nobody on this
// project wrote), configured the way Authentik presents an application:
// the issuer ends in `/application/o/bill-tracker/` with its trailing slash,
// the scopes are `openid email profile groups`, group names arrive in a
// `groups` claim, there is one confidential client per token endpoint auth
// method, and an end-session endpoint. Users sign in on a login form that
// checks their password for real.
//
// It listens on loopback only, on a port the OS picks unless `--port` says
// otherwise, and prints one line when it serves:
//
//   READY http://127.0.0.1:PORT/application/o/bill-tracker/
//
// Users, clients and flags are documented in README.md beside this file.
// SIGTERM or SIGINT stops it.

import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes, scryptSync, timingSafeEqual } from 'node:crypto';
import { parseArgs } from 'node:util';
import { env, exit, stdout, stderr } from 'node:process';

import Provider from 'oidc-provider';

const ISSUER_PATH = '/application/o/bill-tracker/';
const ADMIN_GROUP = 'bill-tracker-admins';
const DEFAULT_REDIRECT_PATTERN = '^http://(127\\.0\\.0\\.1|localhost):[0-9]+/api/auth/oidc/callback$';
const DEFAULT_POST_LOGOUT_PATTERN = '^http://(127\\.0\\.0\\.1|localhost):[0-9]+/.*$';

// Test users. Passwords are stored as scrypt hashes and compared in
// constant time, so the login form really checks them.
const USERS = [
  {
    username: 'akadmin',
    password: 'akadmin-password',
    name: 'Ada Admin',
    email: 'ada@example.com',
    groups: [ADMIN_GROUP, 'staff'],
  },
  {
    username: 'bob',
    password: 'bob-password',
    name: 'Bob User',
    email: 'bob@example.com',
    groups: ['staff'],
  },
  {
    username: 'carol',
    password: 'carol-password',
    name: 'Carol Nogroups',
    email: 'carol@example.com',
    groups: [],
  },
];

// One confidential client per token endpoint auth method.
const CLIENTS = [
  { client_id: 'billguard-basic', client_secret: 'basic-secret-0123456789abcdef', token_endpoint_auth_method: 'client_secret_basic' },
  { client_id: 'billguard-post', client_secret: 'post-secret-0123456789abcdef', token_endpoint_auth_method: 'client_secret_post' },
];

const args = parseFlags();
const accounts = hashUsers(USERS);

// The port must be known before the issuer can be, so listen first and
// build the provider once the OS has picked one.
const server = createServer();
server.listen(args.port, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://${args.issuerHost}:${port}${ISSUER_PATH}`;
  const provider = buildProvider(issuer);
  server.on('request', route(provider));
  stdout.write(`READY ${issuer}\n`);
});
server.on('error', (error) => {
  stderr.write(`provider: cannot listen: ${error.message}\n`);
  exit(1);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    exit(0);
  });
}

// === flags ===

function parseFlags() {
  const { values } = parseArgs({
    options: {
      port: { type: 'string', default: env.INTEROP_PROVIDER_PORT || '0' },
      'issuer-host': { type: 'string', default: env.INTEROP_ISSUER_HOST || '127.0.0.1' },
      'redirect-uri': { type: 'string', multiple: true },
      'redirect-uri-pattern': { type: 'string' },
      'post-logout-redirect-uri-pattern': { type: 'string' },
      'claims-in-userinfo-only': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    stdout.write('usage: node provider.mjs [--port N] [--issuer-host 127.0.0.1|localhost] [--redirect-uri URI]... '
      + '[--redirect-uri-pattern REGEX] [--post-logout-redirect-uri-pattern REGEX] '
      + '[--claims-in-userinfo-only]\n(see README.md)\n');
    exit(0);
  }

  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    stderr.write(`provider: --port \`${values.port}\` is not a port number\n`);
    exit(2);
  }

  // The issuer may name the loopback interface as `localhost`, which gives
  // the provider a cookie jar apart from billguard's on 127.0.0.1.
  const issuerHost = values['issuer-host'];
  if (issuerHost !== '127.0.0.1' && issuerHost !== 'localhost') {
    stderr.write(`provider: --issuer-host \`${issuerHost}\` is not allowed; allowed: 127.0.0.1, localhost\n`);
    exit(2);
  }

  // Exact redirect URIs (Authentik's "strict" matching) from flags or env;
  // without any, a regular expression (Authentik's "regex" matching) that
  // admits billguard's default callback on any loopback port.
  const exact = values['redirect-uri']
    ?? (env.INTEROP_REDIRECT_URIS || '').split(/\s+/).filter(Boolean);
  const patternText = values['redirect-uri-pattern']
    ?? env.INTEROP_REDIRECT_URI_PATTERN
    ?? (exact.length === 0 ? DEFAULT_REDIRECT_PATTERN : undefined);
  const postLogoutText = values['post-logout-redirect-uri-pattern']
    ?? env.INTEROP_POST_LOGOUT_REDIRECT_URI_PATTERN
    ?? DEFAULT_POST_LOGOUT_PATTERN;

  return {
    port,
    issuerHost,
    redirectUris: exact,
    redirectPattern: patternText === undefined ? undefined : compile('redirect-uri-pattern', patternText),
    postLogoutPattern: compile('post-logout-redirect-uri-pattern', postLogoutText),
    claimsInUserinfoOnly: values['claims-in-userinfo-only'] || env.INTEROP_CLAIMS_IN_USERINFO_ONLY === '1',
  };
}

function compile(flag, text) {
  try {
    return new RegExp(text);
  } catch (error) {
    stderr.write(`provider: --${flag} \`${text}\` is not a regular expression: ${error.message}\n`);
    exit(2);
  }
}

// === provider ===

function buildProvider(issuer) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: `interop-${Date.now()}`, alg: 'RS256', use: 'sig' };
  // A registered URI is required; the pattern check below widens it.
  const placeholder = 'http://127.0.0.1:9/api/auth/oidc/callback';

  const provider = new Provider(issuer, {
    clients: CLIENTS.map((client) => ({
      ...client,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: args.redirectUris.length > 0 ? args.redirectUris : [placeholder],
      post_logout_redirect_uris: [placeholder.replace('/api/auth/oidc/callback', '/')],
    })),
    clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
    jwks: { keys: [signingKey] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      // Authentik's stock profile mapping carries the groups too.
      profile: ['name', 'given_name', 'preferred_username', 'nickname', 'groups'],
      groups: ['groups'],
    },
    // Authentik puts the scope claims in the ID token by default; the flag
    // leaves them to userinfo, as a provider with that option off does.
    conformIdTokenClaims: args.claimsInUserinfoOnly,
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
      revocation: { enabled: true },
    },
    routes: {
      authorization: '/authorize',
      token: '/token/',
      userinfo: '/userinfo/',
      jwks: '/jwks/',
      end_session: '/end-session/',
      revocation: '/revoke/',
    },
    interactions: { url: (_ctx, interaction) => `/if/flow/${interaction.uid}/` },
    findAccount: async (_ctx, sub) => {
      const account = accounts.get(sub);
      if (!account) return undefined;
      return { accountId: sub, claims: async () => claimsOf(account) };
    },
    ttl: {
      AccessToken: 600,
      AuthorizationCode: 60,
      IdToken: 600,
      Interaction: 600,
      RefreshToken: 3600,
      Session: 3600,
      Grant: 3600,
    },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page('Error', `<h1>Something went wrong</h1><p class="error">${escape(out.error)}: ${escape(out.error_description ?? '')}</p>`);
    },
  });

  // Authentik's "regex" redirect URI matching: the registered URIs, or a
  // URI the pattern matches in full.
  provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
    return this.redirectUris.includes(value) || (args.redirectPattern?.test(value) ?? false);
  };
  provider.Client.prototype.postLogoutRedirectUriAllowed = function postLogoutAllowed(value) {
    return this.postLogoutRedirectUris.includes(value) || args.postLogoutPattern.test(value);
  };

  provider.on('server_error', (_ctx, error) => stderr.write(`provider: server error: ${error.stack}\n`));
  provider.on('grant.error', (_ctx, error) => stderr.write(`provider: token error: ${error.message} ${error.error_description ?? ''}\n`));
  provider.on('authorization.error', (_ctx, error) => stderr.write(`provider: authorization error: ${error.message} ${error.error_description ?? ''}\n`));
  return provider;
}

function claimsOf(account) {
  return {
    sub: account.sub,
    email: account.email,
    email_verified: true,
    name: account.name,
    given_name: account.name.split(' ')[0],
    preferred_username: account.username,
    nickname: account.username,
    groups: account.groups,
  };
}

// === routing ===

// Requests under the issuer path go to oidc-provider as if it were mounted
// there; the login flow pages live under /if/flow/ as in Authentik.
function route(provider) {
  const mount = ISSUER_PATH.slice(0, -1);
  const callback = provider.callback();
  return (req, res) => {
    const url = new URL(req.url, 'http://provider.invalid');
    if (url.pathname.startsWith(`${mount}/`)) {
      req.originalUrl = req.url;
      req.url = req.url.slice(mount.length);
      callback(req, res);
      return;
    }
    const flow = url.pathname.match(/^\/if\/flow\/([A-Za-z0-9_-]+)\/(login\/)?$/);
    if (flow) {
      interaction(provider, req, res, flow[2] !== undefined).catch((error) => {
        stderr.write(`provider: interaction failed: ${error.message}\n`);
        if (!res.headersSent) send(res, 400, page('Error', '<h1>This sign-in link has expired</h1><p>Start again from the application.</p>'));
      });
      return;
    }
    send(res, 404, page('Not found', '<h1>Not found</h1>'));
  };
}

// The login flow: a form for the login prompt with a real password check,
// and implicit consent (Authentik's "implicit consent" authorization flow).
async function interaction(provider, req, res, submitted) {
  const details = await provider.interactionDetails(req, res);
  const { uid, prompt, params } = details;

  if (prompt.name === 'login') {
    if (!submitted || req.method !== 'POST') {
      send(res, 200, loginPage(uid, params.client_id, ''));
      return;
    }
    const form = new URLSearchParams(await readBody(req));
    const account = verify(form.get('username') ?? '', form.get('password') ?? '');
    if (!account) {
      stderr.write(`provider: login failed for user ${JSON.stringify(form.get('username') ?? '')}\n`);
      send(res, 200, loginPage(uid, params.client_id, 'Invalid username or password.'));
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: account.sub } }, { mergeWithLastSubmission: false });
    return;
  }

  if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }

  send(res, 400, page('Error', `<h1>Unsupported prompt ${escape(prompt.name)}</h1>`));
}

function verify(username, password) {
  const account = [...accounts.values()].find((a) => a.username === username || a.email === username);
  // Hash even for unknown users so the answer takes the same time.
  const candidate = scryptSync(password, account?.salt ?? 'unknown-user-salt', 32);
  if (!account) return undefined;
  return timingSafeEqual(candidate, account.hash) ? account : undefined;
}

function hashUsers(users) {
  return new Map(users.map((user) => {
    const salt = randomBytes(16).toString('hex');
    const sub = `interop-${user.username}`;
    const { password, ...rest } = user;
    return [sub, { ...rest, sub, salt, hash: scryptSync(password, salt, 32) }];
  }));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => {
      body += chunk;
      if (body.length > 16 * 1024) reject(new Error('form too large'));
    });
    req.on('end', () => resolve(body));
    req.on('error', reject);
  });
}

// === pages ===

function loginPage(uid, clientId, error) {
  return page('Sign in', `
<h1>Welcome to the interop provider</h1>
<p>Sign in to continue to <strong>${escape(clientId)}</strong>.</p>
${error ? `<p class="error" role="alert">${escape(error)}</p>` : ''}
<form method="post" action="/if/flow/${escape(uid)}/login/">
  <label>Username or email <input name="username" autocomplete="username" autofocus required></label>
  <label>Password <input name="password" type="password" autocomplete="current-password" required></label>
  <button type="submit">Log in</button>
</form>`);
}

async function logoutSource(ctx, form) {
  ctx.body = page('Sign out', `
<h1>Sign out</h1>
<p>Do you want to sign out of the interop provider?</p>
${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>`);
}

async function postLogoutSuccessSource(ctx) {
  ctx.body = page('Signed out', '<h1>You have been signed out</h1>');
}

function page(title, body) {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escape(title)} - interop provider</title>
<style>body{font-family:sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem}
label{display:block;margin:.8rem 0}input{display:block;width:100%;padding:.4rem}
button{margin-top:1rem;padding:.5rem 1.2rem}.error{color:#b00020}</style></head>
<body>${body}
<p><small>Test provider for billguard's interop suite (oidc-provider). Not for real accounts.</small></p>
</body></html>`;
}

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
