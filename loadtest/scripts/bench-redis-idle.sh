#!/usr/bin/env bash
# Redis commands per idle session per minute, measured:
#
#   loadtest/scripts/bench-redis-idle.sh [--sessions N] [--seconds S] [--debug | --bin-dir DIR] [--out DIR] [-- GATEWAY FLAGS]
#
# 3 gateways (recovery on) and one redis-server (loadtest/scripts/cluster.sh).
# Redis' own command counters (INFO commandstats, reset with CONFIG
# RESETSTAT) are read over S seconds (default 180) three times: with no
# session, with N/3 (default N: 3000) idle WebSocket sessions held by the
# load tester (`hold`, spread over the three nodes; each a recoverable
# socket, so each has a registry entry and a recovery state), then with N.
# What an idle session costs Redis is the slope between the last two
# (what the nodes spend by themselves, which depends on whether the log
# holds entries, cancels out); the first says what a node costs with no
# session. Each period starts 10 s after the last session opened (a
# write's one-time read-back is 5 s later). Prints both, per command, and
# writes them to DIR/summary.md (default target/bench/redis-idle-<time>/).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
. "$root/loadtest/scripts/lib/common.sh"
sessions=3000; seconds=180; bin_args=(); out=""; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --sessions) sessions=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --debug) bin_args=(--debug); shift ;;
    --bin-dir) bin_args=(--bin-dir "$2"); shift 2 ;;
    --out) out=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) usage ;;
  esac
done
out=${out:-$root/target/bench/redis-idle-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bench_binaries
cluster="$root/loadtest/scripts/cluster.sh"
export RINGWAY_CLUSTER_DIR="$out/cluster"
hold_pids=()
trap '"$cluster" down >/dev/null 2>&1 || true; for p in "${hold_pids[@]}"; do stop_pid "$p"; done' EXIT
"$cluster" up --nodes 3 "${bin_args[@]}" -- --handshake-rate-per-ip 0 --max-sessions-per-ip 0 \
  "${extra[@]}" >"$out/cluster.out"
# shellcheck disable=SC1091
source "$RINGWAY_CLUSTER_DIR/state.env"
rc() { redis-cli -p "$REDIS_PORT" "$@"; }

# measure FILE: the command counters over $seconds.
measure() {
  rc CONFIG RESETSTAT >/dev/null
  sleep "$seconds"
  rc INFO commandstats >"$1"
}

# hold N: N more idle sessions, held past the last period; waits until
# every recovery state is in Redis, then 10 s.
hold() {
  local n=$1 want=$2 have=0
  "$lt" hold --url "$NODE_URLS" --sessions "$n" --rate 500 \
    --duration $((3 * seconds + 120)) --json >"$out/hold-$want.json" 2>"$out/hold-$want.err" &
  hold_pids+=($!)
  for _ in $(seq 120); do
    have=$(rc EVAL "return #redis.call('KEYS', 'ringway:rec:*')" 0)
    [ "$have" -ge "$want" ] && break
    sleep 1
  done
  [ "$have" -ge "$want" ] || { echo "only $have of $want recovery states in Redis" >&2; exit 1; }
  sleep 10
}
third=$((sessions / 3))
measure "$out/stats-empty.txt"
hold "$third" "$third"
measure "$out/stats-third.txt"
hold $((sessions - third)) "$sessions"
measure "$out/stats-all.txt"

python3 - "$out" "$sessions" "$third" "$seconds" <<'PY' | tee "$out/summary.md"
import re, sys
out, n, third, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def stats(name):
    calls = {}
    for line in open(f"{out}/stats-{name}.txt"):
        m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line.strip())
        if m and m.group(1) not in ("config|resetstat", "info"):
            calls[m.group(1)] = int(m.group(2))
    return calls
empty, low, high = stats("empty"), stats("third"), stats("all")
minutes = seconds / 60
added = n - third
print(f"Redis commands over {seconds:.0f} s periods, 3 gateways, recovery on: no session, {third}, then {n} idle WebSocket sessions\n")
print("| command | per node per minute, no session | per minute, {0} sessions | per minute, {1} sessions | per idle session per minute (slope) |".format(third, n))
print("|---|---:|---:|---:|---:|")
tot = [0, 0, 0]
for cmd in sorted(set(empty) | set(low) | set(high)):
    e, l, h = empty.get(cmd, 0), low.get(cmd, 0), high.get(cmd, 0)
    tot = [tot[0] + e, tot[1] + l, tot[2] + h]
    print(f"| {cmd} | {e / minutes / 3:.1f} | {l / minutes:.1f} | {h / minutes:.1f} | {(h - l) / minutes / added:.4f} |")
print(f"| **all** | {tot[0] / minutes / 3:.1f} | {tot[1] / minutes:.1f} | {tot[2] / minutes:.1f} | **{(tot[2] - tot[1]) / minutes / added:.4f}** |")
PY
