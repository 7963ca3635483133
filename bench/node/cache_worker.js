// The Node worker of bench/scripts/node_cache.sh: an ordinary program under `herd run` using the
// herd-cluster package (js/) as a user would. What it does comes from its environment:
//
//   BENCH_TEST=memory   prints `BENCH ready {...}` (pid, slot, path), then on SIGUSR2 gets every
//                       key (the file names in BENCH_DIR) one after the other, keeps every
//                       value referenced and reads each page of them once, then prints
//                       `BENCH loaded {...}` (pid, bytes, ms: the time to get them all).
//   BENCH_TEST=latency  waits for the primary's warm-up, then measures and prints
//                       `BENCH latency {...}` (microseconds): a local hit (`peek`, and `await get`
//                       of a held key) beside Node alone (a Map lookup, and `await` of an async
//                       function doing one), small misses answered by the primary (a fresh key of
//                       BENCH_DIR/small each time) and the first get of each BENCH_DIR/big value.
//   BENCH_SOURCE=herd   values from herd's cache: `cache.get(key, { buffer: true })`;
//   BENCH_SOURCE=naive  each worker reads every file itself (no herd cache): the memory baseline.
//
// `path` is what the package says it uses (`(await cache.stats()).path`: 'addon' or 'json'; a
// package that does not say is the json path), or 'naive'. Both --expose-gc and not work: with
// it, garbage is collected before each memory figure is taken. Stays up until herd stops it.
'use strict';

const fs = require('fs');
const path = require('path');
const { median, p99, r3 } = require('./figures.js');

const REPO = path.resolve(__dirname, '../..');
const herd = require(process.env.BENCH_PACKAGE || path.join(REPO, 'js'));

const TEST = process.env.BENCH_TEST || 'memory';
const SOURCE = process.env.BENCH_SOURCE || 'herd';
const DIR = process.env.BENCH_DIR;
const slot = process.env.HERD_WORKER_SLOT;
const gc = typeof global.gc === 'function' ? () => global.gc() : () => {};

function say(event, data) {
  console.log(`BENCH ${event} ${JSON.stringify({ pid: process.pid, slot, ...data })}`);
}

// `path`, and `why` when the package says why it is on the json path.
async function cachePath() {
  if (SOURCE === 'naive') return { path: 'naive' };
  const stats = await herd.cache.stats();
  const p = { path: typeof stats.path === 'string' ? stats.path : 'json' };
  if (stats.json_reason) p.why = String(stats.json_reason);
  return p;
}

// --- memory ------------------------------------------------------------------------------------
const held = []; // every value, referenced until the process ends

async function load() {
  const keys = fs.readdirSync(DIR).sort();
  const t = process.hrtime.bigint();
  let bytes = 0;
  for (const key of keys) {
    const value =
      SOURCE === 'naive' ? await fs.promises.readFile(path.join(DIR, key)) : await herd.cache.get(key, { buffer: true });
    if (!value) throw new Error(`no value for ${key}`);
    held.push(value);
    bytes += value.length;
  }
  const ms = Number(process.hrtime.bigint() - t) / 1e6;
  // Used as a program uses what it holds: every page read once.
  let sum = 0;
  for (const v of held) for (let i = 0; i < v.length; i += 4096) sum += v[i];
  gc();
  say('loaded', { keys: keys.length, bytes, ms: +ms.toFixed(1), sum: sum % 7 });
}

async function memory() {
  const p = await cachePath();
  gc();
  let started = false;
  process.on('SIGUSR2', () => {
    if (started) return;
    started = true;
    load().catch((err) => say('failed', { error: String(err && err.stack) }));
  });
  say('ready', p);
}

// --- latency -----------------------------------------------------------------------------------
const now = () => process.hrtime.bigint();
const us = (t0, t1) => Number(t1 - t0) / 1000;

async function latency() {
  const { cache } = herd;
  await cache.ready({ timeout: 120000 });
  const p = await cachePath();
  const small = fs.readdirSync(path.join(DIR, 'small')).sort().map((f) => `small/${f}`);
  const big = fs.readdirSync(path.join(DIR, 'big')).sort().map((f) => `big/${f}`);
  const out = { ...p };

  // Local hits on one held key: `peek` (sync) and `await get`, per call, in batches.
  const hot = small[0];
  await cache.get(hot, { buffer: true });
  if (cache.peek(hot) === undefined) throw new Error(`${hot} is not held locally after a get`);
  let sink = 0;
  const peekBatches = [];
  for (let b = 0; b < 21; b++) {
    const n = 200000;
    const t0 = now();
    for (let i = 0; i < n; i++) sink += cache.peek(hot).length;
    peekBatches.push(us(t0, now()) / n);
  }
  const getBatches = [];
  for (let b = 0; b < 21; b++) {
    const n = 20000;
    const t0 = now();
    for (let i = 0; i < n; i++) sink += (await cache.get(hot, { buffer: true })).length;
    getBatches.push(us(t0, now()) / n);
  }
  out.peek_us = r3(median(peekBatches.slice(1)));
  out.get_held_us = r3(median(getBatches.slice(1)));

  // What Node alone takes for the same two shapes: a Map lookup, and `await` of an async
  // function returning one (the floor of any `await get`).
  const map = new Map([[hot, cache.peek(hot)]]);
  const mapGet = async (k) => map.get(k);
  const mapBatches = [];
  const awaitBatches = [];
  for (let b = 0; b < 21; b++) {
    let n = 200000;
    let t0 = now();
    for (let i = 0; i < n; i++) sink += map.get(hot).length;
    mapBatches.push(us(t0, now()) / n);
    n = 20000;
    t0 = now();
    for (let i = 0; i < n; i++) sink += (await mapGet(hot)).length;
    awaitBatches.push(us(t0, now()) / n);
  }
  out.node_map_us = r3(median(mapBatches.slice(1)));
  out.node_await_us = r3(median(awaitBatches.slice(1)));

  // Small misses: each key asked once, so the primary answers every one (its hub holds them all).
  const WARM = 200;
  const miss = [];
  for (let i = 1; i < small.length; i++) {
    const t0 = now();
    const v = await cache.get(small[i], { buffer: true });
    const t1 = now();
    if (!v || v.length === 0) throw new Error(`no value for ${small[i]}`);
    sink += v.length;
    if (i > WARM) miss.push(us(t0, t1));
  }
  out.miss_us = r3(median(miss));
  out.miss_p99_us = r3(p99(miss));
  out.misses = miss.length;
  out.miss_wait = (await cache.stats()).miss_wait; // the addon path's reads in the call

  // Large values: the first get of each (not held here before).
  const first = [];
  for (const key of big) {
    const t0 = now();
    const v = await cache.get(key, { buffer: true });
    const t1 = now();
    if (!v) throw new Error(`no value for ${key}`);
    sink += v[v.length - 1];
    first.push(us(t0, t1));
  }
  out.big_first_us = r3(median(first));
  out.big_first_min_us = r3(Math.min(...first));
  out.big_first_max_us = r3(Math.max(...first));
  out.big_bytes = fs.statSync(path.join(DIR, big[0])).size;
  out.sink = sink % 7;
  say('latency', out);
}

(TEST === 'latency' ? latency() : memory()).catch((err) => say('failed', { error: String(err && err.stack) }));
setInterval(() => {}, 1 << 30);
