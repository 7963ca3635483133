// A Node worker flooding js/herd.js's cache with distinct missing keys, driven by messages from
// the test primary. Each command is answered with one message: {op, ...result} or {op, error}.
//   {op: 'flood', prefix, from, count, batch, hot}  gets prefix+i for i in [from, from+count), batch
//       keys at a time, reading `hot` between batches; {max_local, stats, hot_local}
//   {op: 'peek', key}   {held, value}: the local copy only
'use strict';

const path = require('node:path');
const herd = require(path.join(__dirname, '..', '..', '..', '..', 'js', 'herd.js'));

async function run(m) {
  switch (m.op) {
    case 'flood': {
      let maxLocal = 0;
      for (let i = m.from; i < m.from + m.count; i += m.batch) {
        const keys = [];
        for (let j = i; j < Math.min(i + m.batch, m.from + m.count); j++) keys.push(`${m.prefix}${j}`);
        const values = await Promise.all(keys.map((k) => herd.cache.get(k)));
        if (values.some((v) => v !== undefined)) throw new Error('a missing key was found');
        if ((await herd.cache.get(m.hot)) === undefined) throw new Error('the hot key is missing');
        const s = await herd.cache.stats();
        maxLocal = Math.max(maxLocal, s.local_entries);
      }
      return { max_local: maxLocal, stats: await herd.cache.stats(), hot_local: herd.cache.peek(m.hot) !== undefined };
    }
    case 'peek': {
      const v = herd.cache.peek(m.key);
      return { held: v !== undefined, value: v === undefined ? null : v };
    }
    default:
      throw new Error(`unknown op ${m.op}`);
  }
}

process.on('message', (m) => {
  run(m).then(
    (r) => process.send({ op: m.op, ...r }),
    (err) => process.send({ op: m.op, error: err.message }),
  );
});
process.on('disconnect', () => process.exit(0));
