# Shared settings for the project's scripts (sourced, not run).
# FERRY_VENV: the project's Python venv (MLflow, trainer, ONNX Runtime library).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FERRY_VENV="${FERRY_VENV:-$ROOT/.venv}"
# The venv's ONNX Runtime (MLflow, the trainer, tests' reference answers) keeps
# a device id and a queue of usage events under ~/.cache/Microsoft and reports
# them, unless told not to; ferry-inference turns it off for itself.
export ORT_DISABLE_TELEMETRY="${ORT_DISABLE_TELEMETRY:-1}"

ort_library() {
  local lib
  lib=$(ls "$FERRY_VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -1)
  [ -n "$lib" ] || { echo "libonnxruntime not found in $FERRY_VENV; run scripts/setup.sh" >&2; return 1; }
  echo "$lib"
}
