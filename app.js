const http = require('http');
const srv = http.createServer((q, r) => r.end('ok\n'));
srv.on('error', (e) => { console.log('listen error', e.code, '- retrying on 18742'); setTimeout(() => srv.listen(18742), 500); });
srv.listen(18741);
