// A plain Node cluster primary, as teams write one, for bench/scripts/balance.sh: forks WORKERS
// workers running balance_app.js. The scheduling policy comes from NODE_CLUSTER_SCHED_POLICY
// (rr or none; Node reads it when `cluster` loads). On SIGHUP: a rolling reload the way PM2 does
// it, one worker at a time: fork the new one, wait for its 'listening', disconnect the old one
// (killed if it has not exited after 5 s), then the next; prints "reload done" at the end.
'use strict';
const cluster = require('node:cluster');
const path = require('node:path');

const workers = Number(process.env.WORKERS || 2);
cluster.setupPrimary({ exec: path.join(__dirname, 'balance_app.js') });
const policy = cluster.schedulingPolicy === cluster.SCHED_RR ? 'rr' : 'none';

const fork = () => new Promise((resolve) => {
  const w = cluster.fork();
  w.once('listening', () => resolve(w));
});
const retire = (w) => new Promise((resolve) => {
  const timer = setTimeout(() => w.process.kill('SIGKILL'), 5000);
  w.once('exit', () => { clearTimeout(timer); resolve(); });
  w.disconnect();
});

let reloading = Promise.resolve();
process.on('SIGHUP', () => {
  reloading = reloading.then(async () => {
    for (const old of Object.values(cluster.workers)) {
      await fork();
      await retire(old);
    }
    console.log('reload done');
  });
});
const stop = () => {
  for (const w of Object.values(cluster.workers)) w.process.kill('SIGKILL');
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

Promise.all(Array.from({ length: workers }, fork))
  .then(() => console.log(`primary ${process.pid}: ${workers} workers listening (${policy})`));
