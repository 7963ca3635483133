// The ordinary Node server every contender of bench/scripts/balance.sh runs: no cluster code,
// no shutdown handling. Each response names the process that served it (x-worker).
'use strict';
const http = require('node:http');
http.createServer((req, res) => {
  res.setHeader('x-worker', String(process.pid));
  res.end('ok');
}).listen(Number(process.env.PORT));
