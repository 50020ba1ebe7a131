// Processes for the benchmark: start a server, wait until it answers, read
// the resident memory of it and its children, stop it by its PID.

import { spawn } from "node:child_process";
import { openSync, readdirSync, readFileSync } from "node:fs";
import net from "node:net";

const started = [];

/** A free loopback port (bound, read and released again). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts `cmd` with its output in `log`. Returns the child; with `ready`
 * (a RegExp) it also resolves to the first stdout line that matches.
 */
export function start(name, cmd, args, { log, env, cwd, ready } = {}) {
  const out = openSync(log, "a");
  const child = spawn(cmd, args, {
    env: { ...process.env, ...env },
    cwd,
    stdio: ["ignore", ready ? "pipe" : out, out],
  });
  child.benchName = name;
  started.push(child);
  child.on("exit", (code, signal) => {
    child.exited = { code, signal };
  });
  if (!ready) return { child };
  const line = new Promise((resolve, reject) => {
    let buf = "";
    child.stdout.on("data", (chunk) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const l = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (ready.test(l)) resolve(l);
      }
    });
    child.on("exit", (code) => reject(new Error(`${name} exited (${code}) before it was ready; see ${log}`)));
  });
  return { child, line };
}

/** Polls `url` until it answers `status` (default 200). */
export async function waitFor(url, { status = 200, timeoutMs = 30000, child, headers } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last = "no answer";
  while (Date.now() < deadline) {
    if (child?.exited) throw new Error(`${child.benchName} exited (${JSON.stringify(child.exited)})`);
    try {
      const res = await fetch(url, { redirect: "manual", headers });
      await res.arrayBuffer();
      if (res.status === status) return;
      last = `status ${res.status}`;
    } catch (e) {
      last = e.cause?.code ?? e.message;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} not ready after ${timeoutMs} ms: ${last}`);
}

/** `pid` and all its descendants, from /proc. */
function tree(pid) {
  const parent = new Map();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // Field 4 (ppid) follows the command name in parentheses.
      const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      parent.set(Number(entry), Number(rest[1]));
    } catch {
      // The process ended while we looked.
    }
  }
  const out = [];
  for (const p of parent.keys()) {
    let q = p;
    while (q && q !== pid && q !== 1) q = parent.get(q);
    if (q === pid) out.push(p);
  }
  return out;
}

/** Sum of VmRSS (bytes) of `pid` and all its descendants. */
export function treeRss(pid) {
  let total = 0;
  for (const p of tree(pid)) {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${p}/status`, "utf8"));
      if (m) total += Number(m[1]) * 1024;
    } catch {
      // Gone.
    }
  }
  return total;
}

const TICK_US = 1e6 / 100; // USER_HZ is 100 on Linux

/** CPU time (µs, user and system) used so far by `pid` and its descendants. */
export function treeCpu(pid) {
  let user = 0;
  let system = 0;
  for (const p of tree(pid)) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, "utf8");
      const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      // utime and stime are fields 14 and 15 (rest starts at field 3).
      user += Number(rest[11]) * TICK_US;
      system += Number(rest[12]) * TICK_US;
    } catch {
      // Gone.
    }
  }
  return { user, system };
}

/** Stops everything started here, newest first: SIGTERM, then SIGKILL. */
export async function stopAll() {
  for (const child of started.reverse()) {
    if (child.exited || child.pid === undefined) continue;
    child.kill("SIGTERM");
    const gone = await Promise.race([
      new Promise((r) => child.once("exit", () => r(true))),
      new Promise((r) => setTimeout(() => r(false), 5000)),
    ]);
    if (!gone) child.kill("SIGKILL");
  }
  started.length = 0;
}
