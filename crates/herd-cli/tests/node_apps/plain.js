// A plain HTTP server with no cluster code at all.
'use strict';

const http = require('node:http');

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ pid: process.pid }));
});
server.listen(Number(process.env.PORT || 8000), () => {
  console.log(`listening on ${server.address().port}`);
});
