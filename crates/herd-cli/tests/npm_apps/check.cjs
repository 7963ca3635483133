// require('herd-cluster') outside herd: the API's shape, and its calls fail as herd.js says
// (HERD_NO_CHANNEL). Prints `cjs-ok` or throws.
'use strict';

const assert = require('node:assert');
const herd = require('herd-cluster');

assert.deepStrictEqual(Object.keys(herd).sort(), ['cache', 'connect', 'listening', 'onRequest', 'ready', 'request']);
for (const name of ['request', 'onRequest', 'ready', 'listening', 'connect']) {
  assert.strictEqual(typeof herd[name], 'function', name);
}
assert.strictEqual(require('herd-cluster'), herd, 'one module object');
assert.strictEqual(herd.default, herd, "TypeScript's default import without esModuleInterop");
// The exports map's `require` entry (a folder install is a link: the path may be js/'s own).
assert.match(require.resolve('herd-cluster'), /[/\\]herd\.js$/);
assert.strictEqual(require('herd-cluster/package.json').name, 'herd-cluster');

const noChannel = { code: 'HERD_NO_CHANNEL' };
assert.throws(() => herd.cache, noChannel);
assert.throws(() => herd.request(1), noChannel);
assert.throws(() => herd.onRequest(() => 1), noChannel);
assert.throws(() => herd.ready(), noChannel);
assert.throws(() => herd.listening('127.0.0.1:1'), noChannel);
assert.throws(() => herd.connect({}), noChannel);

// Over a channel that is not connected: the cache's API, with its calls failing as documented.
const closed = herd.connect({ send() {}, on() {}, removeListener() {}, connected: false });
for (const name of ['get', 'json', 'peek', 'set', 'delete', 'ready', 'stats']) {
  assert.strictEqual(typeof closed.cache[name], 'function', `cache.${name}`);
}
assert.strictEqual(closed.cache.peek('k'), undefined);
assert.throws(() => closed.cache.peek(1), TypeError);

(async () => {
  await assert.rejects(closed.cache.get('k'), { code: 'HERD_CLOSED' });
  await assert.rejects(closed.cache.json('k'), { code: 'HERD_CLOSED' });
  await assert.rejects(closed.request('x'), { code: 'HERD_CLOSED' });
  await assert.rejects(closed.cache.json(1), TypeError);
  assert.strictEqual(await closed.ready(), false);
  assert.strictEqual(await closed.listening({ address: '::1', port: 80 }), false);
  console.log('cjs-ok');
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
