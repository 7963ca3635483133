// Every API of herd-cluster, as a TypeScript program uses it: checked by `tsc --strict --noEmit`
// in tests/npm_package.rs (never run).
import * as herd from 'herd-cluster';
import { cache, connect, type CacheStats, type Herd, type HerdCache, type HerdError } from 'herd-cluster';

interface Product {
  id: number;
  name: string;
}

async function main(): Promise<void> {
  const answer: number = await herd.request<number>({ op: 'sum', values: [1, 2] }, { timeout: 1000 });
  const chained: Herd = herd.onRequest(async (value) => ({ echoed: value }));
  chained.onRequest((value) => value);
  const wrote: boolean = await herd.ready();
  const told: boolean = await herd.listening({ address: '127.0.0.1', port: 8080, family: 'IPv4' });
  await herd.listening('127.0.0.1:8080');

  const c: HerdCache = herd.cache;
  const text: string | Uint8Array | undefined = await c.get('k');
  const bytes = await cache.get('k', { buffer: true, timeout: 500 });
  if (bytes !== undefined) bytes.byteLength.toFixed();
  const product = await cache.json<Product>('product:001');
  if (product !== undefined) product.name.toUpperCase();
  const anything: unknown = await cache.json('k', { timeout: 500 });
  const held: string | Uint8Array | null | undefined = cache.peek('k');
  const set: true = await cache.set('k', 'v', { ttl: 1000, timeout: 500 });
  await cache.set('k', new Uint8Array([1, 2]));
  const existed: boolean = await cache.delete('k', { timeout: 500 });
  const warm: true = await cache.ready({ timeout: 5000 });
  const stats: CacheStats = await cache.stats();
  const hits: number = stats.local_hits + stats.local_misses + stats.local_bytes;
  const path: 'addon' | 'json' = stats.path;
  // @ts-expect-error: the path is one of two names
  const wrong: 'other' = stats.path;

  const other: Herd = connect({
    send: (_message: unknown, callback?: (error: Error | null) => void) => {
      callback?.(null);
      return true;
    },
    on: () => undefined,
    removeListener: () => undefined,
    connected: true,
  });
  await other.cache.json('k');

  try {
    await cache.get('k');
  } catch (err) {
    const e = err as HerdError;
    if (e.code === 'HERD_TIMEOUT' || e.code === 'HERD_NO_CHANNEL' || e.code === 'HERD_JSON') throw e;
  }

  // The types are real, not `any`:
  // @ts-expect-error cache values are strings or bytes
  await cache.set('k', 42);
  // @ts-expect-error keys are strings
  await cache.get(1);
  // @ts-expect-error json's value is unknown until asserted
  (await cache.json('k')).name;
  // @ts-expect-error there is no such API
  herd.nothing();

  void [answer, wrote, told, text, anything, held, set, existed, warm, hits, path, wrong];
}

void main();
