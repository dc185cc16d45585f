#!/usr/bin/env bash
# Cluster benchmarks: every figure a ratio against a baseline measured in the
# same run, on the same machine, with the same client.
#
#   loadtest/scripts/bench-cluster.sh [--rounds N] [--quick] [--no-reference] [--out DIR] [--bin-dir DIR]
#
# The gateway and coordinator are the release builds of target/release
# (built here), or those of --bin-dir DIR (not built: e.g. a build of a
# clean checkout while the working tree is in flux).
#
# a. forwarded long-poll round trip: `polling` over the 3 node URLs
#    (non-sticky: every HTTP request on the next node, 2 of 3 forwarded to
#    the owner) vs over node 1 only (sticky, all local), same cluster.
# b. handoff: `connect --upgrade` with the upgrade on another node than the
#    owner (3 URLs) vs on the owner (node 1 only), same cluster.
# c. 3-node fanout: 1,500 WebSocket receivers in one room spread over the
#    3 nodes, 100 broadcasts/s from node 1: gateway CPU per delivery summed
#    over the nodes vs one standalone gateway with the same load, and vs
#    the reference socket.io on 3 nodes with @socket.io/redis-adapter;
#    and the same 3-node load with the gateways' write coalescing on
#    (--ws-write-interval WRITE_INTERVAL ms, default 20): CPU for latency.
#
# The gateways run with connection state recovery off (--recovery-window
# 0): these are the costs of the cluster's own paths, against a reference
# without recovery. bench-recovery.sh measures recovery (kills, and its
# cost per delivery against the same cluster with recovery off).
#
# Each measurement waits for a quiet machine first (other processes busy
# below QUIET_CORES cores over 3 s, default 0.25; at most QUIET_WAIT seconds,
# default 1800) and is run again (up to 3 times) when other processes took
# more than that during it (`machine.others_busy_cores` of the report).
# The JSON reports stay in --out (default target/bench-cluster/<time>); the
# summary (Markdown) is printed at the end and written to DIR/summary.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
rounds=3
duration=20
receivers=1500
fan_rate=100
poll_sessions=10
poll_pause=5
upgrades=300
reference=1
out=""
bindir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --quick) rounds=1; duration=4; receivers=300; upgrades=60; shift ;;
    --no-reference) reference=0; shift ;;
    --out) out=$2; shift 2 ;;
    --bin-dir) bindir=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
out=${out:-$root/target/bench-cluster/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
write_interval=${WRITE_INTERVAL:-20}
quiet_cores=${QUIET_CORES:-0.25}
quiet_wait=${QUIET_WAIT:-1800}

if [ -z "$bindir" ]; then
  cargo build --release -q -p ringway-gateway -p ringway-coordinator -p ringway-loadtest
  bindir="$root/target/release"
else
  cargo build --release -q -p ringway-loadtest
fi
lt="$root/target/release/ringway-loadtest"
echo "gateway: $bindir/ringway-gateway ($(stat -c %y "$bindir/ringway-gateway" | cut -d. -f1))" >"$out/binaries.txt"
cluster="$root/loadtest/scripts/cluster.sh"
peers="$root/loadtest/scripts/peers.sh"
export RINGWAY_CLUSTER_DIR="$out/cluster"
export RINGWAY_PEERS_DIR="$out/peers"

single_pid=""
cleanup() {
  "$cluster" down >/dev/null 2>&1 || true
  "$peers" down reference >/dev/null 2>&1 || true
  if [ -n "$single_pid" ]; then kill "$single_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

bench=bench-cluster
# shellcheck source=lib/bench.sh
source "$root/loadtest/scripts/lib/bench.sh"

for round in $(seq "$rounds"); do
  # The 3-node cluster: a, b and c (Ringway).
  "$cluster" up --nodes 3 --bin-dir "$bindir" -- --recovery-window 0 >/dev/null
  # shellcheck disable=SC1091
  source "$RINGWAY_CLUSTER_DIR/state.env"
  pids=$(pid_args $GATEWAY_PIDS)
  # shellcheck disable=SC2086
  {
    measure poll-sticky polling --url "$NODE1_URL" $pids \
      --sessions "$poll_sessions" --pause-ms "$poll_pause" --duration "$duration"
    measure poll-nonsticky polling --url "$NODE_URLS" $pids \
      --sessions "$poll_sessions" --pause-ms "$poll_pause" --duration "$duration"
    measure upgrade-same connect --upgrade --url "$NODE1_URL" $pids \
      --sessions "$upgrades" --rate 100
    measure upgrade-cross connect --upgrade --url "$NODE_URLS" $pids \
      --sessions "$upgrades" --rate 100
    measure fanout-ringway3 fanout --url "$NODE_URLS" $pids \
      --receivers "$receivers" --rate "$fan_rate" --duration "$duration"
  }
  "$cluster" down >/dev/null

  # The same fanout, the gateways coalescing each socket's writes.
  "$cluster" up --nodes 3 --bin-dir "$bindir" -- --recovery-window 0 \
    --ws-write-interval "$write_interval" >/dev/null
  # shellcheck disable=SC1091
  source "$RINGWAY_CLUSTER_DIR/state.env"
  # shellcheck disable=SC2086
  measure fanout-coalesced3 fanout --url "$NODE_URLS" $(pid_args $GATEWAY_PIDS) \
    --receivers "$receivers" --rate "$fan_rate" --duration "$duration"
  "$cluster" down >/dev/null

  # One standalone gateway with the same fanout load.
  log="$out/single.log"
  "$bindir/ringway-gateway" --listen 127.0.0.1:0 --recovery-window 0 >"$log" 2>&1 &
  single_pid=$!
  for _ in $(seq 100); do grep -q 'listening on' "$log" && break; sleep 0.1; done
  url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$log" | head -1)
  measure fanout-ringway1 fanout --url "$url" --server-pid "$single_pid" \
    --receivers "$receivers" --rate "$fan_rate" --duration "$duration"
  kill "$single_pid"; wait "$single_pid" 2>/dev/null || true; single_pid=""

  # The reference socket.io on 3 nodes with the Redis adapter.
  if [ "$reference" = 1 ]; then
    "$peers" up reference --nodes 3 >/dev/null
    # shellcheck disable=SC1091
    source "$RINGWAY_PEERS_DIR/reference.env"
    # shellcheck disable=SC2086
    measure fanout-reference3 fanout --url "$URLS" $(pid_args $PIDS) \
      --receivers "$receivers" --rate "$fan_rate" --duration "$duration"
    "$peers" down reference >/dev/null
  fi
done

python3 - "$out" "$write_interval" <<'PY' | tee "$out/summary.md"
import glob, json, os, platform, statistics, sys
out = sys.argv[1]
write_interval = sys.argv[2]

def load(name):
    return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{name}-[0-9]*.json"))]

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def lat(r, key, q):
    h = r["latency"].get(key) or {}
    return h.get(q) if h.get("count") else None

def fig(r, key):
    return r["figures"].get(key)

def fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.{digits}f}"
    return f"{int(v):,}"

def ms(us):
    return None if us is None else us / 1000.0

rounds = len(load("poll-sticky"))
print(f"Median of {rounds} round(s); JSON reports in {out}.\n")

# a. forwarded long-poll round trip
s, n = load("poll-sticky"), load("poll-nonsticky")
print("### a. Forwarded long-poll round trip (polling echo, 3 nodes)\n")
print("| measure | sticky (node 1) | non-sticky (3 nodes) | difference | ratio |")
print("|---|---|---|---|---|")
for q, label in (("p50_us", "p50"), ("p90_us", "p90"), ("p99_us", "p99")):
    a = ms(med([lat(r, "echo_rtt", q) for r in s]))
    b = ms(med([lat(r, "echo_rtt", q) for r in n]))
    d = None if a is None or b is None else b - a
    ratio = f"{b / a:.2f}" if a and b else "-"
    print(f"| echo round trip {label} (ms) | {fmt(a, 3)} | {fmt(b, 3)} | {'-' if d is None else f'{d:+.3f}'} | {ratio} |")
for key, label in (("round_trips_per_s", "round trips/s"), ("server_cpu_us_per_message", "gateway CPU per round trip, 3 nodes summed (µs)")):
    a = med([fig(r, key) for r in s]); b = med([fig(r, key) for r in n])
    print(f"| {label} | {fmt(a)} | {fmt(b)} | | {f'{b / a:.2f}' if a and b else '-'} |")
a = med([r["error_total"] for r in s]); b = med([r["error_total"] for r in n])
print(f"| errors | {fmt(a)} | {fmt(b)} | | |")

# b. handoff
s, c = load("upgrade-same"), load("upgrade-cross")
print("\n### b. Upgrade: same node vs cross node (handoff)\n")
print("| measure | same node (owner) | cross node (handoff) | difference | ratio |")
print("|---|---|---|---|---|")
for key, label in (("upgrade_101", "request -> 101"), ("upgrade_probe", "request -> 3probe"), ("upgrade_done", "request -> upgraded (5 sent)")):
    for q in ("p50_us", "p99_us"):
        a = ms(med([lat(r, key, q) for r in s])); b = ms(med([lat(r, key, q) for r in c]))
        d = None if a is None or b is None else b - a
        print(f"| {label} {q[:-3]} (ms) | {fmt(a, 3)} | {fmt(b, 3)} | {'-' if d is None else f'{d:+.3f}'} | {f'{b / a:.2f}' if a and b else '-'} |")
for key, label in (("attempted", "sessions attempted"), ("upgraded", "sessions upgraded and checked"), ("failed", "sessions failed")):
    a = med([fig(r, key) for r in s]); b = med([fig(r, key) for r in c])
    print(f"| {label} | {fmt(a)} | {fmt(b)} | | |")
errs = {}
for r in c:
    for k, e in r["errors"].items():
        errs.setdefault(k, (0, e["first"]))
        errs[k] = (errs[k][0] + e["count"], errs[k][1])
if errs:
    print("\nCross-node upgrade errors (all rounds): " + "; ".join(f"{k} x{n}: {first}" for k, (n, first) in errs.items()))

# c. fanout
print("\n### c. Fanout: 1 room, receivers spread over the nodes, broadcasts from node 1\n")
names = [("fanout-ringway3", "Ringway, 3 nodes"), ("fanout-ringway1", "Ringway, 1 node"), ("fanout-reference3", "reference + Redis adapter, 3 nodes"), ("fanout-coalesced3", f"Ringway, 3 nodes, --ws-write-interval {write_interval}")]
names = [(k, l) for k, l in names if load(k)]
print("| measure | " + " | ".join(l for _, l in names) + " |")
print("|---|" + "---|" * len(names))
rows = [
    ("server CPU per delivery, nodes summed (µs)", lambda r: fig(r, "server_cpu_us_per_delivery")),
    ("deliveries/s", lambda r: fig(r, "delivered_per_s")),
    ("delivery latency p50 (ms)", lambda r: ms(lat(r, "delivery", "p50_us"))),
    ("delivery latency p99 (ms)", lambda r: ms(lat(r, "delivery", "p99_us"))),
    ("deliveries expected", lambda r: fig(r, "expected")),
    ("lost", lambda r: fig(r, "lost")),
    ("duplicates", lambda r: fig(r, "duplicates")),
    ("out of order", lambda r: fig(r, "reordered")),
    ("receivers failed to join", lambda r: fig(r, "receivers_failed")),
    ("errors", lambda r: r["error_total"]),
    ("machine busy cores (other processes)", lambda r: (r.get("machine") or {}).get("busy_cores")),
    ("client CPU (% of one core)", lambda r: (r["client"]["cpu_us"] / 1e4 / r["client"]["window_s"]) if r.get("client") else None),
]
vals = {}
for label, f in rows:
    cells = []
    for k, _ in names:
        v = med([f(r) for r in load(k)])
        vals[(label, k)] = v
        cells.append(fmt(v, 3 if "ms" in label else 2))
    print(f"| {label} | " + " | ".join(cells) + " |")
cpu = "server CPU per delivery, nodes summed (µs)"
r3, r1, ref = vals.get((cpu, "fanout-ringway3")), vals.get((cpu, "fanout-ringway1")), vals.get((cpu, "fanout-reference3"))
r3c = vals.get((cpu, "fanout-coalesced3"))
print()
if r3 and r1:
    print(f"- Ringway 3 nodes / 1 node, CPU per delivery: **{r3 / r1:.2f}** (target <= 1.5)")
if r3 and ref:
    print(f"- Ringway 3 nodes / reference 3 nodes, CPU per delivery: **{r3 / ref:.2f}** (target <= 0.5)")
if r3c and ref:
    print(f"- Ringway 3 nodes with --ws-write-interval {write_interval} / reference 3 nodes, CPU per delivery: **{r3c / ref:.2f}** (target <= 0.5)")
if r3c and r3:
    print(f"- write coalescing on / off, Ringway 3 nodes, CPU per delivery: **{r3c / r3:.2f}**")
print(f"\nmachine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}")
PY
