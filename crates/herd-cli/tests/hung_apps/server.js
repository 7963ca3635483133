// An HTTP server as teams write them, with one route that blocks its event loop for good (a
// runaway regular expression, a synchronous loop): `node server.js`, port from PORT.
//   GET /      {"pid": ...}
//   GET /hang  never answers: the worker's event loop spins forever
'use strict';

const http = require('http');

const server = http.createServer((req, res) => {
  if (req.url === '/hang') {
    for (;;) {}
  }
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ pid: process.pid }));
});

server.listen(Number(process.env.PORT) || 3000);
