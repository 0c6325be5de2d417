#!/usr/bin/env bash
# The whole test suite: Rust unit tests, then end-to-end tests that drive the real binary
# with real clients, then the wheels on every CPython found (tests/test_matrix.py).
# Everything runs in a virtualenv, .venv (made from `python3` if missing), the way a user
# with an activated venv runs genro-asgi: the worker extension is installed into it with
# `maturin develop`, so the workers run in that venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages: wrk drives the reload-under-load tests; chromium is the browser the
# HTTP/3 tests force onto QUIC; tini is the container image's PID 1 (tests/test_docker.py).
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v chromium >/dev/null || missing+=(chromium)
command -v tini >/dev/null || missing+=(tini)
# nginx is the proxy in front of the [server] uds socket (tests/test_uds.py).
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
# haproxy sends real PROXY protocol headers in front of a worker (tests/test_proxy_protocol.py).
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# Debian's python3 is one of the interpreters the wheels are tested on (tests/test_matrix.py).
if [ -x /usr/bin/python3 ] && ! /usr/bin/python3 -m ensurepip --version >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "note: ${missing[*]} not installed; the tests that need them will be skipped" >&2
  fi
fi
# The venv (remade if an earlier attempt left one without pip).
.venv/bin/python -m pip --version >/dev/null 2>&1 || { rm -rf .venv && python3 -m venv .venv; }
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
cargo build --locked -p genro-asgi -p genro-loadgen
maturin develop --locked -m worker/Cargo.toml
cargo test --locked --workspace
# CPython 3.14 and free-threaded 3.14t are not installed here: the worker is compiled for
# them from pyo3 interpreter descriptions (docs/ARCHITECTURE.md, "Free-threaded CPython").
for python in cpython-3.14 cpython-3.14t; do
  PYO3_CONFIG_FILE="$PWD/worker/pyo3-configs/$python.txt" \
    cargo check --locked --quiet -p genro-worker --lib --target-dir target/check-py314
  echo "worker compiles for $python"
done
# -rs: an interpreter the machine lacks is a visible skip note, not a silent pass.
python -m pytest -q -rs tests/ "$@"
# WebSocket protocol conformance (docs/CONFORMANCE.md): the Autobahn|Testsuite fuzzing
# client, quick selection; `scripts/autobahn.sh full` runs every case.
./scripts/autobahn.sh quick
