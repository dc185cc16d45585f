#!/usr/bin/env bash
# Redis commands per idle session per minute, measured:
#
#   loadtest/scripts/bench-redis-idle.sh [--sessions N] [--seconds S] [--debug | --bin-dir DIR] [--out DIR] [-- GATEWAY FLAGS]
#
# 3 gateways (recovery on) and one redis-server (loadtest/scripts/cluster.sh).
# Redis' own command counters (INFO commandstats, reset with CONFIG
# RESETSTAT) are read over S seconds (default 240) twice: with no session,
# then with N (default 3000) idle WebSocket sessions held by the load
# tester (`hold`, spread over the three nodes; each a recoverable socket,
# so each has a registry entry and a recovery state). The difference,
# divided by N and by the minutes, is what an idle session costs Redis; the
# first period is what the nodes cost by themselves (heartbeats, log
# reads). Prints both, per command, and writes them to DIR/summary.md
# (default target/bench/redis-idle-<time>/).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
. "$root/loadtest/scripts/lib/common.sh"
sessions=3000; seconds=240; bin_args=(); out=""; extra=()
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
trap '"$cluster" down >/dev/null 2>&1 || true; stop_pid "${hold_pid:-}"' EXIT
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

measure "$out/stats-empty.txt"
"$lt" hold --url "$NODE_URLS" --sessions "$sessions" --rate 500 \
  --duration $((seconds + 60)) --json >"$out/hold.json" 2>"$out/hold.err" &
hold_pid=$!
# Every session open (and its state written) before counting.
want=$sessions
for _ in $(seq 120); do
  have=$(rc EVAL "return #redis.call('KEYS', 'ringway:rec:*')" 0)
  [ "$have" -ge "$want" ] && break
  sleep 1
done
[ "$have" -ge "$want" ] || { echo "only $have of $want recovery states in Redis" >&2; exit 1; }
sleep 5
measure "$out/stats-idle.txt"
wait "$hold_pid" || true

python3 - "$out" "$sessions" "$seconds" <<'PY' | tee "$out/summary.md"
import re, sys
out, sessions, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def stats(path):
    calls = {}
    for line in open(path):
        m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line.strip())
        if m and m.group(1) not in ("config", "info"):
            calls[m.group(1)] = int(m.group(2))
    return calls
empty, idle = stats(f"{out}/stats-empty.txt"), stats(f"{out}/stats-idle.txt")
minutes = seconds / 60
print(f"Redis commands over {seconds:.0f} s, 3 gateways, recovery on; {sessions} idle WebSocket sessions in the second period\n")
print("| command | no session (per node per minute) | with sessions (per minute) | per idle session per minute |")
print("|---|---:|---:|---:|")
total_e = total_i = 0
for cmd in sorted(set(empty) | set(idle)):
    e, i = empty.get(cmd, 0), idle.get(cmd, 0)
    total_e += e; total_i += i
    print(f"| {cmd} | {e / minutes / 3:.1f} | {i / minutes:.1f} | {(i - e) / minutes / sessions:.4f} |")
print(f"| **all** | {total_e / minutes / 3:.1f} | {total_i / minutes:.1f} | **{(total_i - total_e) / minutes / sessions:.4f}** |")
PY
