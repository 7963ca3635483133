// herd's demo server: a plain Node HTTP server, written as it would be without herd. `herd run
// -- node server.js` runs it as N workers on one port: herd is their cluster primary, so every
// worker's listen($PORT) gets the one socket herd holds.
//                GET /          -> {pid, worker}
//                GET /cache/KEY     -> the KEY's value from herd's host-shared cache, with whether
//                                      this process already held it
//                GET /stats         -> this process's and the primary's cache counters
'use strict';

const http = require('node:http');
const path = require('node:path');
const herd = require(path.join(__dirname, '..', '..', 'js', 'herd.js'));

const worker = process.env.NODE_APP_INSTANCE || '-';

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

server.listen(Number(process.env.PORT || 8080), '127.0.0.1');
