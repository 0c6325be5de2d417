#!/usr/bin/env bash
# The whole test suite: Rust unit tests, then end-to-end tests that drive the real binary
# with real clients. Installs the Python test clients it needs with pip.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
# wrk drives the reload-under-load tests (Debian package).
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq wrk >/dev/null
  else
    echo "note: wrk is not installed; the load tests will be skipped" >&2
  fi
fi
cargo build --locked -p genro-asgi -p genro-loadgen
cargo test --locked --workspace
python3 -m pytest -q tests/ "$@"
