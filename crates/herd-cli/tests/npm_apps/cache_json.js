// cache.json under `herd run -w 2 --cache-dir DIR`, required by package name from a project that
// installed herd-cluster's tarball. Each worker prints one line: `json-ok SLOT {...}` or
// `json-failed SLOT why`. The cache folder starts with `own` = {"name":"first"} (slot 0 only) and
// `shared` = {"v":1}. The two take turns, so that no write (which invalidates, and makes a read
// in flight meanwhile not kept) overlaps a read whose local copy is checked:
//   slot 0: own's value is parsed once (the same object twice); after cache.set the next call
//           parses the new value; missing keys and bad JSON. Then it sets `go`, waits for `reader`
//           and changes `shared`.
//   slot 1: once `go` is set, parses `shared` (once), sets `reader`, waits for the invalidation
//           from slot 0 to drop its local copy, then gets the new version parsed.
'use strict';

const herd = require('herd-cluster');
const { cache } = herd;
const slot = process.env.HERD_WORKER_SLOT;
const DEADLINE_MS = 20000;

function check(ok, what) {
  if (!ok) throw new Error(what);
}

// Polls `test` (a condition, not a delay) every few ms until it holds, failing after the deadline.
async function until(what, test) {
  const end = Date.now() + DEADLINE_MS;
  for (;;) {
    if (await test()) return;
    if (Date.now() > end) throw new Error(`never: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function slot0() {
  const a = await cache.json('own');
  check(a !== null && typeof a === 'object' && a.name === 'first', `own parsed: ${JSON.stringify(a)}`);
  check(cache.peek('own') === '{"name":"first"}', 'own is held locally as its text');
  const b = await cache.json('own');
  check(a === b, 'a second call gives the same object (parsed once)');
  check((await cache.get('own')) === '{"name":"first"}', 'get still gives the text');

  check((await cache.set('own', '{"name":"second"}')) === true, 'set');
  const c = await cache.json('own');
  check(c !== a && c.name === 'second', `after set, the new value: ${JSON.stringify(c)}`);
  check(a.name === 'first', 'the old object is left as it was');
  const d = await cache.json('own');
  check(c === d, 'the new value is parsed once too');

  check((await cache.json('missing')) === undefined, 'a missing key is undefined');
  await cache.set('text', 'not json');
  let code = null;
  try {
    await cache.json('text');
  } catch (err) {
    code = err.code;
  }
  check(code === 'HERD_JSON', `bad JSON rejects with HERD_JSON, not ${code}`);

  await cache.set('go', 'yes');
  await until('slot 1 holds shared', async () => (await cache.get('reader')) !== undefined);
  await cache.set('shared', '{"v":2}');
  return { own: d };
}

async function slot1() {
  await until('slot 0 is done with its own', async () => (await cache.get('go')) !== undefined);
  const a = await cache.json('shared');
  check(a.v === 1 && a === (await cache.json('shared')), 'shared parsed once');
  check(cache.peek('shared') === '{"v":1}', 'shared is held locally');
  await cache.set('reader', 'holding');
  // slot 0's set invalidates the key here: the local copy, and the parsed value with it, go.
  await until('the invalidation of shared', () => cache.peek('shared') === undefined);
  const b = await cache.json('shared');
  check(b !== a && b.v === 2, `after the invalidation, the new value: ${JSON.stringify(b)}`);
  return { shared: b };
}

// The path the package chose: the addon herd names, unless the test turned it off.
async function path() {
  const want = process.env.HERD_NODE_ADDON === 'off' ? 'json' : 'addon';
  const stats = await cache.stats();
  check(stats.path === want, `the ${want} path: ${JSON.stringify(stats)}`);
}

path()
  .then(() => (slot === '0' ? slot0() : slot1()))
  .then(
  (r) => console.log(`json-ok ${slot} ${JSON.stringify(r)}`),
  (err) => console.log(`json-failed ${slot} ${String(err && err.stack).replace(/\n/g, ' | ')}`),
);
// Stays up until herd stops it.
setInterval(() => {}, 1 << 30);
