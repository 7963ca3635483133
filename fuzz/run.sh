#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60). Stable Rust is enough: cargo-fuzz needs
# nightly flags, which RUSTC_BOOTSTRAP=1 unlocks. Findings land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for t in $(cargo fuzz list); do
  echo "== $t ($secs s)"
  cargo fuzz run "$t" -- -max_total_time="$secs" -jobs=1 2>&1 | grep -E "^(#[0-9]+ +DONE|Done|==[0-9]+==|SUMMARY|.*panicked)" || true
done
