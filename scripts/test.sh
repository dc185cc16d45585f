#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what the tests
# need (Debian packages, npm packages, the Python clients), then
# runs every test of the workspace.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

log() { printf '\n== %s\n' "$*"; }

# Debian packages some tests need, installed only when missing.
apt_packages=()
need_apt() { # command, package; daemons live in /usr/sbin, often not on PATH
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || apt_packages+=("$2")
}
need_apt redis-server redis-server # cluster tests: the registry (own port each)
need_apt nginx nginx               # cluster_interop: round-robin proxy, no sticky sessions
need_apt chromium chromium         # browser tests: headless Chromium driven over DevTools
if [ ${#apt_packages[@]} -gt 0 ]; then
  log "installing ${apt_packages[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  # The tests start their own redis-server and nginx on free ports: keep
  # the packages from starting their services (nginx's would want port 80,
  # and a service that fails to start fails the install).
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee "$policy" >/dev/null
    $sudo_cmd chmod 755 "$policy"
    trap '$sudo_cmd rm -f "$policy"' EXIT
  fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${apt_packages[@]}"
fi

log "npm packages: the interop clients and playwright-core, the chat demo's socket.io-client bundle, the reference server"
(cd gateway/tests/interop/js && npm ci --no-audit --no-fund --loglevel=error)
(cd examples/chat && npm ci --no-audit --no-fund --loglevel=error)
# The reference server (socket.io 4.8, the echo application): bad input is
# replayed against it and Ringway (gateway/tests/reference_diff.rs).
(cd loadtest/peers/reference && npm ci --no-audit --no-fund --loglevel=error)

log "python client, the python publisher example (grpcio, grpcio-tools), the chart tests (helm-python-sdk, kubernetes-validate, pytest)"
if [ ! -x .venv-test/bin/python ]; then
  python3 -m venv .venv-test
fi
.venv-test/bin/pip install --quiet --disable-pip-version-check \
  -r gateway/tests/interop/py/requirements.txt \
  -r examples/python-publisher/requirements.txt \
  -r helm/tests/requirements.txt

log "building and running the tests"
# The cluster tests start target/debug/ringway-coordinator next to the
# gateway binary, and gateway/tests/examples.rs target/debug/chat-backend.
# Building the workspace's tests builds them: cargo builds a package's
# binaries for its integration tests (coordinator/tests/,
# examples/chat-backend/tests/).
# A failure here still lets the chart tests run; the script fails at the end.
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" || status=$?
else
  cargo test --workspace --no-fail-fast "$@" || status=$?
fi

log "kill runs: a node SIGKILLed under the official JS client, 2 runs per transport mode"
# Connection state recovery must deliver every message once, in order, in
# every run (loadtest/scripts/bench-kill.sh; the full benchmark is 20 runs
# per mode, docs/BENCHMARKS.md). A failing run's logs stay in the folder.
loadtest/scripts/bench-kill.sh --quick --debug \
  --out "${RINGWAY_ARTIFACTS:-$root/target}/bench-kill" || status=$?

log "the Helm chart: lint, render, Kubernetes schemas, flags accepted by the binaries"
# helm/tests renders and lints helm/ringway with Helm's own Go SDK
# (helm-python-sdk: no helm binary), validates the manifests offline with
# kubernetes-validate, and runs target/debug/ringway-gateway and
# ringway-coordinator (built above) with --check-config on the rendered
# flags, and redis-server on the embedded Redis' arguments.
RINGWAY_CHART_REQUIRE_BINARIES=1 .venv-test/bin/python -m pytest helm/tests -q || status=$?

shots="${RINGWAY_ARTIFACTS:-target}/browser-screenshots"
if [ -d "$shots" ]; then
  log "browser screenshots: $shots ($(find "$shots" -name '*.png' | wc -l) files)"
fi
exit "$status"
