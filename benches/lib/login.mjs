// A scripted browser for the benchmark: signs in through a proxy's redirect,
// the provider's login (and consent) forms and the proxy's callback, and
// hands back the Cookie header the proxy then accepts as a session.
//
// It does what a browser does and nothing more: follows redirects, keeps
// cookies per origin, fills the username and password into the provider's
// form and submits every other field as it came. No store is written to
// directly. Keeping the provider's cookies between logins (`provider`
// jar) is a user who is already signed in at the provider opening the app
// in a fresh browser profile: every login still runs the whole
// authorization-code flow, only the password form is skipped.

import http from "node:http";

const MAX_STEPS = 30;
// Kept-alive connections make many logins cheap for the client side.
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

const NAVIGATION = {
  accept: "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
  "sec-fetch-mode": "navigate",
  "sec-fetch-dest": "document",
  "user-agent": "billguard-bench-login",
};

/** Cookies of one origin, enough for the flows here (no path scoping). */
export class Jar {
  constructor() {
    this.byOrigin = new Map();
  }

  store(origin, setCookies) {
    let jar = this.byOrigin.get(origin);
    if (!jar) {
      jar = new Map();
      this.byOrigin.set(origin, jar);
    }
    for (const line of setCookies) {
      const [pair, ...attrs] = line.split(";");
      const eq = pair.indexOf("=");
      if (eq < 1) continue;
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      const expired = attrs.some((a) => {
        const [k, v = ""] = a.trim().split("=");
        if (/^max-age$/i.test(k)) return Number(v) <= 0;
        if (/^expires$/i.test(k)) return Date.parse(v) <= Date.now();
        return false;
      });
      if (expired || value === "") jar.delete(name);
      else jar.set(name, value);
    }
  }

  /** A copy, so parallel logins never see each other's cookies. */
  clone() {
    const copy = new Jar();
    for (const [origin, jar] of this.byOrigin) copy.byOrigin.set(origin, new Map(jar));
    return copy;
  }

  header(origin) {
    const jar = this.byOrigin.get(origin);
    if (!jar || jar.size === 0) return undefined;
    return [...jar].map(([k, v]) => `${k}=${v}`).join("; ");
  }
}

/**
 * Signs in at `protectedUrl` (a page behind the proxy) and returns the
 * Cookie header for the proxy's origin. `provider` is a Jar holding the
 * provider's cookies of an earlier login (copied, never changed, unless
 * `shared` says this login fills it), or undefined for a browser that has
 * never been to the provider.
 */
export async function login(protectedUrl, { username, password, provider, shared = false }) {
  const target = new URL(protectedUrl);
  const jar = new Jar();
  const providerJar = provider ? (shared ? provider : provider.clone()) : new Jar();
  let url = target;
  let method = "GET";
  let body;
  let filledPassword = false;

  for (let step = 0; step < MAX_STEPS; step++) {
    const own = url.origin === target.origin;
    const cookies = own ? jar : providerJar;
    const headers = { ...NAVIGATION };
    const cookie = cookies.header(url.origin);
    if (cookie) headers.cookie = cookie;
    if (body) headers["content-type"] = "application/x-www-form-urlencoded";

    const res = await send(url, { method, headers, body });
    cookies.store(url.origin, res.setCookies);
    const text = res.text;

    if (res.status >= 300 && res.status < 400) {
      const location = res.location;
      if (!location) throw new Error(`${res.status} without Location from ${url}`);
      url = new URL(location, url);
      method = "GET";
      body = undefined;
      continue;
    }
    if (res.status !== 200) {
      throw new Error(`login: ${method} ${url.pathname} answered ${res.status}: ${snippet(text)}`);
    }
    if (own && url.pathname === target.pathname) {
      const session = jar.header(target.origin);
      if (!session) throw new Error("login: landed on the page without a session cookie");
      return session;
    }
    const form = parseForm(text, url);
    if (!form) {
      throw new Error(`login: ${url.pathname} is neither the page nor a form: ${snippet(text)}`);
    }
    const fields = new URLSearchParams();
    for (const [name, value, type] of form.fields) {
      if (type === "password" || /pass/i.test(name)) {
        fields.set(name, password);
        filledPassword = true;
      } else if (/^(login|user(name)?|uid(_field)?|email|identifier)$/i.test(name)) {
        fields.set(name, username);
      } else {
        fields.set(name, value);
      }
    }
    if (filledPassword && step > MAX_STEPS / 2) {
      throw new Error("login: the provider keeps asking for the password (wrong credentials?)");
    }
    url = form.action;
    method = form.method;
    body = method === "POST" ? fields.toString() : undefined;
    if (method === "GET") {
      url = new URL(url);
      url.search = fields.toString();
    }
  }
  throw new Error(`login: no session after ${MAX_STEPS} steps`);
}

/**
 * One HTTP/1.1 request with exactly the headers given. (fetch() would
 * rewrite Sec-Fetch-Mode to `cors`, and a proxy would rightly not treat it
 * as a navigation.)
 */
function send(url, { method, headers, body }) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => {
        text += chunk;
      });
      res.on("end", () => {
        const setCookie = res.headers["set-cookie"] ?? [];
        resolve({ status: res.statusCode, location: res.headers.location, setCookies: setCookie, text });
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

/** The first form of a page: action, method and its named fields. */
function parseForm(html, base) {
  const open = /<form\b([^>]*)>([\s\S]*?)<\/form>/i.exec(html);
  if (!open) return undefined;
  const attrs = open[1];
  const action = attr(attrs, "action") ?? base.href;
  const method = (attr(attrs, "method") ?? "GET").toUpperCase();
  const fields = [];
  for (const m of open[2].matchAll(/<(input|button)\b([^>]*)>/gi)) {
    const name = attr(m[2], "name");
    if (!name) continue;
    const type = (attr(m[2], "type") ?? (m[1].toLowerCase() === "button" ? "submit" : "text")).toLowerCase();
    if ((type === "checkbox" || type === "radio") && !/\bchecked\b/i.test(m[2])) continue;
    fields.push([name, decode(attr(m[2], "value") ?? ""), type]);
  }
  return { action: new URL(decode(action), base), method, fields };
}

function attr(attrs, name) {
  const m = new RegExp(`\\b${name}\\s*=\\s*("([^"]*)"|'([^']*)'|([^\\s>]+))`, "i").exec(attrs);
  return m ? (m[2] ?? m[3] ?? m[4]) : undefined;
}

function decode(text) {
  return text
    .replace(/&quot;/g, '"')
    .replace(/&#39;|&#x27;/g, "'")
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&amp;/g, "&");
}

function snippet(text) {
  return text.replace(/\s+/g, " ").slice(0, 200);
}

/**
 * Runs `count` logins, `parallel` at a time, and returns the Cookie headers.
 * The first login signs in at the provider with the password; the others
 * start from its provider cookies (single sign-on), as described above.
 */
export async function loginMany(protectedUrl, count, { parallel = 8, ...opts }) {
  const out = new Array(count);
  if (count === 0) return out;
  const provider = new Jar();
  out[0] = await login(protectedUrl, { ...opts, provider, shared: true });
  let next = 1;
  async function worker() {
    while (next < count) {
      const i = next++;
      try {
        out[i] = await login(protectedUrl, { ...opts, provider });
      } catch (error) {
        // A kept-alive connection the server closed just as it was reused:
        // start that login again, once.
        if (error.code !== "ECONNRESET") throw error;
        out[i] = await login(protectedUrl, { ...opts, provider });
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, count) }, worker));
  return out;
}
