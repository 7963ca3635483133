// An HTTP server with a leak, as Node apps have: the first worker to start (the one that
// creates LEAK_ONCE_FILE) keeps 10 MB more every 100 ms, up to 300 MB. The rest, and the
// worker that replaces it, do not leak.
'use strict';

const fs = require('node:fs');
const http = require('node:http');

const kept = [];
try {
  fs.writeFileSync(process.env.LEAK_ONCE_FILE, String(process.pid), { flag: 'wx' });
  const grow = setInterval(() => {
    kept.push(Buffer.alloc(10 << 20, 1));
    if (kept.length >= 30) clearInterval(grow);
  }, 100);
} catch {
  // Someone leaks already.
}

const server = http.createServer((req, res) => {
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ pid: process.pid, kept: kept.length }));
});
server.listen(Number(process.env.PORT), () => console.log(`listening on ${server.address().port}`));
