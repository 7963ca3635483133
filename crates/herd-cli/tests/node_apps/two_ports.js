// An app with a public port and an admin port, two ordinary servers in one process.
'use strict';

const http = require('node:http');

const api = http.createServer((req, res) => res.end(JSON.stringify({ api: true, pid: process.pid })));
const admin = http.createServer((req, res) => res.end(JSON.stringify({ admin: true, pid: process.pid })));
api.listen(Number(process.env.PORT), () => console.log('api listening'));
admin.listen(Number(process.env.ADMIN_PORT), () => console.log('admin listening'));
