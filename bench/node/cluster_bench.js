// Node's `cluster` measured the way herd's benchmark measures herd (bench/src/main.rs).
//
// Usage: node cluster_bench.js <json|advanced> <pings> <stream> <sizes,comma,separated> [runs] [warmup]
// Prints one JSON object on stdout: {"rtt_us": [...], "stream_msgs_per_s": n, "bulk_ms": {size: ms}},
// bulk_ms being the median of `runs` sends (3 by default) of a string of each size.
// The primary forks one worker; every case is measured from the primary. One invocation is one
// round of the benchmark: herd-bench runs it once per round and takes medians over rounds.
'use strict';
const cluster = require('node:cluster');

if (cluster.isPrimary) {
  const [mode, pings, stream, sizes, runsArg, warmupArg] = process.argv.slice(2);
  const runs = +(runsArg || 3);
  const warmup = +(warmupArg || 1000);
  cluster.setupPrimary({ serialization: mode });
  const worker = cluster.fork();
  const next = () => new Promise((resolve) => worker.once('message', resolve));
  worker.once('online', async () => {
    const out = { rtt_us: [], stream_msgs_per_s: 0, bulk_ms: {} };
    // Ping-pong: a small message out, the echo back.
    for (let i = 0; i < warmup; i++) { worker.send({ ping: i }); await next(); }
    for (let i = 0; i < +pings; i++) {
      const t = process.hrtime.bigint();
      worker.send({ ping: i });
      await next();
      out.rtt_us.push(Number(process.hrtime.bigint() - t) / 1000);
    }
    // One-way stream: n small messages, the worker answers after the last.
    {
      const n = +stream;
      const t = process.hrtime.bigint();
      const done = next();
      for (let i = 0; i < n; i++) worker.send({ item: i });
      worker.send({ end: n });
      const ack = await done;
      if (ack.ack !== n) throw new Error(`worker counted ${ack.ack} of ${n}`);
      out.stream_msgs_per_s = n / (Number(process.hrtime.bigint() - t) / 1e9);
    }
    // Bulk: one string of `size` bytes, the worker answers with its length.
    for (const size of sizes.split(',').map(Number)) {
      const payload = 'x'.repeat(size);
      const times = [];
      for (let r = 0; r < runs; r++) {
        const t = process.hrtime.bigint();
        worker.send(payload);
        const ack = await next();
        if (ack.ack !== size) throw new Error(`worker got ${ack.ack} bytes of ${size}`);
        times.push(Number(process.hrtime.bigint() - t) / 1e6);
      }
      times.sort((a, b) => a - b);
      const mid = times.length >> 1;
      out.bulk_ms[size] = times.length % 2 ? times[mid] : (times[mid - 1] + times[mid]) / 2;
    }
    process.stdout.write(JSON.stringify(out) + '\n');
    worker.disconnect();
  });
} else {
  let count = 0;
  process.on('message', (m) => {
    if (typeof m === 'string') process.send({ ack: m.length });
    else if ('ping' in m) process.send(m);
    else if ('item' in m) count++;
    else if ('end' in m) { process.send({ ack: count }); count = 0; }
  });
}
