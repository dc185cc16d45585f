#!/usr/bin/env bash
# What targeting a user costs the Push API, against targeting a room:
#
#   loadtest/scripts/bench-user-push.sh [--calls C] [--debug | --bin-dir DIR] [--out DIR]
#
# 3 gateways and one redis-server (loadtest/scripts/cluster.sh, recovery
# off so that an emit is a plain call), a Push API token. C (default 400)
# `Push.Emit` calls one after the other on node 1, to a user with no
# socket (what finding a user's nodes costs: the registry's answer), then C
# to a room with no member (the room index, in memory), then C
# `Push.Disconnect` by user (the same lookup, another call), through the
# Python stubs of examples/python-publisher. Prints the mean call time and
# node 1's CPU per call. Files in DIR (default
# target/bench/user-push-<time>/).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
. "$root/loadtest/scripts/lib/common.sh"
calls=400; bin_args=(); out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --calls) calls=$2; shift 2 ;;
    --debug) bin_args=(--debug); shift ;;
    --bin-dir) bin_args=(--bin-dir "$2"); shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) usage ;;
  esac
done
out=${out:-$root/target/bench/user-push-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bench_binaries
cluster="$root/loadtest/scripts/cluster.sh"
export RINGWAY_CLUSTER_DIR="$out/cluster"
trap '"$cluster" down >/dev/null 2>&1 || true' EXIT
"$cluster" up --nodes 3 "${bin_args[@]}" -- --recovery-window 0 --api-token bench >"$out/cluster.out"
# shellcheck disable=SC1091
source "$RINGWAY_CLUSTER_DIR/state.env"
python="${PYTHON:-$root/.venv-test/bin/python}"
[ -x "$python" ] || python=python3

PYTHONPATH="$root/loadtest/scripts/lib" "$python" - "$NODE1_API" "$NODE1_PID" "$calls" <<'PY' | tee "$out/summary.md"
import sys
from push_bench import push_stub, timed
addr, pid, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pb, stub, meta = push_stub(addr, "bench")
def measure(name, call):
    ms, cpu_ms, _ = timed(pid, calls, call)
    print(f"| {name} | {ms:.3f} | {cpu_ms:.3f} |")
user = pb.Target(user="nobody")
room = pb.Target(rooms=pb.RoomList(rooms=["nobody"]))
emit = lambda target: lambda: stub.Emit(pb.EmitRequest(namespace="/", target=target, event="e", args_json="[]"), metadata=meta)
print(f"{calls} calls in a row on node 1 of 3\n")
print("| call | ms per call | node 1 CPU ms per call |")
print("|---|---:|---:|")
measure("Emit to a room", emit(room))
measure("Emit to a user", emit(user))
measure("Disconnect a user", lambda: stub.Disconnect(pb.DisconnectRequest(namespace="/", target=user), metadata=meta))
PY
