// native.js: herd.cache through herd's native addon (crates/herd-node, napi-rs), when this Node
// worker has one and a cache channel to use it on. Same API as herd.js's json path; large values
// come as Buffers over the primary's shared memory (one physical copy for the whole host), and
// invalidations are applied by the addon's own replica of the cache.
//
// Where the addon comes from: HERD_NODE_ADDON, a path set by `herd run` when the addon lies
// beside the herd binary or in ../lib/herd from it (the one built with the herd that runs this
// worker, so the two always match); `off` turns the addon off. The package itself holds no
// binary and runs no install script. Without one (or without a cache channel: not a Node worker of a herd primary with a cache),
// herd.js keeps its json path; stats() says which path is used, and why.
//
// The local copies: the addon's view holds each value with a version number; this module keeps,
// per key, the Buffer made for that version (and its text and parsed JSON once asked for). The
// view counts every change that drops a version (invalidation, eviction, replacement); this
// module reads that counter straight from the addon's memory (Atomics.load, no call). A local
// hit whose entry was checked since the last change (and has not expired) is a Map lookup;
// otherwise one addon call (`version`) checks it again. Entries whose version the view no
// longer holds are dropped when next looked up, and swept once a second after the view changed.
'use strict';

const fs = require('fs');

const SWEEP_MS = 1000;
const SWEEP_LATE_MS = 100;

// Loads and opens the addon: { addon, file } or { addon: null, reason }.
function load() {
  const setting = process.env.HERD_NODE_ADDON;
  if (setting === 'off' || setting === '0') return { addon: null, reason: 'HERD_NODE_ADDON=off' };
  if (!process.env.HERD_CACHE_FD) {
    return { addon: null, reason: 'no cache channel (not a Node worker of a herd primary with a cache)' };
  }
  if (!setting) {
    return {
      addon: null,
      reason: 'herd named no addon (HERD_NODE_ADDON): no libherd_node.so beside the herd binary or in ../lib/herd from it',
    };
  }
  const candidates = [setting];
  const tried = [];
  for (const file of candidates) {
    if (!fs.existsSync(file)) {
      tried.push(`${file}: not found`);
      continue;
    }
    try {
      const module = { exports: {} };
      process.dlopen(module, file);
      module.exports.open();
      return { addon: module.exports, file };
    } catch (err) {
      tried.push(`${file}: ${err.message}`);
    }
  }
  return { addon: null, reason: `no usable addon (${tried.join('; ')})` };
}

// The cache API over the addon, or null (with the reason) when there is none. herd.js lends
// its helpers: `herdError(message, code)`, `envLimit(name, fallback)` and its default timeout.
function nativeCache({ herdError, envLimit, defaultTimeout }) {
  const { addon, file, reason } = load();
  if (!addon) return { cache: null, reason };

  // The addon's errors carry their code as a prefix ("HERD_TIMEOUT: ...").
  function fromAddon(err) {
    const m = /^(HERD_[A-Z_]+): ([\s\S]*)$/.exec(err && err.message);
    return m ? herdError(`herd.js: ${m[2]}`, m[1]) : err;
  }

  const memo = new Map(); // key -> { version, buf (null: absent), expires, epoch, text, parsed, extra }
  // The text and parsed JSON kept with entries are this process's own memory: at most this many
  // bytes of them (the json path's HERD_CACHE_LOCAL_BYTES); past it they are made per call.
  const maxExtra = envLimit('HERD_CACHE_LOCAL_BYTES', 64 << 20);
  let extraBytes = 0;
  function forget(key) {
    const e = memo.get(key);
    if (e === undefined) return;
    memo.delete(key);
    extraBytes -= e.extra;
  }
  // Charges `bytes` to `e` if the budget allows: whether it did.
  function charge(e, bytes) {
    if (extraBytes + bytes > maxExtra) return false;
    e.extra += bytes;
    extraBytes += bytes;
    return true;
  }
  const inflight = new Map(); // key -> Promise of an entry
  const changes = new Int32Array(addon.changesBuffer().buffer, 0, 1);
  const epoch = () => Atomics.load(changes, 0);
  let fastHits = 0;
  let seenChanges = epoch();
  const sweep = setInterval(() => {
    const now = epoch();
    if (now === seenChanges) return;
    seenChanges = now;
    for (const [key, e] of memo) {
      if (!addon.holds(key, e.version)) forget(key);
    }
  }, SWEEP_MS);
  sweep.unref();

  // `seen`: the change counter read before the view was asked.
  function remember(key, [version, buf, ttl], seen) {
    // A millisecond early: the view's clock started before this one.
    const expires = ttl >= 0 ? Date.now() + ttl - 1 : Infinity;
    const e = { version, buf, expires, epoch: seen, text: undefined, parsed: undefined, extra: 0 };
    if (version >= 0) {
      forget(key);
      memo.set(key, e);
    }
    return e;
  }

  // The local view's entry for `key`, or undefined when it does not hold it.
  function lookup(key) {
    const seen = epoch();
    const e = memo.get(key);
    if (e !== undefined && e.epoch === seen && (e.expires === Infinity || e.expires > Date.now())) {
      fastHits += 1;
      return e;
    }
    const version = addon.version(key);
    if (version === undefined || version === null) return undefined;
    if (e !== undefined && e.version === version) {
      e.epoch = seen;
      return e;
    }
    const taken = addon.take(key);
    if (!taken) return undefined;
    return remember(key, taken, seen);
  }

  // An entry as the caller wants it: undefined (absent), a Buffer, or text when it is UTF-8.
  function present(e, buffer) {
    if (e.buf === null) return undefined;
    if (buffer) return e.buf;
    if (e.text !== undefined) return e.text === false ? e.buf : e.text;
    if (!addon.isUtf8(e.buf)) {
      e.text = false;
      return e.buf;
    }
    const text = e.buf.toString('utf8');
    // Kept (as UTF-16, at most twice the bytes) while the budget allows.
    if (charge(e, e.buf.length * 2)) e.text = text;
    return text;
  }

  const asKey = (key) => {
    if (typeof key !== 'string') throw new TypeError('herd.js: cache keys are strings');
    return key;
  };

  // Calls waiting for the primary, with their deadlines. One timer (every SWEEP_LATE_MS, while
  // any waits) rejects the late ones, rather than a timer per call: a miss costs no timer.
  const waiting = new Set();
  let lateTimer = null;
  function sweepLate() {
    addon.expire(); // the addon's own deadlines, for replies that never come
    const now = Date.now();
    for (const w of waiting) {
      if (w.deadline > now) continue;
      waiting.delete(w);
      const what = w.key === undefined ? w.what : `${w.what} ${JSON.stringify(w.key)}`;
      w.reject(herdError(`herd.js: ${what} timed out after ${w.timeout} ms`, 'HERD_TIMEOUT'));
    }
    if (waiting.size === 0) {
      clearInterval(lateTimer);
      lateTimer = null;
    }
  }

  // `p`, or a rejection (HERD_TIMEOUT) once `timeout` ms have passed without it settling (within
  // SWEEP_LATE_MS); the call itself is also bounded by the addon's own 30 s deadline.
  function within(p, timeout = defaultTimeout, what = 'cache call', key = undefined) {
    if (!(timeout > 0 && Number.isFinite(timeout))) {
      return Promise.reject(new RangeError('herd.js: timeout must be a positive number of ms'));
    }
    return new Promise((resolve, reject) => {
      const w = { deadline: Date.now() + timeout, timeout, what, key, reject };
      waiting.add(w);
      if (lateTimer === null) {
        lateTimer = setInterval(sweepLate, SWEEP_LATE_MS);
        lateTimer.unref();
      }
      p.then(
        (v) => {
          if (waiting.delete(w)) resolve(v);
        },
        (err) => {
          if (waiting.delete(w)) reject(fromAddon(err));
        },
      );
    });
  }

  // An addon older than this package may lack spin(): misses then wait for the event loop.
  const spin = typeof addon.spin === 'function' ? addon.spin : () => {};
  const spinStats = typeof addon.spinStats === 'function' ? addon.spinStats : () => [0, 0, 0, 0];
  let spinQueued = false;
  function spinNow() {
    spinQueued = false;
    spin();
  }

  function fetch(key, timeout) {
    let p = inflight.get(key);
    if (!p) {
      const seen = epoch();
      p = addon.get(key).then(
        (got) => {
          inflight.delete(key);
          return remember(key, got, seen);
        },
        (err) => {
          inflight.delete(key);
          throw err;
        },
      );
      inflight.set(key, p);
      // Once the calling JavaScript is done (every get of a Promise.all written), the addon
      // reads the replies for a few µs instead of leaving them to the event loop.
      if (!spinQueued) {
        spinQueued = true;
        queueMicrotask(spinNow);
      }
    }
    return within(p, timeout, 'get', key);
  }

  function parseJson(key, e) {
    try {
      return JSON.parse(e.buf.toString('utf8'));
    } catch (err) {
      throw herdError(`herd.js: the value of ${JSON.stringify(key)} is not JSON: ${err.message}`, 'HERD_JSON');
    }
  }

  const cache = {
    async get(key, { buffer = false, timeout } = {}) {
      const e = lookup(asKey(key)) ?? (await fetch(key, timeout));
      return present(e, buffer);
    },

    // Parsed once per version: the same object while the local copy is held.
    async json(key, { timeout } = {}) {
      const e = lookup(asKey(key)) ?? (await fetch(key, timeout));
      if (e.buf === null) return undefined;
      if (memo.get(key) !== e) return parseJson(key, e);
      if (e.parsed !== undefined) return e.parsed.value;
      const value = parseJson(key, e);
      // Counted as much again as its text, as on the json path.
      if (charge(e, e.buf.length)) e.parsed = { value };
      return value;
    },

    peek(key) {
      const e = lookup(asKey(key));
      if (e === undefined) return undefined;
      return e.buf === null ? null : present(e, false);
    },

    async set(key, value, { ttl, timeout } = {}) {
      asKey(key);
      let v;
      if (typeof value === 'string' || Buffer.isBuffer(value)) v = value;
      else if (value instanceof Uint8Array) v = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
      else throw new TypeError('herd.js: cache values are strings or Buffers');
      if (ttl !== undefined && !(Number.isSafeInteger(ttl) && ttl > 0)) {
        throw new RangeError('herd.js: ttl is a positive number of ms');
      }
      forget(key);
      return within(addon.set(key, v, ttl), timeout, 'set');
    },

    async delete(key, { timeout } = {}) {
      asKey(key);
      forget(key);
      return within(addon.delete(key), timeout, 'delete');
    },

    async ready({ timeout = defaultTimeout } = {}) {
      // The hub answers within `timeout`; 5 s more for a loaded host to deliver it.
      const warm = await within(addon.ready(timeout), timeout + 5000, 'ready');
      if (warm !== true) {
        throw herdError(`herd.js: the cache's warm-up did not finish within ${timeout} ms`, 'HERD_NOT_READY');
      }
      return true;
    },

    async stats({ timeout } = {}) {
      const stats = JSON.parse(await within(addon.stats(), timeout, 'stats'));
      stats.local_hits += fastHits;
      const [maxEntries, maxBytes] = addon.localLimits();
      const [waits, answered, budget, busy = 0] = spinStats();
      return {
        ...stats,
        local_max_entries: maxEntries,
        local_max_bytes: maxBytes,
        path: 'addon',
        addon: file,
        held_buffers: memo.size,
        held_extra_bytes: extraBytes,
        miss_wait: { waits, answered, budget_us: budget, busy },
      };
    },
  };
  return { cache, reason: null };
}

module.exports = { nativeCache };
