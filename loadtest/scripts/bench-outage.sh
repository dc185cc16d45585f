#!/usr/bin/env bash
# A Redis outage under load, measured:
#
#   loadtest/scripts/bench-outage.sh [--outage S] [--sessions N] [--debug | --bin-dir DIR] [--out DIR]
#
# 3 gateways (recovery on) and one redis-server (loadtest/scripts/cluster.sh).
# --sessions (60) WebSocket sessions echo in a closed loop through every
# node (the load tester's `echo`) for the whole run; 5 s in, redis-server
# is SIGKILLed and stays down --outage (20) seconds, then starts again,
# empty, on the same port. Meanwhile, every 250 ms: each node's /readyz
# (status and text) and a new polling handshake on each node. It prints:
# the moments no node was ready (must be none), handshakes refused during
# the outage, the echo's errors and round trips, and how long after Redis'
# return each node says `ready` again (the issue's bound: 5 s). Files in
# DIR (default target/bench/outage-<time>/).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
. "$root/loadtest/scripts/lib/common.sh"
outage=20; sessions=60; bin_args=(); out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --outage) outage=$2; shift 2 ;;
    --sessions) sessions=$2; shift 2 ;;
    --debug) bin_args=(--debug); shift ;;
    --bin-dir) bin_args=(--bin-dir "$2"); shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) usage ;;
  esac
done
out=${out:-$root/target/bench/outage-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bench_binaries
cluster="$root/loadtest/scripts/cluster.sh"
export RINGWAY_CLUSTER_DIR="$out/cluster"
trap '"$cluster" down >/dev/null 2>&1 || true; stop_pid "${redis_again:-}"' EXIT
"$cluster" up --nodes 3 "${bin_args[@]}" -- --handshake-rate-per-ip 0 --max-sessions-per-ip 0 >"$out/cluster.out"
# shellcheck disable=SC1091
source "$RINGWAY_CLUSTER_DIR/state.env"
urls=(${NODE_URLS//,/ })

total=$((outage + 15))
# shellcheck disable=SC2086
"$lt" echo --url "$NODE_URLS" --sessions "$sessions" --duration "$total" --pause-ms 20 \
  --quiet --json $(for p in $GATEWAY_PIDS; do echo --server-pid "$p"; done) >"$out/echo.json" &
echo_pid=$!

# probe LABEL: one line per node: time, label, node, /readyz status and
# text, handshake status.
probe() {
  local u now
  now=$(date +%s.%N)
  for u in "${urls[@]}"; do
    local ready hs
    ready=$(curl -s -m 1 -w ' %{http_code}' "$u/readyz" || echo " 000")
    hs=$(curl -s -m 1 -o /dev/null -w '%{http_code}' "$u/socket.io/?EIO=4&transport=polling" || echo 000)
    echo "$now $1 $u ${ready##* } ${hs} ${ready% *}"
  done
}

for _ in $(seq 20); do probe before; sleep 0.25; done >>"$out/probes.txt"
kill -KILL "$REDIS_PID"
down_at=$(date +%s.%N)
end=$(python3 -c "print($down_at + $outage)")
while python3 -c "import sys,time; sys.exit(0 if time.time() < $end else 1)"; do
  probe outage; sleep 0.25
done >>"$out/probes.txt"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --protected-mode no >"$out/redis-again.log" 2>&1 &
redis_again=$!
back_at=$(date +%s.%N)
for _ in $(seq 40); do probe after; sleep 0.25; done >>"$out/probes.txt"
wait "$echo_pid" || true

python3 - "$out" "$back_at" "$outage" <<'PY' | tee "$out/summary.md"
import json, sys
out, back_at, outage = sys.argv[1], float(sys.argv[2]), sys.argv[3]
rows = [l.split(" ", 5) for l in open(f"{out}/probes.txt").read().splitlines()]
by_time = {}
for t, label, url, ready, hs, text in rows:
    by_time.setdefault((t, label), []).append((url, ready, hs, text))
none_ready = [t for (t, label), nodes in by_time.items() if not any(r == "200" for _, r, _, _ in nodes)]
outage_rows = [r for r in rows if r[1] == "outage"]
refused = [r for r in outage_rows if r[4] != "200"]
degraded = [r for r in outage_rows if r[5].startswith("degraded")]
ready_again = {}
for t, label, url, ready, hs, text in rows:
    if label == "after" and text == "ready" and url not in ready_again:
        ready_again[url] = float(t) - back_at
echo = json.load(open(f"{out}/echo.json"))
print(f"Redis down {outage} s under {echo['figures'].get('sessions', '?'):.0f} echoing WebSocket sessions, 3 gateways:")
print(f"- probes with no node ready: {len(none_ready)} of {len(by_time)}")
print(f"- /readyz during the outage: {len(degraded)} of {len(outage_rows)} answers 200 'degraded'")
print(f"- new polling handshakes refused during the outage: {len(refused)} of {len(outage_rows)}")
print(f"- echo: {echo['figures'].get('round_trips', 0):.0f} round trips, {echo['error_total']} errors")
for url in sorted(ready_again):
    print(f"- {url} ready again {ready_again[url]:.2f} s after Redis' return")
missing = {r[2] for r in rows} - set(ready_again)
for url in sorted(missing):
    print(f"- {url} NOT ready again within 10 s")
PY
