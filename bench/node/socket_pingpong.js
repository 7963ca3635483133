// The floor of a round trip from Node with Node's own async I/O, for bench/scripts/node_cache.sh:
// Node spawns an echo child (`socketpair echo`, bench/src/bin/socketpair.rs) with
// stdio 'pipe' (libuv gives it Unix socketpairs) and sends one 16-byte message at a time,
// waiting for it to come back before the next. Prints one JSON line:
//   {"rtt_us_med": .., "rtt_us_p99": .., "n": N}
//
// usage: node socket_pingpong.js PATH_OF_socketpair [N]
'use strict';

const { spawn } = require('child_process');

const [bin, nArg] = process.argv.slice(2);
const N = Number(nArg) || 50000;
const WARMUP = 2000;
const FRAME = 16;

const child = spawn(bin, ['echo'], { stdio: ['pipe', 'pipe', 'inherit'] });
const times = [];
let i = 0;
let have = 0;
let t0 = 0n;
const msg = Buffer.alloc(FRAME);

function ping() {
  msg.writeBigUInt64LE(BigInt(i), 0);
  t0 = process.hrtime.bigint();
  child.stdin.write(msg);
}

child.stdout.on('data', (chunk) => {
  have += chunk.length;
  if (have < FRAME) return;
  if (have > FRAME) throw new Error('more than one message came back');
  const t = process.hrtime.bigint();
  if (chunk.length === FRAME && chunk.readBigUInt64LE(0) !== BigInt(i)) throw new Error(`ping ${i} came back wrong`);
  have = 0;
  if (i >= WARMUP) times.push(Number(t - t0) / 1000);
  i += 1;
  if (i < WARMUP + N) {
    ping();
    return;
  }
  child.stdin.end();
  times.sort((a, b) => a - b);
  const med = times.length % 2 ? times[times.length >> 1] : (times[times.length / 2 - 1] + times[times.length / 2]) / 2;
  const p99 = times[Math.min(times.length - 1, Math.floor(times.length * 0.99))];
  console.log(JSON.stringify({ rtt_us_med: +med.toFixed(3), rtt_us_p99: +p99.toFixed(3), n: N }));
});
child.on('exit', (code) => {
  if (code !== 0) {
    console.error(`echo child exited with ${code}`);
    process.exitCode = 1;
  }
});
ping();
