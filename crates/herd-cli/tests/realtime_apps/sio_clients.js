// N socket.io clients on the polling transport (every poll a request of its own, as through a
// proxy): each waits for its greeting and three acknowledged echoes. Prints `ok K of N` and
// the pids that greeted them.
const { io } = require('socket.io-client');

const port = process.argv[2];
const n = Number(process.argv[3]);
let settled = 0;
let ok = 0;
const pids = {};
const finish = (good) => {
  settled += 1;
  if (good) ok += 1;
  if (settled === n) {
    console.log(`pids ${JSON.stringify(pids)}`);
    console.log(`ok ${ok} of ${n}`);
    process.exit(0);
  }
};
for (let i = 0; i < n; i++) {
  const socket = io(`http://127.0.0.1:${port}`, {
    transports: ['polling'],
    reconnection: false,
    timeout: 5000,
  });
  let done = false;
  const end = (good, why) => {
    if (done) return;
    done = true;
    if (!good) console.log(`client ${i}: ${why}`);
    socket.close();
    finish(good);
  };
  socket.on('connect_error', (e) => end(false, `connect_error ${e.message}`));
  socket.on('disconnect', (why) => end(false, `disconnect ${why}`));
  socket.on('hello', async (pid) => {
    pids[pid] = (pids[pid] || 0) + 1;
    try {
      for (let k = 0; k < 3; k++) {
        const back = await socket.timeout(5000).emitWithAck('echo', `${i}.${k}`);
        if (back !== `${i}.${k}`) return end(false, `echo ${back}`);
      }
      end(true);
    } catch (e) {
      end(false, `echo ${e.message}`);
    }
  });
}
setTimeout(() => {
  console.log(`ok ${ok} of ${n} (timed out)`);
  process.exit(1);
}, 30000).unref();
