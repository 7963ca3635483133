// N socket.io clients on the WebSocket transport (each one connection, so any balancing
// spreads them): once all are greeted, each shouts once; prints the pids that greeted them and
// `news K of M`, the broadcasts received of those every client should have had.
const { io } = require('socket.io-client');

const port = process.argv[2];
const n = Number(process.argv[3]);
const pids = {};
const sockets = [];
let greeted = 0;
let news = 0;
const report = () => {
  console.log(`pids ${JSON.stringify(pids)}`);
  console.log(`news ${news} of ${n * n}`);
  process.exit(0);
};
for (let i = 0; i < n; i++) {
  const socket = io(`http://127.0.0.1:${port}`, { transports: ['websocket'], reconnection: false });
  sockets.push(socket);
  socket.on('news', () => {
    news += 1;
    if (news === n * n) report();
  });
  socket.once('hello', (pid) => {
    pids[pid] = (pids[pid] || 0) + 1;
    greeted += 1;
    if (greeted === n) {
      // The adapter learns of the other workers through heartbeats: let a round pass.
      setTimeout(() => sockets.forEach((s, k) => s.emit('shout', k)), 500);
      setTimeout(report, 5000);
    }
  });
}
