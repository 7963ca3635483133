// herd-cluster's types from an ES module (node16 resolution: the exports map): the default
// export and the named ones. Checked by `tsc --strict --noEmit` in tests/npm_package.rs.
import herd, { cache, request, type HerdCache } from 'herd-cluster';

const c: HerdCache = herd.cache;
const parsed: Promise<{ id: number } | undefined> = cache.json<{ id: number }>('k');
const existed: Promise<boolean> = c.delete('k');
const answer: Promise<string> = request<string>('ping');
// @ts-expect-error ready() takes no argument
herd.ready(1);
void [parsed, existed, answer];
