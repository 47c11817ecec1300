#!/usr/bin/env python3
"""Drive Ferry's Open Inference Protocol endpoints with Triton's official
client (tritonclient, gRPC and HTTP) and compare every answer with Python
onnxruntime on the same ONNX file. Exits non-zero on the first mismatch.

    python oip_compat.py --grpc 127.0.0.1:50052 --http 127.0.0.1:8080 --model iris --onnx iris.onnx
"""
import argparse
import json

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpc", required=True)
    ap.add_argument("--http", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--onnx", required=True)
    a = ap.parse_args()

    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.1, 4.4, 1.4], [5.9, 3.0, 5.1, 1.8]], dtype=np.float32)
    sess = ort.InferenceSession(a.onnx, providers=["CPUExecutionProvider"])
    want_label, want_probs = sess.run(["label", "probabilities"], {"input": x})
    report = {}

    # gRPC: tritonclient always sends raw_input_contents and reads raw_output_contents.
    g = grpcclient.InferenceServerClient(url=a.grpc)
    check(g.is_server_live(), "gRPC server live")
    check(g.is_server_ready(), "gRPC server ready")
    check(g.is_model_ready(a.model), "gRPC model ready")
    meta = g.get_server_metadata()
    check("model_configuration" in meta.extensions, f"gRPC extensions {meta.extensions}")
    md = g.get_model_metadata(a.model, as_json=True)
    check([i["name"] for i in md["inputs"]] == ["input"], f"gRPC metadata {md}")
    cfg = g.get_model_config(a.model, as_json=True)["config"]
    check(cfg["input"][0]["data_type"] == "TYPE_FP32" and int(cfg["max_batch_size"]) > 0, f"gRPC config {cfg}")
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    outs = [grpcclient.InferRequestedOutput("probabilities"), grpcclient.InferRequestedOutput("label")]
    r = g.infer(a.model, [inp], outputs=outs, request_id="req-1")
    check(np.allclose(r.as_numpy("probabilities"), want_probs, atol=1e-5), "gRPC probabilities")
    check((r.as_numpy("label") == want_label).all(), "gRPC labels")
    check(r.get_response().id == "req-1", "gRPC request id echoed")
    report["grpc_version"] = r.get_response().model_version

    # HTTP with Triton's binary-data extension (tritonclient's default), both ways.
    h = httpclient.InferenceServerClient(url=a.http)
    check(h.is_server_live() and h.is_server_ready() and h.is_model_ready(a.model), "HTTP health")
    check(h.get_model_metadata(a.model)["platform"] == "onnxruntime_onnx", "HTTP metadata")
    check(h.get_model_config(a.model)["max_batch_size"] > 0, "HTTP config")
    hi = httpclient.InferInput("input", list(x.shape), "FP32")
    hi.set_data_from_numpy(x, binary_data=True)
    ho = [httpclient.InferRequestedOutput("probabilities", binary_data=True),
          httpclient.InferRequestedOutput("label", binary_data=True)]
    r = h.infer(a.model, [hi], outputs=ho)
    check(np.allclose(r.as_numpy("probabilities"), want_probs, atol=1e-5), "HTTP binary probabilities")
    check((r.as_numpy("label") == want_label).all(), "HTTP binary labels")

    # HTTP as plain JSON.
    hj = httpclient.InferInput("input", list(x.shape), "FP32")
    hj.set_data_from_numpy(x, binary_data=False)
    r = h.infer(a.model, [hj], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)])
    check(np.allclose(r.as_numpy("probabilities"), want_probs, atol=1e-5), "HTTP JSON probabilities")

    # Errors come back as exceptions with the server's message.
    try:
        bad = httpclient.InferInput("input", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32), binary_data=False)
        h.infer(a.model, [bad])
        check(False, "a wrong shape must fail")
    except Exception as e:  # tritonclient raises InferenceServerException
        check("dimension 1 must be 4" in str(e), f"HTTP error message: {e}")

    stats = h.get_inference_statistics(a.model)["model_stats"][0]
    check(int(stats["inference_count"]) >= 9, f"stats {stats}")
    check(int(stats["inference_stats"]["fail"]["count"]) >= 1, f"stats {stats}")
    # What perf_analyzer relies on: the queue count grows with requests (it finds the
    # serving version by it) and the three compute counts are equal.
    st = stats["inference_stats"]
    check(int(st["queue"]["count"]) >= 3, f"queue count {st}")
    counts = {int(st[k]["count"]) for k in ("compute_input", "compute_infer", "compute_output")}
    check(len(counts) == 1, f"compute counts differ: {st}")
    gstats = g.get_inference_statistics(a.model, as_json=True)["model_stats"][0]
    report["inference_count"] = int(gstats["inference_count"])
    print(json.dumps({"ok": True, **report}))


if __name__ == "__main__":
    main()
