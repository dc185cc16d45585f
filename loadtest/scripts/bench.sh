#!/usr/bin/env bash
# Side-by-side benchmarks of one Ringway gateway against the socketioxide
# peer, same client, same machine, same run; rounds alternate the servers
# and the table gives medians and Ringway/socketioxide ratios.
#
#   loadtest/scripts/bench.sh [--rounds N] [--quick]
#   loadtest/scripts/bench.sh --cluster [bench-cluster.sh options]
#
# --cluster runs the cluster benchmarks instead (scripts/bench-cluster.sh:
# forwarded long-poll, handoff, 3-node fanout vs 1 node and vs the
# reference with its Redis adapter).
#
# Scenarios (WebSocket): hold 10,000 idle sessions (RSS per session),
# echo 50 sessions x 64-byte events (server CPU per echo), fanout 1,000
# receivers x 200 broadcasts/s (server CPU per delivery, loss, order).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
rounds=3; duration=20; hold_sessions=10000; receivers=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --cluster) shift; exec "$(dirname "$0")/bench-cluster.sh" "$@" ;;
    --rounds) rounds=$2; shift 2 ;;
    --quick) duration=5; hold_sessions=2000; receivers=200; rounds=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

cargo build --release -q -p ringway-gateway -p ringway-loadtest
CARGO_TARGET_DIR="$root/target/peers" cargo build --release -q \
  --manifest-path loadtest/peers/socketioxide/Cargo.toml
lt="$root/target/release/ringway-loadtest"
out="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT

# start_server NAME -> sets $pid and $url
start_server() {
  local log="$out/$1.log"
  case "$1" in
    ringway) "$root/target/release/ringway-gateway" --listen 127.0.0.1:0 >"$log" 2>/dev/null & ;;
    socketioxide) "$root/target/peers/release/socketioxide-peer" --port 0 >"$log" 2>/dev/null & ;;
  esac
  pid=$!
  for _ in $(seq 100); do grep -q 'listening on' "$log" && break; sleep 0.1; done
  url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$log" | head -1)
}

run() { # run SERVER SCENARIO ARGS...
  local server=$1 scenario=$2; shift 2
  start_server "$server"
  "$lt" "$scenario" --url "$url" --server-pid "$pid" --quiet --json "$@" \
    >"$out/$server-$scenario-$round.json"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq "$rounds"); do
  for server in ringway socketioxide; do
    run "$server" hold --sessions "$hold_sessions" --rate 2000 --duration 10
    run "$server" echo --sessions 50 --size 64 --duration "$duration"
    run "$server" fanout --receivers "$receivers" --rate 200 --duration "$duration"
  done
done

python3 - "$out" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
def load(server, scenario):
    return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{server}-{scenario}-*.json"))]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def rss_per_session(r):
    return r["figures"]["server_rss_kib_per_session"]
rows = [
    ("hold: server RSS per idle session (KiB)", "hold", rss_per_session),
    ("echo: server CPU per echo (µs)", "echo", lambda r: r["figures"]["server_cpu_us_per_message"]),
    ("echo: p99 round trip (µs)", "echo", lambda r: r["latency"]["echo_rtt"]["p99_us"]),
    ("fanout: server CPU per delivery (µs)", "fanout", lambda r: r["figures"].get("server_cpu_us_per_delivery")),
    ("fanout: p50 delivery latency (µs)", "fanout", lambda r: r["latency"]["delivery"]["p50_us"]),
    ("fanout: p99 delivery latency (µs)", "fanout", lambda r: r["latency"]["delivery"]["p99_us"]),
    ("fanout: lost deliveries", "fanout", lambda r: r["figures"].get("lost")),
    ("hold: failed sessions", "hold", lambda r: r["figures"].get("failed")),
    ("fanout: out of order", "fanout", lambda r: r["figures"].get("reordered")),
]
busy = med([r["machine"]["busy_cores"] for s in ("ringway", "socketioxide") for k in ("echo",) for r in load(s, k)])
print(f"| measure (median of {len(load('ringway','echo'))} rounds) | Ringway | socketioxide | ratio |")
print("|---|---|---|---|")
for name, scenario, f in rows:
    a = med([f(r) for r in load("ringway", scenario)])
    b = med([f(r) for r in load("socketioxide", scenario)])
    ratio = f"{a / b:.2f}" if a is not None and b else "-"
    fmt = lambda v: "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
    print(f"| {name} | {fmt(a)} | {fmt(b)} | {ratio} |")
print(f"\nmachine: {os.cpu_count()} cores; median busy cores during echo: {busy:.2f}")
PY
