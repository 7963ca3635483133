// A server-sent events stream as teams write it, with a SIGTERM hook that ends every stream
// before the process exits.
const http = require('node:http');

const streams = new Set();
const server = http.createServer((req, res) => {
  if (req.url !== '/events') return res.end('ok\n');
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  res.write(`data: hello from ${process.pid}\n\n`);
  streams.add(res);
  req.on('close', () => streams.delete(res));
});
server.listen(Number(process.env.PORT), () => console.log(`listening on ${process.env.PORT}`));
setInterval(() => {
  for (const res of streams) res.write('data: tick\n\n');
}, 100);

process.on('SIGTERM', () => {
  console.log(`SIGTERM: ending ${streams.size} streams`);
  for (const res of streams) res.end('event: bye\ndata: server restart\n\n');
  server.close(() => {
    console.log('cleanup done');
    process.exit(0);
  });
});
