"""A model over 2 GB, logged the way a data scientist does, delivered by Ferry.

ONNX's protobuf cannot hold more than 2 GB, so such a model must keep its
weights as external data: `mlflow.onnx.log_model` with its defaults writes
`model.onnx` (a few hundred bytes) and one data file beside it. This runs a
real MLflow (sqlite + local artifacts, the embedded default), logs an
embedding table of `--gb` GB that way, and then, in interleaved rounds:

  ferry    a fresh ferry-inference serving the version: from start to ready
           (download through MLflow's artifact proxy, hashing, ONNX Runtime
           load, warm-up), its own load-duration metric, and its peak RSS;
  peers    curl downloading the same files from the same proxy, then Python
           onnxruntime creating an InferenceSession from them (its peak RSS).

Ferry's answers are checked against Python onnxruntime's. Called by
bench/large-model.sh; results in bench/results/large-model.md.
"""
import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROWS_PER_GB = 1_000_000_000 // (64 * 4)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url, timeout, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} not ready within {timeout}s")


def peak_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def log_model(gb, tracking):
    """Runs in a child process so its memory does not count against the peers."""
    code = f"""
import json, mlflow, mlflow.onnx, numpy as np, onnx
from onnx import TensorProto, helper
rows = int({gb} * {ROWS_PER_GB})
g = helper.make_graph([helper.make_node('Gather', ['table', 'ids'], ['output'])], 'embedding',
    [helper.make_tensor_value_info('ids', TensorProto.INT64, [None])],
    [helper.make_tensor_value_info('output', TensorProto.FLOAT, [None, 64])])
model = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)])
# Set in place: protobuf refuses to copy a message over 2 GB (make_graph's
# initializer list copies), so a tensor that large is filled where it lives.
t = model.graph.initializer.add()
t.name, t.data_type = 'table', TensorProto.FLOAT
t.dims.extend([rows, 64])
t.raw_data = np.random.default_rng(7).standard_normal((rows, 64), dtype=np.float32).tobytes()
mlflow.set_experiment('large')
info = mlflow.onnx.log_model(model, name='model', registered_model_name='big')
print(json.dumps({{'version': str(info.registered_model_version), 'rows': rows}}))
"""
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MLFLOW_TRACKING_URI": tracking},
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gb", type=float, default=2.2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bin", required=True, help="folder with ferry-inference (release)")
    p.add_argument("--ort", required=True, help="libonnxruntime.so")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    work = tempfile.mkdtemp(prefix="ferry-large-")
    procs = []
    try:
        port = free_port()
        mlflow = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--host", "127.0.0.1", "--port",
             str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{work}/mlflow.db",
             "--artifacts-destination", f"{work}/artifacts"],
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=open(f"{work}/mlflow.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(mlflow)
        tracking = f"http://127.0.0.1:{port}"
        wait(f"{tracking}/health", 180, mlflow)
        t = time.time()
        logged = log_model(a.gb, tracking)
        log_s = time.time() - t
        from mlflow import MlflowClient

        os.environ["MLFLOW_TRACKING_URI"] = tracking
        client = MlflowClient()
        uri = client.get_model_version_download_uri("big", logged["version"])
        rel = uri.split("mlflow-artifacts:/", 1)[1].lstrip("/")
        listing = json.load(urllib.request.urlopen(f"{tracking}/api/2.0/mlflow-artifacts/artifacts?path={rel}"))
        files = {f["path"]: int(f["file_size"]) for f in listing["files"] if not f.get("is_dir")}
        model_files = ["model.onnx"] + [n for n in files if n.endswith(".data")]
        total = sum(files[n] for n in model_files)
        print(f"logged version {logged['version']}: {', '.join(f'{n} {files[n]:,} B' for n in model_files)} "
              f"({log_s:.0f} s to log)", flush=True)

        ids = [0, 1, logged["rows"] // 2, logged["rows"] - 1]
        rounds = []
        for r in range(a.rounds):
            # Ferry: a fresh process and an empty model folder each round.
            model_dir = f"{work}/ferry-models"
            shutil.rmtree(model_dir, ignore_errors=True)
            hp, gp, mp = free_port(), free_port(), free_port()
            env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "ORT_DYLIB_PATH": a.ort,
                   "FERRY_MODELS": f"big/{logged['version']}", "FERRY_MODEL_DIR": model_dir,
                   "FERRY_INFERENCE_HTTP_ADDR": f"127.0.0.1:{hp}", "FERRY_INFERENCE_GRPC_ADDR": f"127.0.0.1:{gp}",
                   "FERRY_INFERENCE_METRICS_ADDR": f"127.0.0.1:{mp}"}
            t = time.time()
            ferry = subprocess.Popen([os.path.join(a.bin, "ferry-inference")], env=env,
                                     stdout=open(f"{work}/ferry-{r}.log", "w"), stderr=subprocess.STDOUT)
            procs.append(ferry)
            wait(f"http://127.0.0.1:{hp}/readyz", 1800, ferry)
            ferry_s = time.time() - t
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{mp}/metrics").read().decode()
            load_s = next(float(l.split()[-1]) for l in metrics.splitlines()
                          if l.startswith("ferry_inference_model_load_duration_seconds_sum"))
            body = json.dumps({"inputs": ids}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{hp}/invocations", data=body,
                                         headers={"content-type": "application/json"})
            ferry_out = json.load(urllib.request.urlopen(req))["predictions"]["output"]
            ferry_rss = peak_rss_kb(ferry.pid)
            ferry.terminate()
            ferry.wait(30)
            shutil.rmtree(model_dir, ignore_errors=True)

            # Peers: curl the same files, then an in-process InferenceSession.
            dl = f"{work}/curl"
            shutil.rmtree(dl, ignore_errors=True)
            os.makedirs(dl)
            t = time.time()
            for n in model_files:
                subprocess.run(["curl", "-sSf", "-o", f"{dl}/{n}",
                                f"{tracking}/api/2.0/mlflow-artifacts/artifacts/{rel}/{n}"], check=True)
            curl_s = time.time() - t
            code = f"""
import json, resource, time, numpy as np, onnxruntime as ort
t = time.time()
s = ort.InferenceSession('{dl}/model.onnx', providers=['CPUExecutionProvider'])
load = time.time() - t
out = s.run(None, {{'ids': np.array({ids}, dtype=np.int64)}})[0]
print(json.dumps({{'load_s': load, 'rss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, 'out': out.tolist()}}))
"""
            py = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                           text=True).stdout)
            shutil.rmtree(dl, ignore_errors=True)
            same = all(abs(x - y) <= 1e-6 for fr, pr in zip(ferry_out, py["out"]) for x, y in zip(fr, pr))
            if not same or len(ferry_out) != len(ids):
                raise SystemExit("Ferry's embedding rows differ from Python onnxruntime's")
            row = {"ferry_ready_s": ferry_s, "ferry_load_metric_s": load_s, "ferry_rss_mb": ferry_rss / 1024,
                   "curl_s": curl_s, "py_load_s": py["load_s"], "py_rss_mb": py["rss_kb"] / 1024}
            rounds.append(row)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)

        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        peers_s = med["curl_s"] + med["py_load_s"]
        host = os.uname()
        lines = [
            "# A model over 2 GB: delivery and load",
            "",
            f"`bench/large-model.sh --gb {a.gb} --rounds {a.rounds}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{host.nodename} ({os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB). "
            f"MLflow 3.17 (sqlite + local artifacts, artifact proxy), one embedding table logged with "
            f"`mlflow.onnx.log_model(model, name=\"model\", registered_model_name=\"big\")`: "
            + ", ".join(f"`{n}` {files[n]:,} B" for n in model_files)
            + f" ({total / 1e9:.2f} GB). Medians of {a.rounds} interleaved rounds; answers checked against Python onnxruntime.",
            "",
            "| | Ferry | curl + Python onnxruntime | ratio |",
            "|---|---:|---:|---:|",
            f"| download + load, s | {med['ferry_ready_s']:.1f} (start to ready; load metric {med['ferry_load_metric_s']:.1f}) "
            f"| {peers_s:.1f} (curl {med['curl_s']:.1f} + InferenceSession {med['py_load_s']:.1f}) "
            f"| {med['ferry_ready_s'] / peers_s:.2f} |",
            f"| peak RSS, MB | {med['ferry_rss_mb']:,.0f} | {med['py_rss_mb']:,.0f} (Python, loading) "
            f"| {med['ferry_rss_mb'] / med['py_rss_mb']:.2f} |",
            "",
            "Ferry's time includes hashing every byte as it streams to disk, the ONNX Runtime load and the warm-up runs; "
            "curl's is the bare transfer.",
            "",
            "| round | Ferry ready s | Ferry load metric s | Ferry RSS MB | curl s | InferenceSession s | Python RSS MB |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ] + [f"| {i + 1} | {r['ferry_ready_s']:.1f} | {r['ferry_load_metric_s']:.1f} | {r['ferry_rss_mb']:,.0f} | "
             f"{r['curl_s']:.1f} | {r['py_load_s']:.1f} | {r['py_rss_mb']:,.0f} |" for i, r in enumerate(rounds)]
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        for pr in procs:
            if pr.poll() is None:
                try:
                    os.killpg(pr.pid, 15) if pr is procs[0] else pr.terminate()
                except ProcessLookupError:
                    pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
