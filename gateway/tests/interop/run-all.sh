#!/usr/bin/env bash
# Runs every interop scenario of the JS and Python clients against RINGWAY_URL
# and ends with the line `N passed, N failed` (exit 1 if any failed).
#
#   RINGWAY_URL=http://127.0.0.1:3000 ./run-all.sh          # a running server
#   ./run-all.sh --reference                                 # start the reference peer
#
# The server must run the echo app with --namespace / --namespace /custom and
# pingInterval 300 / pingTimeout 200 (the ping-timeout scenario needs short
# heartbeats). Needs `npm ci` in js/ (and in loadtest/peers/reference for
# --reference); the Python client runs with $PYTHON (default python3), which
# must have py/requirements.txt installed. Set SKIP_PY=1 or SKIP_JS=1 to skip one.
# RINGWAY_PARSER=msgpack: the JS scenarios with socket.io-msgpack-parser
# against a server with the msgpack parser (--reference starts the reference
# with it), msgpack-values included; the Python runner is skipped.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
PYTHON="${PYTHON:-python3}"
ref_pid=""

cleanup() { [ -n "$ref_pid" ] && kill "$ref_pid" 2>/dev/null; }
trap cleanup EXIT

if [ "${1:-}" = "--reference" ]; then
  ref_dir="$here/../../../loadtest/peers/reference"
  out="$(mktemp)"
  node "$ref_dir/server.js" --port 0 --ping-interval 300 --ping-timeout 200 \
    --namespace / --namespace /custom --parser "${RINGWAY_PARSER:-default}" >"$out" 2>&1 &
  ref_pid=$!
  for _ in $(seq 50); do grep -q '^listening on ' "$out" && break; sleep 0.1; done
  RINGWAY_URL="$(sed -n 's/^listening on //p' "$out")"
  [ -n "$RINGWAY_URL" ] || { echo "reference server did not start:"; cat "$out"; exit 1; }
  echo "reference server at $RINGWAY_URL"
  # msgpack-values then checks the reference's side of the documented
  # differences.
  export RINGWAY_REFERENCE=1
fi
export RINGWAY_URL="${RINGWAY_URL:-http://127.0.0.1:3000}"

pass=0
fail=0
run() { # label, command...
  local label="$1"; shift
  if out="$("$@" 2>&1)"; then
    pass=$((pass + 1)); echo "PASS [$label] $out"
  else
    fail=$((fail + 1)); echo "FAIL [$label] $out"
  fi
}

if [ "${SKIP_JS:-0}" != 1 ]; then
  for s in $(node "$here/js/run.mjs" --list); do
    case "$s" in
      # Need the Rust harness: a server restart, a proxy that blocks upgrades.
      shutdown-reconnect | cluster-upgrade-blocked) continue ;;
      # Only with the msgpack parser.
      msgpack-values) [ "${RINGWAY_PARSER:-}" = msgpack ] || continue ;;
    esac
    run js node "$here/js/run.mjs" "$s"
  done
fi
if [ "${SKIP_PY:-0}" != 1 ] && [ "${RINGWAY_PARSER:-default}" != msgpack ]; then
  for s in $("$PYTHON" "$here/py/run.py" --list); do run py "$PYTHON" "$here/py/run.py" "$s"; done
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
