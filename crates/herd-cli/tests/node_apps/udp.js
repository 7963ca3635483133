// A UDP echo service: answers every datagram with this process's pid.
'use strict';

const dgram = require('node:dgram');

const socket = dgram.createSocket('udp4');
socket.on('message', (msg, rinfo) => {
  socket.send(JSON.stringify({ pid: process.pid, got: msg.toString() }), rinfo.port, rinfo.address);
});
socket.bind(Number(process.env.PORT), '127.0.0.1', () => {
  console.log(`listening on ${socket.address().port}`);
});
