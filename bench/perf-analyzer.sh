#!/usr/bin/env bash
# Runs Triton's perf_analyzer against a running Ferry (Open Inference Protocol,
# gRPC and HTTP), to show wire compatibility with Triton's standard client.
#
#   bench/perf-analyzer.sh GRPC_HOST:PORT HTTP_HOST:PORT MODEL [extra perf_analyzer args]
#
# perf_analyzer's wheels need glibc 2.38; Debian 12 has 2.36. So the tool runs
# through Debian 13's loader with Debian 13's libc6, libstdc++6 and libgcc-s1
# unpacked into a private folder (nothing on the system changes). Everything is
# fetched from PyPI and the machine's Debian mirror into ~/.cache/ferry/perf-analyzer.
set -euo pipefail
GRPC=${1:?grpc host:port}; HTTP=${2:?http host:port}; MODEL=${3:?model}; shift 3
TOOLS="${FERRY_CACHE:-$HOME/.cache/ferry}/perf-analyzer"
mkdir -p "$TOOLS"
cd "$TOOLS"

if [ ! -x pa/perf_analyzer/bin/perf_analyzer ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
    --python-version 3.11 -d wheel perf-analyzer==2.60.0
  rm -rf pa && mkdir pa && python3 -c "import zipfile,glob; zipfile.ZipFile(glob.glob('wheel/*.whl')[0]).extractall('pa')"
  chmod +x pa/perf_analyzer/bin/perf_analyzer 2>/dev/null || true
fi
BIN=$(find "$TOOLS/pa" -type f -name perf_analyzer | head -1)
chmod +x "$BIN"

if [ ! -e root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 ]; then
  mkdir -p apt/lists/partial apt/cache/archives/partial apt/etc/sources.list.d debs root
  mirror=$( (grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null || true) | awk '{print $2}' | grep -E '/debian/?$' | head -1)
  echo "deb ${mirror:-http://deb.debian.org/debian} trixie main" > apt/etc/sources.list
  : > apt/status
  opts=(-o Dir::Etc::SourceList="$TOOLS/apt/etc/sources.list" -o Dir::Etc::SourceParts="$TOOLS/apt/etc/sources.list.d"
        -o Dir::State::Lists="$TOOLS/apt/lists" -o Dir::Cache="$TOOLS/apt/cache" -o Dir::State::status="$TOOLS/apt/status")
  apt-get "${opts[@]}" update -qq
  (cd debs && apt-get "${opts[@]}" download libc6 libstdc++6 libgcc-s1)
  for deb in debs/*.deb; do dpkg-deb -x "$deb" root; done
fi
LIBS="$TOOLS/root/usr/lib/x86_64-linux-gnu"
run() { "$LIBS/ld-linux-x86-64.so.2" --library-path "$LIBS:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" "$BIN" "$@"; }

# Stability settings that settle on a shared 2-core machine; zero inputs (random FP32 may be NaN).
common=(-m "$MODEL" --input-data zero -s 50 -r 5 --concurrency-range 1:16:15 "$@")
echo "=== perf_analyzer -i grpc against $GRPC"
run -i grpc -u "$GRPC" "${common[@]}"
echo "=== perf_analyzer -i http against $HTTP"
run -i http -u "$HTTP" "${common[@]}"
