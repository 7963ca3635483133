#!/usr/bin/env bash
# Throughput of a loaded Node server whose requests miss the cache, with and without the addon
# reading misses' replies from a microtask (HERD_CACHE_SPIN_US, crates/herd-node/src/spin.rs):
# the waits must give way to the server's other requests. bench/node/cache_load_app.js under
# `herd run -w WORKERS --cache-snapshot` (KEYS values of 100 bytes, all in the primary's hub),
# `wrk` against it; the two settings alternated, RUNS rounds. Prints a markdown table (median
# requests/s, min-max, and the ratio within each round).
#
# usage: bash bench/scripts/node_cache_load.sh
#   RUNS=5  DURATION=4s  CONNS=32  WORKERS=2  KEYS=90000
#   HERD=path (default: cargo build --release, target/release/herd and its addon)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/scripts/lib.sh
source "$ROOT/bench/scripts/lib.sh"
RUNS=${RUNS:-5}
DURATION=${DURATION:-4s}
CONNS=${CONNS:-32}
WORKERS=${WORKERS:-2}
KEYS=${KEYS:-90000}
APP=$ROOT/bench/node/cache_load_app.js
TMP=$(mktemp -d /tmp/node-cache-load.XXXXXX)
HPID=

for tool in wrk node curl ss python3 setsid cargo; do
  command -v $tool >/dev/null || { echo "node_cache_load.sh: $tool is not installed" >&2; exit 1; }
done
cleanup() {
  [ -n "$HPID" ] && kill -TERM -- "-$HPID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

if [ -z "${HERD:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p herd-cli -p herd-node)
  HERD=$ROOT/target/release/herd
fi
[ -f "$(dirname "$HERD")/libherd_node.so" ] || { echo "no addon beside $HERD" >&2; exit 1; }
python3 -c "
import json, sys
json.dump({f'k{i}': f'value {i} ' + 'x' * 88 for i in range(int(sys.argv[2]))}, open(sys.argv[1], 'w'))
" "$TMP/snap.json" "$KEYS"

# One run: SPIN (µs) -> requests/s
one() {
  local spin=$1 port i rps
  port=$(free_port)
  setsid "$HERD" run -w "$WORKERS" --cache-snapshot "$TMP/snap.json" --warm 'k*' --restart never \
    --env "PORT=$port" --env "KEYS=$KEYS" --env "HERD_CACHE_SPIN_US=$spin" \
    -- node "$APP" "$ROOT/js" >"$TMP/herd.log" 2>&1 &
  HPID=$!
  for i in $(seq 1 200); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done
  rps=$(wrk -t2 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {print $2}')
  kill -TERM -- "-$HPID" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 -- "-$HPID" 2>/dev/null || break; sleep 0.05; done
  kill -KILL -- "-$HPID" 2>/dev/null || true
  HPID=
  echo "${rps:-0}"
}

: >"$TMP/results"
for r in $(seq 1 "$RUNS"); do
  if [ $((r % 2)) -eq 1 ]; then order="100 0"; else order="0 100"; fi
  for spin in $order; do
    rps=$(one "$spin")
    echo "round $r HERD_CACHE_SPIN_US=$spin: $rps requests/s" >&2
    echo "$r $spin $rps" >>"$TMP/results"
  done
done
python3 - "$TMP/results" "$RUNS" "$DURATION" "$CONNS" "$WORKERS" "$KEYS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for r, spin, rps in rows:
    by.setdefault(spin, {})[r] = float(rps)
def cell(xs):
    return f'{statistics.median(xs):,.0f} ({min(xs):,.0f}–{max(xs):,.0f})'
ratios = [by['100'][r] / by['0'][r] for r in by['100'] if by['0'].get(r)]
runs, dur, conns, workers, keys = sys.argv[2:7]
print(f'Node HTTP server doing one cache get per request ({keys} keys, misses until each worker holds them), '
      f'`herd run -w {workers}`, `wrk -t2 -c{conns} -d{dur}`, {runs} alternated rounds:')
print()
print('| HERD_CACHE_SPIN_US | requests/s, median (min–max) |')
print('|---|---:|')
print(f'| 100 (default: waits for replies, giving way to other I/O) | {cell(list(by["100"].values()))} |')
print(f'| 0 (replies through the event loop) | {cell(list(by["0"].values()))} |')
print()
print(f'Ratio 100 ÷ 0 within a round: median {statistics.median(ratios):.2f}x ({min(ratios):.2f}x–{max(ratios):.2f}x)')
PY
