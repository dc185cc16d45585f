#!/usr/bin/env bash
# The cost of telemetry: one gateway, closed-loop echo, with OTLP export on
# (traces and metrics to a local receiver, default sampling) and off, in
# alternating rounds; server CPU per echo and the ratio on / off.
#
#   loadtest/scripts/bench-telemetry.sh [--rounds N] [--duration S] [--out DIR]
#
# The receiver is `ringway-loadtest otlp-sink` (accepts and counts). The
# gateway's metrics are exported every OTEL_METRIC_EXPORT_INTERVAL (set to
# 1 s here, the worst case; the default is 60 s); spans are batched.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
rounds=3; duration=20; out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --quick) rounds=1; duration=5; shift ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
out=${out:-$root/target/bench-telemetry/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
cargo build --release -q -p ringway-gateway -p ringway-loadtest
lt="$root/target/release/ringway-loadtest"
quiet_cores=${QUIET_CORES:-0.25}
quiet_wait=${QUIET_WAIT:-1800}
bench=bench-telemetry
# shellcheck source=lib/bench.sh
source "$root/loadtest/scripts/lib/bench.sh"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

"$lt" otlp-sink --listen 127.0.0.1:0 --report >"$out/sink.log" 2>&1 &
for _ in $(seq 100); do grep -q 'listening on' "$out/sink.log" && break; sleep 0.1; done
sink=$(sed -n 's/.*listening on \(.*\)$/\1/p' "$out/sink.log" | head -1)

for round in $(seq "$rounds"); do
  for mode in on off; do
    log="$out/gateway-$mode-$round.log"
    if [ "$mode" = on ]; then
      OTEL_EXPORTER_OTLP_ENDPOINT="http://$sink" OTEL_METRIC_EXPORT_INTERVAL=1000 \
        "$root/target/release/ringway-gateway" --listen 127.0.0.1:0 >"$log" 2>&1 &
    else
      "$root/target/release/ringway-gateway" --listen 127.0.0.1:0 >"$log" 2>&1 &
    fi
    pid=$!
    for _ in $(seq 100); do grep -q 'listening on http' "$log" && break; sleep 0.1; done
    url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$log" | head -1)
    measure "echo-$mode" echo --url "$url" --server-pid "$pid" --sessions 50 --size 64 --duration "$duration"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done

python3 - "$out" <<'PY' | tee "$out/summary.md"
import glob, json, statistics, sys
out = sys.argv[1]
def load(name):
    return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{name}-*.json"))]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
on, off = load("echo-on"), load("echo-off")
cpu = lambda r: r["figures"].get("server_cpu_us_per_message")
p99 = lambda r: r["latency"]["echo_rtt"]["p99_us"] / 1000
a, b = med([cpu(r) for r in on]), med([cpu(r) for r in off])
print(f"Median of {len(on)} round(s), 50 sessions x 64-byte echo; JSON reports in {out}.\n")
print("| measure | telemetry on (OTLP export) | off | ratio on / off |")
print("|---|---|---|---|")
print(f"| server CPU per echo (µs) | {a:.2f} | {b:.2f} | {a / b:.3f} |")
print(f"| echo round trip p99 (ms) | {med([p99(r) for r in on]):.2f} | {med([p99(r) for r in off]):.2f} | |")
sink = open(f"{out}/sink.log").read().strip().splitlines()
print(f"\nThe receiver got: {sink[-1] if len(sink) > 1 else 'nothing'}")
PY
