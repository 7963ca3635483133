// A Node worker for herd's interop tests: unchanged Node code, `process.send` and
// `process.on('message')` only. Echoes every message as {echo, pid}; a few commands:
// {op: 'internal'} sends one of Node's internal messages (herd must not show it),
// {op: 'garbage'} writes a line that is not JSON straight onto the channel.
'use strict';
process.on('message', (m) => {
  if (m && m.op === 'internal') {
    process.send({ cmd: 'NODE_CLUSTER', act: 'queryServer', seq: 1 });
    process.send({ after: 'internal' });
  } else if (m && m.op === 'garbage') {
    // Node removes NODE_CHANNEL_FD from the environment once it has opened the channel.
    require('fs').writeSync(process.channel.fd, 'this is not json\n');
  } else {
    process.send({ echo: m, pid: process.pid });
  }
});
process.on('disconnect', () => process.exit(0));
