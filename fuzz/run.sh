#!/usr/bin/env bash
# Runs fuzz targets for SECONDS each (default 60): every target, or the ones named.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Stable Rust is enough: cargo-fuzz needs nightly flags, which RUSTC_BOOTSTRAP=1 unlocks. One
# libFuzzer worker at a time (-jobs=1). Each target's full output goes to fuzz/fuzz-<target>.log,
# findings to fuzz/artifacts/<target>/. Exits non-zero if any target crashed or failed to build.
set -uo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift $(($# > 0 ? 1 : 0))
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked || exit 1
export RUSTC_BOOTSTRAP=1
if (($# > 0)); then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list) || exit 1
fi
failed=()
for t in "${targets[@]}"; do
  echo "== $t ($secs s)"
  log="fuzz-$t.log"
  if cargo fuzz run "$t" -- -max_total_time="$secs" -jobs=1 -print_final_stats=1 >"$log" 2>&1; then
    grep -E "^(Done [0-9]+ runs|stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb))" "$log"
  else
    failed+=("$t")
    grep -E "panicked|ERROR: libFuzzer|SUMMARY|Test unit written|^error" "$log" || tail -n 20 "$log"
    echo "!! $t failed; full output in fuzz/$log; reproduce with:"
    echo "   RUSTC_BOOTSTRAP=1 cargo fuzz run $t fuzz/artifacts/$t/<file>"
  fi
done
if ((${#failed[@]} > 0)); then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all targets ran clean"
