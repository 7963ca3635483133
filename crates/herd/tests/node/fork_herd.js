// A Node primary forking a herd Rust worker (the binary in argv[2]) with child_process.fork in
// json serialization, as any Node program would. With the values in argv[3] (a JSON array):
// sends each as a message and collects the echoes; asks each as a request through js/herd.js;
// asks 'fail' (the worker answers with an error); has the worker ask this primary a request
// (answered by herd.onRequest here); then disconnects and reports the worker's exit. Prints one
// JSON line: {got, replies, failed, asked, code, signal}.
'use strict';

const { fork } = require('node:child_process');
const path = require('node:path');
const herdJs = require(path.join(__dirname, '..', '..', '..', '..', 'js', 'herd.js'));

const [bin, valuesJson] = process.argv.slice(2);
const values = JSON.parse(valuesJson);

// The script's own deadline: a hung worker fails the test instead of hanging it.
const watchdog = setTimeout(() => {
  console.error('fork_herd.js: timed out');
  process.exit(2);
}, 10000);

const child = fork(__filename, [], {
  execPath: bin,
  execArgv: [],
  serialization: 'json',
  env: { ...process.env, HERD_TEST_MODE: 'echo' },
});
const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));

const inbox = [];
const waiters = [];
child.on('message', (m) => (waiters.length ? waiters.shift()(m) : inbox.push(m)));
const nextMessage = () => (inbox.length ? Promise.resolve(inbox.shift()) : new Promise((r) => waiters.push(r)));

const worker = herdJs.connect(child);
worker.onRequest((value) => ({ node_says: value }));

async function main() {
  const got = [];
  for (const v of values) {
    child.send(v);
    got.push((await nextMessage()).echo);
  }
  const replies = await Promise.all(values.map((v) => worker.request(v, { timeout: 5000 })));
  let failed = null;
  try {
    await worker.request('fail', { timeout: 5000 });
  } catch (err) {
    failed = { message: err.message, code: err.code };
  }
  child.send({ op: 'ask', value: { from: 'rust', s: 'a\nb ✓' } });
  const asked = await nextMessage();
  child.disconnect();
  const { code, signal } = await exited;
  clearTimeout(watchdog);
  process.stdout.write(`${JSON.stringify({ got, replies, failed, asked, code, signal })}\n`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
