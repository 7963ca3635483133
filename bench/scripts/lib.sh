# What the benchmark scripts share (sourced by balance.sh and node_cache.sh).

# A free TCP port below the ephemeral range, with no socket of any state on it.
free_port() {
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    [ -z "$(ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null)" ] && { echo $p; return 0; }
  done
  return 1
}
