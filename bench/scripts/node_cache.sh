#!/usr/bin/env bash
# herd's host-shared cache measured from Node workers (bench/node/cache_worker.js under
# `herd run`, using the herd-cluster package in js/): memory of workers holding every value, and
# latency of hits, small misses and large first gets, beside Redis GET from Node and the raw
# socketpair round trip. Configurations, alternated within each round:
#   json    the package over Node's IPC (values as JSON; HERD_NODE_ADDON=off)
#   addon   the package with herd's native addon (large values as Buffers over the primary's
#           shared memory); measured when target/release/libherd_node.so is built, and refused
#           when the workers say they are on the json path
#   naive   (memory) each worker reads every file itself: no herd cache
#   redis   (latency) a redis-server of our own, GET from Node (bench/node/redis_get.js)
#   floor   (latency) 16-byte ping-pong over a socketpair: Rust <-> Rust, Rust <-> a tokio task
#           echoing (an async server's floor, as herd's primary serves), the same with the Rust
#           side reading without sleeping (as the addon reads a miss's reply), and Node <-> a
#           Rust echo child (bench/src/bin/socketpair.rs, bench/node/socket_pingpong.js)
# Prints a markdown table on stdout and writes it into docs/benchmarks.md (section nodecache).
#
# usage: bash bench/scripts/node_cache.sh
#   RUNS=3            rounds (every configuration once per round, the first one rotating)
#   QUICK=1           one round, 200 MB with 4 workers only, fewer small keys, docs untouched
#                     (a smoke run: about a minute)
#   SIZES="200 1000"  cache sizes in MiB for the memory runs (values of 10 MiB: 20 and 100 files)
#   WORKERS="4 8"     Node workers for the memory runs
#   SMALL_KEYS=3000   100-byte values for the miss latency (each asked once per run)
#   BIG_KEYS=10       10 MiB values for the first-get latency
#   HEADROOM_GB=4     memory left free: a memory run needing more is skipped
#   DOC=docs/benchmarks.md  where the section goes (DOC= to leave the docs alone)
#   HERD=path         the herd binary (default: cargo build --release, target/release/herd)
#   BENCH_LOG=/tmp/node-cache-runs.log
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/scripts/lib.sh
source "$ROOT/bench/scripts/lib.sh"
QUICK=${QUICK:-}
if [ -n "$QUICK" ]; then
  RUNS=${RUNS:-1}; SIZES=${SIZES:-200}; WORKERS=${WORKERS:-4}; SMALL_KEYS=${SMALL_KEYS:-1200}
  DOC=${DOC-} # a smoke run leaves the docs alone unless DOC names them
fi
RUNS=${RUNS:-3}
SIZES=${SIZES:-200 1000}
WORKERS=${WORKERS:-4 8}
SMALL_KEYS=${SMALL_KEYS:-3000}
BIG_KEYS=${BIG_KEYS:-10}
HEADROOM_GB=${HEADROOM_GB:-4}
DOC=${DOC-$ROOT/docs/benchmarks.md}
BENCH_LOG=${BENCH_LOG:-/tmp/node-cache-runs.log}
VALUE_BYTES=$((10 << 20))
WORKER_JS=$ROOT/bench/node/cache_worker.js
TMP=$(mktemp -d /tmp/node-cache.XXXXXX)
RESULTS=$TMP/results.tsv
: >"$RESULTS"
: >"$BENCH_LOG"
T0=$(date +%s)

log() { echo "$*" >>"$BENCH_LOG"; echo "$*" >&2; }
die() { log "node_cache.sh: $*"; exit 1; }

for tool in node python3 redis-server redis-cli setsid ss cargo; do
  command -v $tool >/dev/null || die "$tool is not installed"
done

# --- processes: each started in a process group of its own, all killed on exit ----------------
GROUPS_STARTED=()
cleanup() {
  local g
  for g in "${GROUPS_STARTED[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  sleep 0.3
  for g in "${GROUPS_STARTED[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_group() {
  local pid=$1 i g kept=()
  kill -TERM -- "-$pid" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.05; done
  if kill -0 -- "-$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || true; sleep 0.2; fi
  for g in "${GROUPS_STARTED[@]}"; do [ "$g" = "$pid" ] || kept+=("$g"); done
  GROUPS_STARTED=("${kept[@]}")
}

# --- build -------------------------------------------------------------------------------------
if [ -z "${HERD:-}" ]; then
  # One cargo command for all, so that every binary is built with the same features of herd.
  PKGS=(-p herd-cli -p herd-bench)
  [ -d "$ROOT/crates/herd-node" ] && PKGS+=(-p herd-node)
  log "building: cargo build --release ${PKGS[*]}"
  if ! (cd "$ROOT" && cargo build --release "${PKGS[@]}" >&2); then
    [ ${#PKGS[@]} -gt 4 ] || die "cargo build failed"
    log "the build with the addon failed: without it (json path only)"
    (cd "$ROOT" && cargo build --release -p herd-cli -p herd-bench >&2) || die "cargo build failed"
  fi
  HERD=$ROOT/target/release/herd
fi
[ -x "$HERD" ] || die "no herd binary at $HERD"
BINDIR=$(dirname "$HERD")
SOCKETPAIR=$BINDIR/socketpair
[ -x "$SOCKETPAIR" ] || die "no $SOCKETPAIR (cargo build --release -p herd-bench)"
ADDON=$BINDIR/libherd_node.so
CONFIGS="json"
if [ -f "$ADDON" ]; then CONFIGS="json addon"; else log "no addon at $ADDON: the addon rows are not measured"; fi
log "herd: $HERD ($("$HERD" --version 2>&1)); configurations: $CONFIGS"

# --- data: 10 MiB random values, 100-byte text values ------------------------------------------
MAX_MB=0
for s in $SIZES; do [ "$s" -gt "$MAX_MB" ] && MAX_MB=$s; done
NVAL=$((MAX_MB / 10))
[ "$NVAL" -lt "$BIG_KEYS" ] && NVAL=$BIG_KEYS
mkdir -p "$TMP/values" "$TMP/lat/small" "$TMP/lat/big"
for i in $(seq -w 0 $((NVAL - 1))); do head -c "$VALUE_BYTES" /dev/urandom >"$TMP/values/v$i"; done
for s in $SIZES; do # the first s/10 values, linked (one copy on disk and in the page cache)
  mkdir -p "$TMP/mem$s"
  ls "$TMP/values" | sort | sed -n "1,$((s / 10))p" | while read -r f; do ln "$TMP/values/$f" "$TMP/mem$s/$f"; done
done
ls "$TMP/values" | sort | sed -n "1,${BIG_KEYS}p" | while read -r f; do ln "$TMP/values/$f" "$TMP/lat/big/$f"; done
python3 - "$TMP/lat/small" "$SMALL_KEYS" <<'EOF'
import sys, os, base64
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f'k{i:06d}'), 'wb') as f:
        f.write(base64.b64encode(os.urandom(75)))  # 100 bytes of text
EOF
cat "$TMP"/values/* >/dev/null # in the page cache before any round

# --- measuring ---------------------------------------------------------------------------------
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; } # kind round config metric value

# count FILE WHAT: lines of FILE saying `BENCH WHAT `
count() { grep -c "BENCH $2 " "$1" 2>/dev/null || true; }  # 0 when none (the file is made first)

# wait_lines FILE WHAT N SECS PID: until FILE has N `BENCH WHAT` lines; fails when a worker says
# `BENCH failed`, PID dies or the deadline passes.
wait_lines() {
  local file=$1 what=$2 n=$3 secs=$4 pid=$5 end=$(($(date +%s) + $4))
  while [ "$(count "$file" "$what")" -lt "$n" ]; do
    [ "$(count "$file" failed)" -gt 0 ] && { log "a worker failed:"; grep 'BENCH failed' "$file" | head -3 >&2; return 1; }
    kill -0 "$pid" 2>/dev/null || { log "the primary $pid is gone"; return 1; }
    [ "$(date +%s)" -ge "$end" ] && { log "no $n '$what' lines within $secs s"; return 1; }
    sleep 0.05
  done
}

# field FILE WHAT NAME: NAME of every `BENCH WHAT {json}` line, one a line
field() {
  grep "BENCH $2 " "$1" | sed 's/.*BENCH [a-z]* //' | python3 -c '
import sys, json
for l in sys.stdin:
    print(json.loads(l)[sys.argv[1]])' "$3"
}

# mem PID...: "PSS_KB MEMFD_OUTSIDE_PSS_KB SHMEM_KB": the total PSS of the processes; the pages
# of the memfds the first (the primary) holds open that no PSS counts (written but faulted into no
# one's page tables, or not mapped at all: resident memfd pages minus the PSS of every memfd
# mapping); the host's Shmem.
mem() {
  python3 - "$@" <<'EOF'
import os, sys
pids = sys.argv[1:]
pss = memfd_pss = 0
for p in pids:
    for line in open(f'/proc/{p}/smaps_rollup'):
        if line.startswith('Pss:'):
            pss += int(line.split()[1])
    memfd = False
    for line in open(f'/proc/{p}/smaps'):
        f = line.split()
        if f and '-' in f[0] and not f[0].endswith(':'):  # a mapping's header line
            memfd = len(f) >= 6 and f[5].startswith('/memfd:')
        elif memfd and f and f[0] == 'Pss:':
            memfd_pss += int(f[1])
resident, seen = 0, set()
fds = f'/proc/{pids[0]}/fd'
for fd in os.listdir(fds):
    try:
        if not os.readlink(f'{fds}/{fd}').startswith('/memfd:'):
            continue
        st = os.stat(f'{fds}/{fd}')
    except OSError:
        continue
    if st.st_ino not in seen:
        seen.add(st.st_ino)
        resident += st.st_blocks * 512 // 1024
shmem = next(int(l.split()[1]) for l in open('/proc/meminfo') if l.startswith('Shmem:'))
print(pss, max(0, resident - memfd_pss), shmem)
EOF
}

# start_herd CONFIG LOG ARGS...: herd running cache_worker.js; sets HPID.
start_herd() {
  local config=$1 out=$2; shift 2
  local env=(env -u HERD_NODE_ADDON)
  : >"$out"
  [ "$config" = json ] && env=(env HERD_NODE_ADDON=off)
  "${env[@]}" setsid "$HERD" run --control "$out.sock" --restart never "$@" \
    -- node --expose-gc "$WORKER_JS" >"$out" 2>&1 &
  HPID=$!
  GROUPS_STARTED+=("$HPID")
}

# path_ok CONFIG LOG: the workers use the path CONFIG names.
path_ok() {
  local want=$1 paths
  [ "$want" = naive ] || [ "$want" = json ] || [ "$want" = addon ] || return 0
  paths=$(field "$2" "$3" path | sort -u | tr '\n' ' ')
  [ "$paths" = "$want " ] && return 0
  log "refused: $want workers say path '$paths' ($(field "$2" "$3" why 2>/dev/null | sort -u | tr '\n' ' '))"
  return 1
}

# One memory run: W workers (CONFIG) each get and hold every value of the SIZE MiB cache.
mem_one() {
  local config=$1 size=$2 w=$3 round=$4 out args=() pids idle loaded cell
  cell="$config.${size}MB.w$w"
  # Memory it will take, from what was seen: a json worker holds about 1.4x the data (its heap
  # keeps what decoding took), a naive one 1x, an addon one shares the primary's copy.
  local per=0 need_kb avail_kb
  case $config in json) per=16 ;; naive) per=11 ;; esac
  need_kb=$(((w * per + 10) * size * 1024 / 10))
  avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
  if [ "$need_kb" -gt $((avail_kb - HEADROOM_GB * 1024 * 1024)) ]; then
    log "round $round $cell: skipped (needs about $((need_kb >> 20)) GiB, $((avail_kb >> 20)) GiB available, $HEADROOM_GB GiB kept free)"
    record mem "$round" "$cell" skipped 1
    return 0
  fi
  out=$TMP/mem.$cell.$round.log
  args=(-w "$w" --env "BENCH_TEST=memory" --env "BENCH_DIR=$TMP/mem$size")
  if [ "$config" = naive ]; then args+=(--env BENCH_SOURCE=naive); else args+=(--cache-dir "$TMP/mem$size"); fi
  start_herd "$config" "$out" "${args[@]}"
  if ! wait_lines "$out" ready "$w" 60 "$HPID" || ! path_ok "$config" "$out" ready; then
    record mem "$round" "$cell" failed 1; cat "$out" >>"$BENCH_LOG"; stop_group "$HPID"; return 0
  fi
  pids=$(field "$out" ready pid | tr '\n' ' ')
  read -r -a idle <<<"$(mem "$HPID" $pids)"
  # shellcheck disable=SC2086
  kill -USR2 $pids
  if ! wait_lines "$out" loaded "$w" 600 "$HPID"; then
    record mem "$round" "$cell" failed 1; cat "$out" >>"$BENCH_LOG"; stop_group "$HPID"; return 0
  fi
  read -r -a loaded <<<"$(mem "$HPID" $pids)"
  local data_kb=$((size * 1024)) bytes
  bytes=$(field "$out" loaded bytes | sort -u | tr '\n' ' ')
  [ "$bytes" = "$((size * 1024 * 1024)) " ] || log "round $round $cell: workers loaded '$bytes' bytes, not $((size << 20))"
  calc() { awk "BEGIN {printf \"%.4f\", $1}"; }
  record mem "$round" "$cell" pss_idle_mb "$(calc "${idle[0]} / 1024")"
  record mem "$round" "$cell" pss_loaded_mb "$(calc "${loaded[0]} / 1024")"
  record mem "$round" "$cell" increase_mb "$(calc "(${loaded[0]} + ${loaded[1]} - ${idle[0]} - ${idle[1]}) / 1024")"
  record mem "$round" "$cell" ratio "$(calc "(${loaded[0]} + ${loaded[1]} - ${idle[0]} - ${idle[1]}) / $data_kb")"
  record mem "$round" "$cell" outside_pss_mb "$(calc "${loaded[1]} / 1024")"
  record mem "$round" "$cell" shmem_mb "$(calc "(${loaded[2]} - ${idle[2]}) / 1024")"
  record mem "$round" "$cell" load_ms "$(field "$out" loaded ms | sort -n | tail -1)"
  log "round $round $cell: PSS $((idle[0] >> 10)) -> $((loaded[0] >> 10)) MB, memfd pages outside PSS $((loaded[1] >> 10)) MB, Shmem +$(((loaded[2] - idle[2]) >> 10)) MB, slowest load $(field "$out" loaded ms | sort -n | tail -1) ms"
  stop_group "$HPID"
}

# One latency run of CONFIG (json, addon, redis or floor).
lat_one() {
  local config=$1 round=$2 out k line
  out=$TMP/lat.$config.$round.log
  case $config in
    json|addon)
      start_herd "$config" "$out" -w 1 --env BENCH_TEST=latency --env "BENCH_DIR=$TMP/lat" \
        --cache-dir "$TMP/lat" --warm 'small/*' --warm 'big/*'
      if ! wait_lines "$out" latency 1 300 "$HPID" || ! path_ok "$config" "$out" latency; then
        record lat "$round" "$config" failed 1; cat "$out" >>"$BENCH_LOG"; stop_group "$HPID"; return 0
      fi
      stop_group "$HPID"
      line=$(grep 'BENCH latency ' "$out" | sed 's/.*BENCH latency //') ;;
    redis)
      line=$(node "$ROOT/bench/node/redis_get.js" bench "$RPORT" "$TMP/lat" | sed -n 's/^BENCH redis //p') ;;
    floor)
      line=$(python3 -c 'import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); c=json.loads(sys.argv[3]);
d=json.loads(sys.argv[4]);
print(json.dumps({"rust_rtt_us": a["rtt_us_med"], "rust_rtt_p99_us": a["rtt_us_p99"], "node_rtt_us": b["rtt_us_med"], "node_rtt_p99_us": b["rtt_us_p99"], "tokio_rtt_us": c["rtt_us_med"], "tokio_rtt_p99_us": c["rtt_us_p99"], "spin_rtt_us": d["rtt_us_med"], "spin_rtt_p99_us": d["rtt_us_p99"]}))' \
        "$("$SOCKETPAIR" rtt 100000)" "$(node "$ROOT/bench/node/socket_pingpong.js" "$SOCKETPAIR" 50000)" \
        "$("$SOCKETPAIR" rtt 100000 tokio)" "$("$SOCKETPAIR" rtt 100000 tokio spin)") ;;
  esac
  log "round $round latency $config: $line"
  for k in $(python3 -c 'import json,sys; print(" ".join(k for k,v in json.loads(sys.argv[1]).items() if isinstance(v,(int,float))))' "$line"); do
    record lat "$round" "$config" "$k" "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$line" "$k")"
  done
}

# --- redis of our own on a free port -----------------------------------------------------------
RPORT=$(free_port) || die "no free port"
setsid redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" \
  >"$TMP/redis.log" 2>&1 &
RPID=$!
GROUPS_STARTED+=("$RPID")
end=$(($(date +%s) + 20))
until redis-cli -p "$RPORT" ping 2>/dev/null | grep -q PONG; do
  kill -0 "$RPID" 2>/dev/null || die "redis-server did not start: $(cat "$TMP/redis.log")"
  [ "$(date +%s)" -lt "$end" ] || die "redis-server did not answer within 20 s"
  sleep 0.05
done
node "$ROOT/bench/node/redis_get.js" load "$RPORT" "$TMP/lat"
REDIS_VERSION=$(redis-server --version | sed 's/ sha=.*//')
log "redis: port $RPORT, $(redis-cli -p "$RPORT" dbsize) keys"

# --- the rounds: the first configuration rotates from round to round --------------------------
MEM_CONFIGS="$CONFIGS naive"
LAT_CONFIGS="$CONFIGS redis floor"
rotate() { # rotate ROUND LIST...
  local r=$1; shift
  local a=("$@") k
  for k in $(seq 0 $((${#a[@]} - 1))); do echo "${a[$(((k + r - 1) % ${#a[@]}))]}"; done
}
log "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB; RUNS=$RUNS SIZES=$SIZES WORKERS=$WORKERS SMALL_KEYS=$SMALL_KEYS BIG_KEYS=$BIG_KEYS"
for r in $(seq 1 "$RUNS"); do
  # shellcheck disable=SC2086
  for c in $(rotate "$r" $LAT_CONFIGS); do lat_one "$c" "$r"; done
  for s in $SIZES; do
    for w in $WORKERS; do
      # shellcheck disable=SC2086
      for c in $(rotate "$r" $MEM_CONFIGS); do mem_one "$c" "$s" "$w" "$r"; done
    done
  done
done
TOOK=$(($(date +%s) - T0))
cp "$RESULTS" "$BENCH_LOG.tsv"
log "took $TOOK s; raw figures: $BENCH_LOG, $BENCH_LOG.tsv"

# --- the table -----------------------------------------------------------------------------------
MACHINE="$(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(free -g | awk '/^Mem:/ {print $2}') GiB, Linux $(uname -r), node $(node --version), $REDIS_VERSION"
python3 "$ROOT/bench/scripts/node_cache_table.py" "$RESULTS" "$CONFIGS" "$SIZES" "$WORKERS" "$RUNS" \
  "$SMALL_KEYS" "$BIG_KEYS" "$TOOK" "$MACHINE" "${DOC:-}"
