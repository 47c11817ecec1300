#!/usr/bin/env bash
# The second command: every test, unit and end-to-end. End-to-end tests start
# a real MLflow server from the project's venv and the real Ferry binaries on
# loopback ports chosen at run time.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
"$ROOT/scripts/setup.sh"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(ort_library)}"
# The e2e tests run the service binaries, so build them first.
cargo build --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
