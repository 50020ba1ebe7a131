// The upstream of the interop suite: it stands where BillTracker would and
// shows what billguard sent it.
//
// - Any page asked for as HTML answers with a page that greets the user of
//   the identity headers and lists every header received, as a table and as
//   JSON in <pre id="echo"> for the tests to read.
// - Any other request answers with that JSON alone:
//   {"method","path","headers":{name: value}} (names lowercased).
// - /ws is a WebSocket echo: it first sends {"hello": <the upgrade request's
//   headers>}, then returns every message it gets.
//
// It listens on 127.0.0.1, on a port the OS picks unless --port says
// otherwise, and prints `READY http://127.0.0.1:PORT` once it serves.

import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import { exit, stdout, stderr } from 'node:process';

import { WebSocketServer } from 'ws';

const { values } = parseArgs({ options: { port: { type: 'string', default: '0' } } });
const port = Number(values.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  stderr.write(`echo: --port \`${values.port}\` is not a port number\n`);
  exit(2);
}

const server = createServer((req, res) => {
  const echo = { method: req.method, path: req.url, headers: req.headers };
  const wantsHtml = (req.headers.accept ?? '').includes('text/html');
  if (!wantsHtml) {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(echo));
    return;
  }
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(page(echo));
});

const sockets = new WebSocketServer({ noServer: true });
server.on('upgrade', (req, socket, head) => {
  if (new URL(req.url, 'http://echo.invalid').pathname !== '/ws') {
    socket.destroy();
    return;
  }
  sockets.handleUpgrade(req, socket, head, (ws) => {
    ws.send(JSON.stringify({ hello: req.headers }));
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
});

server.listen(port, '127.0.0.1', () => {
  stdout.write(`READY http://127.0.0.1:${server.address().port}\n`);
});
server.on('error', (error) => {
  stderr.write(`echo: cannot listen: ${error.message}\n`);
  exit(1);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    exit(0);
  });
}

function page(echo) {
  const h = echo.headers;
  const user = h['x-forwarded-user'];
  const rows = Object.entries(h)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([name, value]) => `<tr${name.startsWith('x-forwarded-') ? ' class="id"' : ''}><td>${escape(name)}</td><td>${escape(value)}</td></tr>`)
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>BillTracker (echo)</title>
<style>body{font-family:sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem}
table{border-collapse:collapse;width:100%}td:first-child{white-space:nowrap}td{border-bottom:1px solid #ccc;padding:.3rem;font-family:monospace;font-size:.85rem;word-break:break-all}
tr.id td{background:#fff4c2;font-weight:bold}pre{display:none}</style></head>
<body>
<h1 id="greeting">${user ? `Hello, ${escape(user)}` : 'Hello, stranger'}</h1>
<p>Role: <strong id="role">${escape(h['x-forwarded-role'] ?? 'none')}</strong> · page <code id="path">${escape(echo.path)}</code></p>
<p>The upstream received these headers from billguard (identity headers highlighted):</p>
<table>${rows}</table>
<pre id="echo">${escape(JSON.stringify(echo))}</pre>
</body></html>`;
}

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
