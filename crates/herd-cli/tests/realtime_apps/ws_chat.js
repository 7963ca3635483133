// A WebSocket chat server as teams write it: `ws` on an http server, and a SIGTERM hook that
// tells every client the server is going away (1001) before the process exits.
const http = require('node:http');
const { WebSocketServer } = require('ws');

const server = http.createServer((req, res) => res.end(`pid ${process.pid}\n`));
const wss = new WebSocketServer({ server });
wss.on('connection', (ws) => {
  ws.send(`hello from ${process.pid}`);
  ws.on('message', (m) => ws.send(m));
});
server.listen(Number(process.env.PORT), () => {
  console.log(`listening on ${process.env.PORT}`);
});

process.on('SIGTERM', () => {
  console.log(`SIGTERM: closing ${wss.clients.size} clients`);
  for (const client of wss.clients) client.close(1001, 'server restart');
  wss.close();
  server.close(() => {
    console.log('cleanup done');
    process.exit(0);
  });
});
