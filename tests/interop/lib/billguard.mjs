// Starting and stopping billguard (the debug binary run.sh builds) for the
// browser scenarios: each instance gets its own configuration file in a
// fresh directory and a loopback port picked by the OS, and is stopped by
// PID. Its PID is also appended to $INTEROP_PIDS so run.sh's trap can stop
// it if this process dies first.

import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { env } from 'node:process';

export const BIN = env.BILLGUARD_BIN ?? 'target/debug/billguard';
export const ADMIN_GROUP = 'bill-tracker-admins';
export const CALLBACK_PATH = '/api/auth/oidc/callback';

export const CLIENTS = {
  basic: { id: 'billguard-basic', secret: 'basic-secret-0123456789abcdef', method: 'client_secret_basic' },
  post: { id: 'billguard-post', secret: 'post-secret-0123456789abcdef', method: 'client_secret_post' },
};

/// A free loopback port: bind port 0, read it, release it.
export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/// The [oidc] table for the interop provider.
export function oidcToml({ issuer, client = CLIENTS.basic, base }) {
  return `[oidc]
provider_name = "authentik"
issuer_url = "${issuer}"
client_id = "${client.id}"
client_secret = "${client.secret}"
token_auth_method = "${client.method}"
redirect_uri = "${base}${CALLBACK_PATH}"
scopes = "openid email profile groups"
admin_group = "${ADMIN_GROUP}"
`;
}

/// Starts billguard with `toml(base)` as its configuration file and waits
/// until it serves (and, when `ready` is set, until the provider metadata is
/// loaded), reading its JSON log lines.
export async function start({ toml, ready = true, name = 'billguard' }) {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const dir = mkdtempSync(join(tmpdir(), `interop-${name}-`));
  const configPath = join(dir, 'billguard.toml');
  writeFileSync(configPath, `listen = "127.0.0.1:${port}"\n${toml(base, dir)}`);

  const child = spawn(BIN, ['serve', '--config', configPath, '--log-format', 'json'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (env.INTEROP_PIDS) appendFileSync(env.INTEROP_PIDS, `${child.pid}\n`);

  const lines = [];
  const waiters = [];
  const onLine = (line) => {
    lines.push(line);
    for (const w of [...waiters]) {
      if (w.pattern.test(line)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  };
  for (const stream of [child.stdout, child.stderr]) {
    let rest = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk) => {
      rest += chunk;
      const parts = rest.split('\n');
      rest = parts.pop();
      parts.forEach(onLine);
    });
  }
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));

  const instance = {
    base,
    dir,
    configPath,
    child,
    logs: () => lines.join('\n'),
    /// How many log lines so far match `pattern`.
    countLog(pattern) {
      return lines.filter((l) => pattern.test(l)).length;
    },
    /// Resolves with the `occurrence`-th log line (past or future) matching
    /// `pattern`.
    waitForLog(pattern, occurrence = 1) {
      const seen = lines.filter((l) => pattern.test(l));
      if (seen.length >= occurrence) return Promise.resolve(seen[occurrence - 1]);
      let remaining = occurrence - seen.length;
      const counting = { test: (line) => pattern.test(line) && --remaining === 0 };
      return Promise.race([
        new Promise((resolve) => waiters.push({ pattern: counting, resolve })),
        exited.then(({ code, signal }) => {
          throw new Error(`${name} exited (code ${code}, signal ${signal}) before logging ${pattern}:\n${instance.logs()}`);
        }),
      ]);
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };

  await instance.waitForLog(/"Listening"/);
  if (ready) await instance.waitForLog(/Provider metadata loaded/);
  return instance;
}

/// Runs a billguard subcommand to completion, with `input` on stdin.
export function run(args, input) {
  const out = spawnSync(BIN, args, { encoding: 'utf8', input });
  return { status: out.status, stdout: out.stdout, stderr: out.stderr };
}

/// Whether this billguard build has a subcommand (features that land later
/// are detected rather than assumed).
export function hasSubcommand(name) {
  return run([name, '--help']).status === 0;
}
