#!/usr/bin/env bash
# Runs the bundled example app (examples/server.ini, http://127.0.0.1:8000/) the way a
# user runs genro-asgi: in a virtualenv (.venv, made from `python3` if missing) that has
# the worker extension installed, with the `genro-asgi` command built from this checkout.
# Extra arguments go to `genro-asgi serve` (e.g. --workers 4).
set -euo pipefail
cd "$(dirname "$0")/.."
# (remade if an earlier attempt left one without pip; Debian's python3 needs python3-venv)
.venv/bin/python -m pip --version >/dev/null 2>&1 || { rm -rf .venv && python3 -m venv .venv; }
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --disable-pip-version-check "maturin>=1.9.4,<2"
maturin develop --release --locked -m worker/Cargo.toml
cargo build --release --locked -p genro-asgi
exec target/release/genro-asgi serve --config examples/server.ini "$@"
