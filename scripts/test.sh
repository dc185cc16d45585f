#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what the tests
# need (npm packages, the Python client, cargo-nextest if missing), then
# runs every test of the workspace.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

log() { printf '\n== %s\n' "$*"; }

# Debian packages some tests need, installed only when missing.
apt_packages=()
need_apt() { command -v "$1" >/dev/null 2>&1 || apt_packages+=("$2"); }
# (later issues add redis-server, nginx, chromium here)
if [ ${#apt_packages[@]} -gt 0 ]; then
  log "installing ${apt_packages[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${apt_packages[@]}"
fi

log "npm packages for the interop clients"
(cd gateway/tests/interop/js && npm ci --no-audit --no-fund --loglevel=error)

log "python client"
if [ ! -x .venv-test/bin/python ]; then
  python3 -m venv .venv-test
fi
.venv-test/bin/pip install --quiet --disable-pip-version-check -r gateway/tests/interop/py/requirements.txt

log "building and running the tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
