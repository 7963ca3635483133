#!/usr/bin/env python3
"""The tables of bench/scripts/node_cache.sh (herd's cache from Node workers), from its raw
figures (lines `kind round config metric value`): printed on stdout and, when a document path is
given, written into it as the section between `<!-- nodecache:begin -->` and
`<!-- nodecache:end -->` (replaced in place, or appended), as bench/src/sections.rs does.

usage: node_cache_table.py RESULTS CONFIGS SIZES WORKERS RUNS SMALL_KEYS BIG_KEYS TOOK MACHINE [DOC]
"""
import collections
import statistics
import sys

(path, configs, sizes, workers, runs, small_keys, big_keys, took, machine), doc = sys.argv[1:10], (sys.argv[10:] or [''])[0]
configs, sizes, workers = configs.split(), sizes.split(), workers.split()
addon_ran = 'addon' in configs

data = collections.defaultdict(dict)  # (kind, config, metric) -> {round: value}
for line in open(path):
    kind, rnd, name, metric, value = line.rstrip('\n').split('\t')
    try:
        v = float(value)
    except ValueError:
        continue
    if v == v:
        data[(kind, name, metric)][int(rnd)] = v


def vals(kind, name, metric):
    return list(data.get((kind, name, metric), {}).values())


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(xs, digits=1, unit=''):
    if not xs:
        return 'n/a'
    f = lambda x: f'{x:,.{digits}f}{unit}'
    if len(xs) == 1 or f(min(xs)) == f(max(xs)):
        return f(med(xs))
    return f'{f(med(xs))} ({f(min(xs))}–{f(max(xs))})'


def per_round(kind_a, a, ma, kind_b, b, mb):
    x, y = data.get((kind_a, a, ma), {}), data.get((kind_b, b, mb), {})
    return [x[r] / y[r] for r in x if r in y and y[r] > 0]


def verdict(xs, ok):
    if not xs:
        return 'n/a (not measured)'
    met = sum(1 for x in xs if ok(x))
    return f"{'met' if ok(med(xs)) else '**not met**'} ({met} of {len(xs)} rounds)"


out = []
p = out.append
label = {'json': 'json path (today)', 'addon': 'addon path', 'naive': 'naive: each worker reads the files'}

p('## Cache from Node: memory and latency')
p('')
p('Made by `bash bench/scripts/node_cache.sh` (Node worker: bench/node/cache_worker.js under `herd run`, '
  'using the herd-cluster package in js/ as a user would; Redis client: bench/node/redis_get.js; '
  'floors: bench/src/bin/socketpair.rs and bench/node/socket_pingpong.js).')
p('')
p(f'Method: {runs} rounds; each round runs every configuration once, the first one rotating from round '
  'to round; a cell is the **median over the rounds (min–max)**, a ratio is taken within a round. '
  '**json path**: the package over Node\'s IPC, values as JSON (binary values as base64), herd started '
  'with `HERD_NODE_ADDON=off`. **addon path**: the package with herd\'s native addon beside the herd '
  'binary (`target/release/libherd_node.so`), large values as Buffers over the primary\'s shared memory; '
  'a run whose workers\' `(await cache.stats()).path` is not `addon` is refused. **naive**: the same '
  'program under herd without a cache, each worker reading every file itself (`fs.promises.readFile`). '
  '**Redis**: a `redis-server` of the benchmark\'s own (`--save \'\' --appendonly no`) holding the same '
  'values, `GET` from Node by a minimal RESP client (one connection, one command at a time, replies '
  'as Buffers). **Floor**: a 16-byte message ping-pong over a socketpair, Rust↔Rust (blocking '
  'read/write) and Node↔a Rust echo child (`child_process.spawn` with `stdio: \'pipe\'`, Node\'s async I/O).')
p('')
p(f'Machine: {machine}; the whole run took {took} s, with other work on the machine (the spreads).')
if not addon_ran:
    p('')
    p('**The addon was not available when this ran** (no `target/release/libherd_node.so`): the addon '
      'rows are missing and its targets are not measured.')

# --- memory ----------------------------------------------------------------------------------------
p('')
p('### Memory')
p('')
p('N Node workers each `get(key, {buffer: true})` every value of a cache folder of 10 MiB random '
  'values, one after the other, and keep every Buffer referenced; garbage is collected '
  '(`--expose-gc`) before each figure. PSS is summed over the primary and every worker from '
  '`/proc/PID/smaps_rollup` with the workers idle (started, nothing loaded) and again once every '
  'worker holds everything; the **increase** is the difference, plus any memfd the primary holds '
  'that no process maps (none was: the hub maps its own). Shmem is /proc/meminfo\'s, after minus '
  'before (the sealed memfds; already inside the PSS). Load = the slowest worker\'s time to hold '
  'everything, all workers loading at once.')
p('')
p('| cache | workers | configuration | PSS idle (MB) | PSS holding (MB) | increase (MB) | increase ÷ data | Shmem increase (MB) | load (ms) |')
p('|---|---:|---|---:|---:|---:|---:|---:|---:|')
mem_configs = configs + ['naive']
for s in sizes:
    for w in workers:
        for c in ['json', 'addon', 'naive']:
            cell = f'{c}.{s}MB.w{w}'
            if c == 'addon' and not addon_ran:
                p(f'| {s} MiB | {w} | {label[c]} | not measured: no addon | | | | | |')
                continue
            if vals('mem', cell, 'skipped') and not vals('mem', cell, 'ratio'):
                p(f'| {s} MiB | {w} | {label[c]} | skipped: needs more memory than the machine can spare | | | | | |')
                continue
            if not vals('mem', cell, 'ratio'):
                p(f'| {s} MiB | {w} | {label[c]} | failed (see the log) | | | | | |')
                continue
            p(f"| {s} MiB | {w} | {label[c]} | {fmt(vals('mem', cell, 'pss_idle_mb'), 0)} | "
              f"{fmt(vals('mem', cell, 'pss_loaded_mb'), 0)} | {fmt(vals('mem', cell, 'increase_mb'), 0)} | "
              f"{fmt(vals('mem', cell, 'ratio'), 2, 'x')} | {fmt(vals('mem', cell, 'shmem_mb'), 0)} | "
              f"{fmt(vals('mem', cell, 'load_ms'), 0)} |")

# --- latency ----------------------------------------------------------------------------------------
p('')
p('### Latency')
p('')
p(f'One Node worker under `herd run -w 1 --cache-dir DIR --warm ...`, so the primary\'s hub holds every '
  f'value before the worker asks. Local hit: one held key, `cache.peek(key)` (sync) in batches of '
  f'200,000 and `await cache.get(key, {{buffer: true}})` in batches of 20,000, the median batch\'s time '
  f'per call; beside them, Node alone doing the same with a `Map` (`map.get(key)`, and `await` of an '
  f'async function returning `map.get(key)`: the floor of any `await get`), measured in the same '
  f'workers (both paths\' figures together). Small miss: {int(small_keys) - 1:,} keys of 100 bytes (text), each asked once, one after '
  f'the other (the first 200 not counted), the median and p99 of each call. 10 MiB first get: '
  f'{big_keys} random values, the first get of each (the median). Redis does the same `GET`s; the '
  'floors are 16-byte ping-pongs (100,000 for Rust, 50,000 for Node, after 2,000 warm-up ones): '
  'Rust↔Rust with blocking reads and writes (the raw socketpair), Rust↔tokio with the echo a task on '
  'tokio\'s multi-threaded runtime (what any async server pays; herd\'s primary is one), the same with '
  'the Rust side reading without sleeping (a non-blocking read in a loop that yields the CPU between reads: what the addon does for up to '
  '`HERD_CACHE_SPIN_US`, 100 µs, after a miss; crates/herd-node/src/spin.rs), Node↔echo with '
  'Node\'s own async I/O to the blocking Rust echo (what any Node program pays for a round trip).')
p('')
cols = ([c for c in ['json', 'addon'] if c in configs]
        + ['redis', 'floor-rust', 'floor-tokio', 'floor-spin', 'floor-node', 'node'])
head = {'json': 'herd json path', 'addon': 'herd addon path', 'redis': 'Redis GET from Node',
        'floor-rust': 'socketpair Rust↔Rust', 'floor-tokio': 'socketpair Rust↔tokio',
        'floor-spin': 'socketpair Rust (not sleeping)↔tokio',
        'floor-node': 'socketpair Node↔echo',
        'node': 'Node alone: a Map'}
p('| µs | ' + ' | '.join(head[c] for c in cols) + ' |')
p('|---|' + '---:|' * len(cols))


def cell(c, metric, digits=2):
    if c.startswith('floor-'):
        # floor-rust -> rust_rtt_us / rust_rtt_p99_us, in the floor run's figures
        name = c[len('floor-'):]
        m = {'miss_us': f'{name}_rtt_us', 'miss_p99_us': f'{name}_rtt_p99_us'}.get(metric)
        return fmt(vals('lat', 'floor', m), digits) if m else '-'
    if c == 'node':
        m = {'peek_us': 'node_map_us', 'get_held_us': 'node_await_us'}.get(metric)
        if not m:
            return '-'
        return fmt(vals('lat', 'addon', m) + vals('lat', 'json', m), digits)  # measured in both
    if c == 'redis' and metric in ('peek_us', 'get_held_us'):
        return '-'
    return fmt(vals('lat', c, metric), digits)


for metric, name, d in [('peek_us', 'local hit, `peek` (sync)', 3), ('get_held_us', 'local hit, `await get`', 3),
                        ('miss_us', 'small miss (100 B) median; floors: round trip', 1),
                        ('miss_p99_us', 'small miss p99', 1), ('big_first_us', '10 MiB first get, median', 0)]:
    p(f'| {name} | ' + ' | '.join(cell(c, metric, d) for c in cols) + ' |')
if not addon_ran:
    p('')
    p('(no addon column: the addon was not built when this ran)')

# --- targets ------------------------------------------------------------------------------------------
p('')
p('### Targets')
p('')
p('| target | configuration | measured, median (min–max) | verdict |')
p('|---|---|---:|---|')
for c in ['addon', 'json']:
    if c not in configs:
        p(f'| all targets | {label[c]} | not measured | no addon |')
        continue
    for s in sizes:
        for w in workers:
            xs = vals('mem', f'{c}.{s}MB.w{w}', 'ratio')
            p(f'| memory increase ≤ 1.2x the data, {s} MiB × {w} workers | {label[c]} | {fmt(xs, 2, "x")} | '
              f'{verdict(xs, lambda x: x <= 1.2) if xs else "n/a (skipped or failed)"} |')
    for metric, name in [('peek_us', '`peek` ≤ 0.3 µs'), ('get_held_us', '`await get` of a held key ≤ 0.3 µs')]:
        xs = vals('lat', c, metric)
        p(f'| local hit, {name} | {label[c]} | {fmt(xs, 3, " µs")} | {verdict(xs, lambda x: x <= 0.3)} |')
    for floor, fname in [('rust_rtt_us', 'Rust↔Rust'), ('node_rtt_us', 'Node↔echo')]:
        xs = per_round('lat', c, 'miss_us', 'lat', 'floor', floor)
        p(f'| small miss ≤ 1.2x the socketpair round trip ({fname}, same round) | {label[c]} | '
          f'{fmt(xs, 1, "x")} | {verdict(xs, lambda x: x <= 1.2)} |')
    xs = vals('lat', c, 'big_first_us')
    p(f'| 10 MiB first get ≤ 1 ms | {label[c]} | {fmt([x / 1000 for x in xs], 2, " ms")} | '
      f'{verdict(xs, lambda x: x <= 1000)} |')
if 'addon' in configs:
    xs = per_round('lat', 'addon', 'miss_us', 'lat', 'floor', 'spin_rtt_us')
    p(f'| (no target) small miss ÷ Rust (not sleeping)↔tokio round trip: the same method\'s floor | '
      f'{label["addon"]} | {fmt(xs, 1, "x")} | |')
xs = per_round('lat', 'redis', 'miss_us', 'lat', 'floor', 'node_rtt_us')
p(f'| (no target) Redis GET of 100 B ÷ Node↔echo round trip | Redis | {fmt(xs, 1, "x")} | |')
for floor, fname, why in [('node_rtt_us', 'Node↔echo', 'a round trip through Node\'s event loop'),
                          ('tokio_rtt_us', 'Rust↔tokio', 'a round trip to an async server')]:
    xs = per_round('lat', 'floor', floor, 'lat', 'floor', 'rust_rtt_us')
    p(f'| (no target) {fname} ÷ Rust↔Rust round trip: {why} | floor | {fmt(xs, 2, "x")} | |')

text = '\n'.join(out) + '\n'
print(text)

if doc:
    begin, end = '<!-- nodecache:begin -->\n', '<!-- nodecache:end -->\n'
    try:
        cur = open(doc).read()
    except FileNotFoundError:
        cur = '# Benchmarks\n'
    block = begin + text.rstrip('\n') + '\n' + end
    b, e = cur.find(begin), cur.find(end)
    new = cur[:b] + block + cur[e + len(end):] if 0 <= b < e else cur.rstrip('\n') + '\n\n' + block
    open(doc, 'w').write(new)
    print(f'(written into {doc})', file=sys.stderr)
