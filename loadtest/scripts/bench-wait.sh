#!/usr/bin/env bash
# What waiting for a Redis replica costs (`--redis-wait-replicas 1`):
#
#   loadtest/scripts/bench-wait.sh [--rounds N] [--receivers N] [--duration S] [--out DIR]
#
# 3 gateways with recovery on and a standalone redis-server with one
# replica (loadtest/scripts/cluster.sh up --redis-replica), WebSocket
# receivers in one room over the 3 nodes; a backend publishes with one
# `Push.EmitStream` on node 1 (the load tester's `push`), each emit
# answered once it is in the log (and, waiting, on the replica): first as
# fast as the stream goes (emits per second, gateway CPU per delivery),
# then at half that rate (latency from the publisher's stamp to the
# client). Rounds alternate waiting off (A) and on (B); the table gives
# medians and B/A. Reports stay in target/bench/wait-<time>/.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
. "$root/loadtest/scripts/lib/common.sh"
. "$root/loadtest/scripts/lib/bench.sh"
rounds=3; receivers=300; duration=10; out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --receivers) receivers=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) usage ;;
  esac
done
out=${out:-$root/target/bench/wait-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
cluster_bench_setup
bench=bench-wait; quiet_cores=${QUIET_CORES:-0.5}; quiet_wait=${QUIET_WAIT:-60}
token=bench-wait-token
common=(--receivers "$receivers" --duration "$duration" --drain 10)

for round in $(seq "$rounds"); do
  for wait in 0 1; do
    "$cluster" up --nodes 3 --redis-replica -- --api-token "$token" \
      --redis-wait-replicas "$wait" >/dev/null
    # shellcheck disable=SC1091
    source "$RINGWAY_CLUSTER_DIR/state.env"
    # shellcheck disable=SC2046,SC2086
    measure "wait$wait-max" push --url "$NODE_URLS" --grpc "$NODE1_API" --token "$token" \
      "${common[@]}" --rate 0 $(pid_args $GATEWAY_PIDS)
    half=$(python3 -c 'import json,sys; print("%.0f" % (json.load(open(sys.argv[1]))["figures"]["emits_per_s"] / 2))' \
      "$out/wait$wait-max-$round.json")
    # shellcheck disable=SC2046,SC2086
    measure "wait$wait-half" push --url "$NODE_URLS" --grpc "$NODE1_API" --token "$token" \
      "${common[@]}" --rate "$half" $(pid_args $GATEWAY_PIDS)
    "$cluster" down >/dev/null
  done
done

python3 - "$out" "$rounds" <<'PY' | tee "$out/summary.md"
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def med(name, get):
    return statistics.median(get(json.load(open(f"{out}/{name}-{r}.json"))) for r in range(1, rounds + 1))
fig = lambda key: (lambda d: d["figures"][key])
lat = lambda p: (lambda d: d["latency"]["delivery"][p])
rows = [
    ("emits/s at the stream's pace", "max", fig("emits_per_s"), "{:.0f}"),
    ("gateway CPU per delivery (µs)", "max", fig("server_cpu_us_per_delivery"), "{:.2f}"),
    ("latency p50 at half rate (µs)", "half", lat("p50_us"), "{:.0f}"),
    ("latency p99 at half rate (µs)", "half", lat("p99_us"), "{:.0f}"),
]
print("| figure | no wait (A) | WAIT 1 (B) | B/A |")
print("|---|---|---|---|")
for label, kind, get, f in rows:
    a, b = med(f"wait0-{kind}", get), med(f"wait1-{kind}", get)
    print(f"| {label} | {f.format(a)} | {f.format(b)} | {b / a:.2f}x |")
PY
