# Sourced by the loadtest scripts: small process helpers.

# The usage text: the script's leading comment block.
usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 2
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# stop_pid PID: SIGTERM, then SIGKILL after 10 s.
stop_pid() {
  local pid=$1 i
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 200); do alive "$pid" || return 0; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
}

# bench_binaries: builds the release binaries unless `bin_args` (the
# cluster's `--debug` or `--bin-dir DIR`) names others; sets `lt`, the
# load tester to run.
bench_binaries() {
  if [ ${#bin_args[@]} -eq 0 ]; then
    cargo build --release -q -p ringway-loadtest -p ringway-gateway -p ringway-coordinator
  fi
  lt="$root/target/release/ringway-loadtest"
  if [ "${bin_args[0]:-}" = --debug ]; then lt="$root/target/debug/ringway-loadtest"; fi
}
