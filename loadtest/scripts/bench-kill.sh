#!/usr/bin/env bash
# Kill test of connection state recovery with the official JavaScript
# client, per transport mode, many runs in a row:
#
#   loadtest/scripts/bench-kill.sh [--mode websocket|polling-websocket|polling|all]
#                                  [--runs N] [--clients N] [--rate R] [--duration S]
#                                  [--kill-after S] [--spread MS] [--nodes N] [--redis-cluster M]
#                                  [--reconnect MS] [--client-opts JSON]
#                                  [--quick] [--debug | --bin-dir DIR] [--out DIR]
#                                  [--keep-all] [-- GATEWAY_ARGS...]
#
# Each run starts a fresh local cluster (loadtest/scripts/cluster.sh: redis,
# coordinator, --nodes gateways (3), nginx round robin with an access log),
# (with --redis-cluster M: a Redis Cluster of M masters instead of one
# redis-server), then --clients (300) socket.io-client clients through nginx, all on the
# run's transports (websocket: WebSocket only; polling-websocket: polling,
# then the upgrade; polling: long-polling only), started evenly over
# --spread ms (2000: clients started in the same tick would put every
# upgrade on one node), each in one room. A publisher on node 1 broadcasts
# numbered messages into the room, --rate (200) per second for --duration
# (20) seconds; --kill-after (8) seconds in, the busiest of the other nodes
# is SIGKILLed (with clients spread out it holds about a third of the
# sessions). Its clients reconnect through nginx asking to recover (with
# the client's default delays, 1 s to 5 s, or --reconnect MS to 4 x MS;
# --client-opts: more socket.io-client options, e.g. '{"timeout":5000}'). Every
# client must end with every message once, in order, and every
# reconnection recovered.
#
# One line per run, a summary table per mode (also in DIR/summary.md); the
# exit status is 1 if any run failed.
# A failing run keeps everything in DIR/<mode>-<run>/ (gateway, coordinator
# and redis logs and nginx's access log in cluster/, the clients' report in
# fleet.out with each anomalous client's timeline and what it got as runs
# with offsets, owners.txt); a passing run's files are deleted (kept with
# --keep-all). DIR: --out, default target/bench-kill/<time>.
#
# --quick: 2 runs per mode, 60 clients, 50 messages/s for 6 s, kill after 3 s
# (a few minutes for all three modes). --debug: the binaries in
# target/debug; default: target/release (built when missing). Arguments
# after `--` go to every gateway; RUST_LOG (default warn) sets their log
# level.
#
# The gateways get --handshake-rate-per-ip 0 --max-sessions-per-ip 0:
# behind nginx every client comes from 127.0.0.1, and 300 handshakes in 2 s
# (and again at the kill) from one address are what those limits refuse.
# (--trusted-proxy with X-Forwarded-For would need distinct client source
# addresses, which a single local client process does not have.)
#
# Needs node with the interop packages (gateway/tests/interop/js; run
# `npm ci` there, or scripts/test.sh), redis-server and nginx.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
# shellcheck source=lib/common.sh
source "$root/loadtest/scripts/lib/common.sh"

modes=all
runs=20
clients=300
rate=200
duration=20
kill_after=8
spread=2000
reconnect=0
client_opts='{}'
nodes=3
redis_cluster=0
bin_args=()
out=""
keep_all=0
gateway_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) modes=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --kill-after) kill_after=$2; shift 2 ;;
    --spread) spread=$2; shift 2 ;;
    --reconnect) reconnect=$2; shift 2 ;;
    --client-opts) client_opts=$2; shift 2 ;;
    --nodes) nodes=$2; shift 2 ;;
    --redis-cluster) redis_cluster=$2; shift 2 ;;
    --quick) runs=2; clients=60; rate=50; duration=6; kill_after=3; shift ;;
    --debug) bin_args=(--debug); shift ;;
    --bin-dir) bin_args=(--bin-dir "$2"); shift 2 ;;
    --out) out=$2; shift 2 ;;
    --keep-all) keep_all=1; shift ;;
    --) shift; gateway_args=("$@"); break ;;
    -h | --help) usage ;;
    *) echo "bench-kill.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
case "$modes" in
  all) modes="websocket polling-websocket polling" ;;
  websocket | polling-websocket | polling) ;;
  *) echo "bench-kill.sh: --mode websocket|polling-websocket|polling|all" >&2; exit 2 ;;
esac
[ "$nodes" -ge 2 ] || { echo "bench-kill.sh: --nodes must be 2 or more" >&2; exit 2; }
out=${out:-$root/target/bench-kill/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd) # absolute: the cluster's tools run elsewhere
js="$root/gateway/tests/interop/js"
if [ ! -d "$js/node_modules/socket.io-client" ]; then
  echo "bench-kill.sh: installing the interop npm packages" >&2
  (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
fi
cluster="$root/loadtest/scripts/cluster.sh"
export NGINX_ACCESS_LOG=1

current=""
cleanup() {
  if [ -n "$current" ]; then
    for pid in ${FLEET_PID:-} ${PUB_PID:-}; do kill "$pid" 2>/dev/null || true; done
    "$cluster" down --state-dir "$current/cluster" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# transports MODE: the client's `transports` option.
transports() {
  case "$1" in
    websocket) echo websocket ;;
    polling-websocket) echo polling,websocket ;;
    polling) echo polling ;;
  esac
}

# wait_for FILE REGEX SECONDS PID: true once a line of FILE matches.
wait_for() {
  local file=$1 re=$2 secs=$3 pid=$4 i
  for i in $(seq $((secs * 10))); do
    grep -qE "$re" "$file" 2>/dev/null && return 0
    alive "$pid" || { grep -qE "$re" "$file" 2>/dev/null; return; }
    sleep 0.1
  done
  return 1
}

# One run: prints its result line; the result's fields go to results.tsv.
run_once() { # run_once MODE RUN
  local mode=$1 run=$2 dir="$out/$1-$2"
  rm -rf "$dir"
  mkdir -p "$dir"
  current=$dir
  FLEET_PID="" PUB_PID=""
  if ! "$cluster" up --nodes "$nodes" --redis-cluster "$redis_cluster" "${bin_args[@]}" --state-dir "$dir/cluster" -- \
    --handshake-rate-per-ip 0 --max-sessions-per-ip 0 "${gateway_args[@]}" >"$dir/cluster.out" 2>&1; then
    echo "$mode run $run: the cluster did not start (see $dir/cluster.out)"
    printf '%s\t%s\tSETUP\t-\t-\t-\t-\t-\t-\t-\n' "$mode" "$run" >>"$out/results.tsv"
    "$cluster" down --state-dir "$dir/cluster" >/dev/null 2>&1 || true
    current=""
    return 0
  fi
  # shellcheck disable=SC1091
  source "$dir/cluster/state.env"
  local budget=$(((duration + 60) * 1000))
  RINGWAY_URL=$NGINX_URL FLEET_CLIENTS=$clients FLEET_TRANSPORTS=$(transports "$mode") \
    FLEET_SPREAD_MS=$spread FLEET_ROOM=kill FLEET_BUDGET_MS=$budget FLEET_RECONNECT_MS=$reconnect \
    FLEET_CLIENT_OPTS=$client_opts \
    RINGWAY_TIMEOUT_MS=$((budget + spread + 120000)) \
    node "$js/recovery.mjs" kill >"$dir/fleet.out" 2>"$dir/fleet.err" &
  FLEET_PID=$!
  local status=ok victim="" owners=""
  if ! wait_for "$dir/fleet.out" '^ready ' $((spread / 1000 + 90)) "$FLEET_PID"; then
    status=NOT_READY
  else
    # Owners from the registry: "<epoch> <node>" per sid.
    grep -m1 '^ready ' "$dir/fleet.out" |
      python3 -c 'import json, sys; print("\n".join(json.loads(sys.stdin.read()[6:])["sids"]))' >"$dir/sids.txt"
    # (-c follows a Redis Cluster's redirections, and says so on a line.)
    sed 's/^/GET ringway:sid:/' "$dir/sids.txt" | redis-cli -c -p "$REDIS_PORT" |
      grep -v '^-> Redirected' >"$dir/owners.txt"
    owners=$(awk '{print $2}' "$dir/owners.txt" | sort | uniq -c | awk '{printf "%s%s:%s", sep, $2, $1; sep=" "}')
    # The busiest node other than n1 (the publisher's).
    local i best=2 most=-1 have
    for i in $(seq 2 "$nodes"); do
      have=$(grep -c " n$i\$" "$dir/owners.txt" || true)
      if [ "$have" -gt "$most" ]; then best=$i; most=$have; fi
    done
    victim=n$best
    RINGWAY_URL=$NODE1_URL FLEET_ROOM=kill PUBLISH_RATE=$rate PUBLISH_MS=$((duration * 1000)) \
      node "$js/recovery.mjs" publish >"$dir/publisher.out" 2>&1 &
    PUB_PID=$!
    sleep "$kill_after"
    local pid_var="NODE${best}_PID"
    kill -KILL "${!pid_var}"
    echo "$(date +%s.%N) killed $victim (pid ${!pid_var})" >>"$dir/events.txt"
    wait "$PUB_PID" || status=PUBLISHER
    PUB_PID=""
  fi
  wait "$FLEET_PID" || [ "$status" != ok ] || status=FLEET
  FLEET_PID=""
  "$cluster" down --state-dir "$dir/cluster" >/dev/null 2>&1 || true
  current=""
  # The verdict, from the clients' report.
  local line
  line=$(python3 - "$dir/fleet.out" "$mode" "$run" "$status" "$victim" "$owners" <<'PY'
import json, sys
path, mode, run, status, victim, owners = sys.argv[1:7]
report = None
for line in open(path):
    if line.startswith("report "):
        report = json.loads(line[len("report "):])
if report is None:
    print(f"{mode}\t{run}\t{status if status != 'ok' else 'NO_REPORT'}\t{victim}\t{owners}\t-\t-\t-\t-\t-")
    sys.exit(0)
total, cs = report["total"], report["clients"]
lost = sum(c["lost"] for c in cs)
dup = sum(c["duplicated"] for c in cs)
reord = sum(c["reordered"] + c["unexpected"] for c in cs)
reconnected = sum(1 for c in cs if c["recoveries"])
fresh = sum(1 for r in (r for c in cs for r in c["recoveries"]) if r is not True)
unfinished = sum(1 for c in cs if c["done"] != total)
if status == "ok" and (lost or dup or reord or fresh or unfinished or not reconnected):
    status = "FAIL"
print(f"{mode}\t{run}\t{status}\t{victim}\t{owners}\t{total}\t{lost}\t{dup}\t{reord}\t{reconnected}/{fresh}/{unfinished}")
PY
)
  printf '%s\n' "$line" >>"$out/results.tsv"
  IFS=$'\t' read -r _ _ st vic own tot lost dup reord rec <<<"$line"
  echo "$mode run $run: $st; killed $vic (sessions $own); $tot messages x $clients clients: lost $lost, duplicated $dup, reordered $reord; reconnected/fresh/unfinished $rec"
  if [ "$st" = ok ] && [ "$keep_all" = 0 ]; then
    rm -rf "$dir"
  else
    echo "  kept in $dir"
  fi
}

: >"$out/results.tsv"
echo "bench-kill: modes $modes, $runs runs each, $clients clients over ${spread} ms, $rate msg/s for ${duration} s, kill after ${kill_after} s; output in $out"
for mode in $modes; do
  for run in $(seq "$runs"); do
    run_once "$mode" "$run"
  done
done

python3 - "$out/results.tsv" "$clients" "$rate" "$duration" "$kill_after" <<'PY' | tee "$out/summary.md"
import sys
path, clients, rate, duration, kill_after = sys.argv[1:6]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
print(f"\n{clients} socket.io-client clients through nginx, {rate} messages/s for {duration} s, "
      f"one node SIGKILLed {kill_after} s in.\n")
print("| mode | runs | passed | lost | duplicated | reordered | runs with loss | runs with duplicates | runs with reordering | fresh sockets | other failures |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
def num(x):
    try:
        return int(x)
    except ValueError:
        return 0
for mode in dict.fromkeys(r[0] for r in rows):
    rs = [r for r in rows if r[0] == mode]
    ok = sum(1 for r in rs if r[2] == "ok")
    lost = [num(r[6]) for r in rs]
    dup = [num(r[7]) for r in rs]
    reord = [num(r[8]) for r in rs]
    fresh = sum(num(r[9].split("/")[1]) for r in rs if "/" in r[9])
    other = sum(1 for r in rs if r[2] not in ("ok", "FAIL"))
    print(f"| {mode} | {len(rs)} | {ok} | {sum(lost)} | {sum(dup)} | {sum(reord)} | "
          f"{sum(1 for x in lost if x)} | {sum(1 for x in dup if x)} | {sum(1 for x in reord if x)} | {fresh} | {other} |")
print("\nPer run (lost / duplicated / reordered):\n")
for mode in dict.fromkeys(r[0] for r in rows):
    rs = [r for r in rows if r[0] == mode]
    print(f"- {mode}: " + ", ".join(f"{r[6]}/{r[7]}/{r[8]}" for r in rs))
PY

# The exit status: 1 if any run did not pass (CI runs a few with --quick).
if awk -F'\t' '$3 != "ok" { bad = 1 } END { exit !bad }' "$out/results.tsv"; then
  echo "bench-kill: some runs failed; kept in $out" >&2
  exit 1
fi
