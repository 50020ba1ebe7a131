// The billguard load benchmark. Started by benches/run.sh, which installs
// what it needs; run `node benches/lib/bench.mjs --help` for the options.
//
// On loopback it starts: nginx as the app (a fixed small body and a 100 KiB
// body), nginx as a plain reverse proxy, the test OpenID provider
// (tests/interop/provider.mjs), Apache httpd + mod_auth_openidc and
// billguard (the profile-guided release build, in-memory sessions).
// Sessions come from real logins through each proxy
// (benches/lib/login.mjs). Then, for every
// scenario, each target is loaded with wrk for a few seconds, the targets
// taking turns in a rotating order, every measurement repeated; resident
// memory of each target's process tree is sampled meanwhile. The table
// (benches/lib/report.mjs) goes to stdout and, with the raw numbers, to the
// run directory.

import { execFile } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { loginMany } from "./login.mjs";
import { freePort, start, stopAll, treeCpu, treeRss, waitFor } from "./procs.mjs";
import { APACHE, BILLGUARD, DIRECT, NGINX, render } from "./report.mjs";
import { CLIENTS, startProvider } from "./provider.mjs";

const run = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");

const HELP = `usage: node benches/lib/bench.mjs [options]
  --duration SECONDS   length of each wrk measurement (default 5)
  --repeats N          measurements per target and scenario (default 3)
  --sessions N         distinct sessions for the many-sessions scenario (default 1000)
  --memory-sessions N  also log in N sessions to billguard and measure its RSS
                       under load with all of them (default 0: skip)
  --login-parallel N   logins in flight at once (default 8)
  --scenarios LIST     comma-separated subset of: ${"c1,c50,c256,many,big"}
  --targets LIST       comma-separated subset of: direct,nginx,apache+openidc,billguard
  --billguard PATH     binary (default target/pgo/billguard, the image's build)
  --out DIR            run directory (default target/bench/<time>)`;

const SCENARIOS = [
  { id: "c1", title: "1 connection, small body, one session", conns: 1, path: "/small", sessions: 1 },
  { id: "c50", title: "50 connections, small body, one session", conns: 50, path: "/small", sessions: 1 },
  { id: "c256", title: "256 connections, small body, one session", conns: 256, path: "/small", sessions: 1 },
  { id: "many", title: "50 connections, small body, every request another session", conns: 50, path: "/small", sessions: "many" },
  { id: "big", title: "50 connections, 100 KiB body, one session", conns: 50, path: "/big", sessions: 1 },
];

let loginParallel = 8;

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  loginParallel = opts.loginParallel;
  const dir = path.resolve(opts.out ?? path.join(root, "target/bench", stamp()));
  mkdirSync(dir, { recursive: true });
  log(`run directory ${dir}`);

  const ports = {
    upstream: await freePort(),
    nginx: await freePort(),
    apache: await freePort(),
    billguard: await freePort(),
  };
  const wanted = new Set(opts.targets);

  // The app stand-in first: every proxy forwards to it.
  mkdirSync(path.join(dir, "www"), { recursive: true });
  writeFileSync(path.join(dir, "www/big.bin"), bigBody());
  const upstream = await nginx(dir, "upstream", { PORT: ports.upstream });
  const targets = [{ name: DIRECT, port: ports.upstream, pid: upstream.pid, cookies: [] }];

  if (wanted.has(NGINX)) {
    const proxy = await nginx(dir, "proxy", { PORT: ports.nginx, UPSTREAM_PORT: ports.upstream });
    targets.push({ name: NGINX, port: ports.nginx, pid: proxy.pid, cookies: [] });
  }

  const needsLogin = wanted.has(APACHE) || wanted.has(BILLGUARD);
  const manySessions = opts.scenarios.includes("many") ? opts.sessions : 1;
  let provider;
  if (needsLogin) {
    provider = await startProvider({
      dir,
      root,
      redirectUris: [
        `http://127.0.0.1:${ports.billguard}/api/auth/oidc/callback`,
        `http://127.0.0.1:${ports.apache}/redirect_uri`,
      ],
    });
    log(`provider ready at ${provider.issuer}`);
  }

  if (wanted.has(APACHE)) {
    const apache = await apacheOpenidc(dir, provider, { port: ports.apache, upstream: ports.upstream, sessions: manySessions });
    const cookies = await sessions(APACHE, ports.apache, manySessions, provider);
    targets.push({ name: APACHE, port: ports.apache, pid: apache.pid, cookies });
  }
  let bg;
  if (wanted.has(BILLGUARD)) {
    bg = await billguard(dir, provider, {
      port: ports.billguard,
      upstream: ports.upstream,
      bin: opts.billguard,
      maxSessions: 2 * (manySessions + opts.memorySessions),
    });
    const cookies = await sessions(BILLGUARD, ports.billguard, manySessions, provider);
    targets.push({ name: BILLGUARD, port: ports.billguard, pid: bg.pid, cookies });
  }

  // Every proxy must really forward and, where it authenticates, really
  // pass the identity: otherwise the numbers below would mean nothing.
  for (const t of targets) await preflight(t);

  const scenarios = SCENARIOS.filter((s) => opts.scenarios.includes(s.id));
  for (const t of targets) {
    t.files = {
      one: cookieFile(dir, t.name, t.cookies.slice(0, 1)),
      many: cookieFile(dir, `${t.name}-many`, t.cookies),
    };
  }

  log("warming up");
  for (const t of targets) await wrk(t, { conns: 50, path: "/small", seconds: 2, cookies: t.files.one });

  const results = {
    started: new Date().toISOString(),
    command: `benches/run.sh ${process.argv.slice(2).join(" ")}`.trim(),
    machine: await machine(),
    duration_s: opts.duration,
    repeats: opts.repeats,
    billguard_sessions: manySessions,
    scenarios: [],
  };
  for (const s of scenarios) {
    const entry = { ...s, sessions: s.sessions === "many" ? manySessions : 1, runs: [] };
    results.scenarios.push(entry);
    for (let rep = 0; rep < opts.repeats; rep++) {
      // Rotate the order so no target always runs first or last.
      const order = targets.map((_, i) => targets[(i + rep) % targets.length]);
      for (const t of order) {
        const cookies = s.sessions === "many" ? t.files.many : t.files.one;
        const r = await wrk(t, { conns: s.conns, path: s.path, seconds: opts.duration, cookies });
        entry.runs.push({ target: t.name, repeat: rep, ...r });
        const rps = ((r.requests * 1e6) / r.duration_us).toFixed(0);
        const errors = Object.values(r.errors).reduce((a, b) => a + b, 0);
        const cpu = r.cpu_us_per_req.user + r.cpu_us_per_req.system;
        log(`${s.id} #${rep + 1} ${t.name}: ${rps} req/s, p99 ${(r.latency_us.p99 / 1000).toFixed(2)} ms, ${errors} errors, RSS ${(r.peak_rss / 2 ** 20).toFixed(1)} MiB, CPU ${cpu.toFixed(1)} µs/req`);
      }
    }
  }

  // The table so far is kept even if the memory run fails.
  writeFileSync(path.join(dir, "results.json"), JSON.stringify(results, null, 2));
  if (opts.memorySessions > 0 && bg) {
    try {
      results.memory = await memoryRun(dir, provider, bg, ports, opts);
    } catch (error) {
      log(`memory run failed: ${error.message}`);
    }
  }

  results.finished = new Date().toISOString();
  writeFileSync(path.join(dir, "results.json"), JSON.stringify(results, null, 2));
  const table = render(results);
  writeFileSync(path.join(dir, "table.md"), table);
  console.log(`\n${table}`);
  log(`raw results: ${path.join(dir, "results.json")}`);
}

// === targets ===

async function nginx(dir, role, vars) {
  const conf = fill(`${role}-nginx.conf`, { DIR: dir, ...vars });
  for (const sub of ["body", "proxy", "fastcgi", "uwsgi", "scgi"]) {
    mkdirSync(path.join(dir, `${role === "upstream" ? "upstream" : "nginx-proxy"}-tmp`, sub), { recursive: true });
  }
  const file = path.join(dir, `${role}-nginx.conf`);
  writeFileSync(file, conf);
  const { child } = start(`nginx ${role}`, "nginx", ["-p", dir, "-c", file, "-g", "daemon off;"], {
    log: path.join(dir, `${role}-nginx.out`),
  });
  await waitFor(`http://127.0.0.1:${vars.PORT}/small`, { child });
  log(`nginx ${role} on 127.0.0.1:${vars.PORT} (pid ${child.pid})`);
  return child;
}

async function apacheOpenidc(dir, provider, { port, upstream, sessions }) {
  mkdirSync(path.join(dir, "apache-run"), { recursive: true });
  const file = path.join(dir, "apache-openidc.conf");
  writeFileSync(
    file,
    fill("apache-openidc.conf", {
      DIR: dir,
      PORT: port,
      UPSTREAM_PORT: upstream,
      ISSUER: provider.issuer,
      CLIENT_ID: CLIENTS.apache.id,
      CLIENT_SECRET: CLIENTS.apache.secret,
      CLIENT_AUTH: CLIENTS.apache.auth,
      PASSPHRASE: "apache-bench-crypto-passphrase-0123456789",
      SCOPES: provider.scopes,
      // Sessions, their login states, and room to spare.
      SHM_MAX: Math.max(1000, sessions * 3),
    }),
  );
  const { child } = start("apache", "apache2", ["-f", file, "-DFOREGROUND"], { log: path.join(dir, "apache.out") });
  // Unauthenticated script requests get 401 from mod_auth_openidc.
  await waitFor(`http://127.0.0.1:${port}/small`, { child, status: 401, headers: xhr() });
  log(`apache + mod_auth_openidc on 127.0.0.1:${port} (pid ${child.pid})`);
  return child;
}

async function billguard(dir, provider, { port, upstream, bin, maxSessions }) {
  const env = {
    BILLGUARD_LISTEN: `127.0.0.1:${port}`,
    BILLGUARD_UPSTREAM: `http://127.0.0.1:${upstream}`,
    OIDC_ISSUER_URL: provider.issuer,
    OIDC_CLIENT_ID: CLIENTS.billguard.id,
    OIDC_CLIENT_SECRET: CLIENTS.billguard.secret,
    OIDC_TOKEN_AUTH_METHOD: CLIENTS.billguard.auth,
    OIDC_REDIRECT_URI: `http://127.0.0.1:${port}/api/auth/oidc/callback`,
    OIDC_SCOPES: provider.scopes,
    BILLGUARD_SESSION__SECRET: "billguard-bench-session-secret-0123456789",
  };
  // The default bound (100,000) would start evicting in a memory run that
  // adds that many sessions to the ones already there.
  if (maxSessions > 100000) env.BILLGUARD_SESSION__MAX_SESSIONS = String(maxSessions);
  const { child } = start("billguard", bin, ["serve"], { log: path.join(dir, "billguard.log"), env });
  await waitFor(`http://127.0.0.1:${port}/_billguard/ready`, { child });
  log(`billguard on 127.0.0.1:${port} (pid ${child.pid})`);
  return child;
}

async function sessions(name, port, count, provider) {
  const t0 = Date.now();
  const cookies = await loginMany(`http://127.0.0.1:${port}/small`, count, { ...provider.user, parallel: loginParallel });
  const s = (Date.now() - t0) / 1000;
  log(`${name}: ${count} session(s) from real logins in ${s.toFixed(1)} s`);
  return cookies;
}

async function preflight(t) {
  const headers = { ...xhr() };
  if (t.cookies[0]) headers.cookie = t.cookies[0];
  const res = await fetch(`http://127.0.0.1:${t.port}/whoami`, { headers, redirect: "manual" });
  const text = (await res.text()).trim();
  if (res.status !== 200) throw new Error(`${t.name}: /whoami answered ${res.status}`);
  if (t.cookies.length && !/user=\S+/.test(text)) {
    throw new Error(`${t.name}: the upstream saw no identity (${text})`);
  }
  log(`${t.name}: upstream saw ${text}`);
}

// === measurement ===

async function wrk(t, { conns, path: p, seconds, cookies }) {
  const threads = Math.min(2, conns);
  const samples = [];
  const sample = () => samples.push(treeRss(t.pid));
  const timer = setInterval(sample, 200);
  sample();
  const cpu0 = treeCpu(t.pid);
  try {
    const { stdout } = await run(
      "wrk",
      ["-t", String(threads), "-c", String(conns), "-d", `${seconds}s`, "-s", path.join(here, "wrk.lua"), `http://127.0.0.1:${t.port}${p}`],
      { env: { ...process.env, BENCH_PATH: p, BENCH_COOKIES: cookies ?? "" }, maxBuffer: 1 << 20 },
    );
    const line = stdout.trim().split("\n").findLast((l) => l.startsWith("{"));
    if (!line) throw new Error(`wrk printed no result:\n${stdout}`);
    const cpu1 = treeCpu(t.pid);
    const result = JSON.parse(line);
    const perRequest = (us) => (result.requests ? us / result.requests : 0);
    return {
      ...result,
      peak_rss: Math.max(...samples, treeRss(t.pid)),
      cpu_us_per_req: {
        user: perRequest(cpu1.user - cpu0.user),
        system: perRequest(cpu1.system - cpu0.system),
      },
    };
  } finally {
    clearInterval(timer);
  }
}

/** billguard alone with many live sessions, loaded so that each request is another one. */
async function memoryRun(dir, provider, bg, ports, opts) {
  const count = opts.memorySessions;
  const t = { name: BILLGUARD, port: ports.billguard, pid: bg.pid };
  const cookies = await sessions(`${BILLGUARD} (memory)`, ports.billguard, count, provider);
  const file = cookieFile(dir, "billguard-memory", cookies);
  const r = await wrk(t, { conns: 50, path: "/small", seconds: opts.duration, cookies: file });
  const errors = Object.values(r.errors).reduce((a, b) => a + b, 0);
  log(`memory: ${count} more sessions, RSS ${(r.peak_rss / 2 ** 20).toFixed(1)} MiB, ${errors} errors`);
  return { sessions: count, rss: r.peak_rss, errors, requests: r.requests };
}

// === helpers ===

function fill(template, vars) {
  let text = readFileSync(path.join(root, "benches/conf", template), "utf8");
  for (const [k, v] of Object.entries(vars)) text = text.replaceAll(`{{${k}}}`, String(v));
  const left = /\{\{(\w+)\}\}/.exec(text);
  if (left) throw new Error(`${template}: no value for {{${left[1]}}}`);
  return text;
}

function cookieFile(dir, name, cookies) {
  const file = path.join(dir, `cookies-${name}.txt`);
  writeFileSync(file, cookies.map((c) => `${c}\n`).join(""));
  return file;
}

function xhr() {
  return { accept: "application/json", "x-requested-with": "XMLHttpRequest", "sec-fetch-mode": "cors", "sec-fetch-dest": "empty" };
}

function bigBody() {
  const buf = Buffer.alloc(100 * 1024);
  for (let i = 0; i < buf.length; i++) buf[i] = 97 + (i % 26);
  return buf;
}

async function machine() {
  const cpu = readFileSync("/proc/cpuinfo", "utf8");
  const mem = readFileSync("/proc/meminfo", "utf8");
  const version = async (cmd, args) => {
    try {
      const { stdout, stderr } = await run(cmd, args);
      return (stdout + stderr).trim().split("\n")[0];
    } catch {
      return "unknown";
    }
  };
  return {
    nproc: (cpu.match(/^processor\s*:/gm) ?? []).length,
    cpu: /model name\s*:\s*(.*)/.exec(cpu)?.[1] ?? "unknown",
    mem_gib: (Number(/MemTotal:\s+(\d+)/.exec(mem)?.[1] ?? 0) / 2 ** 20).toFixed(1),
    loadavg: readFileSync("/proc/loadavg", "utf8").trim(),
    nginx: await version("nginx", ["-v"]),
    apache: await version("apache2", ["-v"]),
    wrk: await version("wrk", ["-v"]),
  };
}

function parseArgs(argv) {
  const opts = {
    duration: 5,
    repeats: 3,
    sessions: 1000,
    memorySessions: 0,
    loginParallel: 8,
    scenarios: SCENARIOS.map((s) => s.id),
    targets: [DIRECT, NGINX, APACHE, BILLGUARD],
    billguard: path.join(root, "target/pgo/billguard"),
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) usage(`${a} needs a value`);
      return v;
    };
    const count = (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0) usage(`${a} needs a whole number, got ${v}`);
      return n;
    };
    if (a === "--help" || a === "-h") {
      console.log(HELP);
      process.exit(0);
    } else if (a === "--duration") opts.duration = count(value());
    else if (a === "--repeats") opts.repeats = count(value());
    else if (a === "--sessions") opts.sessions = Math.max(1, count(value()));
    else if (a === "--memory-sessions") opts.memorySessions = count(value());
    else if (a === "--login-parallel") opts.loginParallel = Math.max(1, count(value()));
    else if (a === "--scenarios") opts.scenarios = value().split(",");
    else if (a === "--targets") opts.targets = value().split(",");
    else if (a === "--billguard") opts.billguard = path.resolve(value());
    else if (a === "--out") opts.out = value();
    else usage(`unknown option ${a}`);
  }
  for (const s of opts.scenarios) if (!SCENARIOS.some((x) => x.id === s)) usage(`unknown scenario ${s}`);
  for (const t of opts.targets) if (![DIRECT, NGINX, APACHE, BILLGUARD].includes(t)) usage(`unknown target ${t}`);
  if (opts.duration < 1 || opts.repeats < 1) usage("--duration and --repeats must be at least 1");
  return opts;
}

function usage(message) {
  console.error(`bench: ${message}\n${HELP}`);
  process.exit(2);
}

function stamp() {
  return new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
}

function log(message) {
  console.error(`[${new Date().toISOString().slice(11, 19)}] ${message}`);
}

process.on("SIGINT", () => stopAll().then(() => process.exit(130)));
process.on("SIGTERM", () => stopAll().then(() => process.exit(143)));

main()
  .then(() => stopAll())
  .catch(async (error) => {
    console.error(`bench: ${error.stack ?? error}`);
    await stopAll();
    process.exit(1);
  });
