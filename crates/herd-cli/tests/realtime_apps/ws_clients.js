// N WebSocket clients of one server: prints `open N` once all are connected, each close code
// as it comes, and `codes {...}` once all are closed (or after 30 s).
const WebSocket = require('ws');

const port = process.argv[2];
const n = Number(process.argv[3]);
const codes = {};
let open = 0;
let closed = 0;
const done = (rc) => {
  console.log(`codes ${JSON.stringify(codes)}`);
  process.exit(rc);
};
for (let i = 0; i < n; i++) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
  ws.once('message', () => {
    open += 1;
    if (open === n) console.log(`open ${n}`);
  });
  ws.on('error', (e) => console.log(`error ${e.message}`));
  ws.on('close', (code) => {
    codes[code] = (codes[code] || 0) + 1;
    closed += 1;
    if (closed === n) done(0);
  });
}
setTimeout(() => done(1), 30000).unref();
setInterval(() => {}, 1000);
