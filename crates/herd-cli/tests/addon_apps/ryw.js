// Reads its own writes: `node ryw.js <path of herd-cluster>` sets a key and gets it back, many
// times over, and prints
//   ryw <addon|json> STALE N   how many of the N gets returned the value the set replaced
'use strict';

const herd = require(process.argv[2]);

async function main() {
  const c = herd.cache;
  const { path } = await c.stats();
  const n = 500;
  let stale = 0;
  for (let i = 0; i < n; i += 1) {
    await c.get('k');
    await c.set('k', `v${i}`);
    if ((await c.get('k')) !== `v${i}`) stale += 1;
    await c.delete('k');
    if ((await c.get('k')) !== undefined) stale += 1;
  }
  console.log(`ryw ${path} ${stale} ${n}`);
  setInterval(() => {}, 1000);
}

main().catch((err) => {
  console.log(`failed ${err.stack}`);
  process.exit(1);
});
