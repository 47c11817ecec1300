#!/usr/bin/env bash
# A model over 2 GB (external data, as mlflow.onnx.log_model writes it) through
# Ferry, against curl + Python onnxruntime on the same files. Not part of CI:
# it writes ~2.2 GB to MLflow and moves it several times (bench/large_model.py).
#
#   bench/large-model.sh [--gb 2.2] [--rounds 3]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
"$ROOT/scripts/setup.sh"
cargo build --release --bins --locked -q
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
mkdir -p bench/results
exec "$FERRY_VENV/bin/python" bench/large_model.py --bin "$BIN" --ort "$(ort_library)" --out bench/results/large-model.md "$@"
