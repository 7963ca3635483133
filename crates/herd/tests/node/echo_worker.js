// A Node worker for herd's interop tests: unchanged Node code, `process.send` and
// `process.on('message')` only. Echoes every message as {echo, pid}; a few commands:
// {op: 'values'} sends VALUES (made here, by Node) one by one as {value}, then {done: true};
// {op: 'internal'} sends some of Node's internal messages, then {after: 'internal'};
// {op: 'node_prefix'} sends {cmd: 'NODE_'} (not internal for Node: too short), then a marker;
// {op: 'garbage'} writes a line that is not JSON straight onto the channel;
// {op: 'flood', n} sends n queryServer messages of its own for n sockets, counts the answers
// by errno, then sends {answers: {errno: count}};
// {op: 'cluster_garbage'} sends a NODE_CLUSTER message without a seq;
// {op: 'leave'} disconnects by itself, as a cluster worker (cluster.worker.disconnect()).
'use strict';

const VALUES = [
  'line one\nline two\r\n\ttab "quoted" \\ back',
  'emoji \u{1F980} \uD83D\uDE00, CJK 日本語 中文 한국어, U+2028 \u2028 U+2029 \u2029, NUL \u0000 end',
  { nested: { deep: [1, 2.5, -3, null, true, { x: 'y' }] }, empty: {}, list: [] },
  [],
  '',
  0,
  -0,
  0.1,
  1e21,
  2 ** 53,
  -42,
  null,
  true,
];

// Only the 'disconnect' handler ends this process: exit code 0 proves that it fired.
const keepAlive = setInterval(() => {}, 1 << 30);

process.on('message', (m) => {
  if (m && m.op === 'values') {
    for (const value of VALUES) process.send({ value });
    process.send({ done: true });
  } else if (m && m.op === 'internal') {
    process.send({ cmd: 'NODE_CLUSTER', act: 'queryServer', seq: 1 });
    process.send({ cmd: 'NODE_HANDLE_ACK' });
    process.send({ cmd: 'NODE_SOMETHING_NEW', id: 'not a number', data: 'a\nb' });
    process.send({ after: 'internal' });
  } else if (m && m.op === 'node_prefix') {
    process.send({ cmd: 'NODE_' });
    process.send({ after: 'node_prefix' });
  } else if (m && m.op === 'flood') {
    const counts = {};
    let answered = 0;
    process.on('internalMessage', (msg) => {
      if (msg.cmd !== 'NODE_CLUSTER' || msg.errno === undefined || msg.ack < 1000) return;
      counts[msg.errno] = (counts[msg.errno] || 0) + 1;
      if (++answered === m.n) process.send({ answers: counts });
    });
    for (let i = 0; i < m.n; i++) {
      process.send({
        cmd: 'NODE_CLUSTER', act: 'queryServer', index: i, data: null, address: '127.0.0.1',
        port: 0, addressType: 4, seq: 1000 + i,
      });
    }
  } else if (m && m.op === 'leave') {
    require('node:cluster').worker.disconnect();
  } else if (m && m.op === 'cluster_garbage') {
    process.send({ cmd: 'NODE_CLUSTER', act: 'queryServer', seq: 'one' });
  } else if (m && m.op === 'garbage') {
    // Node removes NODE_CHANNEL_FD from the environment once it has opened the channel.
    require('node:fs').writeSync(process.channel.fd, 'this is not json\n');
  } else {
    process.send({ echo: m, pid: process.pid });
  }
});

process.on('disconnect', () => {
  clearInterval(keepAlive);
  process.exit(0);
});
