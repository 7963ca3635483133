#!/usr/bin/env bash
# HTTP connection balancing of herd against Node's own cluster (and PM2 when installed), all
# running the same plain Node server (bench/node/balance_app.js). Prints a markdown table on
# stdout; the raw figures of every run go to $BENCH_LOG.
#
# usage: bash bench/scripts/balance.sh
#   RUNS=5          rounds of the throughput runs (every contender once per round, alternated)
#   DURATION=5s     wrk duration of each throughput run
#   CONNS=32        wrk connections
#   WORKERS=2       workers per contender
#   RUNS_RELOAD=3   rounds of the reload runs (keep-alive and Connection: close each)
#   RELOADS=10      reloads per reload run, one started every RELOAD_EVERY=1.1 s
#   HERD=path       the herd binary (default: cargo build --release -p herd-cli, target/release/herd)
#   HERD_MODES      herd's balancing modes to measure (default: rr shared reuseport when
#                   `herd run --balance` exists, else shared reuseport)
#   HERD_DEFAULT    which of them is herd's default (default: read from `herd run --help`)
#   BENCH_LOG=/tmp/balance-runs.log
#
# Every figure is the median over the rounds with its min-max; ratios are taken against Node
# cluster round-robin measured in the same round. Primary CPU is the utime+stime of the primary
# process alone (herd, the Node primary, PM2's daemon) over the Connection: close run.
set -u

RUNS=${RUNS:-5}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
WORKERS=${WORKERS:-2}
RUNS_RELOAD=${RUNS_RELOAD:-3}
RELOADS=${RELOADS:-10}
RELOAD_EVERY=${RELOAD_EVERY:-1.1}
WARMUP=${WARMUP:-1s}
BENCH_LOG=${BENCH_LOG:-/tmp/balance-runs.log}

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/scripts/lib.sh
source "$ROOT/bench/scripts/lib.sh"
APP=$ROOT/bench/node/balance_app.js
PRIMARY=$ROOT/bench/node/balance_primary.js
LUA=$ROOT/bench/scripts/balance_count.lua
TMP=$(mktemp -d /tmp/balance.XXXXXX)
RESULTS=$TMP/results.tsv
: >"$RESULTS"
: >"$BENCH_LOG"
TICKS=$(getconf CLK_TCK)
T0=$(date +%s)

log() { echo "$*" >>"$BENCH_LOG"; echo "$*" >&2; }
die() { log "balance.sh: $*"; exit 1; }
now() { date +%s.%N; }

for tool in wrk node curl ss python3 setsid; do
  command -v $tool >/dev/null || die "$tool is not installed"
done

# --- processes: every contender runs in a process group of its own; all are killed on exit --
GROUPS_STARTED=()
WRK_PID=
PM2_USED=
cleanup() {
  [ -n "$WRK_PID" ] && kill -9 "$WRK_PID" 2>/dev/null
  for g in "${GROUPS_STARTED[@]}"; do kill -TERM -- "-$g" 2>/dev/null; done
  sleep 0.3
  for g in "${GROUPS_STARTED[@]}"; do kill -KILL -- "-$g" 2>/dev/null; done
  [ -n "$PM2_USED" ] && PM2_HOME=$TMP/pm2 timeout 20 pm2 kill >/dev/null 2>&1
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- herd ------------------------------------------------------------------------------------
if [ -z "${HERD:-}" ]; then
  log "building herd: cargo build --release -p herd-cli"
  (cd "$ROOT" && cargo build --release -p herd-cli >&2) || die "cargo build failed"
  HERD=$ROOT/target/release/herd
fi
[ -x "$HERD" ] || die "no herd binary at $HERD"
HERD_HELP=$("$HERD" run --help 2>&1)
if grep -q -- --balance <<<"$HERD_HELP"; then
  HERD_BALANCE=1
  HERD_MODES=${HERD_MODES:-rr shared reuseport}
  # The default named in --balance's help (the lines up to the next flag).
  found=$(awk '/--balance/ {on=1; print; next} on && /^ *(-[a-zA-Z], )?--[a-z]/ {exit} on {print}' \
      <<<"$HERD_HELP" | tr '\n' ' ' \
      | grep -oE 'default:? *`?(rr|shared|reuseport)|`(rr|shared|reuseport)` \(default' | head -1 \
      | grep -oE '(rr|shared|reuseport)' | head -1)
  HERD_DEFAULT=${HERD_DEFAULT:-${found:-shared}}
else
  HERD_BALANCE=
  HERD_MODES=${HERD_MODES:-shared reuseport}
  HERD_DEFAULT=${HERD_DEFAULT:-shared}
fi
if [ -n "$HERD_BALANCE" ]; then spelling="--balance MODE"; else spelling="no --balance: the old spelling, no rr"; fi
log "herd: $HERD ($("$HERD" --version 2>&1)); $spelling; modes: $HERD_MODES; default: $HERD_DEFAULT"

# The `herd run` flags of a balancing mode on port $2.
herd_mode_args() {
  local mode=$1 port=$2
  if [ -n "$HERD_BALANCE" ]; then
    echo "--balance $mode"
    [ "$mode" = reuseport ] && echo "-l 127.0.0.1:$port"
  else
    case $mode in
      shared) ;;
      reuseport) echo "--reuseport -l 127.0.0.1:$port" ;;
      *) return 1 ;;
    esac
  fi
  return 0
}

# --- contenders --------------------------------------------------------------------------------
CONTENDERS="node-rr node-none"
for m in $HERD_MODES; do CONTENDERS="$CONTENDERS herd-$m"; done
if command -v pm2 >/dev/null; then CONTENDERS="$CONTENDERS pm2"; else log "PM2 is not installed: skipped"; fi
BENCHED="$CONTENDERS single"
if [ -n "${ONLY:-}" ]; then # a subset, e.g. ONLY="node-rr herd-shared"
  keep() { local c out=""; for c in $1; do case " $ONLY " in *" $c "*) out="$out $c" ;; esac; done; echo $out; }
  CONTENDERS=$(keep "$CONTENDERS"); BENCHED=$(keep "$BENCHED")
fi


# start NAME PORT: sets PID (the primary process), CLOG (its output), CTL (herd's control socket).
start() {
  local name=$1 port=$2
  CLOG=$TMP/$name.$port.log
  CTL=$TMP/$name.$port.sock
  case $name in
    single) PORT=$port setsid node "$APP" >"$CLOG" 2>&1 & ;;
    node-rr) NODE_CLUSTER_SCHED_POLICY=rr WORKERS=$WORKERS PORT=$port setsid node "$PRIMARY" >"$CLOG" 2>&1 & ;;
    node-none) NODE_CLUSTER_SCHED_POLICY=none WORKERS=$WORKERS PORT=$port setsid node "$PRIMARY" >"$CLOG" 2>&1 & ;;
    herd-*)
      # shellcheck disable=SC2046
      setsid "$HERD" run -w "$WORKERS" $(herd_mode_args "${name#herd-}" "$port") --control "$CTL" \
        --env "PORT=$port" -- node "$APP" >"$CLOG" 2>&1 & ;;
    pm2)
      PM2_USED=1
      export PM2_HOME=$TMP/pm2
      PORT=$port timeout 60 pm2 start "$APP" -i "$WORKERS" --name balance >"$CLOG" 2>&1
      PID=$(cat "$PM2_HOME/pm2.pid" 2>/dev/null)
      return 0 ;;
  esac
  PID=$!
  GROUPS_STARTED+=("$PID")
}

stop() {
  local name=$1 pid=$2 i
  if [ "$name" = pm2 ]; then
    PM2_HOME=$TMP/pm2 timeout 30 pm2 delete balance >/dev/null 2>&1
    return
  fi
  kill -TERM -- "-$pid" 2>/dev/null
  for i in $(seq 1 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 -- "-$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null; sleep 0.2; fi
  # Gone: forget the group, so that the exit trap never signals a recycled id.
  local g kept=()
  for g in "${GROUPS_STARTED[@]}"; do [ "$g" = "$pid" ] || kept+=("$g"); done
  GROUPS_STARTED=("${kept[@]}")
}

# ready PORT N PID: until N distinct x-worker pids have answered (20 s deadline). 0: ready;
# 1: the deadline passed with fewer (but some) workers seen; 2: none answered or PID died.
ready() {
  local port=$1 want=$2 pid=$3 deadline=$(($(date +%s) + 20)) seen="" w
  while [ "$(date +%s)" -lt "$deadline" ]; do
    kill -0 "$pid" 2>/dev/null || return 2
    w=$(curl -s -m 1 -D - -o /dev/null "http://127.0.0.1:$port/" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-worker" {print $2}')
    if [ -n "$w" ]; then
      case " $seen " in *" $w "*) ;; *) seen="$seen $w" ;; esac
      [ "$(wc -w <<<"$seen")" -ge "$want" ] && return 0
    else
      sleep 0.05
    fi
  done
  [ -n "$seen" ] && return 1
  return 2
}

ticks() { # utime+stime of a process, in clock ticks
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  s=${s##*) }
  awk '{print $12 + $13}' <<<"$s"
}

# wrk_parse FILE: "rps total errors share" (errors: socket errors + non-2xx/3xx responses)
wrk_parse() {
  awk '
    /^Requests\/sec:/ {rps=$2}
    / requests in / {total=$1}
    /^ *Socket errors:/ {gsub(/,/, ""); err += $4 + $6 + $8 + $10}
    /^ *Non-2xx or 3xx responses:/ {err += $NF}
    /^workers [0-9]+ busiest/ {share=$NF}
    END {printf "%s %s %d %s\n", (rps==""?"NaN":rps), (total==""?0:total), err, (share==""?"NaN":share)}
  ' "$1"
}

# wrk OUT ARGS...: wrk in the background, waited for, so that a signal to this script ends it at once.
run_wrk() {
  local out=$1; shift
  wrk "$@" >"$out" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID"
  WRK_PID=
}

record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; } # kind round contender metric value

want_workers() { [ "$1" = single ] && echo 1 || echo "$WORKERS"; }

# One throughput round of a contender: warm-up, keep-alive run, Connection: close run.
bench_one() {
  local name=$1 round=$2 port rc out t1 t2 c1 c2 cpu rps total err share
  port=$(free_port) || { log "no free port"; return; }
  start "$name" "$port"
  ready "$port" "$(want_workers "$name")" "$PID"; rc=$?
  if [ $rc = 2 ]; then
    log "round $round $name: did not start; its output:"; cat "$CLOG" >>"$BENCH_LOG"
    record bench "$round" "$name" start_failed 1
    stop "$name" "$PID"; return
  fi
  [ $rc = 1 ] && log "round $round $name: only some workers answered within 20 s; measuring anyway"
  run_wrk /dev/null -t2 -c"$CONNS" -d"$WARMUP" "http://127.0.0.1:$port/"
  out=$TMP/wrk.out
  run_wrk "$out" -t2 -c"$CONNS" -d"$DURATION" -s "$LUA" "http://127.0.0.1:$port/"
  read -r rps total err share <<<"$(wrk_parse "$out")"
  record bench "$round" "$name" ka_rps "$rps"; record bench "$round" "$name" ka_share "$share"
  record bench "$round" "$name" ka_err "$err"
  log "round $round $name keep-alive: $rps req/s, $total requests, $err errors, busiest worker $share%"
  c1=$(ticks "$PID"); t1=$(now)
  run_wrk "$out" -t2 -c"$CONNS" -d"$DURATION" -H 'Connection: close' -s "$LUA" "http://127.0.0.1:$port/"
  c2=$(ticks "$PID"); t2=$(now)
  read -r rps total err share <<<"$(wrk_parse "$out")"
  cpu=$(awk -v a="$c1" -v b="$c2" -v t="$TICKS" -v s="$t1" -v e="$t2" 'BEGIN {printf "%.3f", (b - a) / t / (e - s)}')
  record bench "$round" "$name" close_rps "$rps"; record bench "$round" "$name" close_share "$share"
  record bench "$round" "$name" close_err "$err"
  [ "$name" != single ] && record bench "$round" "$name" cpu "$cpu"
  log "round $round $name Connection: close: $rps req/s, $total requests, $err errors, busiest worker $share%, primary CPU $cpu cores"
  stop "$name" "$PID"
}

# reload NAME: one rolling reload, returns once it is done (30 s deadline).
reload_once() {
  local name=$1 n i
  case $name in
    herd-*) timeout 30 "$HERD" reload --control "$CTL" >>"$TMP/reload.log" 2>&1 ;;
    pm2) PM2_HOME=$TMP/pm2 timeout 30 pm2 reload balance >>"$TMP/reload.log" 2>&1 ;;
    node-*)
      n=$(grep -c 'reload done' "$CLOG")
      kill -HUP "$PID"
      for i in $(seq 1 600); do
        [ "$(grep -c 'reload done' "$CLOG")" -gt "$n" ] && return 0
        sleep 0.05
      done
      return 1 ;;
  esac
}

# One reload run: wrk under load while RELOADS rolling reloads run, one started every RELOAD_EVERY.
reload_one() {
  local name=$1 round=$2 mode=$3 port out start_t i done_n=0 t rps total err share hdr=()
  [ "$mode" = close ] && hdr=(-H 'Connection: close')
  port=$(free_port) || { log "no free port"; return; }
  start "$name" "$port"
  ready "$port" "$WORKERS" "$PID"
  if [ $? = 2 ]; then
    log "reload $round $name $mode: did not start; its output:"; cat "$CLOG" >>"$BENCH_LOG"
    record reload "$round" "$name" start_failed 1
    stop "$name" "$PID"; return
  fi
  out=$TMP/wrk-reload.out
  wrk -t2 -c"$CONNS" -d600s "${hdr[@]}" -s "$LUA" "http://127.0.0.1:$port/" >"$out" 2>&1 &
  WRK_PID=$!
  sleep 1
  start_t=$(now)
  for i in $(seq 1 "$RELOADS"); do
    if reload_once "$name"; then done_n=$((done_n + 1)); else log "reload $round $name $mode: reload $i failed or timed out"; fi
    t=$(awk -v s="$start_t" -v n="$(now)" -v i="$i" -v e="$RELOAD_EVERY" 'BEGIN {d = s + i * e - n; print (d > 0 ? d : 0)}')
    sleep "$t"
  done
  sleep 1
  kill -INT "$WRK_PID"; wait "$WRK_PID"; WRK_PID=
  read -r rps total err share <<<"$(wrk_parse "$out")"
  record reload "$round" "$name" "${mode}_fail" "$err"
  record reload "$round" "$name" "${mode}_total" "$total"
  record reload "$round" "$name" "${mode}_reloads" "$done_n"
  log "reload $round $name $mode: $done_n/$RELOADS reloads, $total requests, $err failed ($(grep -E 'Socket errors|Non-2xx' "$out" | tr -s ' ' | tr '\n' ';'))"
  stop "$name" "$PID"
}

# --- the runs: round r measures every contender once, starting one further along each round ----
log "machine: $(nproc) cores; RUNS=$RUNS DURATION=$DURATION CONNS=$CONNS WORKERS=$WORKERS RUNS_RELOAD=$RUNS_RELOAD RELOADS=$RELOADS"
read -r -a LIST <<<"$BENCHED"
for r in $(seq 1 "$RUNS"); do
  for k in $(seq 0 $((${#LIST[@]} - 1))); do
    bench_one "${LIST[$(((k + r - 1) % ${#LIST[@]}))]}" "$r"
  done
done
read -r -a LIST <<<"$CONTENDERS"
for r in $(seq 1 "$RUNS_RELOAD"); do
  for k in $(seq 0 $((${#LIST[@]} - 1))); do
    for mode in ka close; do
      reload_one "${LIST[$(((k + r - 1) % ${#LIST[@]}))]}" "$r" "$mode"
    done
  done
done
cp "$RESULTS" "$BENCH_LOG.tsv"
log "took $(($(date +%s) - T0)) s; raw figures: $BENCH_LOG, $BENCH_LOG.tsv"

# --- the table -----------------------------------------------------------------------------------
case " $BENCHED " in *" single "*) SINGLE=1 ;; *) SINGLE=0 ;; esac
python3 - "$RESULTS" "$CONTENDERS" "$HERD_DEFAULT" "$HERD_BALANCE" "$WORKERS" "$CONNS" "$DURATION" "$RUNS" "$RUNS_RELOAD" "$RELOADS" "$(nproc)" "$SINGLE" <<'EOF'
import sys, statistics, collections
path, contenders, default, balance, workers, conns, duration, runs, runs_reload, reloads, cores, benched_single = sys.argv[1:]
contenders = contenders.split()
data = collections.defaultdict(dict)  # (kind, contender, metric) -> {round: value}
for line in open(path):
    kind, rnd, name, metric, value = line.rstrip('\n').split('\t')
    try:
        v = float(value)
    except ValueError:
        continue
    if v == v:  # not NaN
        data[(kind, name, metric)][int(rnd)] = v

def vals(kind, name, metric):
    return list(data.get((kind, name, metric), {}).values())

def med(xs):
    return statistics.median(xs) if xs else None

def fmt(xs, digits=0, unit=''):
    if not xs:
        return 'n/a'
    f = lambda x: f'{x:,.{digits}f}{unit}'
    if len(xs) == 1:
        return f(xs[0])
    return f'{f(med(xs))} ({f(min(xs))}–{f(max(xs))})'

def ratios(name, metric):
    a, b = data.get(('bench', name, metric), {}), data.get(('bench', 'node-rr', metric), {})
    return [a[r] / b[r] for r in a if r in b and b[r] > 0]

label = {
    'node-rr': 'Node cluster round-robin', 'node-none': 'Node cluster SCHED_NONE',
    'herd-rr': 'herd `--balance rr`', 'herd-shared': 'herd `--balance shared`',
    'herd-reuseport': 'herd `--balance reuseport`', 'pm2': f'PM2 `-i {workers}`',
    'single': 'machine limit: 1 Node process, no cluster',
}
if not balance:
    label['herd-shared'] = 'herd shared socket (no flag: the default)'
    label['herd-reuseport'] = 'herd `--reuseport -l`'

def reload_cell(name, mode):
    fails, totals, done = (vals('reload', name, f'{mode}_{m}') for m in ('fail', 'total', 'reloads'))
    if not fails:
        return 'n/a'
    cell = f'{fmt(fails)} of {fmt([t / 1000 for t in totals], 0, "k")}'
    if done and min(done) < int(reloads):
        cell += f' ({int(min(done))}/{reloads} reloads done)'
    return cell

print(f'HTTP connection balancing, {workers} workers, wrk -t2 -c{conns} -d{duration}, {cores} cores; '
      f'median of {runs} alternated rounds (min–max); reloads: median of {runs_reload} runs of {reloads} reloads.')
print()
print('| contender | keep-alive req/s | × Node RR | new connection per request req/s | × Node RR '
      '| busier worker (new conn; keep-alive) | primary CPU, cores (new conn) '
      f'| failed in {reloads} reloads, keep-alive (of requests) | failed in {reloads} reloads, Connection: close (of requests) |')
print('|' + '---|' * 9)
rows = contenders + (['herd-rr'] if not balance else []) + (['single'] if benched_single == '1' else [])
for name in rows:
    if name == 'herd-rr' and not balance:
        print(f'| herd `--balance rr` | skipped: this herd has no `--balance` | | | | | | | |')
        continue
    ka, cl = vals('bench', name, 'ka_rps'), vals('bench', name, 'close_rps')
    if not ka and not cl and (vals('bench', name, 'start_failed') or vals('reload', name, 'start_failed')):
        print(f'| {label.get(name, name)} | did not start (its output is in the log) | | | | | | | |')
        continue
    share = f"{fmt(vals('bench', name, 'close_share'), 1, '%')}; {fmt(vals('bench', name, 'ka_share'), 1, '%')}"
    if name == 'single':
        print(f'| {label[name]} | {fmt(ka)} | {fmt(ratios(name, "ka_rps"), 2)} | {fmt(cl)} | {fmt(ratios(name, "close_rps"), 2)} | (one process) | | | |')
        continue
    print(f'| {label.get(name, name)} | {fmt(ka)} | {fmt(ratios(name, "ka_rps"), 2)} | {fmt(cl)} | '
          f'{fmt(ratios(name, "close_rps"), 2)} | {share} | {fmt(vals("bench", name, "cpu"), 2)} | '
          f'{reload_cell(name, "ka")} | {reload_cell(name, "close")} |')

print()
print('Failed = wrk socket errors (connect, read, write, timeout) + non-2xx responses, for wrk running '
      'through the reloads; primary CPU = utime+stime of the primary process alone over the run.')
print()
h = f'herd-{default}'
hl = f"herd's default ({default})"
def verdict(ok):
    return 'n/a (not measured)' if ok is None else ('met' if ok else 'NOT met')
r = med(ratios(h, 'close_rps'))
print(f'- (a) {hl}, new connection per request >= 1.5x Node RR req/s: '
      f'{verdict(None if r is None else r >= 1.5)}{"" if r is None else f" ({r:.2f}x)"}')
best = [(med(vals('bench', n, 'ka_rps')), n) for n in ('node-rr', 'node-none') if vals('bench', n, 'ka_rps')]
hk = med(vals('bench', h, 'ka_rps'))
if best and hk is not None:
    b, bn = max(best)
    print(f'- (b) {hl}, keep-alive within 5% of the best Node mode: {verdict(hk >= 0.95 * b)} '
          f'({hk:,.0f} vs {label[bn]} {b:,.0f}: {100 * (hk / b - 1):+.1f}%)')
else:
    print(f'- (b) {hl}, keep-alive within 5% of the best Node mode: n/a (not measured)')
s = med(vals('bench', h, 'close_share'))
print(f'- (c) {hl}, busier worker\'s share <= 55% with {workers} workers (new connection per request): '
      f'{verdict(None if s is None else s <= 55)}{"" if s is None else f" ({s:.1f}%)"}'
      f'{"" if workers == "2" else " (the target is for 2 workers)"}')
f = vals('reload', h, 'ka_fail') + vals('reload', h, 'close_fail')
print(f'- (d) {hl}, 0 failed requests during reloads (every run, keep-alive and Connection: close): '
      f'{verdict(None if not f else max(f) == 0)}{"" if not f else f" (worst run {max(f):.0f})"}')
EOF
