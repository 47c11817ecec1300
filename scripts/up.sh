#!/usr/bin/env bash
# The first command: set up, build, and run the whole system on the embedded
# default (MLflow on sqlite + local artifacts, webhooks on), register the
# sample model, promote it (alias champion, stage Production), show a prediction over REST and gRPC, and keep
# running until Ctrl-C, which stops every process this script started.
#
# Ports (override with env): MLFLOW_PORT=5000 REGISTRY_PORT=50051 REGISTRY_HTTP_PORT=8081 REGISTRY_METRICS_PORT=9090
# INFERENCE_GRPC_PORT=50052 INFERENCE_HTTP_PORT=8080 INFERENCE_METRICS_PORT=9091. State lives in .ferry/.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"

MLFLOW_PORT="${MLFLOW_PORT:-5000}"
REGISTRY_PORT="${REGISTRY_PORT:-50051}"
REGISTRY_HTTP_PORT="${REGISTRY_HTTP_PORT:-8081}"
REGISTRY_METRICS_PORT="${REGISTRY_METRICS_PORT:-9090}"
INFERENCE_GRPC_PORT="${INFERENCE_GRPC_PORT:-50052}"
INFERENCE_HTTP_PORT="${INFERENCE_HTTP_PORT:-8080}"
INFERENCE_METRICS_PORT="${INFERENCE_METRICS_PORT:-9091}"
STATE="$ROOT/.ferry"
mkdir -p "$STATE/logs"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$MLFLOW_PORT" "$REGISTRY_PORT" "$REGISTRY_HTTP_PORT" "$REGISTRY_METRICS_PORT" "$INFERENCE_GRPC_PORT" "$INFERENCE_HTTP_PORT" "$INFERENCE_METRICS_PORT"; do
  port_free "$p" || { echo "up: port $p is in use; set MLFLOW_PORT / REGISTRY_PORT / INFERENCE_GRPC_PORT / INFERENCE_HTTP_PORT" >&2; exit 1; }
done

"$ROOT/scripts/setup.sh"
echo "up: building Ferry (release)..."
cargo build --release --bins -q
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
ORT="$(ort_library)"

PIDS=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "up: stopping..."
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  sleep 2
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM EXIT
start() { # name, command...: run in its own process group, log to .ferry/logs
  local name=$1; shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 &
  PIDS+=($!)
}
wait_until() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "up: $what did not come up; see $STATE/logs/" >&2; exit 1
}

# Webhooks: MLflow signs each delivery with a secret shared with the registry,
# and keeps that secret encrypted with a Fernet key. Both are made once and
# kept in .ferry/ (mode 600) so that a restart finds the webhook still working.
SECRETS="$STATE/webhook.env"
if [ ! -s "$SECRETS" ]; then
  (umask 077; "$FERRY_VENV/bin/python" -c 'import secrets
from cryptography.fernet import Fernet
print("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=" + Fernet.generate_key().decode())
print("FERRY_WEBHOOK_SECRET=" + secrets.token_hex(32))' > "$SECRETS")
fi
# The registry's tokens: mutating calls need one even on this machine. Yours
# (admin), and the inference replica's (role replica: watch and report traffic).
for var in FERRY_REGISTRY_TOKEN FERRY_REPLICA_TOKEN; do
  if ! grep -q "^$var=" "$SECRETS"; then
    (umask 077; "$FERRY_VENV/bin/python" -c "import secrets; print('$var=' + secrets.token_hex(24))" >> "$SECRETS")
  fi
done
source "$SECRETS" # shell variables only: each is handed to the one process that needs it

echo "up: starting MLflow on :$MLFLOW_PORT (sqlite $STATE/mlflow.db, artifacts $STATE/artifacts, webhooks on)..."
# The registry listens on loopback: let MLflow deliver there over plain HTTP.
MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY="$MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY" \
MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true \
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false start mlflow "$FERRY_VENV/bin/mlflow" server \
  --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
  --backend-store-uri "sqlite:///$STATE/mlflow.db" --artifacts-destination "$STATE/artifacts"
wait_until "MLflow" 180 curl -sf "http://127.0.0.1:$MLFLOW_PORT/health"

export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"
export FERRY_REGISTRY_URL="http://127.0.0.1:$REGISTRY_PORT"
export FERRY_INFERENCE_URL="http://127.0.0.1:$INFERENCE_GRPC_PORT"

echo "up: starting ferry-registry on :$REGISTRY_PORT (MLflow webhooks to http://127.0.0.1:$REGISTRY_HTTP_PORT/webhooks/mlflow)..."
FERRY_REGISTRY_TOKEN="$FERRY_REGISTRY_TOKEN" FERRY_REGISTRY_TOKENS="inference:replica=$FERRY_REPLICA_TOKEN" \
FERRY_WEBHOOK_SECRET="$FERRY_WEBHOOK_SECRET" FERRY_PUBLIC_URL="http://127.0.0.1:$REGISTRY_HTTP_PORT" \
FERRY_REGISTRY_GRPC_ADDR="127.0.0.1:$REGISTRY_PORT" FERRY_REGISTRY_HTTP_ADDR="127.0.0.1:$REGISTRY_HTTP_PORT" \
FERRY_REGISTRY_METRICS_ADDR="127.0.0.1:$REGISTRY_METRICS_PORT" start registry "$BIN/ferry-registry"
wait_until "ferry-registry" 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$REGISTRY_PORT"
wait_until "the MLflow webhook" 30 grep -q "MLflow webhook in place" "$STATE/logs/registry.log"

echo "up: training the sample model (scikit-learn LogisticRegression on iris → ONNX)..."
"$FERRY_VENV/bin/python" python/train_iris.py --out "$STATE/iris.onnx"
echo "up: registering it through ModelRegistry.RegisterModel..."
ferryctl() { FERRY_REGISTRY_TOKEN="$FERRY_REGISTRY_TOKEN" "$BIN/ferryctl" "$@"; }
reg=$(ferryctl register --name iris --file "$STATE/iris.onnx" --description "iris logistic regression (sample)")
echo "    $reg"
version=$(echo "$reg" | "$FERRY_VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["version"])')
echo "up: promoting version $version: alias champion (webhook-driven) and stage Production..."
echo "    $(ferryctl alias --name iris --alias champion --version "$version")"
echo "    $(ferryctl stage --name iris --version "$version" --stage Production --archive-existing)"

echo "up: starting ferry-inference (gRPC :$INFERENCE_GRPC_PORT, HTTP :$INFERENCE_HTTP_PORT) serving iris@champion..."
FERRY_MODELS="iris@champion" ORT_DYLIB_PATH="$ORT" FERRY_MODEL_DIR="$STATE/models" FERRY_REGISTRY_TOKEN="$FERRY_REPLICA_TOKEN" \
FERRY_INFERENCE_GRPC_ADDR="127.0.0.1:$INFERENCE_GRPC_PORT" FERRY_INFERENCE_HTTP_ADDR="127.0.0.1:$INFERENCE_HTTP_PORT" FERRY_INFERENCE_METRICS_ADDR="127.0.0.1:$INFERENCE_METRICS_PORT" \
  start inference "$BIN/ferry-inference"
wait_until "ferry-inference to load the model" 60 curl -sf "http://127.0.0.1:$INFERENCE_HTTP_PORT/readyz"

echo
echo "REST  POST /predict {\"data\":[5.9,3.0,5.1,1.8]}:"
echo "    $(curl -s -X POST "http://127.0.0.1:$INFERENCE_HTTP_PORT/predict" -H 'content-type: application/json' -d '{"data":[5.9,3.0,5.1,1.8]}')"
echo "gRPC  ferry.inference.v1.Inference/Predict:"
echo "    $("$BIN/ferryctl" predict --model iris --data 5.9,3.0,5.1,1.8)"
cat <<EOM

Ferry is running (Ctrl-C stops everything; logs in $STATE/logs/):
  MLflow UI / REST        http://127.0.0.1:$MLFLOW_PORT
  ModelRegistry (gRPC)    127.0.0.1:$REGISTRY_PORT
  Registry (HTTP)         http://127.0.0.1:$REGISTRY_HTTP_PORT  (/register-model, /set-model-stage)
  Inference (gRPC)        127.0.0.1:$INFERENCE_GRPC_PORT
  Inference (REST)        http://127.0.0.1:$INFERENCE_HTTP_PORT/predict  (also /v2/..., /v1/predict, /openapi.json)
  Registry metrics        http://127.0.0.1:$REGISTRY_METRICS_PORT/metrics
  Inference metrics       http://127.0.0.1:$INFERENCE_METRICS_PORT/metrics
Try:  source $SECRETS; export FERRY_REGISTRY_TOKEN   (ferryctl sends it; callers are named "token")
      $BIN/ferryctl watch          (changes as they happen)
      $BIN/ferryctl stage --name iris --version $version --stage Archived
      Move an alias in the MLflow UI (Models → iris → version → Aliases) or with
      MlflowClient().set_registered_model_alias("iris", "champion", "$version"):
      MLflow's webhook tells the registry at once, and every WatchModels stream sees it.
EOM
wait
