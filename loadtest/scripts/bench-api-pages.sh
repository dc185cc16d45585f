#!/usr/bin/env bash
# The cost of a page of Push.Sessions, measured:
#
#   loadtest/scripts/bench-api-pages.sh [--sessions N] [--calls C] [--bin-dir DIR] [--out DIR]
#
# One gateway (a node alone, the built-in echo application, a Push API
# token) holds N (default 10000) idle WebSocket sessions (the load tester's
# `hold`); then C (default 40) calls of Push.Sessions for the namespace's
# first page of 100 sessions, and C for its first page of 1000 (the
# largest), through the Python stubs of
# examples/python-publisher. Prints the mean call time and the gateway's
# CPU per call (from /proc). --bin-dir runs the gateway binary of another
# build (for a before/after ratio in one run). Files in DIR (default
# target/bench/api-pages-<time>/).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
. "$root/loadtest/scripts/lib/common.sh"
sessions=10000; calls=40; bin_dir=""; out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --sessions) sessions=$2; shift 2 ;;
    --calls) calls=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) usage ;;
  esac
done
out=${out:-$root/target/bench/api-pages-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin_args=()
bench_binaries
gateway="${bin_dir:-$root/target/release}/ringway-gateway"
python="${PYTHON:-$root/.venv-test/bin/python}"
[ -x "$python" ] || python=python3

http=$(free_port); api=$(free_port)
RINGWAY_RECOVERY_WINDOW=0 "$gateway" --listen "127.0.0.1:$http" --api-listen "127.0.0.1:$api" \
  --api-token bench --handshake-rate-per-ip 0 --max-sessions-per-ip 0 >"$out/gateway.out" 2>"$out/gateway.err" &
gw_pid=$!
trap 'stop_pid "${hold_pid:-}"; stop_pid "$gw_pid"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/readyz" >/dev/null && break; sleep 0.1; done

"$lt" hold --url "http://127.0.0.1:$http" --sessions "$sessions" --rate 2000 --duration 600 \
  --auth '{}' --json >"$out/hold.json" 2>"$out/hold.err" &
hold_pid=$!
for _ in $(seq 300); do
  n=$(curl -s "http://127.0.0.1:$http/metrics" | awk '/^ringway_sockets\{/ {s += $2} END {print s + 0}')
  [ "${n%.*}" -ge "$sessions" ] && break
  sleep 1
done
[ "${n%.*}" -ge "$sessions" ] || { echo "only $n of $sessions sockets" >&2; exit 1; }

PYTHONPATH="$root/loadtest/scripts/lib" "$python" - "127.0.0.1:$api" "$gw_pid" "$calls" "$sessions" <<'PY' | tee "$out/summary.md"
import sys
from push_bench import push_stub, timed
addr, pid, calls, sessions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pb, stub, meta = push_stub(addr, "bench")
def measure(name, req):
    ms, cpu_ms, reply = timed(pid, calls, lambda: stub.Sessions(req, metadata=meta), warmup=1)
    print(f"| {name} | {len(reply.sessions)} | {ms:.2f} | {cpu_ms:.2f} |")
print(f"Push.Sessions with {sessions} sockets on the node, {calls} calls each\n")
print("| call | sessions per page | ms per call | gateway CPU ms per call |")
print("|---|---:|---:|---:|")
measure("namespace, page 100", pb.SessionsRequest(namespace="/", page_size=100))
measure("namespace, page 1000", pb.SessionsRequest(namespace="/", page_size=1000))
PY
