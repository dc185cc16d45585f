#!/usr/bin/env bash
# A one-node gateway with the built-in echo application and its chat demo
# page (no Redis, no other service): installs the page's one dependency,
# the official socket.io-client browser bundle pinned by
# examples/chat/package-lock.json, with npm when it is missing, then builds
# and runs the gateway (release). The build itself never runs npm.
#
#   scripts/demo.sh                     # on 127.0.0.1:3000, --demo
#   scripts/demo.sh --listen 0.0.0.0:8080 --demo   # other flags instead
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f examples/chat/node_modules/socket.io-client/dist/socket.io.min.js ]; then
  echo "== installing the socket.io-client bundle (npm ci in examples/chat)" >&2
  (cd examples/chat && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ $# -eq 0 ]; then
  set -- --listen 127.0.0.1:3000 --demo
fi
exec cargo run --release -p ringway-gateway -- "$@"
