// A plain HTTP server with no cluster or shutdown code at all: every request is answered with
// this process's pid as JSON.
'use strict';

const http = require('node:http');

const server = http.createServer((req, res) => {
  const text = JSON.stringify({ pid: process.pid });
  res.writeHead(200, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
});
server.listen(Number(process.env.PORT || 8000), () => {
  console.log(`listening on ${server.address().port}`);
});
