// Starts the test OpenID provider (tests/interop/provider.mjs, oidc-provider
// shaped like Authentik) for the benchmark, with the proxies' callback URLs
// registered exactly, and waits for its READY line.

import path from "node:path";

import { start } from "./procs.mjs";

/** A user of the test provider (tests/interop/README.md). */
export const USER = { username: "bob", password: "bob-password" };

/** Its confidential clients, one per proxy. */
export const CLIENTS = {
  billguard: { id: "billguard-basic", secret: "basic-secret-0123456789abcdef", auth: "client_secret_basic" },
  apache: { id: "billguard-post", secret: "post-secret-0123456789abcdef", auth: "client_secret_post" },
};

export async function startProvider({ dir, root, redirectUris }) {
  const args = [path.join(root, "tests/interop/provider.mjs")];
  for (const uri of redirectUris) args.push("--redirect-uri", uri);
  const { child, line } = start("provider", process.execPath, args, {
    log: path.join(dir, "provider.log"),
    cwd: path.join(root, "tests/interop"),
    ready: /^READY /,
  });
  const issuer = (await line).slice("READY ".length).trim();
  return { child, issuer, scopes: "openid email profile groups", user: USER };
}
