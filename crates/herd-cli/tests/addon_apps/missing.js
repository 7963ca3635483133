// Distinct missing keys, as a scraper probing URLs makes them: `node missing.js <path of
// herd-cluster> WARM N CONC GO` gets WARM keys, prints `warm <path>`, waits for the file GO to
// exist, then gets N more distinct keys, CONC at a time, and prints `missed N <path> wrong W`
// (W: answers that were not "absent").
'use strict';

const herd = require(process.argv[2]);

async function flood(prefix, n, conc) {
  let wrong = 0;
  let next = 0;
  const one = async () => {
    while (next < n) {
      const i = next;
      next += 1;
      if ((await herd.cache.get(`search?q=${prefix}-${String(i).padStart(7, '0')}&page=1`)) != null) wrong += 1;
    }
  };
  await Promise.all(Array.from({ length: conc }, one));
  return wrong;
}

async function main() {
  const [warm, n, conc] = process.argv.slice(3, 6).map(Number);
  const go = process.argv[6];
  await flood('warm', warm, conc);
  const { path } = await herd.cache.stats();
  console.log(`warm ${path}`);
  const fs = require('fs');
  while (!fs.existsSync(go)) await new Promise((resolve) => setTimeout(resolve, 20));
  const wrong = await flood('attack', n, conc);
  console.log(`missed ${n} ${path} wrong ${wrong}`);
}

main()
  .catch((err) => console.log(`failed ${err.stack}`))
  .finally(() => setInterval(() => {}, 1000));
