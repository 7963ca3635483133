// A server whose port may be taken: it reports the error Node gives it and exits.
'use strict';

const http = require('node:http');

const server = http.createServer((req, res) => res.end('ok'));
server.on('error', (err) => {
  console.log(`listen failed: ${err.code} ${err.syscall} ${err.port}`);
  process.exit(3);
});
server.listen(Number(process.env.PORT), '127.0.0.1', () => {
  console.log('listening');
});
