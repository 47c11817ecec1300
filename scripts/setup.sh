#!/usr/bin/env bash
# Installs what Ferry needs beside the Rust toolchain, from package registries
# only: a Python venv with MLflow, the sample-model trainer, and the onnxruntime
# wheel whose libonnxruntime.so the services load. Re-running is cheap: the venv
# is rebuilt only when python/requirements.txt changes.
set -euo pipefail
source "$(dirname "$0")/env.sh"

req="$ROOT/python/requirements.txt"
stamp="$FERRY_VENV/.ferry-requirements"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -x "$FERRY_VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "setup: venv $FERRY_VENV is up to date"
else
  echo "setup: creating the Python venv in $FERRY_VENV (MLflow, scikit-learn, skl2onnx, onnxruntime)..."
  python3 -m venv "$FERRY_VENV"
  "$FERRY_VENV/bin/pip" install -q --disable-pip-version-check -U pip
  "$FERRY_VENV/bin/pip" install -q --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi
echo "setup: ONNX Runtime library: $(ort_library)"

# npm packages for the Node.js BFF example and the browser console's test (npm registry).
if command -v npm >/dev/null; then
  for app in examples/node-bff e2e/console; do
    lock="$ROOT/$app/package-lock.json"
    stamp="$ROOT/$app/node_modules/.ferry-lock"
    want="$(sha256sum "$lock" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
      echo "setup: installing $app's packages (npm ci)..."
      npm ci --silent --no-audit --no-fund --prefix "$ROOT/$app"
      echo "$want" > "$stamp"
    fi
  done
fi
