// An app written for PM2's shutdown_with_message: it waits for the message 'shutdown'.
'use strict';

const pool = setInterval(() => {}, 1000);
process.on('message', (msg) => {
  if (msg === 'shutdown') {
    console.log('shutdown message: closing the pool');
    clearInterval(pool);
    process.exit(0);
  }
});
console.log('started');
