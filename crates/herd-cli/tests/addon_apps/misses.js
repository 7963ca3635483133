// Misses one after the other: `node misses.js <path of herd-cluster> N [timers|io]` gets keys
// k0..k(N-1) (with `timers`, making and clearing a timer before each; with `io`, while a local
// TCP stream keeps the event loop's I/O busy)
// (each once, so the primary answers every one), checks each value is `value <i>`, then the
// 4 MiB value `big` (byte j is j % 251), and prints
//   misses addon WRONG N WAITS ANSWERED BUDGET_US turns TURNS busy BUSY
// (the addon path's stats().miss_wait, and the event loop's turns meanwhile)
//   misses json - - - - - <json_reason>                      (without the addon)
'use strict';

const net = require('net');
const herd = require(process.argv[2]);

// With `io`: a local TCP client streams to a server of this process while the misses run, as
// a busy server's connections would, so the event loop has I/O ready most of the time.
function streamLocally() {
  const server = net.createServer((s) => s.resume()).listen(0, '127.0.0.1');
  let on = true;
  server.on('listening', () => {
    const c = net.connect(server.address().port, '127.0.0.1');
    const chunk = Buffer.alloc(4096);
    const pump = () => {
      while (on && c.write(chunk));
      if (on) c.once('drain', pump);
      else c.end();
    };
    c.on('connect', pump);
  });
  return () => {
    on = false;
    server.close();
  };
}

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
  const stop = process.argv[4] === 'io' ? streamLocally() : () => {};
  if (process.argv[4] === 'io') await new Promise((r) => setTimeout(r, 50));
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
  stop();
  const { waits, answered, budget_us: budget, busy } = (await c.stats()).miss_wait;
  console.log(`misses addon ${wrong} ${n} ${waits} ${answered} ${budget} turns ${turns} busy ${busy}`);
}

main()
  .catch((err) => console.log(`failed ${err.stack}`))
  .finally(() => setInterval(() => {}, 1000));
