#!/bin/sh
# A worker that floods its channel and never reads, under `herd run`; prints herd's RSS and how
# long `herd status` takes, once a second. Used for the "before" figures in docs/reliability.md.
#
#   docs/scripts/flood.sh HERD CMD DATA COUNT SECONDS WORKERS [herd run options...]
#   docs/scripts/flood.sh target/debug/herd NODE_HERD_REQ 1 200000 12 2
#   docs/scripts/flood.sh target/debug/herd NODE_HERD_CACHE '{"op":"stats"}' 5000000 20 1
#
# Slot 0 writes COUNT lines {"cmd":CMD,"id":N,"data":DATA} to $NODE_CHANNEL_FD; every worker
# then sleeps without reading.
set -u
HERD=$1 CMD=$2 DATA=$3 COUNT=$4 SECS=$5 W=$6
shift 6
D=$(mktemp -d)
S="if [ \"\$HERD_WORKER_SLOT\" = 0 ]; then echo flooding; seq 1 $COUNT | sed 's/.*/{\"cmd\":\"$CMD\",\"id\":&,\"data\":$DATA}/' >&\$NODE_CHANNEL_FD; echo flood written; fi; exec sleep 600"
"$HERD" run --control "$D/c.sock" -w "$W" --grace 1 "$@" -- sh -c "$S" >"$D/out" 2>"$D/err" &
P=$!
sleep 1
rss() { awk '/VmRSS/{print $2}' "/proc/$P/status"; }
echo "start: rss $(rss) kB"
i=0
while [ "$i" -lt "$SECS" ]; do
  sleep 1
  i=$((i + 1))
  s0=$(date +%s%N)
  timeout 10 "$HERD" status --control "$D/c.sock" >/dev/null 2>&1
  rc=$?
  ms=$((($(date +%s%N) - s0) / 1000000))
  echo "t=${i}s rss=$(rss) kB status: rc $rc, ${ms} ms"
done
echo "flood written: $(grep -c 'flood written' "$D/out")"
timeout 20 "$HERD" stop --control "$D/c.sock" >/dev/null 2>&1
echo "stop: rc $?"
wait "$P"
rm -rf "$D"
