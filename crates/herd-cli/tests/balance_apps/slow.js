// A plain HTTP server whose handler waits on something else (a database, another service)
// before it answers: 20 ms per request, answered with this process's pid as JSON. No cluster or
// shutdown code at all.
'use strict';

const http = require('node:http');

const server = http.createServer((req, res) => {
  setTimeout(() => {
    const text = JSON.stringify({ pid: process.pid });
    res.writeHead(200, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
    });
    res.end(text);
  }, 20);
});
server.listen(Number(process.env.PORT || 8000), () => {
  console.log(`listening on ${server.address().port}`);
});
