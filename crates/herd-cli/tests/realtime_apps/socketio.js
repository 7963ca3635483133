// A socket.io server as teams write it, with no cluster code of its own: each client is
// greeted with this worker's pid, and `echo` is acknowledged.
const http = require('node:http');
const { Server } = require('socket.io');

const server = http.createServer((req, res) => res.end(`pid ${process.pid}\n`));
const io = new Server(server);
io.on('connection', (socket) => {
  socket.emit('hello', process.pid);
  socket.on('echo', (m, ack) => ack(m));
});
server.listen(Number(process.env.PORT), () => console.log(`listening on ${process.env.PORT}`));
