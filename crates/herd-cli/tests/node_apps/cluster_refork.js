// A cluster HTTP server as teams write it for production: the primary forks one worker per CPU
// and forks a new one whenever a worker dies; workers answer with their cluster.worker.id.
'use strict';

const cluster = require('node:cluster');
const http = require('node:http');
const os = require('node:os');

if (cluster.isPrimary) {
  for (let i = 0; i < os.availableParallelism(); i++) cluster.fork();
  cluster.on('exit', (worker, code, signal) => {
    console.log(`worker ${worker.id} died (${signal || code}); forking another`);
    cluster.fork();
  });
} else {
  const server = http.createServer((req, res) => {
    if (req.url === '/crash') process.exit(1);
    res.end(JSON.stringify({ worker: cluster.worker.id, pid: process.pid }));
  });
  server.listen(Number(process.env.PORT), () => console.log(`worker ${cluster.worker.id} listening`));
}
