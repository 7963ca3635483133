// An HTTP server on a Unix socket path (behind a proxy, say).
'use strict';

const http = require('node:http');

const path = process.env.SOCKET_PATH;
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ pid: process.pid }));
});
server.listen(path, () => {
  console.log(`listening on ${path}`);
});
