// A server that finishes its job and exits 0 after a short while (a bug in production: it
// should keep serving). It reports its instance first.
process.send({ instance: process.env.NODE_APP_INSTANCE, pid: process.pid });
setTimeout(() => process.exit(0), 200);
