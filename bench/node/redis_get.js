// Redis GET from Node, for bench/scripts/node_cache.sh: a minimal RESP2 client (no npm
// dependency: one TCP connection, one command at a time, bulk strings kept as Buffers, as a
// client with `returnBuffers` does).
//
//   node redis_get.js load PORT DIR    SETs every file of DIR/small and DIR/big (key: its path
//                                      below DIR, as herd's file source names it)
//   node redis_get.js bench PORT DIR   GETs each small key once, one after the other (each a
//                                      round trip), then each big key once; prints one line
//                                      `BENCH redis {...}` (microseconds; the same fields as
//                                      cache_worker.js's misses and large first gets)
'use strict';

const net = require('net');
const fs = require('fs');
const path = require('path');
const { median, p99, r3 } = require('./figures.js');

class Resp {
  constructor(port) {
    this.port = port;
    this.chunks = [];
    this.have = 0;
    this.waiting = null; // { resolve, reject }
    this.need = 0; // bytes the reply being received needs in all, once its header was read
  }

  connect() {
    return new Promise((resolve, reject) => {
      this.sock = net.connect({ port: this.port, host: '127.0.0.1', noDelay: true }, resolve);
      this.sock.once('error', reject);
      this.sock.on('data', (c) => {
        this.chunks.push(c);
        this.have += c.length;
        this.parse();
      });
    });
  }

  // One reply parsed from the front of what arrived, when it is complete.
  parse() {
    if (!this.waiting || this.have === 0 || this.have < this.need) return;
    const buf = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.have);
    this.chunks = [buf];
    const eol = buf.indexOf('\r\n');
    if (eol < 0) return;
    const type = String.fromCharCode(buf[0]);
    const line = buf.toString('latin1', 1, eol);
    let value;
    let used;
    if (type === '$') {
      const len = Number(line);
      if (len < 0) {
        value = null;
        used = eol + 2;
      } else {
        if (this.have < eol + 2 + len + 2) {
          this.need = eol + 2 + len + 2; // not all here yet: joined once it is
          return;
        }
        value = buf.subarray(eol + 2, eol + 2 + len);
        used = eol + 2 + len + 2;
      }
    } else if (type === '+' || type === ':') {
      value = line;
      used = eol + 2;
    } else if (type === '-') {
      const w = this.waiting;
      this.waiting = null;
      this.consume(buf, eol + 2);
      w.reject(new Error(`redis: ${line}`));
      return;
    } else {
      throw new Error(`redis: unexpected reply type ${type}`);
    }
    const w = this.waiting;
    this.waiting = null;
    this.consume(buf, used);
    w.resolve(value);
  }

  consume(buf, used) {
    const rest = buf.subarray(used);
    this.chunks = rest.length ? [rest] : [];
    this.have = rest.length;
    this.need = 0;
  }

  command(...args) {
    const parts = [Buffer.from(`*${args.length}\r\n`)];
    for (const a of args) {
      const b = Buffer.isBuffer(a) ? a : Buffer.from(String(a));
      parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
    }
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
      this.sock.write(Buffer.concat(parts));
    });
  }

  close() {
    this.sock.end();
  }
}

const now = () => process.hrtime.bigint();
const us = (t0, t1) => Number(t1 - t0) / 1000;

function keys(dir, sub) {
  return fs.readdirSync(path.join(dir, sub)).sort().map((f) => `${sub}/${f}`);
}

async function main() {
  const [what, port, dir] = process.argv.slice(2);
  const r = new Resp(Number(port));
  await r.connect();
  const small = keys(dir, 'small');
  const big = keys(dir, 'big');
  if (what === 'load') {
    for (const k of [...small, ...big]) await r.command('SET', k, fs.readFileSync(path.join(dir, k)));
    r.close();
    return;
  }
  const WARM = 200;
  const miss = [];
  let sink = 0;
  for (let i = 1; i < small.length; i++) {
    const t0 = now();
    const v = await r.command('GET', small[i]);
    const t1 = now();
    if (!v || v.length === 0) throw new Error(`redis has no ${small[i]}`);
    sink += v.length;
    if (i > WARM) miss.push(us(t0, t1));
  }
  const first = [];
  for (const k of big) {
    const t0 = now();
    const v = await r.command('GET', k);
    const t1 = now();
    if (!v) throw new Error(`redis has no ${k}`);
    sink += v[v.length - 1];
    first.push(us(t0, t1));
  }
  r.close();
  const out = {
    path: 'redis',
    miss_us: r3(median(miss)),
    miss_p99_us: r3(p99(miss)),
    misses: miss.length,
    big_first_us: r3(median(first)),
    big_first_min_us: r3(Math.min(...first)),
    big_first_max_us: r3(Math.max(...first)),
    sink: sink % 7,
  };
  console.log(`BENCH redis ${JSON.stringify(out)}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
