// An ordinary HTTP server that reads the host-shared cache on every request, as
// bench/scripts/node_cache_load.sh runs it under `herd run`: key `k<i>` for a counter that walks
// the KEYS keys in a stride, so each worker's first get of a key is a miss the primary answers
// (later ones are local hits). `node cache_load_app.js <path of herd-cluster>`; PORT and KEYS
// from the environment.
'use strict';

const http = require('http');
const herd = require(process.argv[2]);

const keys = Number(process.env.KEYS || 90000);
let i = Math.floor(Math.random() * keys);
http
  .createServer(async (req, res) => {
    i = (i + 7919) % keys;
    const v = await herd.cache.get(`k${i}`);
    res.end(v ? v.slice(0, 12) : 'none');
  })
  .listen(Number(process.env.PORT));
