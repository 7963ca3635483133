// herd's demo server: a plain Node HTTP server, run by `herd run` as N workers on one shared port.
//
// It listens on the socket herd passes as descriptor 3 (systemd's LISTEN_FDS convention), or on
// $PORT when run alone. GET /          -> {pid, worker}
//                GET /cache/KEY     -> the KEY's value from herd's host-shared cache, with whether
//                                      this process already held it
//                GET /stats         -> this process's and the primary's cache counters
// It tells herd it is ready once it listens (herd run --ready notice), and on disconnect (a stop
// or a rolling reload) it stops accepting, finishes the requests it has, and exits.
'use strict';

const http = require('node:http');
const path = require('node:path');
const herd = require(path.join(__dirname, '..', '..', 'js', 'herd.js'));

const worker = process.env.HERD_WORKER_ID || '-';

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

const server = http.createServer(async (req, res) => {
  try {
    if (req.url === '/') return reply(res, 200, { pid: process.pid, worker });
    if (req.url === '/stats') return reply(res, 200, await herd.cache.stats());
    if (req.url.startsWith('/cache/')) {
      const key = decodeURIComponent(req.url.slice('/cache/'.length));
      const held = herd.cache.peek(key) !== undefined;
      const value = await herd.cache.get(key);
      if (value === undefined) return reply(res, 404, { key, found: false, pid: process.pid });
      const length = Buffer.isBuffer(value) ? value.length : Buffer.byteLength(value);
      return reply(res, 200, { key, length, held, pid: process.pid, worker });
    }
    return reply(res, 404, { error: 'not found' });
  } catch (err) {
    return reply(res, 500, { error: err.message, code: err.code });
  }
});
server.keepAliveTimeout = 1000;

const listenFds = Number(process.env.LISTEN_FDS || 0);
const target = listenFds > 0 ? { fd: 3 } : { port: Number(process.env.PORT || 8080), host: '127.0.0.1' };
server.listen(target, () => {
  if (typeof process.send === 'function') herd.listening(listenFds > 0 ? 'fd:3' : server.address());
});

process.on('disconnect', () => {
  // Stop accepting; idle keep-alive connections are closed, busy ones finish.
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});
