#!/usr/bin/env bash
# Fuzzes the inference service's request decoders with cargo-fuzz (libFuzzer,
# AddressSanitizer) on the nightly toolchain: every HTTP body decoder
# (fuzz/fuzz_targets/http_bodies.rs) and the gRPC Predict / OIP ModelInfer
# messages (grpc_messages.rs), through the router and services the binaries
# serve. A panic or a server error for a client's bytes is a crash; libFuzzer
# saves the input under fuzz/artifacts/<target>/ and the script fails.
#
#   scripts/fuzz.sh [seconds per target, default 60]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-60}"
tools="${HOME}/.cache/ferry/cargo-tools"
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  cargo install --locked --root "$tools" cargo-fuzz
fi
export PATH="$tools/bin:$PATH"
# Builds apart from the workspace's target folder: sanitizer flags rebuild every crate.
export CARGO_TARGET_DIR="${HOME}/.cache/ferry/fuzz-target"
cd "$ROOT/fuzz"
for target in http_bodies grpc_messages; do
  mkdir -p "corpus/$target"
  echo "== $target: $seconds s"
  log="$(mktemp)"
  if ! cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=4096 >"$log" 2>&1; then
    tail -60 "$log" >&2
    echo "fuzzing $target failed (a crash input, if any, is in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  grep -E "^#[0-9]+ +DONE|^Done [0-9]+ runs" "$log" || tail -5 "$log"
  rm -f "$log"
done
