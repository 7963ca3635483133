// Misses one after the other: `node misses.js <path of herd-cluster> N` gets keys k0..k(N-1)
// (each once, so the primary answers every one), checks each value is `value <i>`, and prints
//   misses <addon|json> WRONG N WAITS ANSWERED BUDGET_US   (the addon path's stats().miss_wait)
//   misses json - - - - - <json_reason>                      (without the addon)
'use strict';

const herd = require(process.argv[2]);

async function main() {
  const c = herd.cache;
  const n = Number(process.argv[3]);
  const before = await c.stats();
  if (before.path !== 'addon') {
    console.log(`misses json - - - - - ${before.json_reason}`);
    return;
  }
  let wrong = 0;
  for (let i = 0; i < n; i += 1) {
    if ((await c.get(`k${i}`)) !== `value ${i}`) wrong += 1;
  }
  const { waits, answered, budget_us: budget } = (await c.stats()).miss_wait;
  console.log(`misses addon ${wrong} ${n} ${waits} ${answered} ${budget}`);
}

main()
  .catch((err) => console.log(`failed ${err.stack}`))
  .finally(() => setInterval(() => {}, 1000));
