// A plain HTTP server that takes one connection at a time (server.maxConnections = 1: Node
// closes any connection beyond it); GET /slow answers after a second. No cluster code.
'use strict';

const http = require('node:http');

const server = http.createServer((req, res) => {
  const answer = () => {
    const text = JSON.stringify({ pid: process.pid });
    res.writeHead(200, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
    });
    res.end(text);
  };
  if (req.url === '/slow') {
    console.log('slow request started');
    setTimeout(answer, 1000);
  } else {
    answer();
  }
});
server.maxConnections = 1;
server.listen(Number(process.env.PORT || 8000), () => {
  console.log(`listening on ${server.address().port}`);
});
