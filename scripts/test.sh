#!/usr/bin/env bash
# The whole test suite: Rust unit tests, then end-to-end tests that drive the real binary
# with real clients. Installs the Python test clients it needs with pip.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
cargo build --locked -p genro-asgi
cargo test --locked --workspace
python3 -m pytest -q tests/ "$@"
