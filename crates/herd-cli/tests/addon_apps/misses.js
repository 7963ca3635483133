// Misses one after the other: `node misses.js <path of herd-cluster> N [timers]` gets keys
// k0..k(N-1) (with `timers`, making and clearing a timer before each)
// (each once, so the primary answers every one), checks each value is `value <i>`, then the
// 4 MiB value `big` (byte j is j % 251), and prints
//   misses addon WRONG N WAITS ANSWERED BUDGET_US turns TURNS
// (the addon path's stats().miss_wait, and the event loop's turns meanwhile)
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
  // Turns of the event loop while the misses run (a setImmediate that renews itself).
  let turns = 0;
  let counting = true;
  const tick = () => {
    turns += 1;
    if (counting) setImmediate(tick);
  };
  setImmediate(tick);
  const timers = process.argv[4] === 'timers';
  for (let i = 0; i < n; i += 1) {
    // As a handler with a timeout would: each timer made moves the loop's clock forward.
    if (timers) clearTimeout(setTimeout(() => {}, 50));
    if ((await c.get(`k${i}`)) !== `value ${i}`) wrong += 1;
  }
  // A large value comes as shared memory, its descriptor read with the reply: byte j is j % 251.
  const big = await c.get('big', { buffer: true });
  for (let j = 0; j < big.length; j += 4093) if (big[j] !== j % 251) wrong += 1;
  if (big.length !== 4 << 20) wrong += 1;
  counting = false;
  const { waits, answered, budget_us: budget } = (await c.stats()).miss_wait;
  console.log(`misses addon ${wrong} ${n} ${waits} ${answered} ${budget} turns ${turns}`);
}

main()
  .catch((err) => console.log(`failed ${err.stack}`))
  .finally(() => setInterval(() => {}, 1000));
