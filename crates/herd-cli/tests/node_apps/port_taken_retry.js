// A server that retries a taken port at once, 500 times, then says so: herd's log must not
// grow with every try.
'use strict';

const http = require('node:http');

let tries = 0;
const server = http.createServer((req, res) => res.end('ok'));
server.on('error', () => {
  tries += 1;
  if (tries < 500) setImmediate(() => server.listen(Number(process.env.PORT), '127.0.0.1'));
  else console.log(`gave up after ${tries} tries`);
});
server.listen(Number(process.env.PORT), '127.0.0.1');
setInterval(() => {}, 1000);
