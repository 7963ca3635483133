// herd-cluster's default import, as js/README.md shows it, from TypeScript's default (CommonJS)
// output with and without esModuleInterop. Checked by `tsc --strict --noEmit` in
// tests/npm_package.rs.
import herd from 'herd-cluster';
import type { HerdCache } from 'herd-cluster';

const c: HerdCache = herd.cache;
const answer: Promise<number> = herd.request<number>({ op: 'sum' });
const wrote: Promise<boolean> = herd.ready();
const other = herd.connect({ send: () => true, on: () => undefined, removeListener: () => undefined });
// @ts-expect-error ready() takes no argument
herd.ready(1);
void [c, answer, wrote, other];
