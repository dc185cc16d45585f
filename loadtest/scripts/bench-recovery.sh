#!/usr/bin/env bash
# Connection state recovery benchmarks, side by side in the same run:
#
#   loadtest/scripts/bench-recovery.sh [--rounds N] [--receivers N] [--rate R]
#                                      [--duration S] [--kill-after S]
#                                      [--quick] [--no-reference] [--out DIR]
#                                      [--write-interval MS]
#                                      [--summary-only --out DIR]  (tables of earlier reports)
#
# a. Kill test (`ringway-loadtest chaos`): WebSocket receivers in one room
#    through nginx (round robin, no affinity) in front of 3 nodes, a
#    publisher on node 1 broadcasting numbered messages, node 2 SIGKILLed
#    --kill-after seconds in; its receivers reconnect through nginx asking
#    to recover. Ringway (recovery on, the default) against the reference
#    socket.io 4.8 with @socket.io/redis-streams-adapter and
#    connectionStateRecovery (the combination that supports recovery
#    across nodes), same client, same sizes. With --write-interval MS,
#    Ringway runs the kill test a second time in each round with its
#    gateways coalescing writes (--ws-write-interval MS).
# b. The cost of recovery: `fanout` (same sizes, no kill) on the Ringway
#    cluster with recovery on and with --recovery-window 0: gateway CPU per
#    delivery, summed over the nodes.
#
# Receivers use WebSocket only: the reference cannot serve long-polling
# without sticky sessions. Each measurement waits for a quiet machine
# (QUIET_CORES, QUIET_WAIT, as bench-cluster.sh). Reports stay in --out
# (default target/bench-recovery/<time>); the Markdown summary is printed
# and written to DIR/summary.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
rounds=3
receivers=300
rate=200
duration=20
kill_after=8
reference=1
out=""
summary_only=0
write_interval=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --receivers) receivers=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --kill-after) kill_after=$2; shift 2 ;;
    --quick) rounds=1; receivers=60; rate=50; duration=6; kill_after=2; shift ;;
    --no-reference) reference=0; shift ;;
    --out) out=$2; shift 2 ;;
    --summary-only) summary_only=1; shift ;;
    --write-interval) write_interval=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
out=${out:-$root/target/bench-recovery/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
quiet_cores=${QUIET_CORES:-0.25}
quiet_wait=${QUIET_WAIT:-1800}

if [ "$summary_only" = 0 ]; then
bench=bench-recovery
# shellcheck source=lib/bench.sh
source "$root/loadtest/scripts/lib/bench.sh"
cluster_bench_setup

sizes=(--receivers "$receivers" --rate "$rate" --duration "$duration" --drain 10)

# A kill run happens once per round: a retry would find the node dead.
chaos() { # chaos NAME URL PUBLISHER_URL KILL_PID PIDS...
  local name=$1 url=$2 publisher=$3 victim=$4
  shift 4
  wait_quiet
  echo "$bench: round $round: $name" >&2
  # shellcheck disable=SC2046
  "$lt" chaos --url "$url" --publisher-url "$publisher" "${sizes[@]}" \
    --kill-pid "$victim" --kill-after "$kill_after" $(pid_args "$@") \
    --quiet --json >"$out/$name-$round.json"
}

for round in $(seq "$rounds"); do
  # a. Ringway: kill node 2.
  "$cluster" up --nodes 3 >/dev/null
  # shellcheck disable=SC1091
  source "$RINGWAY_CLUSTER_DIR/state.env"
  # shellcheck disable=SC2086
  chaos chaos-ringway "$NGINX_URL" "$NODE1_URL" "$NODE2_PID" $GATEWAY_PIDS
  "$cluster" down >/dev/null
  if [ -n "$write_interval" ]; then
    "$cluster" up --nodes 3 -- --ws-write-interval "$write_interval" >/dev/null
    # shellcheck disable=SC1091
    source "$RINGWAY_CLUSTER_DIR/state.env"
    # shellcheck disable=SC2086
    chaos chaos-coalesced "$NGINX_URL" "$NODE1_URL" "$NODE2_PID" $GATEWAY_PIDS
    "$cluster" down >/dev/null
  fi

  # b. Ringway fanout, recovery on and off.
  for mode in on off; do
    extra=()
    [ "$mode" = off ] && extra=(-- --recovery-window 0)
    "$cluster" up --nodes 3 "${extra[@]}" >/dev/null
    # shellcheck disable=SC1091
    source "$RINGWAY_CLUSTER_DIR/state.env"
    # shellcheck disable=SC2046,SC2086
    measure "fanout-recovery-$mode" fanout --url "$NGINX_URL" "${sizes[@]}" $(pid_args $GATEWAY_PIDS)
    "$cluster" down >/dev/null
  done

  # a. The reference: 3 nodes, Redis Streams adapter, recovery on, nginx.
  if [ "$reference" = 1 ]; then
    "$peers" up reference --nodes 3 --proxy -- --recovery >/dev/null
    # shellcheck disable=SC1091
    source "$RINGWAY_PEERS_DIR/reference.env"
    # shellcheck disable=SC2086
    chaos chaos-reference "$PROXY_URL" "$NODE1_URL" "$NODE2_PID" $PIDS
    "$peers" down reference >/dev/null
  fi
done

fi

python3 - "$out" "$receivers" "$rate" "$duration" "$kill_after" "$write_interval" <<'PY' | tee "$out/summary.md"
import glob, json, statistics, sys
out, receivers, rate, duration, kill_after, write_interval = sys.argv[1:7]

def load(name):
    return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{name}-[0-9]*.json"))]

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def fig(r, key):
    return r["figures"].get(key)

def lat(r, key, q):
    """A latency percentile in ms (`q`: p50, p99, ...), None without samples."""
    h = r["latency"].get(key) or {}
    return h[f"{q}_us"] / 1000.0 if h.get("count") else None

def fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.{digits}f}"
    return f"{int(v):,}"

ring, ref, coal = load("chaos-ringway"), load("chaos-reference"), load("chaos-coalesced")
print(f"Median of {len(ring)} round(s); {receivers} WebSocket receivers, {rate} broadcasts/s for {duration} s, "
      f"node 2 of 3 SIGKILLed {kill_after} s in; JSON reports in {out}.\n")
print("### a. Kill test\n")
cols = [("Ringway (recovery on)", ring)] + ([("reference + redis-streams-adapter", ref)] if ref else [])
if coal:
    cols.append((f"Ringway, --ws-write-interval {write_interval or '?'}", coal))
print("| measure | " + " | ".join(c for c, _ in cols) + " |")
print("|---" * (len(cols) + 1) + "|")
rows = [
    ("deliveries expected", lambda r: fig(r, "expected"), 0),
    ("delivered / expected (%)", lambda r: fig(r, "delivered_pct"), 3),
    ("lost", lambda r: fig(r, "lost"), 0),
    ("duplicates", lambda r: fig(r, "duplicates"), 0),
    ("out of order", lambda r: fig(r, "reordered"), 0),
    ("receivers missing messages", lambda r: fig(r, "lossy_receivers"), 0),
    ("connections lost (receivers of node 2)", lambda r: fig(r, "disconnected"), 0),
    ("reconnections recovered", lambda r: fig(r, "recovered"), 0),
    ("reconnections with a fresh socket", lambda r: fig(r, "not_recovered"), 0),
    ("reconnect -> recovered p50 (ms)", lambda r: lat(r, "reconnect_to_recovered", "p50"), 1),
    ("reconnect -> recovered p99 (ms)", lambda r: lat(r, "reconnect_to_recovered", "p99"), 1),
    ("delivery latency p50 (ms)", lambda r: lat(r, "delivery", "p50"), 2),
    ("delivery latency p99 (ms)", lambda r: lat(r, "delivery", "p99"), 2),
    ("server CPU per delivery, nodes summed (µs)", lambda r: fig(r, "server_cpu_us_per_delivery"), 2),
]
for label, get, d in rows:
    print(f"| {label} | " + " | ".join(fmt(med([get(r) for r in rs]), d) for _, rs in cols) + " |")

on, off = load("fanout-recovery-on"), load("fanout-recovery-off")
if on and off:
    print("\n### b. The cost of recovery (fanout, no kill, Ringway 3 nodes)\n")
    print("| measure | recovery on | recovery off | ratio on / off |")
    print("|---|---|---|---|")
    for label, get, d in [
        ("server CPU per delivery, nodes summed (µs)", lambda r: fig(r, "server_cpu_us_per_delivery"), 2),
        ("delivery latency p50 (ms)", lambda r: lat(r, "delivery", "p50"), 2),
        ("delivery latency p99 (ms)", lambda r: lat(r, "delivery", "p99"), 2),
        ("lost", lambda r: fig(r, "lost"), 0),
    ]:
        a, b = med([get(r) for r in on]), med([get(r) for r in off])
        ratio = fmt(a / b, 2) if a and b else "-"
        print(f"| {label} | {fmt(a, d)} | {fmt(b, d)} | {ratio} |")
PY
