#!/usr/bin/env bash
# The whole test suite: Rust unit tests, then end-to-end tests that drive the real binary
# with real clients. Installs the Python test clients it needs with pip.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
# Debian packages: wrk drives the reload-under-load tests; chromium is the browser the
# HTTP/3 tests force onto QUIC; tini is the container image's PID 1 (tests/test_docker.py).
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v chromium >/dev/null || missing+=(chromium)
command -v tini >/dev/null || missing+=(tini)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "note: ${missing[*]} not installed; the tests that need them will be skipped" >&2
  fi
fi
cargo build --locked -p genro-asgi -p genro-loadgen
cargo test --locked --workspace
python3 -m pytest -q tests/ "$@"
# WebSocket protocol conformance (docs/CONFORMANCE.md): the Autobahn|Testsuite fuzzing
# client, quick selection; `scripts/autobahn.sh full` runs every case.
./scripts/autobahn.sh quick
