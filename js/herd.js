// herd.js: herd's requests, replies and notices for Node.js programs, over Node's own IPC
// channel (`process.send`, json serialization). No dependencies; Node >= 16.
//
//   const herd = require('./herd.js');
//
//   herd.onRequest(handler)            answer the primary's requests (`WorkerHandle::request`).
//                                      handler(value) returns the answer or a Promise of it; a
//                                      throw or a rejection becomes an error reply (the Rust
//                                      caller gets Error::Remote with the error's message).
//                                      Requests that arrive before a handler is set wait for it.
//   herd.request(value, { timeout })   ask the primary (its Event::Request); a Promise of the
//                                      answer. Rejects on an error reply (err.code
//                                      'HERD_REMOTE'), after `timeout` ms (default 30000,
//                                      err.code 'HERD_TIMEOUT') or when the channel closes
//                                      (err.code 'HERD_CLOSED').
//   herd.ready()                       tell the primary this worker is ready (Event::Ready).
//   herd.listening(address)            tell the primary where this worker listens
//                                      (Event::Listening); a string, or `server.address()`.
//                                      Both give a Promise of true once written, false if the
//                                      channel is closed (they never reject).
//   herd.cache                         the host-shared cache (see below).
//   herd.connect(target)               the same API over another channel, e.g. a ChildProcess
//                                      from `child_process.fork(..., { serialization: 'json' })`
//                                      running a herd Rust worker. `connect(process)` is the
//                                      default instance above.
//
// The cache (the primary's hub, loaded from Redis or files once for the whole host):
//   herd.cache.get(key, { buffer })    a Promise of the value: a string when it is UTF-8 text, a
//                                      Buffer otherwise (or always, with buffer: true);
//                                      undefined if the key does not exist. Answered from this
//                                      process's local copy when it has one; otherwise the primary
//                                      answers (concurrent gets of one key share one call).
//   herd.cache.json(key)               like get, then JSON.parse: a Promise of the parsed value
//                                      (undefined if the key does not exist). Parsed once per
//                                      process per version: while the local copy is held, every
//                                      call returns the same object; it goes with the copy when
//                                      the key is invalidated, replaced or evicted. Shared, so
//                                      do not mutate it. Bad JSON rejects (err.code 'HERD_JSON').
//   herd.cache.peek(key)               the local copy only, synchronously: the value, null if the
//                                      key is known not to exist, undefined if not held here.
//   herd.cache.set(key, value, { ttl })  writes through the primary (to Redis) and invalidates the
//                                      key in every worker; value: a string or a Buffer; ttl in ms.
//   herd.cache.delete(key)             deletes it everywhere; a Promise of whether it existed.
//   herd.cache.ready({ timeout })      resolves once the primary's warm-up is done.
//   herd.cache.stats()                 this process's counters and the primary's hub's.
//   The local copies are bounded: at most HERD_CACHE_LOCAL_ENTRIES entries (env, default 10000)
//   and about HERD_CACHE_LOCAL_BYTES bytes (env, default 64 MiB; keys and values as UTF-16 or
//   Buffer bytes plus 64 per entry), the least recently used evicted first. A key known not to
//   exist is remembered no longer than the primary says (its miss TTL), and never over 5 s.
//   All take { timeout } (ms, default 30000) and reject with err.code 'HERD_REMOTE' (the
//   primary's error, e.g. Redis down and the key never loaded), 'HERD_TIMEOUT' or 'HERD_CLOSED'.
//   The primary pushes invalidations (NODE_HERD_CTL cache_invalidate / cache_clear, numbered),
//   so a local copy is dropped as soon as the value changes anywhere.
//   Under `herd run`, with herd's native addon (native.js: found beside the herd binary, or built
//   when this package was installed), the cache goes over a second channel in herd's binary
//   protocol instead, and a large value is a Buffer over the primary's shared memory: one
//   physical copy for the whole host, copy-on-write (a write changes this process's copy only;
//   do not write). Its text (get without buffer: true) and parsed JSON are this process's own.
//   Without the addon, large values arrive as a copy (one per Node process that asks).
//   stats().path says which: 'addon' or 'json' (with json_reason).
//
// Wire: herd's envelopes are Node internal messages (`cmd` starting with 'NODE_'), so Node hands
// them to 'internalMessage' and a program's process.on('message') never sees them:
//   {cmd: 'NODE_HERD_REQ', id, data}   a request (id: a positive integer, unique per sender)
//   {cmd: 'NODE_HERD_REP', id, data}   its answer, or {cmd: 'NODE_HERD_REP', id, error: 'text'}
//   {cmd: 'NODE_HERD_CTL', data}       a notice: {type: 'ready'}, {type: 'listening', address};
//                                      from the primary: {type: 'cache_invalidate', keys, seq},
//                                      {type: 'cache_clear', seq}
//   {cmd: 'NODE_HERD_CACHE', id, data} a cache call: {op: 'get', key}, {op: 'set', key, value,
//                                      encoding, ttl_ms}, {op: 'delete', key}, {op: 'ready'},
//                                      {op: 'stats'}; answered by NODE_HERD_REP
// Plain messages stay plain: use process.send and process.on('message') as usual.
'use strict';

const INSTANCE = Symbol.for('herd.js/instance');
const DEFAULT_TIMEOUT_MS = 30000;
// Bounds of the local copies of the cache (see above).
const ENTRY_OVERHEAD = 64;
const MAX_MISS_TTL_MS = 5000;

function envLimit(name, fallback) {
  const n = Number(process.env[name]);
  return Number.isSafeInteger(n) && n > 0 ? n : fallback;
}

function herdError(message, code) {
  const err = new Error(message);
  err.code = code;
  return err;
}

function errorText(err) {
  if (err instanceof Error) return err.message || String(err);
  if (typeof err === 'string') return err;
  try {
    return JSON.stringify(err) ?? String(err);
  } catch {
    return String(err);
  }
}

// undefined is not JSON: an envelope without `data` would be malformed, so it travels as null.
const jsonValue = (v) => (v === undefined ? null : v);

function formatAddress(address) {
  if (address && typeof address === 'object' && 'port' in address) {
    const host = String(address.address ?? '');
    return host.includes(':') ? `[${host}]:${address.port}` : `${host}:${address.port}`;
  }
  return String(address);
}

// Whether this process's own channel is herd's: herd names itself to its workers
// (HERD_PRIMARY_PID); Node's cluster, PM2 and other managers give a channel too, whose primary
// would never answer herd's requests. (Run `node` itself under herd: behind a wrapper that does
// not exec it, such as `npm start`, the channel is not herd's either.)
function herdChannel() {
  // Its parent too: a child a herd worker forks (child_process.fork) inherits the variable,
  // but its channel is the worker's.
  return typeof process.send === 'function' && process.env.HERD_PRIMARY_PID === String(process.ppid);
}

function connect(target) {
  if (!target || typeof target.send !== 'function' || typeof target.on !== 'function') {
    throw herdError('herd.js: no IPC channel (start this program from a herd primary)', 'HERD_NO_CHANNEL');
  }
  if (target === process && !herdChannel()) {
    throw herdError(
      'herd.js: this process has a channel, but not herd\'s (HERD_PRIMARY_PID is not set: Node\'s cluster, PM2 or another manager started it); start it with `herd run`',
      'HERD_NO_CHANNEL',
    );
  }
  if (target[INSTANCE]) return target[INSTANCE];

  let nextId = 1;
  const pending = new Map(); // id -> { resolve, reject, timer }
  let handler = null;
  let waiting = []; // requests that arrived before a handler was set

  // Sends an envelope; calls back with an error instead of throwing or emitting 'error'.
  function send(envelope, done) {
    if (!target.connected) {
      done(herdError('herd.js: the channel is closed', 'HERD_CLOSED'));
      return;
    }
    try {
      target.send(envelope, (err) => done(err || null));
    } catch (err) {
      done(err); // not serializable (a BigInt, a cycle)
    }
  }

  function reply(id, outcome) {
    const ignore = () => {};
    if (outcome.ok) {
      send({ cmd: 'NODE_HERD_REP', id, data: jsonValue(outcome.value) }, (err) => {
        if (err && err.code !== 'HERD_CLOSED' && target.connected) {
          send({ cmd: 'NODE_HERD_REP', id, error: `reply not sendable: ${errorText(err)}` }, ignore);
        }
      });
    } else {
      send({ cmd: 'NODE_HERD_REP', id, error: errorText(outcome.error) }, ignore);
    }
  }

  function serve(id, data) {
    let result;
    try {
      result = handler(data);
    } catch (error) {
      reply(id, { ok: false, error });
      return;
    }
    Promise.resolve(result).then(
      (value) => reply(id, { ok: true, value }),
      (error) => reply(id, { ok: false, error }),
    );
  }

  // Internal messages do not keep a Node child alive (only 'message' and 'disconnect' listeners
  // do). While a handler is set or a reply is awaited, a 'disconnect' listener keeps the
  // channel referenced, as a 'message' listener would, and fails what still waits once it closes.
  let watching = false;
  function onDisconnect() {
    for (const p of pending.values()) {
      clearTimeout(p.timer);
      p.reject(herdError('herd.js: the channel closed before the reply', 'HERD_CLOSED'));
    }
    pending.clear();
  }
  function watch() {
    const need = handler !== null || pending.size > 0;
    if (need && !watching) target.on('disconnect', onDisconnect);
    else if (!need && watching) target.removeListener('disconnect', onDisconnect);
    watching = need;
  }
  const settle = (id) => {
    const p = pending.get(id);
    if (p) {
      pending.delete(id);
      clearTimeout(p.timer);
      watch();
    }
    return p;
  };

  // Sends a request envelope (`cmd`) and resolves with its reply's data.
  function call(cmd, data, timeout) {
    if (!(timeout > 0 && Number.isFinite(timeout))) {
      return Promise.reject(new RangeError('herd.js: timeout must be a positive number of ms'));
    }
    const id = nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        settle(id);
        reject(herdError(`herd.js: request ${id} timed out after ${timeout} ms`, 'HERD_TIMEOUT'));
      }, timeout);
      pending.set(id, { resolve, reject, timer });
      watch();
      send({ cmd, id, data }, (err) => {
        if (err && settle(id)) reject(err);
      });
    });
  }

  // The local view of the host-shared cache: key -> { value, expires, size } (value null: known
  // absent). A Map iterates in insertion order: a hit re-inserts its key, so the first key is
  // the least recently used, evicted first when over either bound.
  const local = new Map();
  const maxEntries = envLimit('HERD_CACHE_LOCAL_ENTRIES', 10000);
  const maxBytes = envLimit('HERD_CACHE_LOCAL_BYTES', 64 << 20);
  let localBytes = 0;
  let evictions = 0;
  let seenSeq = 0; // the highest invalidation number applied
  const inflight = new Map(); // key -> Promise of the primary's answer
  const counters = { local_hits: 0, local_misses: 0 };

  function forget(key) {
    const e = local.get(key);
    if (e === undefined) return;
    local.delete(key);
    localBytes -= e.size;
  }

  function forgetAll() {
    local.clear();
    localBytes = 0;
  }

  const valueBytes = (value) => (value === null ? 0 : Buffer.isBuffer(value) ? value.length : value.length * 2);

  function trim() {
    while (local.size > maxEntries || localBytes > maxBytes) {
      forget(local.keys().next().value);
      evictions += 1;
    }
  }

  function remember(key, value, expires) {
    forget(key);
    const size = key.length * 2 + valueBytes(value) + ENTRY_OVERHEAD;
    if (size > maxBytes) return;
    local.set(key, { value, expires, size, parsed: undefined });
    localBytes += size;
    trim();
  }

  function parseJson(key, raw) {
    try {
      return JSON.parse(Buffer.isBuffer(raw) ? raw.toString('utf8') : raw);
    } catch (err) {
      throw herdError(`herd.js: the value of ${JSON.stringify(key)} is not JSON: ${errorText(err)}`, 'HERD_JSON');
    }
  }

  function applyControl(data) {
    if (!data || typeof data !== 'object') return;
    const seq = Number.isSafeInteger(data.seq) ? data.seq : 0;
    if (data.type === 'cache_invalidate' && Array.isArray(data.keys)) {
      for (const k of data.keys) forget(String(k));
      seenSeq = Math.max(seenSeq, seq);
    } else if (data.type === 'cache_clear') {
      forgetAll();
      seenSeq = Math.max(seenSeq, seq);
    }
  }

  function decodeValue(reply, buffer) {
    if (!reply || reply.found !== true) return null;
    const text = typeof reply.value === 'string' ? reply.value : '';
    if (reply.encoding === 'base64') return Buffer.from(text, 'base64');
    return buffer ? Buffer.from(text, 'utf8') : text;
  }

  function peek(key) {
    const e = local.get(key);
    if (!e) return undefined;
    if (e.expires !== null && e.expires <= Date.now()) {
      forget(key);
      return undefined;
    }
    // Most recently used: to the end of the order.
    local.delete(key);
    local.set(key, e);
    return e.value;
  }

  const asKey = (key) => {
    if (typeof key !== 'string') throw new TypeError('herd.js: cache keys are strings');
    return key;
  };
  const cacheCall = (data, timeout = DEFAULT_TIMEOUT_MS) => call('NODE_HERD_CACHE', data, timeout);

  // This process's own channel uses the native addon when it can (native.js); the json path
  // below otherwise, and for other channels.
  let native = { cache: null, reason: 'not this process\'s own channel' };
  if (target === process) {
    try {
      native = require('./native.js').nativeCache({ herdError, envLimit, defaultTimeout: DEFAULT_TIMEOUT_MS });
    } catch (err) {
      native = { cache: null, reason: `native.js: ${errorText(err)}` };
    }
  }
  const jsonReason = native.reason;

  const jsonCache = {
    async get(key, { buffer = false, timeout } = {}) {
      asKey(key);
      const held = peek(key);
      if (held !== undefined) {
        counters.local_hits += 1;
        if (held === null) return undefined;
        if (buffer && typeof held === 'string') return Buffer.from(held, 'utf8');
        return held;
      }
      counters.local_misses += 1;
      let p = inflight.get(key);
      if (!p) {
        p = cacheCall({ op: 'get', key }, timeout).then(
          (reply) => {
            inflight.delete(key);
            const value = decodeValue(reply, false);
            // Kept only if no invalidation newer than the value has been applied meanwhile.
            if (reply && reply.local === true && Number(reply.seq) >= seenSeq) {
              let ttl = Number(reply.ttl_ms);
              if (reply.ttl_ms == null || !Number.isFinite(ttl)) ttl = null;
              if (value === null) ttl = Math.min(ttl ?? MAX_MISS_TTL_MS, MAX_MISS_TTL_MS);
              remember(key, value, ttl === null ? null : Date.now() + ttl);
            }
            return value;
          },
          (err) => {
            inflight.delete(key);
            throw err;
          },
        );
        inflight.set(key, p);
      }
      const value = await p;
      if (value === null) return undefined;
      if (buffer && typeof value === 'string') return Buffer.from(value, 'utf8');
      return value;
    },

    // The parsed value hangs on the local copy's entry, so whatever drops the copy (an
    // invalidation, a set or delete here, a cache_clear, expiry, eviction) drops it too. It is
    // counted in the local bytes as much again as its text.
    async json(key, { timeout } = {}) {
      asKey(key);
      const raw = await jsonCache.get(key, { timeout });
      if (raw === undefined) return undefined;
      const e = local.get(key);
      if (e === undefined || e.value !== raw) return parseJson(key, raw); // not held here
      if (e.parsed === undefined) {
        e.parsed = { value: parseJson(key, raw) };
        const extra = valueBytes(raw);
        e.size += extra;
        localBytes += extra;
        trim();
      }
      return e.parsed.value;
    },

    peek(key) {
      return peek(asKey(key));
    },

    async set(key, value, { ttl, timeout } = {}) {
      asKey(key);
      const data = { op: 'set', key };
      if (Buffer.isBuffer(value) || value instanceof Uint8Array) {
        data.value = Buffer.from(value).toString('base64');
        data.encoding = 'base64';
      } else if (typeof value === 'string') {
        data.value = value;
      } else {
        throw new TypeError('herd.js: cache values are strings or Buffers');
      }
      if (ttl !== undefined) {
        if (!(Number.isSafeInteger(ttl) && ttl > 0)) throw new RangeError('herd.js: ttl is a positive number of ms');
        data.ttl_ms = ttl;
      }
      forget(key);
      return cacheCall(data, timeout);
    },

    async delete(key, { timeout } = {}) {
      asKey(key);
      forget(key);
      return cacheCall({ op: 'delete', key }, timeout);
    },

    // Rejects with err.code 'HERD_NOT_READY' if warm-up is not done within `timeout`.
    async ready({ timeout = DEFAULT_TIMEOUT_MS } = {}) {
      // The hub answers within `timeout`; 5 s more for a loaded host to deliver it.
      const warm = await cacheCall({ op: 'ready', timeout_ms: timeout }, timeout + 5000);
      if (warm !== true) {
        throw herdError(`herd.js: the cache's warm-up did not finish within ${timeout} ms`, 'HERD_NOT_READY');
      }
      return true;
    },

    async stats({ timeout } = {}) {
      const hub = await cacheCall({ op: 'stats' }, timeout);
      return {
        ...counters,
        local_entries: local.size,
        local_bytes: localBytes,
        local_evictions: evictions,
        local_max_entries: maxEntries,
        local_max_bytes: maxBytes,
        hub,
        path: 'json',
        json_reason: jsonReason,
      };
    },
  };

  const cache = native.cache || jsonCache;

  // Resolves true once written, false if the channel is closed; never rejects.
  const notify = (data) => new Promise((resolve) => send({ cmd: 'NODE_HERD_CTL', data }, (err) => resolve(!err)));

  target.on('internalMessage', (m) => {
    if (!m || typeof m !== 'object') return;
    switch (m.cmd) {
      case 'NODE_HERD_REQ':
        if (handler) serve(m.id, m.data);
        else waiting.push(m);
        break;
      case 'NODE_HERD_REP': {
        const p = settle(m.id);
        if (!p) return; // late (timed out) or unknown: dropped
        if ('error' in m) p.reject(herdError(String(m.error), 'HERD_REMOTE'));
        else p.resolve(m.data);
        break;
      }
      case 'NODE_HERD_CACHE':
        // A herd worker asking its primary's cache: a Node primary serves none.
        send({ cmd: 'NODE_HERD_REP', id: m.id, error: 'this primary serves no cache' }, () => {});
        break;
      case 'NODE_HERD_CTL':
        applyControl(m.data);
        break;
      default:
        // Node's own internal messages: not ours.
        break;
    }
  });

  const api = {
    request(value, { timeout = DEFAULT_TIMEOUT_MS } = {}) {
      return call('NODE_HERD_REQ', jsonValue(value), timeout);
    },

    cache,

    onRequest(fn) {
      if (typeof fn !== 'function') throw new TypeError('herd.js: onRequest needs a function');
      handler = fn;
      watch();
      const queued = waiting;
      waiting = [];
      for (const m of queued) serve(m.id, m.data);
      return api;
    },

    ready: () => notify({ type: 'ready' }),

    listening: (address) => notify({ type: 'listening', address: formatAddress(address) }),
  };

  Object.defineProperty(target, INSTANCE, { value: api });
  return api;
}

let self = null;
function defaultInstance() {
  if (!self) self = connect(process);
  return self;
}

module.exports = {
  request: (value, options) => defaultInstance().request(value, options),
  onRequest: (fn) => defaultInstance().onRequest(fn),
  ready: () => defaultInstance().ready(),
  listening: (address) => defaultInstance().listening(address),
  get cache() {
    return defaultInstance().cache;
  },
  connect,
};
// `import herd from 'herd-cluster'` compiled by TypeScript without esModuleInterop reads
// `.default`: the same object (not enumerable, so `Object.keys` and `import *` are unchanged).
Object.defineProperty(module.exports, 'default', { value: module.exports });

// Start listening at once when this process has a channel, so no request sent right after the
// fork is missed (Node emits internal messages even when nobody listens).
if (herdChannel()) defaultInstance();
