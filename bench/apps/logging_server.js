// An HTTP server that logs a line per request, as apps with a request logger (morgan, pino)
// do: what `herd logs -f` and log files have to carry under load.
'use strict';
const http = require('node:http');
const server = http.createServer((req, res) => {
  console.log(`${new Date().toISOString()} ${req.method} ${req.url} 200 pid=${process.pid}`);
  res.end('ok\n');
});
server.listen(Number(process.env.PORT), () => console.log(`listening on ${server.address().port}`));
