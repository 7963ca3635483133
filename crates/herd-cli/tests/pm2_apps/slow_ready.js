// An app written for PM2's wait_ready: it warms up for a while, then says 'ready'. It reports
// its instance (PM2's NODE_APP_INSTANCE) and keeps running until told to stop.
const WARM_MS = Number(process.env.WARM_MS || 400);
process.send({ instance: process.env.NODE_APP_INSTANCE, pid: process.pid });
setTimeout(() => process.send('ready'), WARM_MS);
const keepAlive = setInterval(() => {}, 1000);
process.on('disconnect', () => clearInterval(keepAlive));
