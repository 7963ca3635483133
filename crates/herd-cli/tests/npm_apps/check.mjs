// import of herd-cluster outside herd: the default export is require()'s object, the named
// exports are its API, and calls fail as herd.js says (HERD_NO_CHANNEL). Prints `esm-ok`.
import assert from 'node:assert';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import herd, { cache, connect, listening, onRequest, ready, request } from 'herd-cluster';
import * as ns from 'herd-cluster';

const require = createRequire(import.meta.url);
assert.strictEqual(herd, require('herd-cluster'), 'the same object as require gives');
if (typeof import.meta.resolve === 'function') {
  // Node >= 20: the exports map's `import` entry.
  assert.match(fileURLToPath(import.meta.resolve('herd-cluster')), /node_modules[/\\]herd-cluster[/\\]herd\.mjs$/);
}
assert.deepStrictEqual(Object.keys(ns).sort(), ['cache', 'connect', 'default', 'listening', 'onRequest', 'ready', 'request']);
assert.strictEqual(connect, herd.connect);
assert.strictEqual(request, herd.request);
assert.strictEqual(onRequest, herd.onRequest);
assert.strictEqual(ready, herd.ready);
assert.strictEqual(listening, herd.listening);

const noChannel = { code: 'HERD_NO_CHANNEL' };
assert.throws(() => herd.cache, noChannel);
assert.throws(() => request(1), noChannel);
assert.throws(() => ready(), noChannel);
for (const name of ['get', 'json', 'peek', 'set', 'delete', 'ready', 'stats']) {
  assert.strictEqual(typeof cache[name], 'function', `cache.${name}`);
  assert.throws(() => cache[name]('k'), noChannel);
}
console.log('esm-ok');
