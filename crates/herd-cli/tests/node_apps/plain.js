// A plain HTTP server with no cluster code at all; GET /slow answers after a second.
'use strict';

const http = require('node:http');

const server = http.createServer((req, res) => {
  const answer = () => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ pid: process.pid }));
  };
  if (req.url === '/slow') {
    console.log('slow request started');
    setTimeout(answer, 1000);
  } else {
    answer();
  }
});
server.listen(Number(process.env.PORT || 8000), () => {
  console.log(`listening on ${server.address().port}`);
});
