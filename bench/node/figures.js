// The figures the Node benchmark programs report (bench/node/cache_worker.js, redis_get.js):
// the median and the 99th percentile of a sample, and microseconds rounded to 3 decimals.
'use strict';

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[n >> 1] : (s[n / 2 - 1] + s[n / 2]) / 2;
};
const p99 = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * 0.99))];
};
const r3 = (x) => +x.toFixed(3);

module.exports = { median, p99, r3 };
