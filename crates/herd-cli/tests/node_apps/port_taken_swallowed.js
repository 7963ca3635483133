// A server whose listen error is swallowed, as Express 5's `app.listen(port, cb)` does when cb
// ignores its argument: the process lives on, serving nothing.
'use strict';

const http = require('node:http');

const server = http.createServer((req, res) => res.end('ok'));
server.on('error', () => {});
server.listen(Number(process.env.PORT), '127.0.0.1');
setInterval(() => {}, 1000);
