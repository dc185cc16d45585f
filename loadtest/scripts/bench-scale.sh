#!/usr/bin/env bash
# Scale run: a local 3-node cluster holding tens of thousands of concurrent
# sessions, mixed WebSocket and long-polling, on this machine.
#
#   loadtest/scripts/bench-scale.sh [--ws N] [--polling N] [--hold S] [--rate R] [--out DIR]
#
# Defaults: 39,000 WebSocket + 6,000 polling sessions = 45,000, opened at
# --rate 1,500/s in all, held --hold seconds (answering pings).
#
# One ringway-loadtest process holds at most ~19,900 descriptors (the
# hard limit here is 20,000 per process), so the sessions are spread over
# several client processes: 3 for WebSocket (each over the 3 nodes in turn)
# and 3 for polling (each on one node: a polling session keeps one
# connection per node it talks to). Every gateway stays under 20,000
# descriptors too (~13,000 WebSocket + 2,000 polling sessions x 2
# connections each).
#
# Memory per session: the gateways' RSS summed, sampled before the first
# session and once every session is held, divided by the sessions held.
# Failures: handshakes failed and sessions lost, summed over the clients.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
ws=39000
polling=6000
hold=40
rate=1500
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ws) ws=$2; shift 2 ;;
    --polling) polling=$2; shift 2 ;;
    --hold) hold=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
out=${out:-$root/target/bench-scale/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
cargo build --release -q -p ringway-gateway -p ringway-coordinator -p ringway-loadtest
lt="$root/target/release/ringway-loadtest"
cluster="$root/loadtest/scripts/cluster.sh"
export RINGWAY_CLUSTER_DIR="$out/cluster"
trap '"$cluster" down >/dev/null 2>&1 || true; kill $(jobs -p) 2>/dev/null || true' EXIT
"$cluster" up --nodes 3 >/dev/null
# shellcheck disable=SC1091
source "$RINGWAY_CLUSTER_DIR/state.env"

rss_kb() { # the gateways' RSS, summed (KiB)
  local total=0 p v
  for p in $GATEWAY_PIDS; do
    v=$(awk '/VmRSS/ {print $2}' "/proc/$p/status")
    total=$((total + v))
  done
  echo "$total"
}

before=$(rss_kb)
# Each client opens its share at its share of the rate; all are still
# holding when the last one has opened (the ramp is total / rate seconds).
ramp=$(( (ws + polling) / rate + 1 ))
duration=$(( ramp + hold ))
per_ws=$(( ws / 3 ))
per_poll=$(( polling / 3 ))
ws_rate=$(( rate * per_ws / (ws + polling) ))
poll_rate=$(( rate * per_poll / (ws + polling) ))
# Source addresses: a different range per client process.
i=0
for _ in 1 2 3; do
  i=$((i + 1))
  "$lt" hold --url "$NODE_URLS" --transport websocket --sessions "$per_ws" --rate "$ws_rate" \
    --duration "$duration" --source-ips 16 --quiet --json >"$out/ws-$i.json" 2>"$out/ws-$i.err" &
done
for n in 1 2 3; do
  url_var="NODE${n}_URL"
  "$lt" hold --url "${!url_var}" --transport polling --sessions "$per_poll" --rate "$poll_rate" \
    --duration "$duration" --source-ips 16 --quiet --json >"$out/poll-$n.json" 2>"$out/poll-$n.err" &
done
# Sample once every session is open and held for a while.
sleep $(( ramp + hold / 2 ))
after=$(rss_kb)
sessions=0
for p in $GATEWAY_PIDS; do
  fds=$(ls "/proc/$p/fd" | wc -l)
  echo "gateway $p: $fds descriptors open" >>"$out/fds.txt"
done
wait
python3 - "$out" "$before" "$after" "$ws" "$polling" <<'PY' | tee "$out/summary.md"
import glob, json, sys
out, before, after, ws, polling = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def fig(r, k):
    return r["figures"].get(k) or 0
reports = {f: json.load(open(f)) for f in sorted(glob.glob(f"{out}/*.json"))}
held = sum(fig(r, "held") for r in reports.values())
connected = sum(fig(r, "connected") for r in reports.values())
failed = sum(fig(r, "failed") for r in reports.values())
lost = sum(fig(r, "lost") for r in reports.values())
by = lambda prefix: sum(fig(r, "held") for f, r in reports.items() if f.split("/")[-1].startswith(prefix))
print(f"| measure | value |")
print(f"|---|---|")
print(f"| sessions asked (WebSocket + polling) | {ws:,} + {polling:,} = {ws + polling:,} |")
print(f"| sessions held at the sample (WebSocket + polling) | {int(by('ws')):,} + {int(by('poll')):,} = {int(held):,} |")
print(f"| handshakes failed | {int(failed):,} |")
print(f"| sessions lost while held | {int(lost):,} |")
print(f"| gateways' RSS before / with every session (MiB, 3 nodes summed) | {before/1024:,.1f} / {after/1024:,.1f} |")
print(f"| memory per session (KiB, all nodes, mixed) | {(after - before) / max(held, 1):.2f} |")
print()
print(open(f"{out}/fds.txt").read().strip().replace("\n", "; "))
PY
