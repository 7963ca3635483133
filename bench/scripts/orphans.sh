#!/bin/sh
# Leaked processes per crash, stop and kill -9 of herd (docs/reliability.md, "No orphans").
# usage: bench/scripts/orphans.sh path/to/herd   (HERD_CGROUP=off to measure without the cgroup)
H=$1; M=$$; D=$(mktemp -d)
count() { n=0; for p in /proc/[0-9]*; do [ -r $p/cmdline ] || continue; c=$(tr '\0' ' ' < $p/cmdline 2>/dev/null); case "$c" in "sleep $1"*) n=$((n+1));; esac; done; echo $n; }
killmarked() { for p in /proc/[0-9]*; do [ -r $p/cmdline ] || continue; c=$(tr '\0' ' ' < $p/cmdline 2>/dev/null); case "$c" in "sleep $1"*) kill -9 ${p#/proc/} 2>/dev/null;; esac; done; }
wpid() { $H status --control $D/c.sock --json 2>/dev/null | grep -o '"pid":[0-9]*' | head -1 | cut -d: -f2; }
$H run --control $D/c.sock -w 1 --backoff-min 0.05 -- sh -c "(trap \"\" TERM; exec sleep 1000.$M) & exec sleep 1001.$M" >/dev/null 2>&1 &
HP=$!
until [ "$(count 1001.$M)" = 1 ]; do sleep 0.1; done
for i in 1 2 3; do
  w=$(wpid); kill -9 $w
  until [ -n "$(wpid)" ] && [ "$(wpid)" != "$w" ] && [ "$(count 1001.$M)" = 1 ]; do sleep 0.1; done
done
sleep 1
echo "after 3 crashes: $(count 1000.$M) grandchildren running (1 belongs to the live worker)"
$H stop --control $D/c.sock >/dev/null; wait $HP
sleep 1
echo "after herd stop: $(count 1000.$M) grandchildren, $(count 1001.$M) workers running"
killmarked 1000.$M
M2=$((M+1))
$H run --control $D/c2.sock -w 1 -- sh -c "(trap \"\" TERM; exec sleep 1000.$M2) & exec sleep 1001.$M2" >/dev/null 2>&1 &
HP=$!
until [ "$(count 1001.$M2)" = 1 ]; do sleep 0.1; done
kill -9 $HP; wait $HP 2>/dev/null
sleep 1
echo "after kill -9 of herd: $(count 1000.$M2) grandchildren, $(count 1001.$M2) workers running"
killmarked 1000.$M2; killmarked 1001.$M2; rm -rf $D
