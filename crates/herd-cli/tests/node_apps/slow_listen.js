// A plain HTTP server that takes a while to start (loading its routes, say) before it listens.
'use strict';

const http = require('node:http');

const server = http.createServer((req, res) => res.end(JSON.stringify({ pid: process.pid })));
setTimeout(() => {
  server.listen(Number(process.env.PORT), () => console.log(`listening on ${server.address().port}`));
}, Number(process.env.START_MS || 600));
