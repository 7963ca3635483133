// A worker that lies on its cache channel (slot 0: it writes bytes that are no frame of herd's
// protocol to HERD_CACHE_FD, then serves on) beside an honest one (slot 1: reads a value through
// the herd-cluster package). `node liar.js <path of herd-cluster>`. Prints `lied 0` and
// `honest 1 PATH LEN`, or `failed SLOT why`.
'use strict';

const fs = require('fs');
const slot = process.env.HERD_WORKER_SLOT;

if (slot === '0') {
  const fd = Number(process.env.HERD_CACHE_FD);
  fs.writeSync(fd, Buffer.from('\xff\xff\xff\x7f this is not a frame of herd\'s protocol'.repeat(100), 'latin1'));
  console.log('lied 0');
} else {
  const herd = require(process.argv[2]);
  (async () => {
    const stats = await herd.cache.stats();
    const value = await herd.cache.get('big', { buffer: true });
    console.log(`honest ${slot} ${stats.path} ${value.length}`);
  })().catch((err) => console.log(`failed ${slot} ${err.stack}`));
}
setInterval(() => {}, 1000); // serve on, as a service would
