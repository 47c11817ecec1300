#!/usr/bin/env bash
# The performance suite in one command: Ferry against the Node.js gateway it
# replaces and against the in-process ONNX Runtime limit, same machine, same
# run (e2e/src/bin/bench-suite/). Results: bench/results/latest.md.
#
#   bench/run.sh [--gateway-src DIR] [bench-suite flags, e.g. --duration 10 --sections throughput]
#
# Every section with the defaults: under 30 minutes on 2 vCPUs (BENCHMARKS.md).
#
# --gateway-src: a checkout of the Fastify + onnxruntime-node gateway (server.js,
# package.json, package-lock.json); it is copied to a scratch folder and its
# dependencies installed from npm. Without it the gateway columns stay empty.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
gateway_src=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --gateway-src) gateway_src="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
"$ROOT/scripts/setup.sh"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(ort_library)}"
cargo build --release --bins --locked
if [ -n "$gateway_src" ]; then
  scratch="${TMPDIR:-/tmp}/ferry-bench-gateway"
  rm -rf "$scratch" && mkdir -p "$scratch" && cp -r "$gateway_src"/. "$scratch"/
  # onnxruntime-node's install script fetches CUDA files; the CPU library ships in the package.
  (cd "$scratch" && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund >/dev/null)
  args+=(--gateway "$scratch")
fi
# Wherever cargo puts its output (CARGO_TARGET_DIR, or target/ here).
exec "${CARGO_TARGET_DIR:-$ROOT/target}/release/bench-suite" "${args[@]}"
