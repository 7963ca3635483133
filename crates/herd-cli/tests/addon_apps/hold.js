// A Node worker that holds a large cache value, as a service keeping a big lookup table would:
// `node --expose-gc hold.js <path of herd-cluster>`. Prints one line per step, prefixed with its
// slot, for the test to read:
//   path SLOT PID <addon|json> <reason>
//   big SLOT LEN SUM INODE     the value's length, its checksum (see `sum`), and the inode of the
//                              memfd it maps (0: not mapped, a copy)
//   changed SLOT LEN SUM       after the folder's file changed, the new value
//   unmapped SLOT              the old value's mapping is gone once its Buffer was collected
// It waits (polling with a deadline) for the value to change, never sleeping to synchronize.
'use strict';

const fs = require('fs');
const herd = require(process.argv[2]);
const slot = process.env.HERD_WORKER_SLOT;
const DEADLINE_MS = 20000;

// A checksum that depends on every byte and its place (every page is read).
const sum = (buf) => {
  let s = 0;
  for (let i = 0; i < buf.length; i += 1) s = (Math.imul(s, 31) + buf[i]) >>> 0;
  return s;
};

// The inode of the memfd behind the `big` value's mapping, from /proc/self/maps; 0 if none.
function mappedInode() {
  for (const line of fs.readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    if (line.includes('memfd:herd-cache:big')) return Number(line.trim().split(/\s+/)[4]);
  }
  return 0;
}

const tick = () => new Promise((r) => setTimeout(r, 20));

async function main() {
  const stats = await herd.cache.stats();
  console.log(`path ${slot} ${process.pid} ${stats.path} ${stats.json_reason ?? stats.addon}`);
  let big = await herd.cache.get('big', { buffer: true });
  if ((await herd.cache.get('big', { buffer: true })) !== big) throw new Error('a second get gave another Buffer');
  const first = sum(big);
  const inode = mappedInode();
  console.log(`big ${slot} ${big.length} ${first} ${inode}`);

  const end = Date.now() + DEADLINE_MS;
  let now = big;
  while (sum(now) === first) {
    if (Date.now() > end) throw new Error('the value never changed');
    await tick();
    now = await herd.cache.get('big', { buffer: true });
  }
  console.log(`changed ${slot} ${now.length} ${sum(now)}`);
  if (inode !== 0) {
    big = null; // the program lets go of the old value
    for (;;) {
      global.gc();
      await tick();
      const left = fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(` ${inode} `));
      if (left.length === 0) break;
      if (Date.now() > end) throw new Error(`the old mapping stayed: ${left.join('; ')}`);
    }
  }
  console.log(`unmapped ${slot}`);
  setInterval(() => {}, 1000); // serve on, as a service would
}

main().catch((err) => {
  console.log(`failed ${slot} ${err.stack}`);
  process.exit(1);
});
