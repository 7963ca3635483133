// A Node worker for herd's descriptor tests: unchanged Node code, handles only through
// `process.on('message', (msg, handle) => ...)` and `process.send(msg, handle)`.
// {op: 'serve'} + a net.Server: serves HTTP on it (http.createServer(...).listen(server)), then
//   sends {serving: port};
// {op: 'serve_direct'} + a net.Server: serves HTTP on the connections of the server it got;
// {op: 'write', text} + a net.Socket: writes text on it and ends it, then sends {wrote: text};
// {op: 'udp', text, port} + a dgram.Socket: sends text to 127.0.0.1:port from it;
// {op: 'accept'}: listens on 127.0.0.1:0 and sends {listening: port}; the first connection it
//   accepts goes to the primary with process.send({hi: 1}, socket);
// {op: 'fake_handle'}: writes a NODE_HANDLE line without a handle straight onto the channel;
// anything else: {echo: msg, handle: typeof handle} (so a message without a handle shows).
'use strict';

const http = require('node:http');
const net = require('node:net');

const keepAlive = setInterval(() => {}, 1 << 30);

process.on('message', (m, handle) => {
  if (m && m.op === 'serve' && handle instanceof net.Server) {
    const srv = http.createServer((req, res) => res.end(`hello from node ${process.pid}`));
    // A Unix socket received by descriptor has no address in Node (null).
    srv.listen(handle, () => process.send({ serving: (srv.address() || {}).port || null }));
  } else if (m && m.op === 'serve_direct' && handle instanceof net.Server) {
    const srv = http.createServer((req, res) => res.end(`direct from node ${process.pid}`));
    handle.on('connection', (socket) => srv.emit('connection', socket));
    process.send({ serving: (handle.address() || {}).port || null });
  } else if (m && m.op === 'write' && handle instanceof net.Socket) {
    handle.end(m.text, () => process.send({ wrote: m.text }));
  } else if (m && m.op === 'udp' && handle && typeof handle.send === 'function') {
    handle.send(m.text, m.port, '127.0.0.1', () => process.send({ udp: m.text }));
  } else if (m && m.op === 'accept') {
    const server = net.createServer((socket) => {
      process.send({ hi: 1 }, socket, (err) => { if (err) process.send({ sendError: String(err) }); });
    });
    server.listen(0, '127.0.0.1', () => process.send({ listening: server.address().port }));
  } else if (m && m.op === 'fake_handle') {
    const line = '{"cmd":"NODE_HANDLE","type":"net.Socket","msg":{"no":"fd"}}\n';
    require('node:fs').writeSync(process.channel.fd, line);
  } else {
    process.send({ echo: m, handle: handle === undefined ? 'none' : handle.constructor.name });
  }
});

process.on('disconnect', () => {
  clearInterval(keepAlive);
  process.exit(0);
});
