#!/usr/bin/env bash
# A local Ringway cluster for load tests: a redis-server on a free port, the
# coordinator, N gateways and nginx in front (plain round robin, no
# affinity, WebSocket upgrades passed through), all on 127.0.0.1.
#
#   loadtest/scripts/cluster.sh up [--nodes N] [--redis-cluster M | --redis-replica] [--debug | --bin-dir DIR] [--state-dir DIR] [-- GATEWAY_ARGS...]
#   loadtest/scripts/cluster.sh status [--state-dir DIR]
#   loadtest/scripts/cluster.sh down [--state-dir DIR]
#
# `up` uses the release binaries in target/release (built with
# `cargo build --release -p ringway-gateway -p ringway-coordinator` when
# missing; `--debug`: target/debug, `--bin-dir DIR`: DIR, never built here).
# `--redis-cluster M`: a Redis Cluster of M masters (M redis-servers with
# `--cluster-enabled yes`, slots spread by `redis-cli --cluster create`)
# instead of one redis-server; the coordinator and the gateways get
# `--redis-mode cluster` and every node as a seed. `--redis-replica`: one
# replica of the (standalone) redis-server, for measuring what waiting for
# it costs (`-- --redis-wait-replicas 1`). Arguments after `--`
# go to every gateway (e.g. `-- --ping-interval 5000`). Connection state
# recovery is on (`--recovery-window 120000`, the cluster quick start's
# choice; the binary's default is off) unless the arguments set
# `--recovery-window` themselves (`-- --recovery-window 0`). It waits until every
# gateway is in the coordinator's view, then writes the state file
# (default target/cluster/state.env, a shell fragment to `source`):
#
#   REDIS_PID REDIS_PIDS REDIS_PORT REDIS_URL REDIS_FLAGS COORD_PID COORD_ADDR COORD_HTTP NODES
#   NODE<i>_PID NODE<i>_URL NODE<i>_GRPC NODE<i>_API (i = 1..N; _API only
#   with an API token among the gateway flags)
#   GATEWAY_PIDS (space separated)  NODE_URLS (comma separated)
#   NGINX_PID NGINX_URL
#
# and prints it. `status` prints the members of the view and the URLs;
# `down` stops everything it started (by the pids of the state file).
# Logs are in the state directory (redis.log, coordinator.log, n<i>.log,
# nginx/).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=lib/common.sh
source "$root/loadtest/scripts/lib/common.sh"
# shellcheck source=lib/nginx.sh
source "$root/loadtest/scripts/lib/nginx.sh"

cmd=${1:-}
[ $# -gt 0 ] && shift
nodes=3
redis_cluster=0
redis_replica=0
bindir="$root/target/release"
build=1
state_dir="${RINGWAY_CLUSTER_DIR:-$root/target/cluster}"
gateway_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=$2; shift 2 ;;
    --redis-cluster) redis_cluster=$2; shift 2 ;;
    --redis-replica) redis_replica=1; shift ;;
    --debug) bindir="$root/target/debug"; build=0; shift ;;
    --bin-dir) bindir=$2; build=0; shift 2 ;;
    --state-dir) state_dir=$2; shift 2 ;;
    --) shift; gateway_args=("$@"); break ;;
    *) echo "cluster.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
# Absolute: nginx and the daemons resolve paths from elsewhere.
case "$state_dir" in /*) ;; *) state_dir="$PWD/$state_dir" ;; esac
state="$state_dir/state.env"




# wait_line FILE REGEX SECONDS PID: the first line of FILE matching REGEX.
wait_line() {
  local file=$1 re=$2 secs=$3 pid=$4 i line
  for i in $(seq $((secs * 20))); do
    line=$(grep -m1 -E "$re" "$file" 2>/dev/null || true)
    if [ -n "$line" ]; then echo "$line"; return 0; fi
    if ! alive "$pid"; then
      echo "cluster.sh: process $pid exited; its log ($file):" >&2
      tail -20 "$file" >&2 || true
      return 1
    fi
    sleep 0.05
  done
  echo "cluster.sh: no line /$re/ in $file after ${secs}s" >&2
  tail -20 "$file" >&2 || true
  return 1
}


# The members of the persisted view: "node_id state http grpc" per line.
members() {
  redis-cli -c -p "$REDIS_PORT" GET ringway:membership 2>/dev/null | python3 -c '
import json, sys
raw = sys.stdin.read().strip()
if not raw:
    sys.exit(0)
view = json.loads(raw)
print("epoch", view.get("epoch"))
for m in view.get("members", []):
    print(m["node_id"], m.get("state"), "http=" + m.get("http_addr", ""), "grpc=" + m.get("grpc_addr", ""))
'
}

do_down() {
  if [ ! -f "$state" ]; then
    echo "cluster.sh: no cluster state at $state"
    return 0
  fi
  # shellcheck disable=SC1090
  source "$state"
  # Front first, then the gateways (SIGTERM drains them), then the rest.
  stop_pid "${NGINX_PID:-}"
  for pid in ${GATEWAY_PIDS:-}; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in ${GATEWAY_PIDS:-}; do stop_pid "$pid"; done
  stop_pid "${COORD_PID:-}"
  for pid in ${REDIS_PIDS:-${REDIS_PID:-}}; do stop_pid "$pid"; done
  rm -f "$state"
  echo "cluster stopped"
}

do_status() {
  if [ ! -f "$state" ]; then
    echo "no cluster (no $state)"
    return 1
  fi
  # shellcheck disable=SC1090
  source "$state"
  local ok=0
  check() { # check NAME PID
    if alive "$2"; then echo "  $1: pid $2 running"; else echo "  $1: pid $2 NOT running"; ok=1; fi
  }
  echo "processes:"
  for pid in ${REDIS_PIDS:-$REDIS_PID}; do check redis "$pid"; done
  check coordinator "$COORD_PID"
  for i in $(seq "$NODES"); do
    local p u
    p="NODE${i}_PID"; u="NODE${i}_URL"
    check "n$i (${!u})" "${!p}"
  done
  check "nginx ($NGINX_URL)" "$NGINX_PID"
  echo "view (ringway:membership in $REDIS_URL):"
  members | sed 's/^/  /'
  echo "urls:"
  echo "  nginx (round robin): $NGINX_URL"
  echo "  nodes: $NODE_URLS"
  echo "  gateway pids: $GATEWAY_PIDS"
  return $ok
}

do_up() {
  if [ -f "$state" ]; then
    # shellcheck disable=SC1090
    source "$state"
    if alive "${REDIS_PID:-}" || alive "${COORD_PID:-}"; then
      echo "cluster.sh: a cluster is already up ($state); run 'down' first" >&2
      exit 1
    fi
    rm -f "$state"
  fi
  if [ "$build" = 1 ] && { [ ! -x "$bindir/ringway-gateway" ] || [ ! -x "$bindir/ringway-coordinator" ]; }; then
    (cd "$root" && cargo build --release -p ringway-gateway -p ringway-coordinator)
  fi
  for b in ringway-gateway ringway-coordinator; do
    [ -x "$bindir/$b" ] || { echo "cluster.sh: $bindir/$b missing" >&2; exit 1; }
  done
  command -v redis-server >/dev/null || { echo "cluster.sh: redis-server not installed (apt-get install redis-server)" >&2; exit 1; }

  mkdir -p "$state_dir"
  local tmp="$state.tmp"
  : >"$tmp"
  # Anything started so far is stopped if a later step fails.
  trap 'echo "cluster.sh: up failed, stopping what was started" >&2; mv -f "$tmp" "$state" 2>/dev/null; do_down >/dev/null' ERR

  # One redis-server, or the masters of a Redis Cluster.
  local redis_port="" redis_pids="" redis_flags=() seeds=() k
  for k in $(seq "$((redis_cluster > 0 ? redis_cluster : 1))"); do
    local port cluster_args=()
    port=$(free_port)
    # The cluster bus on a free port of its own (by default it is the port
    # + 10000, out of range for a high free port).
    [ "$redis_cluster" -gt 0 ] && cluster_args=(--cluster-enabled yes
      --cluster-config-file "$state_dir/redis-nodes-$k.conf" --cluster-node-timeout 2000
      --cluster-port "$(free_port)")
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
      --protected-mode no --dir "$state_dir" --dbfilename "redis-$k.rdb" \
      "${cluster_args[@]}" >"$state_dir/redis-$k.log" 2>&1 &
    redis_pids="$redis_pids${redis_pids:+ }$!"
    [ -z "$redis_port" ] && echo "REDIS_PID=$!" >>"$tmp"
    redis_port=${redis_port:-$port}
    seeds+=("127.0.0.1:$port")
    redis_flags+=(--redis-url "redis://127.0.0.1:$port/")
    for _ in $(seq 200); do
      [ "$(redis-cli -p "$port" PING 2>/dev/null)" = PONG ] && break
      sleep 0.05
    done
    [ "$(redis-cli -p "$port" PING 2>/dev/null)" = PONG ]
  done
  if [ "$redis_replica" = 1 ]; then
    local replica_port
    replica_port=$(free_port)
    # (A replica's full sync writes a file: in the state directory.)
    redis-server --port "$replica_port" --bind 127.0.0.1 --save "" --appendonly no \
      --protected-mode no --dir "$state_dir" --dbfilename redis-replica.rdb \
      --replicaof 127.0.0.1 "$redis_port" >"$state_dir/redis-replica.log" 2>&1 &
    redis_pids="$redis_pids $!"
    for _ in $(seq 200); do
      redis-cli -p "$replica_port" INFO replication 2>/dev/null | grep -q master_link_status:up && break
      sleep 0.05
    done
    redis-cli -p "$replica_port" INFO replication | grep -q master_link_status:up
  fi
  echo "REDIS_PIDS=\"$redis_pids\"" >>"$tmp"
  if [ "$redis_cluster" -gt 0 ]; then
    redis-cli --cluster create "${seeds[@]}" --cluster-replicas 0 --cluster-yes \
      >"$state_dir/redis-cluster-create.log" 2>&1
    # Every node agrees the cluster is ok (the first one may say so first).
    local seed ok=0
    for _ in $(seq 200); do
      ok=1
      for seed in "${seeds[@]}"; do
        redis-cli -p "${seed##*:}" CLUSTER INFO 2>/dev/null | grep -q cluster_state:ok || ok=0
      done
      [ "$ok" = 1 ] && break
      sleep 0.05
    done
    [ "$ok" = 1 ]
    redis_flags=(--redis-mode cluster "${redis_flags[@]}")
  fi
  echo "REDIS_PORT=$redis_port" >>"$tmp"
  local redis_url="redis://127.0.0.1:$redis_port/"
  echo "REDIS_URL=$redis_url" >>"$tmp"
  echo "REDIS_FLAGS=\"${redis_flags[*]}\"" >>"$tmp"

  # The cluster credential: a fresh random secret for this cluster, read
  # by the coordinator and every gateway.
  local secret="$state_dir/cluster-secret"
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret")
  echo "CLUSTER_SECRET_FILE=$secret" >>"$tmp"

  local coord_port
  coord_port=$(free_port)
  # The dashboard on a free port (an env variable: older binaries ignore it).
  RINGWAY_HTTP_LISTEN=127.0.0.1:0 RUST_LOG=${RUST_LOG:-warn} "$bindir/ringway-coordinator" --listen "127.0.0.1:$coord_port" \
    "${redis_flags[@]}" --cluster-secret-file "$secret" >"$state_dir/coordinator.log" 2>&1 &
  local coord_pid=$!
  echo "COORD_PID=$coord_pid" >>"$tmp"
  local line
  line=$(wait_line "$state_dir/coordinator.log" 'ringway-coordinator listening on' 20 "$coord_pid")
  local coord_addr=${line##* }
  echo "COORD_ADDR=$coord_addr" >>"$tmp"
  # The dashboard (printed before the gRPC line); empty with an older binary.
  line=$(grep -m1 'ringway-coordinator http on' "$state_dir/coordinator.log" || true)
  echo "COORD_HTTP=${line##* }" >>"$tmp"
  echo "NODES=$nodes" >>"$tmp"

  # Recovery on unless the caller chose.
  local recovery_args=(--recovery-window 120000) arg
  for arg in "${gateway_args[@]}"; do
    case "$arg" in --recovery-window|--recovery-window=*) recovery_args=() ;; esac
  done

  local pids="" urls="" i
  for i in $(seq "$nodes"); do
    local log="$state_dir/n$i.log"
    RUST_LOG=${RUST_LOG:-warn} "$bindir/ringway-gateway" --listen 127.0.0.1:0 \
      --grpc-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --node-id "n$i" \
      --coordinator "$coord_addr" "${redis_flags[@]}" \
      --cluster-secret-file "$secret" "${recovery_args[@]}" "${gateway_args[@]}" >"$log" 2>&1 &
    local pid=$!
    echo "NODE${i}_PID=$pid" >>"$tmp"
    line=$(wait_line "$log" 'ringway-gateway grpc listening on' 30 "$pid")
    echo "NODE${i}_GRPC=${line##* }" >>"$tmp"
    line=$(grep -m1 'ringway-gateway api listening on' "$log" || true)
    [ -n "$line" ] && echo "NODE${i}_API=${line##* }" >>"$tmp"
    line=$(wait_line "$log" 'ringway-gateway listening on http://' 30 "$pid")
    local url=${line##* }
    echo "NODE${i}_URL=$url" >>"$tmp"
    pids="$pids${pids:+ }$pid"
    urls="$urls${urls:+,}$url"
  done
  echo "GATEWAY_PIDS=\"$pids\"" >>"$tmp"
  echo "NODE_URLS=$urls" >>"$tmp"

  # Every gateway in the view, active.
  local want=$nodes have=0
  for _ in $(seq 400); do
    have=$(REDIS_PORT=$redis_port members | grep -c ' active ' || true)
    [ "$have" -ge "$want" ] && break
    sleep 0.05
  done
  if [ "$have" -lt "$want" ]; then
    echo "cluster.sh: $have of $want gateways in the view" >&2
    false
  fi

  local nginx_port nginx_pid
  nginx_port=$(free_port)
  nginx_pid=$(start_nginx "$state_dir/nginx" "$nginx_port" ${urls//,/ })
  echo "NGINX_PID=$nginx_pid" >>"$tmp"
  echo "NGINX_URL=http://127.0.0.1:$nginx_port" >>"$tmp"
  trap - ERR
  mv -f "$tmp" "$state"
  cat "$state"
}

case "$cmd" in
  up) do_up ;;
  down) do_down ;;
  status) do_status ;;
  *) usage ;;
esac
