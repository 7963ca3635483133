// herd-cluster in a worker of Node's own cluster (not herd's): its cache call must fail at once
// with HERD_NO_CHANNEL, not wait for an answer Node's primary never gives.
const cluster = require('node:cluster');

if (cluster.isPrimary) {
  cluster.fork().on('exit', (code) => process.exit(code));
} else {
  const herd = require(process.env.HERD_JS);
  const t = process.hrtime.bigint();
  (async () => {
    try {
      await herd.cache.get('k');
      console.log('a value, from no herd');
      process.exit(1);
    } catch (e) {
      const ms = Number(process.hrtime.bigint() - t) / 1e6;
      console.log(`${e.code} after ${ms.toFixed(1)} ms: ${e.message}`);
      process.exit(0);
    }
  })();
}
