// A server that cleans up only on SIGTERM, as apps written for systemd, Docker or Kubernetes
// do: a "database pool" (a timer) keeps the process alive until the handler closes it.
'use strict';

const http = require('node:http');

const pool = setInterval(() => {}, 1000);
const server = http.createServer((req, res) => res.end(JSON.stringify({ pid: process.pid })));
server.listen(Number(process.env.PORT), () => console.log(`listening on ${server.address().port}`));
process.on('SIGTERM', () => {
  console.log('SIGTERM: closing the pool');
  clearInterval(pool);
  server.close(() => process.exit(0));
});
