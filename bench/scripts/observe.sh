#!/usr/bin/env bash
# What watching herd costs its workers (issue 22): HTTP req/s of 2 Node workers that log a line
# per request, under wrk, with nobody watching (A) against `herd logs -f` following every line
# plus a /metrics scrape every second (B), alternated round by round in one herd; then herd's
# primary RSS with 32 workers idle against 32 workers with log files, a follower, metrics and
# full log rings. Prints each round, medians with min-max, and the ratio B/A.
#   bash bench/scripts/observe.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${1:-5}"; SECS="${2:-5}"
HERD=target/release/herd
[ -x "$HERD" ] || cargo build --release -p herd-cli -p herd-node >/dev/null
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
TMP="$(mktemp -d)"; trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
CTL="$TMP/c.sock"
"$HERD" run -w 2 --control "$CTL" --metrics "127.0.0.1:$MPORT" --env "PORT=$PORT" \
  -- node bench/apps/logging_server.js >/dev/null 2>"$TMP/herd.err" &
for _ in $(seq 100); do curl -s "127.0.0.1:$PORT/" >/dev/null 2>&1 && break; sleep 0.1; done
rate() { wrk -t1 -c32 -d"${SECS}s" "http://127.0.0.1:$PORT/" | awk '/Requests\/sec/ {print $2}'; }
A=(); B=()
for r in $(seq "$ROUNDS"); do
  A+=("$(rate)")
  "$HERD" logs -f -n 0 --control "$CTL" >/dev/null 2>&1 & FOLLOW=$!
  ( while :; do curl -s "127.0.0.1:$MPORT/metrics" >/dev/null; sleep 1; done ) & SCRAPE=$!
  B+=("$(rate)")
  kill "$FOLLOW" "$SCRAPE"; wait "$FOLLOW" "$SCRAPE" 2>/dev/null || true
  echo "round $r: alone ${A[-1]} req/s, watched ${B[-1]} req/s"
done
dropped=$("$HERD" status --json --control "$CTL" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["status"]["output_dropped"], r["logs_dropped"])')
"$HERD" stop --control "$CTL" >/dev/null
python3 - "${A[*]}" "${B[*]}" "$dropped" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]; b = [float(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"alone:   median {ma:.0f} req/s ({min(a):.0f}-{max(a):.0f})")
print(f"watched: median {mb:.0f} req/s ({min(b):.0f}-{max(b):.0f})")
print(f"watched/alone: {mb/ma:.3f}; per round: " + " ".join(f"{y/x:.3f}" for x, y in zip(a, b)))
print(f"dropped (herd's output, herd logs -f): {sys.argv[3]}")
PY
# The primary's RSS with 32 workers: bare, then with everything on.
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
WORKER='i=0; while [ $i -lt 3000 ]; do echo "line $i of a worker that logged at start"; i=$((i+1)); done; exec sleep 3600'
for mode in bare watched; do
  extra=()
  [ "$mode" = watched ] && extra=(--metrics "127.0.0.1:$MPORT" --log-file "$TMP/all.log" --log-time)
  "$HERD" run -w 32 --control "$CTL" "${extra[@]}" -- sh -c "$WORKER" >/dev/null 2>&1 &
  HP=$!
  for _ in $(seq 200); do
    n=$("$HERD" status --json --control "$CTL" 2>/dev/null | python3 -c 'import json,sys; print(sum(w["state"]=="running" for w in json.load(sys.stdin)["status"]["workers"]))' 2>/dev/null || echo 0)
    [ "$n" = 32 ] && break; sleep 0.1
  done
  if [ "$mode" = watched ]; then
    "$HERD" logs -f -n 100000 --control "$CTL" >/dev/null 2>&1 & F=$!
    curl -s "127.0.0.1:$MPORT/metrics" >/dev/null; sleep 2; curl -s "127.0.0.1:$MPORT/metrics" >/dev/null
  else
    sleep 2
  fi
  echo "primary RSS, 32 workers, $mode: $(rss $HP) kB"
  [ "$mode" = watched ] && kill "$F"
  "$HERD" stop --control "$CTL" >/dev/null
  wait "$HP" 2>/dev/null || true
done
