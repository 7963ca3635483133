// A Node worker that waits for the cache's warm-up longer than a cache call's usual 30 s
// deadline, while making other calls: `node ready.js <path of herd-cluster>`. Prints
//   ready <ok|CODE>   how herd.cache.ready({ timeout: 33000 }) ended
'use strict';

const herd = require(process.argv[2]);

async function main() {
  const ready = herd.cache.ready({ timeout: 33000 }).then(() => 'ok', (e) => e.code);
  // Another call once the first has waited 31 s.
  setTimeout(() => herd.cache.get('other', { timeout: 1000 }).catch(() => {}), 31000);
  console.log(`ready ${await ready}`);
  setInterval(() => {}, 1000);
}

main().catch((err) => {
  console.log(`failed ${err.stack}`);
  process.exit(1);
});
