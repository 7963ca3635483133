// A Node worker using js/herd.js for herd's request/reply and notices. Its request handler
// answers {echo: value, pid}, except: 'throw' (throws), 'reject' (rejects), 'throw_string'
// (throws a string), 'undefined' (answers undefined), 'bigint' (answers a BigInt, which JSON
// cannot carry), {hold: k} (answered only once a {release: n} request has seen n holds; they are
// then answered last first). Messages: {op: 'ask', value, timeout} asks the primary and reports
// {primary_said} or {primary_failed, code}; {op: 'ready'}; {op: 'listening', address};
// {op: 'serve'} listens on 127.0.0.1 (a random port), greets each connection, and reports the
// address with herd.listening(server.address()). Any other message is echoed as
// {echo, seen}, `seen` counting every 'message' event so far (herd's envelopes never are one).
'use strict';

const net = require('node:net');
const path = require('node:path');
const herd = require(path.join(__dirname, '..', '..', '..', '..', 'js', 'herd.js'));

let held = [];
let release = null;
function maybeRelease() {
  if (!release || held.length < release.n) return;
  const holds = held;
  const { resolve } = release;
  held = [];
  release = null;
  for (const h of holds.reverse()) h.resolve({ held: h.value });
  resolve({ released: holds.length });
}

herd.onRequest((value) => {
  switch (value) {
    case 'throw':
      throw new Error('the handler threw');
    case 'reject':
      return Promise.reject(new Error('the handler rejected'));
    case 'throw_string':
      throw 'a bare string'; // eslint-disable-line no-throw-literal
    case 'undefined':
      return undefined;
    case 'bigint':
      return 10n;
    default:
  }
  if (value && value.hold !== undefined) {
    return new Promise((resolve) => {
      held.push({ value, resolve });
      maybeRelease();
    });
  }
  if (value && value.release !== undefined) {
    return new Promise((resolve) => {
      release = { n: value.release, resolve };
      maybeRelease();
    });
  }
  return Promise.resolve({ echo: value, pid: process.pid });
});

let seen = 0;
let server = null;
process.on('message', async (m) => {
  seen += 1;
  if (m && m.op === 'ask') {
    try {
      process.send({ primary_said: await herd.request(m.value, { timeout: m.timeout }) });
    } catch (err) {
      process.send({ primary_failed: err.message, code: err.code });
    }
  } else if (m && m.op === 'ready') {
    await herd.ready();
  } else if (m && m.op === 'listening') {
    await herd.listening(m.address);
  } else if (m && m.op === 'serve') {
    server = net.createServer((socket) => socket.end(`hello from node ${process.pid}\n`));
    server.listen(0, '127.0.0.1', () => herd.listening(server.address()));
  } else {
    process.send({ echo: m, seen });
  }
});

process.on('disconnect', () => {
  if (server) server.close();
});
