// socket.io with its documented cluster adapter, as teams write the worker side: a `shout` from
// any client is broadcast to every client, whichever worker holds it. (The primary side,
// `setupPrimary()`, is what `herd run --relay others` does.)
const http = require('node:http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/cluster-adapter');

const server = http.createServer();
const io = new Server(server, { adapter: createAdapter() });
io.on('connection', (socket) => {
  socket.emit('hello', process.pid);
  socket.on('shout', (m) => io.emit('news', m));
});
server.listen(Number(process.env.PORT), () => console.log(`listening on ${process.env.PORT}`));
