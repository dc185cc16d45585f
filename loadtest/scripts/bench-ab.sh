#!/usr/bin/env bash
# Two gateway binaries side by side (A: before a change, B: after), one
# node each in turn with the echo application, the same client and
# machine, rounds alternating A and B: "no behaviour change, figures
# within noise" as a number.
#
#   loadtest/scripts/bench-ab.sh --a PATH --b PATH [--rounds N] [--duration S] [--out DIR]
#
# Scenarios (each round runs every scenario on A, then on B):
#   echo       50 WebSocket sessions, closed-loop echo, recovery off
#   echo-rec   the same with connection state recovery on (memory store):
#              every echo goes through the recovery log
#   fanout-rec 500 receivers x 200 broadcasts/s, recovery on
#   polling    20 long-polling sessions, echo with a 2 ms pause
# Prints, per scenario, the medians of the server's CPU per message (µs)
# and of the p99 latency for A and B, and B/A. Reports stay in
# target/bench/ab-<time>/ (--out DIR).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
. "$root/loadtest/scripts/lib/common.sh"
. "$root/loadtest/scripts/lib/bench.sh"
a=""; b=""; rounds=3; duration=10
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --a) a=$2; shift 2 ;;
    --b) b=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) usage ;;
  esac
done
[ -x "$a" ] && [ -x "$b" ] || usage
out=${out:-$root/target/bench/ab-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
cargo build --release -q -p ringway-loadtest
lt="$root/target/release/ringway-loadtest"
bench=bench-ab; quiet_cores=0.5; quiet_wait=60
pid=""
trap 'stop_pid "$pid"' EXIT

# start BINARY RECOVERY_WINDOW: one node on a free port; sets pid, url.
start() {
  local port
  port=$(free_port)
  "$1" --listen "127.0.0.1:$port" --recovery-window "$2" \
    --max-sessions-per-ip 0 --handshake-rate-per-ip 0 >"$out/gateway.log" 2>&1 &
  pid=$!
  url="http://127.0.0.1:$port"
  for _ in $(seq 100); do
    curl -sf "$url/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$bench: $1 did not start" >&2
  exit 1
}

run() { # run SIDE SCENARIO
  local side=$1 scenario=$2 bin window args
  if [ "$side" = a ]; then bin=$a; else bin=$b; fi
  case "$scenario" in
    echo) window=0; args=(echo --sessions 50 --duration "$duration") ;;
    echo-rec) window=120; args=(echo --sessions 50 --duration "$duration") ;;
    fanout-rec) window=120; args=(fanout --receivers 500 --rate 200 --duration "$duration") ;;
    polling) window=0; args=(echo --transport polling --sessions 20 --pause-ms 2 --duration "$duration") ;;
  esac
  start "$bin" "$window"
  measure "$scenario-$side" "${args[@]}" --url "$url" --server-pid "$pid"
  stop_pid "$pid"
  pid=""
}

scenarios=(echo echo-rec fanout-rec polling)
for round in $(seq "$rounds"); do
  for scenario in "${scenarios[@]}"; do
    run a "$scenario"
    run b "$scenario"
  done
done

python3 - "$out" "$rounds" "${scenarios[@]}" <<'PY' | tee "$out/summary.md"
import json, statistics, sys
out, rounds, scenarios = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def figures(name):
    cpu, p99 = [], []
    for r in range(1, rounds + 1):
        d = json.load(open(f"{out}/{name}-{r}.json"))
        f = d["figures"]
        cpu.append(f.get("server_cpu_us_per_message", f.get("server_cpu_us_per_delivery", 0.0)))
        lat = d["latency"].get("delivery") or d["latency"]["echo_rtt"]
        p99.append(lat["p99_us"])
    return statistics.median(cpu), statistics.median(p99)
print("| scenario | CPU/msg A (µs) | CPU/msg B (µs) | B/A | p99 A (µs) | p99 B (µs) | B/A |")
print("|---|---|---|---|---|---|---|")
for s in scenarios:
    ca, pa = figures(f"{s}-a")
    cb, pb = figures(f"{s}-b")
    print(f"| {s} | {ca:.2f} | {cb:.2f} | {cb / ca:.2f}x | {pa:.0f} | {pb:.0f} | {pb / pa:.2f}x |")
PY
