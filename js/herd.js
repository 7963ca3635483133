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
//   herd.connect(target)               the same API over another channel, e.g. a ChildProcess
//                                      from `child_process.fork(..., { serialization: 'json' })`
//                                      running a herd Rust worker. `connect(process)` is the
//                                      default instance above.
//
// Wire: herd's envelopes are Node internal messages (`cmd` starting with 'NODE_'), so Node hands
// them to 'internalMessage' and a program's process.on('message') never sees them:
//   {cmd: 'NODE_HERD_REQ', id, data}   a request (id: a positive integer, unique per sender)
//   {cmd: 'NODE_HERD_REP', id, data}   its answer, or {cmd: 'NODE_HERD_REP', id, error: 'text'}
//   {cmd: 'NODE_HERD_CTL', data}       a notice: {type: 'ready'}, {type: 'listening', address}
// Plain messages stay plain: use process.send and process.on('message') as usual.
'use strict';

const INSTANCE = Symbol.for('herd.js/instance');
const DEFAULT_TIMEOUT_MS = 30000;

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

function connect(target) {
  if (!target || typeof target.send !== 'function' || typeof target.on !== 'function') {
    throw herdError('herd.js: no IPC channel (start this program from a herd primary)', 'HERD_NO_CHANNEL');
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
      default:
        // NODE_HERD_CTL (cache invalidations), Node's own internal messages: not ours.
        break;
    }
  });

  const api = {
    request(value, { timeout = DEFAULT_TIMEOUT_MS } = {}) {
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
        send({ cmd: 'NODE_HERD_REQ', id, data: jsonValue(value) }, (err) => {
          if (err && settle(id)) reject(err);
        });
      });
    },

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
  connect,
};

// Start listening at once when this process has a channel, so no request sent right after the
// fork is missed (Node emits internal messages even when nobody listens).
if (typeof process.send === 'function') defaultInstance();
