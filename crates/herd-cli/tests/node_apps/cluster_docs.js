// Node's documentation cluster example, as teams write it: the primary forks one worker per
// CPU, each worker serves HTTP on one port. Under herd, herd is the primary.
'use strict';

const cluster = require('node:cluster');
const http = require('node:http');
const os = require('node:os');

const PORT = Number(process.env.PORT || 8000);

if (cluster.isPrimary) {
  console.log(`primary ${process.pid} is running`);
  for (let i = 0; i < os.availableParallelism(); i++) {
    cluster.fork();
  }
  cluster.on('exit', (worker) => {
    console.log(`worker ${worker.process.pid} died`);
  });
} else {
  http
    .createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ worker: cluster.worker.id, pid: process.pid }));
    })
    .listen(PORT, () => {
      console.log(`worker ${cluster.worker.id} (${process.pid}) listening on ${PORT}`);
    });
  cluster.worker.on('disconnect', () => {
    console.log(`worker ${cluster.worker.id} disconnected`);
  });
}
