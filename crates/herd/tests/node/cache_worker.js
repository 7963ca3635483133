// A Node worker using herd.cache from js/herd.js, driven by messages from the test primary.
// Each command is answered with one message: {op, ...result} or {op, error, code}.
//   {op: 'gets', keys}    every key at once; {values: {key: {found, len, sum, text, binary}}}
//   {op: 'get', key}      one key, with {local} telling whether it was held before the call
//   {op: 'set', key, value, binary, ttl}   binary: value is base64 for a Buffer
//   {op: 'delete', key}, {op: 'ready'}, {op: 'stats'}
'use strict';

const path = require('node:path');
const herd = require(path.join(__dirname, '..', '..', '..', '..', 'js', 'herd.js'));

function describe(v) {
  if (v === undefined) return { found: false };
  const buf = Buffer.isBuffer(v) ? v : Buffer.from(v, 'utf8');
  let sum = 0n;
  for (const b of buf) sum = (sum * 31n + BigInt(b)) & 0xffffffffffffffffn;
  return {
    found: true,
    len: buf.length,
    sum: sum.toString(),
    binary: Buffer.isBuffer(v),
    text: typeof v === 'string' && v.length <= 256 ? v : null,
  };
}

async function run(m) {
  switch (m.op) {
    case 'gets': {
      const values = await Promise.all(m.keys.map((k) => herd.cache.get(k)));
      const out = {};
      m.keys.forEach((k, i) => (out[k] = describe(values[i])));
      return { values: out };
    }
    case 'get': {
      const local = herd.cache.peek(m.key) !== undefined;
      return { value: describe(await herd.cache.get(m.key)), local };
    }
    case 'set': {
      const value = m.binary ? Buffer.from(m.value, 'base64') : m.value;
      return { done: await herd.cache.set(m.key, value, m.ttl ? { ttl: m.ttl } : {}) };
    }
    case 'delete':
      return { existed: await herd.cache.delete(m.key) };
    case 'ready':
      return { ready: await herd.cache.ready({ timeout: 10000 }) };
    case 'stats':
      return { stats: await herd.cache.stats() };
    default:
      throw new Error(`unknown op ${m.op}`);
  }
}

process.on('message', (m) => {
  run(m).then(
    (r) => process.send({ op: m.op, ...r }),
    (err) => process.send({ op: m.op, error: err.message, code: err.code }),
  );
});
process.on('disconnect', () => process.exit(0));
