#!/usr/bin/env bash
# The Push API against the reference's server-side emit, side by side:
#
#   loadtest/scripts/bench-push.sh [--rounds N] [--receivers N] [--duration S]
#                                  [--quick] [--out DIR] [--summary-only --out DIR]
#
# WebSocket receivers in one room, spread over 3 nodes (the nodes' URLs in
# turn):
# a. Ringway, 3 gateways (recovery on, the default; and off): a backend
#    publishes with one `Push.EmitStream` on node 1, as fast as the stream's
#    flow control lets it (`push --rate 0`): deliveries per second and
#    gateway CPU per delivery (summed over the nodes); then at half the
#    rate measured, for the latency from the publisher's stamp to the
#    client (p50/p99).
# b. The reference socket.io 4.8 on 3 nodes with @socket.io/redis-adapter:
#    the same room emit issued by the server itself (`io.to(room).emit` in
#    a loop, `push --server-driver --rate 0`), the same figures.
#
# Deliveries per second per CPU core = 1e6 / CPU µs per delivery. Each
# measurement waits for a quiet machine (QUIET_CORES, QUIET_WAIT).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
rounds=3
receivers=1000
duration=15
out=""
summary_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --receivers) receivers=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --quick) rounds=1; receivers=60; duration=3; shift ;;
    --out) out=$2; shift 2 ;;
    --summary-only) summary_only=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
out=${out:-$root/target/bench-push/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
quiet_cores=${QUIET_CORES:-0.25}
quiet_wait=${QUIET_WAIT:-1800}

if [ "$summary_only" = 0 ]; then
bench=bench-push
# shellcheck source=lib/bench.sh
source "$root/loadtest/scripts/lib/bench.sh"
cluster_bench_setup
token=bench-push-token
common=(--receivers "$receivers" --duration "$duration" --drain 10)

# The rate that a max-rate report reached (emits per second).
emit_rate() {
  python3 -c 'import json,sys; print("%.0f" % json.load(open(sys.argv[1]))["figures"]["emits_per_s"])' "$1"
}

for round in $(seq "$rounds"); do
  for mode in on off; do
    extra=(-- --api-token "$token")
    [ "$mode" = off ] && extra+=(--recovery-window 0)
    "$cluster" up --nodes 3 "${extra[@]}" >/dev/null
    # shellcheck disable=SC1091
    source "$RINGWAY_CLUSTER_DIR/state.env"
    # shellcheck disable=SC2046,SC2086
    measure "ringway-$mode-max" push --url "$NODE_URLS" --grpc "$NODE1_API" --token "$token" \
      "${common[@]}" --rate 0 $(pid_args $GATEWAY_PIDS)
    half=$(( $(emit_rate "$out/ringway-$mode-max-$round.json") / 2 ))
    # shellcheck disable=SC2046,SC2086
    measure "ringway-$mode-half" push --url "$NODE_URLS" --grpc "$NODE1_API" --token "$token" \
      "${common[@]}" --rate "$half" $(pid_args $GATEWAY_PIDS)
    "$cluster" down >/dev/null
  done

  "$peers" up reference --nodes 3 >/dev/null
  # shellcheck disable=SC1091
  source "$RINGWAY_PEERS_DIR/reference.env"
  # shellcheck disable=SC2046,SC2086
  measure reference-max push --url "$URLS" --server-driver "${common[@]}" --rate 0 $(pid_args $PIDS)
  half=$(( $(emit_rate "$out/reference-max-$round.json") / 2 ))
  # shellcheck disable=SC2046,SC2086
  measure reference-half push --url "$URLS" --server-driver "${common[@]}" --rate "$half" $(pid_args $PIDS)
  "$peers" down reference >/dev/null
done
fi

python3 - "$out" "$receivers" "$duration" <<'PY' | tee "$out/summary.md"
import glob, json, statistics, sys
out, receivers, duration = sys.argv[1:4]

def load(name):
    return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{name}-*.json"))]

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def fig(r, key):
    return r["figures"].get(key)

def lat(r, key, q):
    h = r["latency"].get(key) or {}
    return h[f"{q}_us"] / 1000.0 if h.get("count") else None

def fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.{digits}f}"
    return f"{int(v):,}"

cols = [
    ("Ringway Push.EmitStream, recovery on", "ringway-on"),
    ("Ringway Push.EmitStream, recovery off", "ringway-off"),
    ("reference + Redis adapter, io.to(room).emit", "reference"),
]
cols = [(label, load(f"{key}-max"), load(f"{key}-half")) for label, key in cols]
cols = [c for c in cols if c[1]]
print(f"Median of {len(cols[0][1]) if cols else 0} round(s); {receivers} WebSocket receivers in one room over 3 nodes, "
      f"{duration} s per measurement; JSON reports in {out}.\n")
print("| measure | " + " | ".join(c[0] for c in cols) + " |")
print("|---" * (len(cols) + 1) + "|")
def cpu(r):
    return fig(r, "server_cpu_us_per_delivery")
rows = [
    ("max: emits per second", lambda m, h: med([fig(r, "emits_per_s") for r in m]), 0),
    ("max: deliveries per second", lambda m, h: med([fig(r, "delivered_per_s") for r in m]), 0),
    ("max: server CPU per delivery, nodes summed (µs)", lambda m, h: med([cpu(r) for r in m]), 2),
    ("max: deliveries per CPU core-second", lambda m, h: 1e6 / med([cpu(r) for r in m]), 0),
    ("max: lost / duplicates / out of order", lambda m, h: "%s / %s / %s" % tuple(fmt(med([fig(r, k) for r in m])) for k in ("lost", "duplicates", "reordered")), 0),
    ("half rate: emits per second", lambda m, h: med([fig(r, "emits_per_s") for r in h]), 0),
    ("half rate: delivery latency p50 (ms)", lambda m, h: med([lat(r, "delivery", "p50") for r in h]), 2),
    ("half rate: delivery latency p99 (ms)", lambda m, h: med([lat(r, "delivery", "p99") for r in h]), 2),
    ("half rate: lost", lambda m, h: med([fig(r, "lost") for r in h]), 0),
]
for label, get, d in rows:
    cells = []
    for _, m, h in cols:
        v = get(m, h)
        cells.append(v if isinstance(v, str) else fmt(v, d))
    print(f"| {label} | " + " | ".join(cells) + " |")
PY
