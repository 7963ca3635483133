// A Node primary handing sockets to a herd Rust worker (the binary in argv[2]), as any Node
// program would: child_process.fork in json serialization, then child.send(msg, socket) twice
// back to back (Node writes the second only once the worker acknowledged the first). The
// worker echoes each message; prints one JSON line: {got: [the echoed messages]}.
'use strict';

const { fork } = require('node:child_process');
const net = require('node:net');

const [bin] = process.argv.slice(2);
const watchdog = setTimeout(() => {
  console.error('fork_herd_handles.js: timed out');
  process.exit(2);
}, 10000);

const child = fork(__filename, [], {
  execPath: bin,
  execArgv: [],
  serialization: 'json',
  env: { ...process.env, HERD_TEST_MODE: 'echo' },
});

const got = [];
child.on('message', (m) => {
  got.push(m.echo);
  if (got.length === 2) {
    console.log(JSON.stringify({ got }));
    clearTimeout(watchdog);
    child.disconnect();
    process.exit(0);
  }
});

const accepted = [];
const server = net.createServer((socket) => {
  accepted.push(socket);
  if (accepted.length === 2) {
    child.send({ n: 1 }, accepted[0]);
    child.send({ n: 2 }, accepted[1]);
  }
});
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  net.connect(port, '127.0.0.1');
  net.connect(port, '127.0.0.1');
});
