"""Logs ONNX models the way a data scientist does, with MLflow's own Python
client and its defaults, and prints what the tests need to check Ferry
against: versions, their sources, Python onnxruntime's outputs, and the
digest over each version's files computed independently of Ferry.

  python log_models.py --name mlp external inline many-files runs-uri sklearn
  python log_models.py --name big --model big.onnx external inline

  external    mlflow.onnx.log_model defaults: external data in one file
  inline      save_as_external_data=False, with a signature
  many-files  all_tensors_to_one_file=False: one data file per tensor
  runs-uri    saved locally, logged as run artifacts, registered from runs:/
  sklearn     not ONNX at all
  example     mlflow.onnx.log_model defaults with an input example: MLflow infers
              the signature and writes serving_input_example.json

The last line printed is a JSON list, one entry per kind, in order; each
kind gets different weights (seeded by its position).

MLFLOW_TRACKING_URI says where. The model: input float32 [N, 64] → Gemm 128
→ Relu → Gemm 10 → output [N, 10]; every weight is over 1 KB, so MLflow's
default writes it as external data. With --model, the ONNX file given instead
(one float32 input [N, width]), the same for every kind, answering a row of
0.1s.
"""
import argparse
import hashlib
import json
import os
import tempfile

import mlflow
import mlflow.onnx
import numpy as np
import onnx
import onnxruntime as ort
from mlflow import MlflowClient
from onnx import TensorProto, helper, numpy_helper

ROW = [round(0.05 * i - 1.0, 3) for i in range(64)]  # the row the tests send


def mlp(seed):
    r = np.random.default_rng(seed)
    w = lambda n, s: numpy_helper.from_array((r.standard_normal(s) * np.sqrt(2.0 / s[0])).astype(np.float32), n)
    b = lambda n, k: numpy_helper.from_array((r.standard_normal(k) * 0.1).astype(np.float32), n)
    nodes = [
        helper.make_node("Gemm", ["input", "W1", "B1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Gemm", ["r1", "W2", "B2"], ["output"]),
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 10])],
        [w("W1", (64, 128)), b("B1", 128), w("W2", (128, 10)), b("B2", 10)],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def digest(model_dir):
    """ferry.sha256 as the README defines it, computed with ONNX's own
    external-data helpers: the ONNX file's SHA-256 alone, or with external
    data the SHA-256 of `sha256sum`-style lines for the ONNX file and every
    data file it references, sorted by path."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    graph = onnx.load(os.path.join(model_dir, "model.onnx"), load_external_data=False)
    files = ["model.onnx"] + sorted({ExternalDataInfo(t).location for t in _get_all_tensors(graph) if uses_external_data(t)})
    sums = {f: hashlib.sha256(open(os.path.join(model_dir, f), "rb").read()).hexdigest() for f in files}
    if len(sums) == 1:
        return sums["model.onnx"], files
    manifest = "".join(f"{sums[f]}  {f}\n" for f in sorted(files, key=lambda s: s.encode()))
    return hashlib.sha256(manifest.encode()).hexdigest(), files


def log(client, name, kind, seed, given=None):
    if given is None:
        x, model = np.array([ROW], dtype=np.float32), mlp(seed)
    else:
        model = onnx.load(given)
        width = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
        x = np.full((1, width), 0.1, dtype=np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    mv = None
    with mlflow.start_run() as run:
        if kind == "external":
            info = mlflow.onnx.log_model(model, name="model", registered_model_name=name)
        elif kind == "inline":
            sig = mlflow.models.infer_signature(x, want)
            info = mlflow.onnx.log_model(
                model, name="model", registered_model_name=name, save_as_external_data=False, signature=sig
            )
        elif kind == "many-files":
            info = mlflow.onnx.log_model(model, name="model", registered_model_name=name, all_tensors_to_one_file=False)
        elif kind == "runs-uri":
            with tempfile.TemporaryDirectory() as d:
                mlflow.onnx.save_model(model, os.path.join(d, "model"))
                mlflow.log_artifacts(os.path.join(d, "model"), "model")
            if not client.search_registered_models(f"name='{name}'"):
                client.create_registered_model(name)
            mv = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
            info = None
        elif kind == "example":
            info = mlflow.onnx.log_model(model, name="model", registered_model_name=name, input_example=x)
        elif kind == "sklearn":
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression().fit(np.array([[0.0], [1.0]]), [0, 1])
            info = mlflow.sklearn.log_model(clf, name="model", registered_model_name=name)
        else:
            raise SystemExit(f"unknown kind {kind}")
    version = str(info.registered_model_version if info is not None else mv.version)
    mv = client.get_model_version(name, version)
    out = {"kind": kind, "version": version, "source": mv.source, "expected": want.ravel().tolist()}
    if kind != "sklearn":
        with tempfile.TemporaryDirectory() as d:
            local = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=d)
            out["digest"], out["files"] = digest(local)
            example = os.path.join(local, "serving_input_example.json")
            if os.path.exists(example):
                out["serving_input_example"] = open(example).read()
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--model", help="an ONNX file to log instead of the built-in MLP")
    p.add_argument("kinds", nargs="+")
    a = p.parse_args()
    client = MlflowClient()
    mlflow.set_experiment("data-science")
    print(json.dumps([log(client, a.name, kind, seed, a.model) for seed, kind in enumerate(a.kinds, start=1)]))


if __name__ == "__main__":
    main()
