#!/usr/bin/env bash
# The dependency rules of the crates (docs/ARCHITECTURE.md, "Crates"): a
# layer must not reach the ones above it or the cluster's machinery. Reads
# `cargo tree` of each crate on its own (its normal dependencies, with its
# own features) and fails naming the crate and the forbidden package.
set -euo pipefail
cd "$(dirname "$0")/.."

# crate: packages it must not depend on, directly or not
rules=(
  "ringway-ring: ringway-proto ringway-telemetry ringway-engineio ringway-gateway tonic prost redis tokio"
  "ringway-engineio: ringway-proto ringway-gateway ringway-ring tonic prost redis opentelemetry_sdk"
  "ringway-socketio-codec: ringway-proto ringway-engineio ringway-gateway tonic prost redis tokio"
  "ringway-socketio: ringway-proto ringway-gateway ringway-ring tonic prost redis opentelemetry_sdk"
  "ringway-cluster: ringway-gateway jsonwebtoken clap opentelemetry-otlp opentelemetry-prometheus"
  "ringway-redis: ringway-proto ringway-engineio ringway-socketio ringway-cluster ringway-gateway ringway-telemetry tonic prost"
  "ringway-testkit: ringway-proto ringway-engineio ringway-gateway tonic redis"
)

status=0
for rule in "${rules[@]}"; do
  crate="${rule%%:*}"
  forbidden="${rule#*: }"
  deps="$(cargo tree -p "$crate" -e normal --prefix none --offline 2>/dev/null \
    || cargo tree -p "$crate" -e normal --prefix none)"
  names="$(printf '%s\n' "$deps" | awk '{print $1}' | sort -u)"
  for bad in $forbidden; do
    if printf '%s\n' "$names" | grep -qx -- "$bad"; then
      echo "layer rule broken: $crate depends on $bad" >&2
      cargo tree -p "$crate" -e normal -i "$bad" >&2 || true
      status=1
    fi
  done
  echo "$crate: none of $forbidden"
done
# Inside ringway-socketio: sockets, namespaces, a session's state and the
# fabric report to connection state recovery through the `RecoverySink`
# that socket.rs defines; none of them names the recovery module (it
# depends on them, not the other way).
for f in client socket namespace fabric target; do
  if grep -vE '^\s*//' "gateway/socketio/src/$f.rs" | grep -qE '(super|crate)::recovery'; then
    echo "layer rule broken: gateway/socketio/src/$f.rs names the recovery module" >&2
    status=1
  fi
done
echo "ringway-socketio: client, socket, namespace, fabric, target do not name recovery"
exit $status
