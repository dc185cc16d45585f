#!/usr/bin/env bash
# The peers Ringway is measured against, started on 127.0.0.1 free ports,
# all running the echo application of docs/ECHO_APP.md (same echo / join /
# broadcast handlers as Ringway's):
#
#   loadtest/scripts/peers.sh up reference [--nodes N] [--redis URL] [--proxy] [-- SERVER_ARGS...]
#   loadtest/scripts/peers.sh up socketioxide [-- SERVER_ARGS...]
#   loadtest/scripts/peers.sh status [reference|socketioxide]
#   loadtest/scripts/peers.sh down [reference|socketioxide]   (default: both)
#
# reference: the official socket.io server (loadtest/peers/reference,
#   `npm ci` run when node_modules is missing). With --nodes N > 1 the
#   nodes share a Redis through @socket.io/redis-adapter: the Redis of
#   --redis URL, else a redis-server started here on a free port. Like
#   any socket.io cluster, it needs sticky sessions for long-polling: give
#   each client session one node (ringway-loadtest with --url repeated
#   spreads sessions over the nodes; WebSocket sessions are sticky anyway).
#   `-- --recovery` turns connection state recovery on; with several nodes
#   the adapter is then @socket.io/redis-streams-adapter. --proxy puts
#   nginx in front of the nodes (round robin, as cluster.sh does):
#   PROXY_URL, PROXY_PID (WebSocket clients only: polling needs stickiness).
# socketioxide: the crates.io socketioxide peer (loadtest/peers/socketioxide),
#   built into target/peers when missing; one node.
#
# Arguments after `--` go to every server (e.g. `-- --ping-interval 5000`).
# `up` writes target/peers-run/NAME.env (override the directory with
# RINGWAY_PEERS_DIR), a shell fragment to `source`:
#
#   NAME NODES PIDS (space separated) URLS (comma separated)
#   NODE<i>_PID NODE<i>_URL  REDIS_URL  REDIS_PID (when started here)
#   PROXY_URL PROXY_PID (with --proxy)
#
# and prints it; `down` stops what `up` started.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=lib/common.sh
source "$root/loadtest/scripts/lib/common.sh"
# shellcheck source=lib/nginx.sh
source "$root/loadtest/scripts/lib/nginx.sh"
state_dir="${RINGWAY_PEERS_DIR:-$root/target/peers-run}"

cmd=${1:-}
[ $# -gt 0 ] && shift
name=""
case "${1:-}" in
  reference|socketioxide) name=$1; shift ;;
esac
nodes=1
redis_url=""
proxy=0
server_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=$2; shift 2 ;;
    --redis) redis_url=$2; shift 2 ;;
    --proxy) proxy=1; shift ;;
    --) shift; server_args=("$@"); break ;;
    *) echo "peers.sh: unknown option $1" >&2; exit 2 ;;
  esac
done





# wait_url LOG PID: the URL of a `listening on http://...` line.
wait_url() {
  local log=$1 pid=$2 i line
  for i in $(seq 600); do
    line=$(grep -m1 -o 'listening on http://[^ ]*' "$log" 2>/dev/null || true)
    if [ -n "$line" ]; then echo "${line#listening on }"; return 0; fi
    if ! alive "$pid"; then
      echo "peers.sh: server $pid exited:" >&2
      tail -20 "$log" >&2 || true
      return 1
    fi
    sleep 0.05
  done
  echo "peers.sh: no 'listening on' line in $log" >&2
  return 1
}

down_one() {
  local f="$state_dir/$1.env"
  [ -f "$f" ] || return 0
  # shellcheck disable=SC1090
  (
    source "$f"
    stop_pid "${PROXY_PID:-}"
    for pid in $PIDS; do stop_pid "$pid"; done
    stop_pid "${REDIS_PID:-}"
  )
  rm -f "$f"
  echo "$1 stopped"
}

status_one() {
  local f="$state_dir/$1.env"
  if [ ! -f "$f" ]; then echo "$1: not running"; return 0; fi
  # shellcheck disable=SC1090
  (
    source "$f"
    echo "$1: $NODES node(s)${REDIS_URL:+, Redis adapter on $REDIS_URL}"
    for i in $(seq "$NODES"); do
      p="NODE${i}_PID"; u="NODE${i}_URL"
      if alive "${!p}"; then s=running; else s="NOT running"; fi
      echo "  node $i: ${!u} pid ${!p} $s"
    done
    echo "  urls: $URLS"
    echo "  pids: $PIDS"
  )
}

up() {
  [ -n "$name" ] || usage
  local f="$state_dir/$name.env"
  if [ -f "$f" ]; then
    echo "peers.sh: $name is already up ($f); run 'down $name' first" >&2
    exit 1
  fi
  mkdir -p "$state_dir"
  local tmp="$f.tmp"
  : >"$tmp"
  trap 'echo "peers.sh: up failed, stopping what was started" >&2; mv -f "$tmp" "$f"; down_one "$name" >/dev/null' ERR
  local pids="" urls="" i
  case "$name" in
    reference)
      local dir="$root/loadtest/peers/reference"
      if [ ! -d "$dir/node_modules/@socket.io/redis-streams-adapter" ]; then
        (cd "$dir" && npm ci --no-audit --no-fund >/dev/null)
      fi
      if [ "$nodes" -gt 1 ] && [ -z "$redis_url" ]; then
        local port
        port=$(free_port)
        redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
          --protected-mode no >"$state_dir/reference-redis.log" 2>&1 &
        echo "REDIS_PID=$!" >>"$tmp"
        redis_url="redis://127.0.0.1:$port/"
        for _ in $(seq 200); do
          [ "$(redis-cli -p "$port" PING 2>/dev/null)" = PONG ] && break
          sleep 0.05
        done
      fi
      echo "REDIS_URL=$redis_url" >>"$tmp"
      for i in $(seq "$nodes"); do
        local log="$state_dir/reference-$i.log"
        local extra=()
        [ -n "$redis_url" ] && extra=(--redis "$redis_url")
        node "$dir/server.js" --port 0 "${extra[@]}" "${server_args[@]}" >"$log" 2>&1 &
        local pid=$!
        echo "NODE${i}_PID=$pid" >>"$tmp"
        local url
        url=$(wait_url "$log" "$pid")
        echo "NODE${i}_URL=$url" >>"$tmp"
        pids="$pids${pids:+ }$pid"; urls="$urls${urls:+,}$url"
      done
      if [ "$proxy" = 1 ]; then
        local proxy_port proxy_pid
        proxy_port=$(free_port)
        proxy_pid=$(start_nginx "$state_dir/reference-nginx" "$proxy_port" ${urls//,/ })
        echo "PROXY_PID=$proxy_pid" >>"$tmp"
        echo "PROXY_URL=http://127.0.0.1:$proxy_port" >>"$tmp"
      fi
      ;;
    socketioxide)
      if [ "$nodes" -ne 1 ]; then
        echo "peers.sh: the socketioxide peer runs one node" >&2
        exit 2
      fi
      local bin="$root/target/peers/release/socketioxide-peer"
      if [ ! -x "$bin" ]; then
        CARGO_TARGET_DIR="$root/target/peers" cargo build --release -q \
          --manifest-path "$root/loadtest/peers/socketioxide/Cargo.toml"
      fi
      local log="$state_dir/socketioxide-1.log"
      "$bin" --port 0 "${server_args[@]}" >"$log" 2>&1 &
      local pid=$!
      echo "NODE1_PID=$pid" >>"$tmp"
      local url
      url=$(wait_url "$log" "$pid")
      echo "NODE1_URL=$url" >>"$tmp"
      pids=$pid; urls=$url
      ;;
  esac
  {
    echo "NAME=$name"
    echo "NODES=$nodes"
    echo "PIDS=\"$pids\""
    echo "URLS=$urls"
  } >>"$tmp"
  trap - ERR
  mv -f "$tmp" "$f"
  cat "$f"
}

case "$cmd" in
  up) up ;;
  down)
    if [ -n "$name" ]; then down_one "$name"; else down_one reference; down_one socketioxide; fi ;;
  status)
    if [ -n "$name" ]; then status_one "$name"; else status_one reference; status_one socketioxide; fi ;;
  *) usage ;;
esac
