// Turns the benchmark's raw results into the table the README shows: per
// scenario and target the median of the repeats with min–max, latency
// percentiles, errors, peak RSS, the CPU time the target itself spent per
// request (user + system, from /proc: steadier than req/s on a shared
// machine) and the ratios to the direct upstream and to nginx; then the
// targets billguard is held to, each marked met or not.
//
// Usage: node benches/lib/report.mjs target/bench/<run>/results.json

import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

export const DIRECT = "direct";
export const NGINX = "nginx";
export const APACHE = "apache+openidc";
export const BILLGUARD = "billguard";

/** Markdown for a whole run. */
export function render(results) {
  const out = [];
  for (const scenario of results.scenarios) {
    out.push(`#### ${scenario.title}`, "");
    out.push(
      "| target | req/s median (min–max) | p50 ms | p99 ms | p99.9 ms | errors | peak RSS MiB | CPU µs/req | × direct | × nginx |",
      "|---|---|---|---|---|---|---|---|---|---|",
    );
    const rows = summarize(scenario);
    const direct = rows.find((r) => r.target === DIRECT);
    const nginx = rows.find((r) => r.target === NGINX);
    for (const r of rows) {
      out.push(
        `| ${r.target} | ${fmtRate(r.rps)} (${fmtRate(r.rpsMin)}–${fmtRate(r.rpsMax)}) | ` +
          `${ms(r.p50)} | ${ms(r.p99)} | ${ms(r.p999)} | ${r.errors} | ${mib(r.rss)} | ${r.cpu.toFixed(1)} | ` +
          `${ratio(r.rps, direct?.rps)} | ${ratio(r.rps, nginx?.rps)} |`,
      );
    }
    out.push("");
  }
  out.push("#### Targets", "", ...verdicts(results).map((v) => `- ${v.met ? "met" : "**missed**"}: ${v.text}`), "");
  return out.join("\n");
}

/** One row per target: medians over the repeats, worst case for errors and RSS. */
export function summarize(scenario) {
  const byTarget = new Map();
  for (const run of scenario.runs) {
    if (!byTarget.has(run.target)) byTarget.set(run.target, []);
    byTarget.get(run.target).push(run);
  }
  return [...byTarget].map(([target, runs]) => {
    const rps = runs.map((r) => (r.requests * 1e6) / r.duration_us);
    return {
      target,
      repeats: runs.length,
      rps: median(rps),
      rpsMin: Math.min(...rps),
      rpsMax: Math.max(...rps),
      p50: median(runs.map((r) => r.latency_us.p50)),
      p99: median(runs.map((r) => r.latency_us.p99)),
      p999: median(runs.map((r) => r.latency_us.p999)),
      errors: runs.reduce((n, r) => n + Object.values(r.errors).reduce((a, b) => a + b, 0), 0),
      rss: Math.max(...runs.map((r) => r.peak_rss)),
      // The target's own processes only (not wrk, not the upstream).
      cpu: median(runs.map((r) => r.cpu_us_per_req.user + r.cpu_us_per_req.system)),
    };
  });
}

/** The targets as a list of {met, text}. */
export function verdicts(results) {
  const out = [];
  const find = (id) => results.scenarios.find((s) => s.id === id);
  const row = (s, t) => s && summarize(s).find((r) => r.target === t);
  for (const id of ["c50", "c256"]) {
    const s = find(id);
    const bg = row(s, BILLGUARD);
    const ng = row(s, NGINX);
    const ap = row(s, APACHE);
    if (!bg || !ng) continue;
    const vsNginx = bg.rps / ng.rps;
    out.push({ met: vsNginx >= 1.0, text: `${s.title}: billguard ${vsNginx.toFixed(2)}× nginx's req/s (target ≥ 1.0)` });
    if (ap) {
      const vsApache = bg.rps / ap.rps;
      out.push({ met: vsApache >= 5, text: `${s.title}: billguard ${vsApache.toFixed(2)}× apache+openidc's req/s (target ≥ 5)` });
    }
    const p99 = bg.p99 / ng.p99;
    out.push({ met: p99 <= 1.2, text: `${s.title}: billguard p99 ${p99.toFixed(2)}× nginx's (target ≤ 1.2)` });
  }
  if (!results.scenarios.some((s) => row(s, BILLGUARD))) return out;
  let errors = 0;
  for (const s of results.scenarios) errors += row(s, BILLGUARD)?.errors ?? 0;
  out.push({ met: errors === 0, text: `billguard errors over all runs: ${errors} (target 0)` });
  const few = Math.max(
    ...results.scenarios.filter((s) => s.sessions <= 1).map((s) => row(s, BILLGUARD)?.rss ?? 0),
  );
  out.push({ met: few < 32 * 2 ** 20, text: `billguard peak RSS with one session: ${mib(few)} MiB (target < 32)` });
  for (const s of results.scenarios.filter((s) => s.sessions > 1)) {
    const bg = row(s, BILLGUARD);
    if (!bg) continue;
    const limit = s.sessions >= 100000 ? 64 : 32;
    out.push({
      met: bg.rss < limit * 2 ** 20,
      text: `billguard peak RSS, ${s.title} (${results.billguard_sessions ?? s.sessions} live sessions): ${mib(bg.rss)} MiB (target < ${limit})`,
    });
  }
  if (results.memory) {
    const m = results.memory;
    out.push({
      met: m.rss < 64 * 2 ** 20,
      text: `billguard RSS with ${m.sessions} live sessions from real logins, under load: ${mib(m.rss)} MiB (target < 64)`,
    });
  }
  return out;
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

function fmtRate(x) {
  return x >= 1000 ? `${(x / 1000).toFixed(1)}k` : x.toFixed(0);
}

function ms(us) {
  return (us / 1000).toFixed(us < 10000 ? 2 : 1);
}

function mib(bytes) {
  return (bytes / 2 ** 20).toFixed(1);
}

function ratio(a, b) {
  return b ? `${(a / b).toFixed(2)}` : "–";
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const file = process.argv[2];
  if (!file) {
    console.error("usage: node benches/lib/report.mjs RESULTS.json");
    process.exit(2);
  }
  console.log(render(JSON.parse(readFileSync(file, "utf8"))));
}
