// A Node primary forking a herd Rust worker (argv[2]) with child_process.fork in json
// serialization, as any Node program would. Sends the values in argv[3] (a JSON array) one by one,
// checks each echo, then disconnects and reports the worker's exit code. Prints one JSON line.
'use strict';
const { fork } = require('node:child_process');
const [bin, valuesJson] = process.argv.slice(2);
const values = JSON.parse(valuesJson);
const child = fork(__filename, [], {
  execPath: bin,
  execArgv: [],
  serialization: 'json',
  env: { ...process.env, HERD_TEST_MODE: 'echo' },
});
const got = [];
child.on('message', (m) => {
  got.push(m.echo);
  if (got.length < values.length) {
    child.send(values[got.length]);
  } else {
    child.disconnect();
  }
});
child.on('exit', (code, signal) => {
  process.stdout.write(JSON.stringify({ got, code, signal }) + '\n');
});
child.send(values[0]);
setTimeout(() => { console.error('timed out'); child.kill(); process.exit(2); }, 15000).unref();
