# Sourced by the bench scripts: measuring on a quiet machine.
#
# The caller sets: lt (the ringway-loadtest binary), out (the report
# directory), round (the current round), quiet_cores and quiet_wait, and
# bench (its name, for messages). `measure NAME ARGS...` runs
# `$lt ARGS... --quiet --json` into $out/NAME-$round.json once the machine
# is quiet, again (up to 3 times) when other processes took more than
# quiet_cores meanwhile.

# Cores' worth of CPU the whole machine used over 3 seconds.
busy_cores() {
  python3 - <<'PY'
import os, time
def sample():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)
b0, t0 = sample(); time.sleep(3); b1, t1 = sample()
print(f"{(b1 - b0) / max(t1 - t0, 1) * os.cpu_count():.2f}")
PY
}

wait_quiet() {
  local waited=0 busy
  while :; do
    busy=$(busy_cores)
    if python3 -c "import sys; sys.exit(0 if $busy < $quiet_cores else 1)"; then
      return 0
    fi
    if [ "$waited" -ge "$quiet_wait" ]; then
      echo "$bench: machine still busy ($busy cores) after ${waited}s; measuring anyway" >&2
      return 0
    fi
    [ "$waited" = 0 ] && echo "$bench: waiting for a quiet machine ($busy cores busy)" >&2
    sleep 7
    waited=$((waited + 10))
  done
}

pid_args() { local a="" p; for p in "$@"; do a="$a --server-pid $p"; done; echo "$a"; }

measure() { # measure NAME SCENARIO ARGS...
  local name=$1; shift
  local try others
  for try in 1 2 3; do
    wait_quiet
    echo "$bench: round $round: $name (try $try)" >&2
    "$lt" "$@" --quiet --json >"$out/$name-$round.json"
    others=$(python3 -c 'import json,sys; print("%.2f" % json.load(open(sys.argv[1]))["machine"]["others_busy_cores"])' "$out/$name-$round.json")
    echo "$(date +%T) $name round $round try $try: other processes $others cores" >>"$out/machine.txt"
    if python3 -c "import sys; sys.exit(0 if $others < $quiet_cores else 1)"; then
      return 0
    fi
    echo "$bench: other processes took $others cores during $name; again" >&2
  done
}


# For the cluster benches: builds the release binaries, sets lt, cluster
# and peers (the scripts), keeps the local cluster's and the peers' state
# under $out, and stops both on exit.
cluster_bench_setup() {
  cargo build --release -q -p ringway-gateway -p ringway-coordinator -p ringway-loadtest
  lt="$root/target/release/ringway-loadtest"
  cluster="$root/loadtest/scripts/cluster.sh"
  peers="$root/loadtest/scripts/peers.sh"
  export RINGWAY_CLUSTER_DIR="$out/cluster"
  export RINGWAY_PEERS_DIR="$out/peers"
  trap '"$cluster" down >/dev/null 2>&1 || true; "$peers" down reference >/dev/null 2>&1 || true' EXIT
}
